// The host half of offload heads (RetrievalAttention, ALGORITHMS.md §5.1 and §9.10): for each
// sequence that runs a layout with offload heads (by its selection slot), the keys and values
// those heads dropped from the device when the prompt was compacted, a nearest-neighbour index
// over each head's keys (kvcache/ann), and, per decode step and layer, the attention of each
// query over the keys its search retrieved, as (o, lse) for the device's merge
// (Backend::OffloadAttention).
//
// A sequence's life here: Begin (its slot and layout) -> AddTrainingQueries while its prompt is
// prefilled (the post-RoPE queries of every train_stride-th position, the RoarGraph's training
// queries) -> Store per offload (layer, KV head) when the prompt is in (the dropped span
// [sink, first kept), with the training queries' exact neighbours when the engine found them on
// the device) -> Build (every head's index, on a thread of its own; the training queries
// are dropped) -> ready() -> Retrieve at each decode step, and Append as decoded tokens push
// the oldest of the static window out -> End (frees it; a preempted sequence starts again at
// Begin).
//
// Retrieval (KvLayout::offload, OffloadRule): per query head (a search each, or with group_search
// one RoarGraph traversal for the group's queries, RoarGraph::SearchGroup), or once per KV head
// with the mean of its group's queries (the group then attends one set); the top_k keys by inner
// product from the index (RoarGraph searched with queue search_list; HNSW with ef search_list;
// exact search) and from an exact search of the appended positions, merged by score, then list
// attention (kernels/cpu/list_attention.h, the CPU backend's arithmetic) over them in increasing
// position, at the model's softmax scale. Keys and values are kept as the device stored them: f32
// from the CPU backend, bf16 from the CUDA backend (OffloadTierConfig::bf16_rows: half the host
// memory, which is what lets four 128K prompts of an 8B model fit 128 GB); a bf16 value converts to
// f32 exactly, so either attends alike.
//
// Threads: one caller at a time (the engine thread); the work inside runs on the tier's own pool,
// one unit per (sequence, query head): every index searches from several threads at once.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "core/huge_pages.h"
#include "core/status.h"
#include "kernels/cpu/top_keys.h"
#include "kvcache/kv_layout.h"

namespace headwise::kernels::cpu {
class ThreadPool;
}

namespace headwise::kvcache {

struct OffloadTierConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int num_q_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;  // the attention's logit scale (1 / sqrt(head_dim) for Llama models)
  int slots = 0;       // selection slots (KvCacheConfig::select_slots)
  int threads = 1;
  // Host memory the slots may reserve together (TryReserve); 0: no limit.
  int64_t host_budget_bytes = 0;
  bool bf16_rows = false;  // keys and values stored as bf16 (Store's bf16 overload), else f32
};

// What one search found, for tests and benchmarks: the positions (increasing) and how many keys
// the index scanned.
struct RetrievedKeys {
  std::vector<int32_t> positions;
  size_t scanned = 0;
};

class OffloadTier {
 public:
  explicit OffloadTier(const OffloadTierConfig& config);
  ~OffloadTier();
  OffloadTier(const OffloadTier&) = delete;
  OffloadTier& operator=(const OffloadTier&) = delete;

  const OffloadTierConfig& config() const { return config_; }
  // Whether this build can run `rule` (HNSW needs hnswlib).
  static Status Supports(const OffloadRule& rule);

  // Starts slot `slot` for a sequence of `layout` (which must offload), dropping what it held.
  void Begin(int32_t slot, const KvLayout& layout);
  // Frees everything slot `slot` holds, its reservation included.
  void End(int32_t slot);
  // Sets slot `slot`'s reservation of host memory to `bytes` (BytesFor its prompt), unless the
  // slots' reservations would then exceed the budget: false, and nothing changes.
  bool TryReserve(int32_t slot, int64_t bytes);
  int64_t reserved_bytes() const;
  bool active(int32_t slot) const;

