#include "engine/attention_setup.h"

#include <filesystem>

namespace headwise::engine {

std::string ModelPolicyFile(const std::string& model_path) {
  std::error_code ec;
  const std::filesystem::path file = std::filesystem::path(model_path) / "attention-policy.json";
  return std::filesystem::is_directory(model_path, ec) && std::filesystem::exists(file, ec)
             ? file.string()
             : std::string();
}

StatusOr<attention::PolicySet> LoadAttentionPolicy(const std::string& flag_path,
                                                   const models::ModelConfig& config,
                                                   const std::string& model_path,
                                                   uint64_t weights_hash) {
  const attention::ModelShape shape{config.num_layers, config.num_heads, config.num_kv_heads,
                                    weights_hash};
  const std::string path = flag_path.empty() ? ModelPolicyFile(model_path) : flag_path;
  if (path.empty()) return attention::DensePolicySet(shape);
  HW_ASSIGN_OR_RETURN(attention::PolicySet set, attention::LoadPolicyFile(path, shape));
  const std::vector<int> counts = set.HeadCounts();
  for (size_t i = 0; i < set.policies.size(); ++i) {
    const attention::Policy& p = set.policies[i];
    if (counts[i] == 0 || p.storage != attention::StorageKind::kRing) continue;
    if (p.prefill == attention::PrefillMode::kDense) {
      return InvalidArgument(
          "attention policy {}: policy \"{}\" keeps sink {} + window {} tokens but asks for a "
          "dense prefill, which needs the whole prompt kept; use prefill mode retained (the "
          "first chunk attends densely anyway)",
          path, p.name, p.sink, p.window);
    }
    // Up to sink + window + 1 tokens the ring attends everything anyway.
    if (p.dense_if_len_le > p.sink + p.window + 1) {
      return InvalidArgument(
          "attention policy {}: policy \"{}\": dense_if_len_le {} exceeds the {} tokens its ring "
          "keeps",
          path, p.name, p.dense_if_len_le, p.sink + p.window + 1);
    }
  }
  return set;
}

StatusOr<std::unique_ptr<kvcache::KvCache>> CreateKvCache(const attention::PolicySet& set,
                                                          kvcache::KvCacheConfig config,
                                                          int max_sequences, int chunk_tokens,
                                                          kernels::Backend& backend) {
  HW_ASSIGN_OR_RETURN(kvcache::HeadClassLayout layout, CacheLayoutFor(set));
  config.max_ring_sequences = max_sequences;
  config.ring_chunk_tokens = chunk_tokens;
  const int ring_pages = kvcache::KvCache::RingRegionPages(config, layout);
  const int full_pages = kvcache::KvCache::FullPagesPerBlock(layout);
  if (ring_pages > config.num_pages) {
    return InvalidArgument(
        "the KV cache of {} pages cannot hold the sink/window rings of {} sequences ({} pages); "
        "raise the page count or lower max_num_seqs",
        config.num_pages, max_sequences, ring_pages);
  }
  if (full_pages > config.num_pages - ring_pages) {
    return InvalidArgument(
        "the KV cache of {} pages cannot hold a single token: one page per full-storage layer "
        "and KV head needs {}{}",
        config.num_pages, full_pages,
        ring_pages > 0 ? fmt::format(" beside the rings' {}", ring_pages) : std::string());
  }
  return std::make_unique<kvcache::KvCache>(config, std::move(layout), backend);
}

StatusOr<kvcache::HeadClassLayout> CacheLayoutFor(const attention::PolicySet& set) {
  kvcache::HeadClassLayout layout;
  for (const auto& heads : set.head_policy) {
    auto& classes = layout.classes.emplace_back();
    auto& retention = layout.retention.emplace_back();
    for (size_t p = 0; p < set.policies.size(); ++p) {
      std::vector<int> members;
      for (size_t h = 0; h < heads.size(); ++h) {
        if (heads[h] == static_cast<int>(p)) members.push_back(static_cast<int>(h));
      }
      if (members.empty()) continue;
      const attention::Policy& policy = set.policies[p];
      kvcache::Retention r;
      if (policy.storage == attention::StorageKind::kRing) {
        r = {true, policy.sink, policy.window, policy.positions == attention::Positions::kReindex};
      }
      if (policy.storage == attention::StorageKind::kCompressOnce) {
        r = {false,
             policy.sink,
             policy.window,
             false,
             true,
             policy.compensation,
             policy.compensation_by_count};
      }
      classes.push_back(std::move(members));
      retention.push_back(r);
    }
  }
  const int layers = static_cast<int>(set.head_policy.size());
  const int kv_heads = layers > 0 ? static_cast<int>(set.head_policy.front().size()) : 0;
  HW_RETURN_IF_ERROR(layout.Validate(layers, kv_heads)
                         .WithContext(fmt::format("attention policy \"{}\"", set.name)));
  return layout;
}

LengthLimit MaxSequenceTokens(const kvcache::KvCache& cache, int context, int chunk_tokens) {
  LengthLimit limit;
  limit.tokens = context;
  if (!cache.all_heads_reindexed_rings()) return limit;
  const kvcache::Retention& ring = cache.ring_retention();
  limit.max_rank_span = int64_t{ring.sink} + ring.window + std::max(chunk_tokens, 1);
  if (limit.max_rank_span > context) return limit;
  limit.bounded = true;
  limit.tokens = kMaxStreamTokens;
  return limit;
}

std::string LengthLimit::Explain() const {
  if (bounded) {
    return fmt::format(
        "every head is a re-indexed sink/window ring (rotary positions below {}), so a sequence "
        "may reach {} tokens",
        max_rank_span, tokens);
  }
  if (max_rank_span > 0) {
    return fmt::format(
        "every head is a re-indexed sink/window ring, but its rotary positions could reach "
        "sink + window + chunk = {}, beyond the context of {}: lower the prefill chunk "
        "(max_num_batched_tokens) or the window to run past it",
        max_rank_span, tokens);
  }
  return fmt::format("the context is {} tokens", tokens);
}

}  // namespace headwise::engine
