// The KV memory a policy keeps: the pages one sequence holds in the engine's pool once its prompt
// is in, as the KV cache hands them out (kvcache/kv_cache.h) and RazorAttention's compaction gives
// some back (engine/kv_compaction.h). Reports compare it with dense attention's.
#pragma once

#include <cstdint>

#include "kvcache/kv_cache.h"

namespace headwise::eval {

// Pages a sequence of `layout` holds after a prompt of `tokens` tokens (and its compaction):
// full heads a page per page_size tokens; ring heads their sink pages and the window's, which
// also hold a step's new tokens (config.chunk_tokens), allocated at once; compress-once and
// offload heads a page per page_size tokens less the pages wholly inside the span compaction
// dropped (SequenceKv::MarkCompacted; an offload head's dropped span is in host memory, not
// counted here).
int64_t KvPagesHeld(const kvcache::KvLayout& layout, const kvcache::KvCacheConfig& config,
                    int tokens);

// The same in bytes: pages times KvCache::PageBytes (keys and values of one page of one head).
int64_t KvBytesHeld(const kvcache::KvLayout& layout, const kvcache::KvCacheConfig& config,
                    DType kv_dtype, int tokens);

// What the policy itself keeps, without the pool's room for a step's new tokens: as KvPagesHeld
// with chunk_tokens 0, and a ring no more than the prompt's own pages. In bytes.
int64_t KvBytesRetained(const kvcache::KvLayout& layout, const kvcache::KvCacheConfig& config,
                        DType kv_dtype, int tokens);

}  // namespace headwise::eval
