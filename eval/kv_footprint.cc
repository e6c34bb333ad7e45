#include "eval/kv_footprint.h"

#include <algorithm>

namespace headwise::eval {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

}  // namespace

int64_t KvPagesHeld(const kvcache::KvLayout& layout, const kvcache::KvCacheConfig& config,
                    int tokens) {
  const int ps = config.page_size;
  const int64_t logical = CeilDiv(tokens, ps);
  const int64_t full = layout.CountStorage(kernels::kStorageFull);
  // Offload heads compact as compress-once heads do (without the compensation token): what they
  // dropped lives in host memory, which this does not count.
  const int64_t comp = layout.CountStorage(kernels::kStorageCompressOnce) +
                       layout.CountStorage(kernels::kStorageOffload);
  const int64_t ring = layout.CountStorage(kernels::kStorageRing);
  int64_t pages = logical * full;
  if (ring > 0) {
    const kernels::KvRetention r = layout.ring();
    pages += (CeilDiv(r.sink, ps) + CeilDiv(r.window + config.chunk_tokens, ps)) * ring;
  }
  if (comp > 0) {
    // Compaction (engine/kv_compaction.h) happens when the prompt exceeds what the heads keep;
    // it keeps [0, sink + compensation) and [tokens - window, tokens), and frees the pages
    // wholly between.
    const kernels::KvRetention r = layout.compress();
    const int kept_head = r.sink + (r.compensation ? 1 : 0);
    int64_t freed = 0;
    if (tokens > kept_head + r.window) {
      const int first_kept = tokens - r.window;
      for (int64_t page = CeilDiv(kept_head, ps); (page + 1) * ps <= first_kept && page < logical;
           ++page) {
        ++freed;
      }
    }
    pages += (logical - freed) * comp;
  }
  return pages;
}

int64_t KvBytesHeld(const kvcache::KvLayout& layout, const kvcache::KvCacheConfig& config,
                    DType kv_dtype, int tokens) {
  return KvPagesHeld(layout, config, tokens) *
         static_cast<int64_t>(kvcache::KvCache::PageBytes(config, kv_dtype));
}

int64_t KvBytesRetained(const kvcache::KvLayout& layout, const kvcache::KvCacheConfig& config,
                        DType kv_dtype, int tokens) {
  kvcache::KvCacheConfig c = config;
  c.chunk_tokens = 0;
  int64_t pages = KvPagesHeld(layout, c, tokens);
  const int64_t ring = layout.CountStorage(kernels::kStorageRing);
  if (ring > 0) {
    const kernels::KvRetention r = layout.ring();
    const int64_t ring_pages = CeilDiv(r.sink, c.page_size) + CeilDiv(r.window, c.page_size);
    pages -= (ring_pages - std::min(ring_pages, CeilDiv(tokens, c.page_size))) * ring;
  }
  return pages * static_cast<int64_t>(kvcache::KvCache::PageBytes(c, kv_dtype));
}

}  // namespace headwise::eval
