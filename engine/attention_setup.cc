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
                                                   const std::string& model_path) {
  const attention::ModelShape shape{config.num_layers, config.num_heads, config.num_kv_heads};
  const std::string path = flag_path.empty() ? ModelPolicyFile(model_path) : flag_path;
  if (path.empty()) return attention::DensePolicySet(shape);
  HW_ASSIGN_OR_RETURN(attention::PolicySet set, attention::LoadPolicyFile(path, shape));
  if (!set.IsDense()) {
    const std::vector<int> counts = set.HeadCounts();
    int sparse_heads = 0;
    for (size_t i = 0; i < set.policies.size(); ++i) {
      if (set.policies[i].storage != attention::StorageKind::kFull) sparse_heads += counts[i];
    }
    return Unimplemented(
        "attention policy {}: \"{}\" gives {} of {} KV heads sink/window or compressed "
        "storage; this build runs policies with full storage on every head only (sparse "
        "storage is in progress)",
        path, set.name, sparse_heads, config.num_layers * config.num_kv_heads);
  }
  return set;
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
      if (policy.storage == attention::StorageKind::kCompressOnce) {
        return Unimplemented("policy \"{}\": compress_once storage is not built yet", policy.name);
      }
      if (policy.storage == attention::StorageKind::kRing) r = {true, policy.sink, policy.window};
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

}  // namespace headwise::engine
