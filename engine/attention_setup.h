// Which attention policy a model runs with: the file named by --attention-policy; else the
// model's own entry, `attention-policy.json` in its directory (configs/models/<m>/ or any model
// directory); else dense attention everywhere. The file is validated against the model's shape,
// and a policy the engine cannot run yet is refused here or by CreateKvCache, at startup: a
// sparse policy must never be silently served as dense.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "engine/attention/policy.h"
#include "kvcache/kv_cache.h"
#include "models/model_config.h"

namespace headwise::engine {

// `weights_hash` (models::LlamaModel::weights_hash()) is checked against the identity of any
// head-profile file the policy's assignment reads (engine/attention/profile_file.h).
StatusOr<attention::PolicySet> LoadAttentionPolicy(const std::string& path,
                                                   const models::ModelConfig& config,
                                                   const std::string& model_path,
                                                   uint64_t weights_hash);

// The model's own policy file, or "" when its directory has none (or it is a single file).
std::string ModelPolicyFile(const std::string& model_path);

// The KV layout of a policy set: each (layer, KV head)'s retention in the policy's own words
// (storage, sink, window, positions, compensation) and, when some head selects at decode time,
// its kernels::KvSelect (KvLayout::selects: exact_logits -> select, consume -> consume of the
// latest layer below that publishes its channel on the same KV head, recycle -> recycle,
// page_minmax -> pages; one set index per layer with heads that choose, from 0 in layer order)
// and select_min_len (the selecting policies' one dense_if_len_le). Refuses what the cache
// cannot run.
StatusOr<kvcache::KvLayout> KvLayoutFor(const attention::PolicySet& set);

// The KV cache's shape for `model`: num_pages pages of page_size tokens per (layer, KV head), rings
// sized for steps that write up to chunk_tokens tokens to a sequence.
kvcache::KvCacheConfig KvConfigFor(const models::ModelConfig& model, int num_pages,
                                   int page_size = 16, int chunk_tokens = 0);

// The KV cache serving `layouts` (a sequence names its layout by index) from one pool. Refuses,
// saying why, a pool too small for one token of some layout, and (until the engine runs it) a
// layout with decode-time selection.
StatusOr<std::unique_ptr<kvcache::KvCache>> CreateKvCache(std::vector<kvcache::KvLayout> layouts,
                                                          const kvcache::KvCacheConfig& config,
                                                          kernels::Backend& backend);
// Tensor parallelism: rank r's pool on rank_backends[r] (config.num_ranks of them). Layouts that
// select or offload at decode are refused (Unimplemented, field tensor_parallel_size) over
// several ranks.
StatusOr<std::unique_ptr<kvcache::KvCache>> CreateKvCache(
    std::vector<kvcache::KvLayout> layouts, const kvcache::KvCacheConfig& config,
    std::span<kernels::Backend* const> rank_backends);

// The longest a sequence may grow. Normally the context (max_model_len, or the model's
// max_position_embeddings for `headwise generate`). A layout whose every (layer, KV head) is a
// ring with re-indexed positions (StreamingLLM) never grows and never rotates by more than its
// rank: a query attends at most sink + window + (its chunk's tokens) keys, ranked from 0, so
// when that span fits the context a sequence may run past it, up to kMaxStreamTokens (i32
// positions). What still limits it: one chunk is attended densely within the ring (the first
// chunk of a prompt over everything so far), so sink + window + chunk_tokens (the largest chunk
// a step writes: the prefill chunk, or max_num_batched_tokens) must not exceed the context;
// otherwise the context stays the limit. Other layouts (any full head, or a ring with original
// positions) are limited by the context.
struct LengthLimit {
  int64_t tokens = 0;         // prompt + generated tokens allowed
  bool bounded = false;       // past the context: every head a re-indexed ring that fits
  int64_t max_rank_span = 0;  // sink + window + chunk for all-reindexed caches, else 0
  std::string Explain() const;
};
inline constexpr int64_t kMaxStreamTokens = int64_t{1} << 30;
LengthLimit MaxSequenceTokens(const kvcache::KvLayout& layout, int context, int chunk_tokens);

}  // namespace headwise::engine
