// The shape and hyper-parameters of a Llama-family model, from a Hugging Face config.json or
// from GGUF metadata. Parsing validates everything the forward pass relies on.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/status.h"

namespace headwise::models {

class GgufFile;

enum class Architecture { kLlama, kMistral, kQwen2 };

struct RopeScaling {
  enum class Type { kNone, kLlama3, kLinear };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                 // llama3
  double high_freq_factor = 4.0;                // llama3
  int original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string architecture_name;  // as written in the file, e.g. "LlamaForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;

  // Checks the invariants the forward pass needs (divisibility, positivity).
  Status Validate() const;
};

StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& config);
StatusOr<ModelConfig> ParseGgufConfig(const GgufFile& gguf);

// generation_config.json's eos_token_id (Hugging Face's generate stops on each): one id or a list
// of ids, as transformers takes both; absent or null gives none. Anything but ids in [0, INT_MAX]
// is refused, the message starting with `source`.
StatusOr<std::vector<int>> ParseEosTokenIds(const nlohmann::json& generation_config,
                                            const std::string& source);

// Rotary inverse frequencies [head_dim / 2], with the config's rope scaling applied.
std::vector<float> RopeInverseFrequencies(const ModelConfig& config);

// The attention's logit scale, 1 / sqrt(head_dim): the model's, and the host tier's for offload
// heads (kvcache::OffloadTierConfig), which must attend alike.
float AttentionScale(const ModelConfig& config);

}  // namespace headwise::models
