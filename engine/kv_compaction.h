// One-shot compaction once a sequence's prompt is in the cache: RazorAttention's (ALGORITHMS.md
// §3.2, §9.8), whose compress-once heads keep only the first `sink` tokens, a compensation token
// and the last `window` tokens of the prompt, then every token decoded after; and
// RetrievalAttention's (§5.1), whose offload heads keep the same without the compensation token,
// the dropped span going to the host tier first (kvcache/offload_tier.h).
#pragma once

#include "kernels/backend.h"
#include "kvcache/kv_cache.h"

namespace headwise::engine {

// Compacts `kv`, whose first `num_tokens` tokens (the prompt) are computed: when its layout has
// compress-once heads and num_tokens exceeds what they keep (sink + window, plus the compensation
// token), the dropped span is [sink, num_tokens - window); with compensation its mean K and V are
// written over position `sink` (the slot of a dropped token). Marks the sequence compacted; its
// later tokens (decoded, or recomputed after a preemption) attend only what is kept. Does nothing
// for shorter sequences, layouts without such heads, or a sequence compacted already. The
// compress-once heads' pages (comp blocks) of logical pages that hold only dropped positions go
// back to the pool (SequenceKv::MarkCompacted); attention skips the span. Offload heads: the
// span's keys and values of every offload (layer, KV head) are copied to the host tier of the
// sequence's slot, whose indexes are then built on a thread of the tier's (the sequence decodes
// once they are ready: SequenceKv::offload_ready, which the scheduler asks).
void CompactAfterPrompt(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens);

}  // namespace headwise::engine
