// Decode-time selection rules (kernels::KvSelect) as the kernel tests write them, shared by the
// CPU and GPU selection tests (select_decode_test.cc, cuda_select_test.cc). One argument order
// throughout: set, budget, sink, recent, then what the role adds, then reduce and per_q last.
// `decode` and `reduce` are typed enums, so a bool given where a reduction goes (or the reverse
// order) does not compile.
#pragma once

#include <optional>

#include "kernels/kv_head.h"

namespace headwise::testing {

// A dense head (no selection).
inline kernels::KvSelect Dense() {
  return kernels::KvSelect{};
}
// Any role: `per_q` a set per query head, else one per KV head reduced over its group.
inline kernels::KvSelect Rule(kernels::KvDecode decode, int set, int budget, int sink, int recent,
                              kernels::KvReduce reduce = kernels::kReduceSumSoftmax,
                              bool per_q = false) {
  kernels::KvSelect r;
  r.decode = decode;
  r.set = set;
  r.budget = budget;
  r.sink = sink;
  r.recent = recent;
  r.reduce = reduce;
  r.per_q_head = per_q ? 1 : 0;
  return r;
}
// TidalDecode's selection layer: attends every key, chooses set `set`.
inline kernels::KvSelect Select(int set, int budget, int sink, int recent,
                                kernels::KvReduce reduce = kernels::kReduceSumSoftmax,
                                bool per_q = false) {
  return Rule(kernels::kDecodeSelect, set, budget, sink, recent, reduce, per_q);
}
// TidalDecode's other layers: attend set `set` as a select head chose it this step.
inline kernels::KvSelect Consume(int set, int budget, int sink, int recent, bool per_q = false) {
  return Rule(kernels::kDecodeConsume, set, budget, sink, recent, kernels::kReduceSumSoftmax,
              per_q);
}
// Recycled Attention: chooses anew every `every` steps, and (below_cos given) when the query's
// cosine to the one it chose with falls below below_cos.
inline kernels::KvSelect Recycle(int set, int budget, int sink, int recent, int every,
                                 bool since_refresh, std::optional<float> below_cos = std::nullopt,
                                 kernels::KvReduce reduce = kernels::kReduceSumSoftmax,
                                 bool per_q = false) {
  kernels::KvSelect r = Rule(kernels::kDecodeRecycle, set, budget, sink, recent, reduce, per_q);
  r.refresh_every = every;
  r.since_refresh = since_refresh ? 1 : 0;
  r.refresh_below_cos = below_cos ? 1 : 0;
  r.refresh_cos = below_cos.value_or(0.0f);
  return r;
}
// Quest: the best pages by their key bounds (recent 1: the tail is the current page).
inline kernels::KvSelect Pages(int set, int budget, int sink,
                               kernels::KvReduce reduce = kernels::kReduceSumSoftmax,
                               bool per_q = false) {
  return Rule(kernels::kDecodePages, set, budget, sink, 1, reduce, per_q);
}
// An offload head (RetrievalAttention): no set on the device; the host retrieves `budget` keys.
inline kernels::KvSelect Retrieve(int budget, bool per_q = true) {
  kernels::KvSelect r;
  r.decode = kernels::kDecodeRetrieve;
  r.budget = budget;
  r.per_q_head = per_q ? 1 : 0;
  return r;
}

}  // namespace headwise::testing
