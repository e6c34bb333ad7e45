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
    // Compress-once heads read their comp blocks, still all held: the span is freed below.
    const auto& config = cache.config();
    const int num_blocks = cache.BlocksFor(num_tokens);
    std::vector<int32_t> head_page, head_comp, rows;
    for (int l = 0; l < config.num_layers; ++l) {
      for (int h = 0; h < config.num_kv_heads; ++h) {
        if (cache.IsCompressed(l, h)) rows.push_back(static_cast<int32_t>(head_page.size()));
        head_page.push_back(cache.PageIndex(l, h));
        head_comp.push_back(cache.IsCompressed(l, h) ? 1 : 0);
      }
    }
    auto upload = [&](const std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
      kernels::Buffer b = backend.Allocate(DType::kI32, shape);
      backend.CopyFromHost(b.view(), v.data(), v.size() * sizeof(int32_t));
      return b;
    };
    const auto first_blocks = [&](const std::vector<int32_t>& blocks) {
      // Without full heads there are no full blocks: a row of zeros keeps the table's shape.
      if (blocks.empty()) return std::vector<int32_t>(static_cast<size_t>(num_blocks), 0);
      return std::vector<int32_t>(blocks.begin(), blocks.begin() + num_blocks);
    };
    const auto n = static_cast<int64_t>(rows.size());
    const auto heads = static_cast<int64_t>(head_page.size());
    const kernels::Buffer blocks = upload(first_blocks(kv.blocks()), {1, num_blocks});
    const kernels::Buffer comp_blocks = upload(first_blocks(kv.comp_blocks()), {1, num_blocks});
    const kernels::Buffer pages = upload(head_page, {heads});
    const kernels::Buffer comp_heads = upload(head_comp, {heads});
    const kernels::Buffer not_compacted = upload({0}, {1});
    const kernels::Buffer row_seq = upload(std::vector<int32_t>(rows.size(), 0), {n});
    const kernels::Buffer row_head = upload(rows, {n});
    const kernels::Buffer begin = upload(std::vector<int32_t>(rows.size(), r.sink), {n});
    const kernels::Buffer end = upload(std::vector<int32_t>(rows.size(), first_kept), {n});
    kernels::BlockTable table{blocks.view(), pages.view(), cache.pages_per_block()};
    table.head_comp = comp_heads.view();
    table.comp_blocks = comp_blocks.view();
    table.comp_pages_per_block = cache.comp_pages_per_block();
    table.comp_from = not_compacted.view();
    backend.MeanKv(cache.pool_view(),
                   kernels::KvMeanBatch{row_seq.view(), row_head.view(), begin.view(), end.view(),
                                        begin.view(), table});
    backend.Synchronize();  // the buffers go, and the span's pages may be reused, after this
  }
  // Frees the comp blocks that hold only dropped positions.
  kv.MarkCompacted(first_kept);
}

}  // namespace headwise::engine
