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
// once they are ready: SequenceKv::offload_ready, which the scheduler asks). With tensor
// parallelism, every rank's heads are compacted, each from this thread bound to its device in
// turn, and the thread is left bound to `backend`, rank 0's.
void CompactAfterPrompt(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens);

// Offload layouts, after compaction: once the `num_tokens` computed tokens put window + one page
// or more after the first kept position, the oldest whole pages of that part leave the device:
// their keys and values of every offload head go to the host tier (OffloadTier::Append, searched
// exactly beside the index), and the pages they emptied go back to the pool. So the device holds
// sink + window (+ less than a page) tokens per offload head however long the sequence decodes.
// The sequence's indexes must be built (it decodes). Does nothing otherwise.
void SlideOffloadWindow(kernels::Backend& backend, kvcache::KvCache& cache, kvcache::SequenceKv& kv,
                        int num_tokens);

}  // namespace headwise::engine
