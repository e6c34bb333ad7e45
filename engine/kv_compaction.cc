#include "engine/kv_compaction.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "kernels/host_copy.h"

namespace headwise::engine {
namespace {

// Rows gathered on the device per round trip: bounds the staging buffers (32 MB of bf16 keys at
// head dim 128).
constexpr int64_t kGatherRows = int64_t{1} << 17;

// One head's offloaded rows `t` on the host, as the tier keeps them: the bf16 bits as stored, or
// f32.
HostVector<kernels::cpu::Bf16> Bf16Rows(kernels::Backend& backend, const Tensor& t) {
  static_assert(sizeof(kernels::cpu::Bf16) == sizeof(uint16_t));
  HostVector<kernels::cpu::Bf16> rows(static_cast<size_t>(t.numel()));
  backend.CopyToHost(rows.data(), t, t.nbytes());
  return rows;
}
std::vector<float> F32Rows(kernels::Backend& backend, const Tensor& t, std::vector<uint16_t>& raw) {
  std::vector<float> rows;
  const Status copied = kernels::CopyToHostF32(backend, t, rows, raw);
  HW_CHECK(copied.ok(), "offloading the prompt's keys: {}", copied.ToString());
  return rows;
}

// Step 1 of a head's RoarGraph build on the device (Backend::TopKeys: the exact best keys of every
// training query), where the head's keys already are: a GPU does it in a fraction of the time the
// CPU would take (quadratic in the prompt). Empty without training queries.
std::vector<uint32_t> TrainingNeighbours(kernels::Backend& backend, std::span<const float> train,
                                         const Tensor& keys, int knn_per_query,
                                         std::vector<uint16_t>& raw) {
  const int64_t d = keys.dim(1);
  const auto m = static_cast<int64_t>(train.size()) / d;
  if (m == 0) return {};
  const int64_t k = std::min<int64_t>(knn_per_query, keys.dim(0));
  kernels::Buffer queries = backend.Allocate(backend.activation_dtype(), {m, d});
  const Status uploaded = kernels::CopyFromHostF32(backend, queries.view(), train.data(), raw);
  HW_CHECK(uploaded.ok(), "training queries to the device: {}", uploaded.ToString());
  kernels::Buffer ids = backend.Allocate(DType::kI32, {m, k});
  backend.TopKeys(queries.view(), keys, ids.view());
  std::vector<uint32_t> top(static_cast<size_t>(m * k));
  backend.CopyToHost(top.data(), ids.view(), top.size() * sizeof(uint32_t));
  return top;
}

// Positions [begin, end) of every offload head of `kv`, gathered from the pool (viewed as rows
// of head_dim) on the device a chunk of whole heads at a time: `take(layer, kv_head, keys,
// values)` gets each head's rows [end - begin, D] as device tensors, valid during the call.
template <typename Take>
void GatherOffloadRows(kernels::Backend& backend, kvcache::KvCache& cache,
                       const kvcache::SequenceKv& kv, int begin, int end, Take&& take) {
  const kvcache::KvLayout& layout = cache.layout(kv.layout());
  const kernels::KvPoolView pool = cache.pool_view();
  const int64_t d = pool.k.dim(2), n = end - begin;
  const Tensor k_rows = pool.k.Reshape({pool.k.dim(0) * pool.k.dim(1), d});
  const Tensor v_rows = pool.v.Reshape({pool.v.dim(0) * pool.v.dim(1), d});
  std::vector<std::pair<int, int>> heads;  // (layer, KV head)
  for (int l = 0; l < layout.num_layers; ++l) {
    for (int h = 0; h < layout.num_kv_heads; ++h) {
      if (layout.At(l, h).offload()) heads.emplace_back(l, h);
    }
  }
  const auto per_chunk = static_cast<size_t>(std::max<int64_t>(1, kGatherRows / n));
  for (size_t first = 0; first < heads.size(); first += per_chunk) {
    const size_t count = std::min(per_chunk, heads.size() - first);
    std::vector<int32_t> rows;
    rows.reserve(count * static_cast<size_t>(n));
    for (size_t i = first; i < first + count; ++i) {
      for (int pos = begin; pos < end; ++pos) {
        rows.push_back(kv.Slot(heads[i].first, heads[i].second, pos));
      }
    }
    const auto num_rows = static_cast<int64_t>(rows.size());
    kernels::Buffer row_ids = backend.Allocate(DType::kI32, {num_rows});
    backend.CopyFromHost(row_ids.view(), rows.data(), rows.size() * sizeof(int32_t));
    kernels::Buffer k_out = backend.Allocate(pool.k.dtype, {num_rows, d});
    kernels::Buffer v_out = backend.Allocate(pool.v.dtype, {num_rows, d});
    backend.GatherRows(k_rows, row_ids.view(), k_out.view());
    backend.GatherRows(v_rows, row_ids.view(), v_out.view());
    for (size_t i = 0; i < count; ++i) {
      const int64_t at = static_cast<int64_t>(i) * n;
      take(heads[first + i].first, heads[first + i].second, k_out.view().Rows(at, n),
           v_out.view().Rows(at, n));
    }
  }
}

bool HostKeepsBf16(const kvcache::KvCache& cache) {
  const bool bf16 = cache.offload_tier()->config().bf16_rows;
  HW_CHECK(bf16 == (cache.pool_view().k.dtype == DType::kBF16),
           "the host tier keeps {} rows of a {} pool", bf16 ? "bf16" : "f32",
           DTypeName(cache.pool_view().k.dtype));
  return bf16;
}

// Copies positions [begin, end) of every offload head of `kv` to the host tier, each head's rows
// straight into the vectors the tier keeps (one copy, no host staging), then builds its indexes.
void OffloadSpan(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                 int begin, int end) {
  kvcache::OffloadTier& tier = *cache.offload_tier();
  const int32_t slot = kv.select_slot();
  HW_CHECK(slot >= 0, "an offload sequence without a slot");
  const int knn = cache.layout(kv.layout()).offload->knn_per_query;
  const bool bf16 = HostKeepsBf16(cache);
  std::vector<uint16_t> raw;
  GatherOffloadRows(backend, cache, kv, begin, end,
                    [&](int layer, int kv_head, const Tensor& keys, const Tensor& values) {
                      std::vector<uint32_t> top = TrainingNeighbours(
                          backend, tier.TrainingQueries(slot, layer, kv_head), keys, knn, raw);
                      if (bf16) {
                        tier.Store(slot, layer, kv_head, begin, Bf16Rows(backend, keys),
                                   Bf16Rows(backend, values), std::move(top));
                      } else {
                        tier.Store(slot, layer, kv_head, begin, F32Rows(backend, keys, raw),
                                   F32Rows(backend, values, raw), std::move(top));
                      }
                    });
  tier.Build(slot);  // on the tier's builder thread; the sequence decodes once it is ready
}

}  // namespace

void CompactAfterPrompt(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens) {
  if (cache.comp_pages(kv.layout()) == 0 || kv.compacted_from() > 0) return;
  const kvcache::KvLayout& layout = cache.layout(kv.layout());
  const kernels::KvRetention r = layout.compress();
  if (num_tokens <= r.sink + r.window + (r.compensation ? 1 : 0)) return;
  const int first_kept = num_tokens - r.window;
  if (r.compensation) {
    // Per rank (tensor parallelism: each holds its KV heads' pages; one rank otherwise), one
    // upload: the sequence's block tables (built before MarkCompacted, so every comp block is
    // still held and comp_from is 0), then per layer the rows of the rank's compress-once heads,
    // numbered as the rank numbers them, each replacing position `sink` by the mean over
    // [sink, first_kept). Each rank's work is issued to its own device from this thread.
    const kvcache::SequenceKv* seqs[] = {&kv};
    const kvcache::StepTables tables = cache.BuildStepTables(seqs, 1, cache.BlocksFor(num_tokens));
    const int rank_heads = cache.rank_kv_heads();
    for (int rank = 0; rank < cache.num_ranks(); ++rank) {
      kernels::Backend& be = cache.backend(rank);
      if (cache.num_ranks() > 1) be.BindThread();
      std::vector<int32_t> data;
      const size_t tables_offset = tables.AppendTo(data);
      struct LayerRows {
        int layer;
        size_t offset;
        int64_t count;
      };
      std::vector<LayerRows> layers;
      for (int l = 0; l < layout.num_layers; ++l) {
        std::vector<int32_t> heads;
        for (int h = 0; h < rank_heads; ++h) {
          if (layout.At(l, rank * rank_heads + h).compress_once()) heads.push_back(h);
        }
        if (heads.empty()) continue;
        const auto n = heads.size();
        layers.push_back({l, data.size(), static_cast<int64_t>(n)});
        data.insert(data.end(), n, 0);  // row_seq
        data.insert(data.end(), heads.begin(), heads.end());
        data.insert(data.end(), n, r.sink);      // begin, and dest
        data.insert(data.end(), n, first_kept);  // end
      }
      kernels::Buffer uploaded = be.Allocate(DType::kI32, {static_cast<int64_t>(data.size())});
      be.CopyFromHost(uploaded.view(), data.data(), data.size() * sizeof(int32_t));
      const Tensor all = uploaded.view();
      const kvcache::StepTables::DeviceViews views = tables.Views(all, tables_offset);
      for (const LayerRows& rows : layers) {
        auto part = [&](int i) {
          return Tensor(all.ptr<int32_t>() + rows.offset + i * rows.count, DType::kI32, all.device,
                        {rows.count});
        };
        const Tensor begin = part(2);
        be.MeanKv(cache.pool_view(rank),
                  kernels::KvMeanBatch{part(0), part(1), begin, part(3), begin,
                                       cache.LayerTable(rows.layer, views, rank)});
      }
      be.Synchronize();  // the buffer goes, and the span's pages may be reused, after this
    }
    if (cache.num_ranks() > 1) backend.BindThread();  // the caller's device again
  }
  if (layout.offload) OffloadSpan(backend, cache, kv, r.sink, first_kept);
  // Frees the comp blocks that hold only dropped positions.
  kv.MarkCompacted(first_kept);
}

void SlideOffloadWindow(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens) {
  const kvcache::KvLayout& layout = cache.layout(kv.layout());
  const int from = kv.compacted_from();
  if (!layout.offload || from == 0) return;
  const int window = layout.compress().window, page_size = cache.config().page_size;
  if (num_tokens - from < window + page_size) return;
  // Whole pages leave, so that each slide frees the pages it empties.
  const int first_kept = (num_tokens - window) / page_size * page_size;
  kvcache::OffloadTier& tier = *cache.offload_tier();
  const int32_t slot = kv.select_slot();
  const bool bf16 = HostKeepsBf16(cache);
  std::vector<uint16_t> raw;
  GatherOffloadRows(backend, cache, kv, from, first_kept,
                    [&](int layer, int kv_head, const Tensor& keys, const Tensor& values) {
                      if (bf16) {
                        tier.Append(slot, layer, kv_head, from, Bf16Rows(backend, keys),
                                    Bf16Rows(backend, values));
                      } else {
                        tier.Append(slot, layer, kv_head, from, F32Rows(backend, keys, raw),
                                    F32Rows(backend, values, raw));
                      }
                    });
  kv.MarkCompacted(first_kept);
}

}  // namespace headwise::engine
