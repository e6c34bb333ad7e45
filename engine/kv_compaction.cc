#include "engine/kv_compaction.h"

#include <vector>

namespace headwise::engine {

void CompactAfterPrompt(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens) {
  if (!cache.has_compressed_heads() || kv.compacted_from() > 0) return;
  const kvcache::Retention& r = cache.compress_retention();
  if (num_tokens <= r.sink + r.window + (r.compensation ? 1 : 0)) return;
  const int first_kept = num_tokens - r.window;
  if (r.compensation) {
    // One MeanKv call for every layer: row (layer, head) names "KV head" layer * Hkv + head of a
    // head-page table that lists every layer's pages, so one upload and one launch serve all.
    const auto& config = cache.config();
    const int num_blocks = cache.BlocksFor(num_tokens);
    std::vector<int32_t> head_page, rows;
    for (int l = 0; l < config.num_layers; ++l) {
      for (int h = 0; h < config.num_kv_heads; ++h) {
        if (cache.IsCompressed(l, h)) rows.push_back(static_cast<int32_t>(head_page.size()));
        head_page.push_back(cache.PageIndex(l, h));
      }
    }
    auto upload = [&](const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
      kernels::Buffer b = backend.Allocate(DType::kI32, shape);
      backend.CopyFromHost(b.view(), v.data(), v.size() * sizeof(int32_t));
      return b;
    };
    const auto n = static_cast<int64_t>(rows.size());
    const kernels::Buffer blocks =
        upload(std::vector<int32_t>(kv.blocks().begin(), kv.blocks().begin() + num_blocks),
               {1, num_blocks});
    const kernels::Buffer pages = upload(head_page, {static_cast<int64_t>(head_page.size())});
    const kernels::Buffer row_seq = upload(std::vector<int32_t>(rows.size(), 0), {n});
    const kernels::Buffer row_head = upload(rows, {n});
    const kernels::Buffer begin = upload(std::vector<int32_t>(rows.size(), r.sink), {n});
    const kernels::Buffer end = upload(std::vector<int32_t>(rows.size(), first_kept), {n});
    backend.MeanKv(cache.pool_view(),
                   kernels::KvMeanBatch{
                       row_seq.view(), row_head.view(), begin.view(), end.view(), begin.view(),
                       kernels::BlockTable{blocks.view(), pages.view(), cache.pages_per_block()}});
    backend.Synchronize();  // the buffers go when this scope ends
  }
  kv.MarkCompacted(first_kept);
}

}  // namespace headwise::engine
