#include "engine/kv_compaction.h"

#include <vector>

namespace headwise::engine {

void CompactAfterPrompt(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens) {
  if (cache.comp_pages(kv.layout()) == 0 || kv.compacted_from() > 0) return;
  const kvcache::KvLayout& layout = cache.layout(kv.layout());
  const kernels::KvRetention r = layout.compress();
  if (num_tokens <= r.sink + r.window + (r.compensation ? 1 : 0)) return;
  const int first_kept = num_tokens - r.window;
  if (r.compensation) {
    // One upload: the sequence's block tables (built before MarkCompacted, so every comp block is
    // still held and comp_from is 0), then per layer the rows of its compress-once heads, each
    // replacing position `sink` by the mean over [sink, first_kept).
    const kvcache::SequenceKv* seqs[] = {&kv};
    const kvcache::StepTables tables = cache.BuildStepTables(seqs, 1, cache.BlocksFor(num_tokens));
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
      for (int h = 0; h < layout.num_kv_heads; ++h) {
        if (layout.At(l, h).compress_once()) heads.push_back(h);
      }
      if (heads.empty()) continue;
      const auto n = heads.size();
      layers.push_back({l, data.size(), static_cast<int64_t>(n)});
      data.insert(data.end(), n, 0);  // row_seq
      data.insert(data.end(), heads.begin(), heads.end());
      data.insert(data.end(), n, r.sink);      // begin, and dest
      data.insert(data.end(), n, first_kept);  // end
    }
    kernels::Buffer uploaded = backend.Allocate(DType::kI32, {static_cast<int64_t>(data.size())});
    backend.CopyFromHost(uploaded.view(), data.data(), data.size() * sizeof(int32_t));
    const Tensor all = uploaded.view();
    const kvcache::StepTables::DeviceViews views = tables.Views(all, tables_offset);
    for (const LayerRows& rows : layers) {
      auto part = [&](int i) {
        return Tensor(all.ptr<int32_t>() + rows.offset + i * rows.count, DType::kI32, all.device,
                      {rows.count});
      };
      const Tensor begin = part(2);
      backend.MeanKv(cache.pool_view(),
                     kernels::KvMeanBatch{part(0), part(1), begin, part(3), begin,
                                          cache.LayerTable(rows.layer, views)});
    }
    backend.Synchronize();  // the buffer goes, and the span's pages may be reused, after this
  }
  // Frees the comp blocks that hold only dropped positions.
  kv.MarkCompacted(first_kept);
}

}  // namespace headwise::engine