  // The queries of prompt position `pos` at `layer`: q [Hq, D] post-RoPE. Kept for the layer's
  // offload heads when pos % train_stride == 0 (RoarGraph only).
  void AddTrainingQueries(int32_t slot, int layer, int pos, const float* q);
  // The training queries kept for (layer, kv_head): rows [m, D], the group's query heads of each
  // kept position in turn. Empty for indexes other than RoarGraph.
  std::span<const float> TrainingQueries(int32_t slot, int layer, int kv_head);
  // The dropped span of (layer, kv_head): positions [begin, begin + n) as rows [n, D] of keys
  // and values. Once per head and Begin. train_top: the RoarGraph build's first step when the
  // caller found it (Backend::TopKeys on the device): the min(knn_per_query, n) best keys of
  // each training query, best first, as row ids of `keys`, rows of the queries in order; empty:
  // the builder finds them.
  void Store(int32_t slot, int layer, int kv_head, int begin, std::vector<float> keys,
             std::vector<float> values, std::vector<uint32_t> train_top = {});
  // The same with bf16 rows (a tier with bf16_rows takes only these, one without only f32), in
  // huge-page memory (core/huge_pages.h: a search reads rows at random all over them).
  void Store(int32_t slot, int layer, int kv_head, int begin, HostVector<kernels::cpu::Bf16> keys,
             HostVector<kernels::cpu::Bf16> values, std::vector<uint32_t> train_top = {});
  // Positions [begin, begin + n) of (layer, kv_head) that left the device's static window after
  // the prompt (rows [n, D] of keys and values), right after what the host holds: not indexed,
  // searched exactly beside the index (a decode adds one key a step, so against a long prompt
  // this part stays short). Only once the slot's build is done (ready()).
  void Append(int32_t slot, int layer, int kv_head, int begin, const std::vector<float>& keys,
              const std::vector<float>& values);
  void Append(int32_t slot, int layer, int kv_head, int begin,
              const HostVector<kernels::cpu::Bf16>& keys,
              const HostVector<kernels::cpu::Bf16>& values);
  // Builds every stored head's index, then drops the training queries: on a thread of its own
  // (the engine thread goes on with other sequences; this one may not retrieve until ready()).
  // Exact search builds nothing and is ready at once. Ending the slot before the build is done
  // is fine: the builder finishes on its own copy and drops it.
  void Build(int32_t slot);
  // No build of the slot is pending (an inactive slot is ready).
  bool ready(int32_t slot) const;
  // Waits for every pending build.
  void WaitForBuilds();
  // The wall time of each build finished since the last call (for the engine's metrics).
  std::vector<double> TakeFinishedBuilds();

  // What decode steps asked of the host since the last call (for the engine's metrics, and so that
  // a step's time splits into the host's part and the rest): Retrieve calls (one per offload layer
  // and step), their wall time, the searches run, the keys they scored and the keys they searched
  // over (scanned / over: the share of each head's keys a search reads).
  struct RetrieveStats {
    int64_t calls = 0;
    double seconds = 0;
    int64_t searches = 0, keys_scanned = 0, keys_over = 0;
  };
  RetrieveStats TakeRetrieveStats();

  // One decode step of `layer`: batch sequence s (slots[s] >= 0 and active) has its query in row
  // s of q [S, Hq, D]; for each of its offload heads and each query head h of the group,
  // out[s, h] and lse[s, h] (out [S, Hq, D], lse [S, Hq], f32) are the attention over the keys
  // retrieved for it (lse -inf and out 0 when none). Entries of other rows and heads get lse
  // -inf and out 0.
  void Retrieve(int layer, std::span<const int32_t> slots, const float* q, float* out, float* lse);
  // The keys one search retrieves for query head `q_head`'s query q [Hq, D] (the whole layer's
  // row: a search with the group's mean, or a group traversal, reads every head of the group), as
  // Retrieve would.
  StatusOr<RetrievedKeys> Search(int32_t slot, int layer, int q_head, const float* q);

  // Bytes of keys, values, indexes and training queries held, over the slots (a slot whose
  // build runs counts its reservation).
  size_t bytes_held() const;
  // What a sequence of `tokens` tokens of `layout` will take here at most, for admission: keys and
  // values of every offload head, its index's edges and the training queries.
  static size_t BytesFor(const OffloadTierConfig& config, const KvLayout& layout, int tokens);

 private:
  struct Head;
  struct Slot;
  Head& HeadAt(int32_t slot, int layer, int kv_head);
  // Store's checks and bookkeeping, for either row type.
  Head& StoreHead(int32_t slot, int layer, int kv_head, int begin, size_t keys, size_t values,
                  bool bf16, std::vector<uint32_t> train_top);
  // Append's checks, for either row type.
  Head& AppendHead(int32_t slot, int layer, int kv_head, int begin, size_t keys, size_t values,
                   bool bf16);
  static void BuildIndexes(std::vector<Head>& heads, const OffloadRule& rule, size_t dim,
                           int threads);
  // Head i's index (BuildIndexes' part for one head), on `threads` threads.
  static void BuildIndex(Head& head, size_t i, const OffloadRule& rule, size_t dim, int threads);
  // What one unit of Retrieve finds: the sets of query heads first_head, first_head + 1, ... (one
  // per query head searched, or one for a group's mean query, attended by heads_per_set heads).
  struct UnitSets {
    int first_head = 0;
    int heads_per_set = 1;
    std::vector<RetrievedKeys> sets;  // empty where the head stores nothing
  };
  // The search of query head q_head's unit (q [Hq, D], the layer's row): that head alone, or its
  // whole group (the group's mean query, or the group's traversal with group_search).
  StatusOr<UnitSets> SearchUnit(int32_t slot, int layer, int q_head, const float* q);

  OffloadTierConfig config_;
  // Shared with a slot's builder thread, so that ending (or restarting) a slot never waits for it.
  std::vector<std::shared_ptr<Slot>> slots_;
  std::vector<std::future<void>> builders_;
  std::mutex finished_mu_;
  std::vector<double> finished_builds_;  // seconds, guarded by finished_mu_
  RetrieveStats retrieve_stats_;         // the engine thread's alone (Retrieve, TakeRetrieveStats)
  std::unique_ptr<kernels::cpu::ThreadPool> pool_;
};

}  // namespace headwise::kvcache
