// Which attention policy a model runs with: the file named by --attention-policy; else the
// model's own entry, `attention-policy.json` in its directory (configs/models/<m>/ or any model
// directory); else dense attention everywhere. The file is validated against the model's shape,
// and a policy the engine cannot run yet is refused here or by CreateKvCache, at startup: a
// sparse policy must never be silently served as dense.
#pragma once

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

// The KV cache's head classes for a policy set: per layer, the KV heads of each policy (in
// policy order), full storage as full classes, ring storage as rings, compress_once as full
// classes that compact after the prompt (engine/kv_compaction.h).
StatusOr<kvcache::HeadClassLayout> CacheLayoutFor(const attention::PolicySet& set);

// The KV cache a policy set runs on: its head classes, a ring region for `max_sequences`
// sequences writing up to `chunk_tokens` tokens a step, and the rest of config.num_pages for
// the full-storage heads. Refuses, saying why, a pool too small for the rings plus one token.
StatusOr<std::unique_ptr<kvcache::KvCache>> CreateKvCache(const attention::PolicySet& set,
                                                          kvcache::KvCacheConfig config,
                                                          int max_sequences, int chunk_tokens,
                                                          kernels::Backend& backend);

}  // namespace headwise::engine
