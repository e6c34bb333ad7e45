#include "models/model_config.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <numbers>
#include <optional>

#include "models/gguf_file.h"

namespace headwise::models {
namespace {

using nlohmann::json;

// Bounds that keep every derived size (elements of the largest tensor, KV bytes) well inside
// int64 and reject configs that are garbage rather than big models.
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxVocab = 1 << 23;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxPositions = int64_t{1} << 30;

// A present, non-null key.
const json* FindKey(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

StatusOr<int> ReadInt(const json& obj, const char* key, std::optional<int> fallback) {
  const json* v = FindKey(obj, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return InvalidArgument("config.json: required key '{}' is missing", key);
  }
  // Some exporters write integral values as floats (e.g. 8192.0).
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::floor(d) != d || std::fabs(d) > std::numeric_limits<int>::max()) {
      return InvalidArgument("config.json: '{}' must be an integer, got {}", key, v->dump());
    }
    return static_cast<int>(d);
  }
  if (!v->is_number_integer()) {
    return InvalidArgument("config.json: '{}' must be an integer, got {}", key, v->dump());
  }
  const int64_t x = v->get<int64_t>();
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
    return InvalidArgument("config.json: '{}' = {} is out of range", key, x);
  }
  return static_cast<int>(x);
}

StatusOr<double> ReadDouble(const json& obj, const char* key, std::optional<double> fallback,
                            std::string_view where = "config.json") {
  const json* v = FindKey(obj, key);
  if (v == nullptr) {
    if (fallback) return *fallback;
    return InvalidArgument("{}: required key '{}' is missing", where, key);
  }
  if (!v->is_number()) {
    return InvalidArgument("{}: '{}' must be a number, got {}", where, key, v->dump());
  }
  return v->get<double>();
}

StatusOr<bool> ReadBool(const json& obj, const char* key, bool fallback) {
  const json* v = FindKey(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) {
    return InvalidArgument("config.json: '{}' must be true or false, got {}", key, v->dump());
  }
  return v->get<bool>();
}

StatusOr<RopeScaling> ParseHfRopeScaling(const json* rope) {
  RopeScaling scaling;
  if (rope == nullptr) return scaling;
  if (!rope->is_object()) {
    return InvalidArgument("config.json: 'rope_scaling' must be an object or null, got {}",
                           rope->dump());
  }
  // transformers accepts both spellings; "rope_type" is the current one.
  const json* type_v = FindKey(*rope, "rope_type");
  if (type_v == nullptr) type_v = FindKey(*rope, "type");
  if (type_v == nullptr) return scaling;
  if (!type_v->is_string()) {
    return InvalidArgument("config.json: rope_scaling type must be a string, got {}",
                           type_v->dump());
  }
  const std::string type = type_v->get<std::string>();
  constexpr std::string_view kWhere = "config.json: rope_scaling";
  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeScaling::Type::kLinear;
    HW_ASSIGN_OR_RETURN(scaling.factor, ReadDouble(*rope, "factor", std::nullopt, kWhere));
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeScaling::Type::kLlama3;
    HW_ASSIGN_OR_RETURN(scaling.factor, ReadDouble(*rope, "factor", std::nullopt, kWhere));
    HW_ASSIGN_OR_RETURN(scaling.low_freq_factor,
                        ReadDouble(*rope, "low_freq_factor", std::nullopt, kWhere));
    HW_ASSIGN_OR_RETURN(scaling.high_freq_factor,
                        ReadDouble(*rope, "high_freq_factor", std::nullopt, kWhere));
    HW_ASSIGN_OR_RETURN(
        double orig, ReadDouble(*rope, "original_max_position_embeddings", std::nullopt, kWhere));
    if (!(orig >= 1 && orig <= static_cast<double>(kMaxPositions))) {
      return InvalidArgument("{}: original_max_position_embeddings {} out of range", kWhere, orig);
    }
    scaling.original_max_position_embeddings = static_cast<int>(orig);
    return scaling;
  }
  return Unimplemented(
      "config.json: rope_scaling type '{}' is not supported (supported: "
      "llama3, linear, default)",
      type);
}

Status CheckRange(std::string_view what, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    return InvalidArgument("{} = {} is out of range [{}, {}]", what, value, lo, hi);
  }
  return Status::Ok();
}

// Llama-3.1-style GGUF files carry the llama3 rope scaling only as a `rope_freqs.weight`
// tensor of per-frequency divisors (convert_hf_to_gguf.py's generate_extra_tensors). Recover
// the scaling by assuming Meta's published constants (low 1, high 4, original context 8192)
// with the factor the tensor itself shows, and accept it only if it reproduces every divisor.
StatusOr<RopeScaling> RopeScalingFromFreqsTensor(const GgufFile& gguf, ModelConfig config) {
  const GgufTensorInfo* t = gguf.FindTensor("rope_freqs.weight");
  if (t->type != static_cast<uint32_t>(GgmlType::kF32) || t->num_elements != config.head_dim / 2 ||
      t->data == nullptr) {
    return Unimplemented("{}: tensor 'rope_freqs.weight' ({}, {} elements) is not f32 [{}]",
                         gguf.path(), GgmlTypeName(t->type), t->num_elements, config.head_dim / 2);
  }
  std::vector<float> divisors(static_cast<size_t>(t->num_elements));
  std::memcpy(divisors.data(), t->data, divisors.size() * sizeof(float));
  float max_div = 1;
  for (float d : divisors) max_div = std::max(max_div, d);
  if (max_div == 1) return RopeScaling{};
  RopeScaling guess;
  guess.type = RopeScaling::Type::kLlama3;
  guess.factor = max_div;
  guess.low_freq_factor = 1.0;
  guess.high_freq_factor = 4.0;
  guess.original_max_position_embeddings = 8192;
  config.rope_scaling = RopeScaling{};
  const std::vector<float> plain = RopeInverseFrequencies(config);
  config.rope_scaling = guess;
  const std::vector<float> scaled = RopeInverseFrequencies(config);
  for (size_t i = 0; i < divisors.size(); ++i) {
    const double want = plain[i] / divisors[i];
    if (std::fabs(scaled[i] - want) > 1e-5 * std::fabs(want)) {
      return Unimplemented(
          "{}: tensor 'rope_freqs.weight' holds rope frequency factors that do not match llama3 "
          "scaling (factor {}, low 1, high 4, original context 8192) at index {}: {} vs {}",
          gguf.path(), max_div, i, scaled[i], want);
    }
  }
  return guess;
}

}  // namespace

Status ModelConfig::Validate() const {
  HW_RETURN_IF_ERROR(CheckRange("vocab_size", vocab_size, 1, kMaxVocab));
  HW_RETURN_IF_ERROR(CheckRange("hidden_size", hidden_size, 1, kMaxDim));
  HW_RETURN_IF_ERROR(CheckRange("intermediate_size", intermediate_size, 1, kMaxDim));
  HW_RETURN_IF_ERROR(CheckRange("num_hidden_layers", num_layers, 1, kMaxLayers));
  HW_RETURN_IF_ERROR(CheckRange("num_attention_heads", num_heads, 1, kMaxDim));
  HW_RETURN_IF_ERROR(CheckRange("num_key_value_heads", num_kv_heads, 1, num_heads));
  HW_RETURN_IF_ERROR(CheckRange("head_dim", head_dim, 2, kMaxDim));
  HW_RETURN_IF_ERROR(
      CheckRange("max_position_embeddings", max_position_embeddings, 1, kMaxPositions));
  if (num_heads % num_kv_heads != 0) {
    return InvalidArgument("num_attention_heads {} is not a multiple of num_key_value_heads {}",
                           num_heads, num_kv_heads);
  }
  if (head_dim % 2 != 0)
    return InvalidArgument("head_dim {} is odd (rotary needs pairs)", head_dim);
  if (static_cast<int64_t>(num_heads) * head_dim > kMaxDim) {
    return InvalidArgument("num_attention_heads * head_dim = {} is out of range",
                           static_cast<int64_t>(num_heads) * head_dim);
  }
  if (!(rms_norm_eps > 0 && std::isfinite(rms_norm_eps))) {
    return InvalidArgument("rms_norm_eps {} must be positive", rms_norm_eps);
  }
  if (!(rope_theta > 1 && std::isfinite(rope_theta))) {
    return InvalidArgument("rope_theta {} must be greater than 1", rope_theta);
  }
  if (rope_scaling.type != RopeScaling::Type::kNone &&
      !(rope_scaling.factor > 0 && std::isfinite(rope_scaling.factor))) {
    return InvalidArgument("rope_scaling factor {} must be positive", rope_scaling.factor);
  }
  if (rope_scaling.type == RopeScaling::Type::kLlama3) {
    if (!(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor &&
          rope_scaling.low_freq_factor > 0)) {
      return InvalidArgument(
          "rope_scaling: llama3 needs 0 < low_freq_factor < high_freq_factor, got {} and {}",
          rope_scaling.low_freq_factor, rope_scaling.high_freq_factor);
    }
    if (rope_scaling.original_max_position_embeddings <= 0) {
      return InvalidArgument("rope_scaling: original_max_position_embeddings {} must be positive",
                             rope_scaling.original_max_position_embeddings);
    }
  }
  for (int id : eos_token_ids) {
    if (id < 0) return InvalidArgument("eos_token_id {} is negative", id);
  }
  return Status::Ok();
}

StatusOr<ModelConfig> ParseHfConfig(const json& config) {
  if (!config.is_object()) {
    return InvalidArgument("config.json: expected a JSON object, got {}", config.type_name());
  }
  ModelConfig c;
  // `architectures` names the class transformers would instantiate; old files may only have
  // `model_type`.
  if (const json* archs = FindKey(config, "architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return InvalidArgument(
          "config.json: 'architectures' must be a non-empty list of strings, "
          "got {}",
          archs->dump());
    }
    c.architecture_name = (*archs)[0].get<std::string>();
  } else if (const json* mt = FindKey(config, "model_type"); mt && mt->is_string()) {
    const std::string model_type = mt->get<std::string>();
    if (model_type == "llama")
      c.architecture_name = "LlamaForCausalLM";
    else if (model_type == "mistral")
      c.architecture_name = "MistralForCausalLM";
    else if (model_type == "qwen2")
      c.architecture_name = "Qwen2ForCausalLM";
    else
      c.architecture_name = model_type;
  } else {
    return InvalidArgument("config.json: neither 'architectures' nor 'model_type' is set");
  }

  // Per-architecture defaults of the transformers config classes, for keys a file may omit.
  int default_max_pos = 2048;
  if (c.architecture_name == "LlamaForCausalLM") {
    c.architecture = Architecture::kLlama;
  } else if (c.architecture_name == "MistralForCausalLM") {
    c.architecture = Architecture::kMistral;
    default_max_pos = 4096 * 32;
  } else if (c.architecture_name == "Qwen2ForCausalLM") {
    c.architecture = Architecture::kQwen2;
    default_max_pos = 32768;
  } else {
    return Unimplemented(
        "config.json: architecture '{}' is not supported (supported: "
        "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
        c.architecture_name);
  }

  HW_ASSIGN_OR_RETURN(c.vocab_size, ReadInt(config, "vocab_size", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.hidden_size, ReadInt(config, "hidden_size", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.intermediate_size, ReadInt(config, "intermediate_size", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.num_layers, ReadInt(config, "num_hidden_layers", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.num_heads, ReadInt(config, "num_attention_heads", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.num_kv_heads, ReadInt(config, "num_key_value_heads", c.num_heads));
  if (c.num_heads <= 0) {
    return InvalidArgument("config.json: num_attention_heads {} must be positive", c.num_heads);
  }
  if (FindKey(config, "head_dim") == nullptr && c.hidden_size % c.num_heads != 0) {
    return InvalidArgument(
        "config.json: hidden_size {} is not a multiple of num_attention_heads "
        "{} and no head_dim is given",
        c.hidden_size, c.num_heads);
  }
  HW_ASSIGN_OR_RETURN(c.head_dim, ReadInt(config, "head_dim", c.hidden_size / c.num_heads));
  HW_ASSIGN_OR_RETURN(c.max_position_embeddings,
                      ReadInt(config, "max_position_embeddings", default_max_pos));
  HW_ASSIGN_OR_RETURN(c.rms_norm_eps, ReadDouble(config, "rms_norm_eps", 1e-6));

  // Newer transformers nest rope_theta and the scaling into `rope_parameters`.
  const json* rope_params = FindKey(config, "rope_parameters");
  if (rope_params != nullptr && !rope_params->is_object()) {
    return InvalidArgument("config.json: 'rope_parameters' must be an object, got {}",
                           rope_params->dump());
  }
  if (rope_params != nullptr) {
    HW_ASSIGN_OR_RETURN(c.rope_theta, ReadDouble(*rope_params, "rope_theta", 10000.0,
                                                 "config.json: rope_parameters"));
    HW_ASSIGN_OR_RETURN(c.rope_scaling, ParseHfRopeScaling(rope_params));
  } else {
    HW_ASSIGN_OR_RETURN(c.rope_theta, ReadDouble(config, "rope_theta", 10000.0));
    HW_ASSIGN_OR_RETURN(c.rope_scaling, ParseHfRopeScaling(FindKey(config, "rope_scaling")));
  }

  // Qwen2's attention always has q/k/v biases (the config has no switch for it); Llama and
  // Mistral have none unless attention_bias says so.
  if (c.architecture == Architecture::kQwen2) {
    c.attention_bias = true;
  } else {
    HW_ASSIGN_OR_RETURN(c.attention_bias, ReadBool(config, "attention_bias", false));
  }
  if (const json* mlp_bias = FindKey(config, "mlp_bias");
      mlp_bias && mlp_bias->is_boolean() && mlp_bias->get<bool>()) {
    return Unimplemented("config.json: mlp_bias true is not supported");
  }
  if (const json* act = FindKey(config, "hidden_act");
      act && (!act->is_string() || act->get<std::string>() != "silu")) {
    return Unimplemented("config.json: hidden_act {} is not supported (only \"silu\")",
                         act->dump());
  }
  // All three transformers classes default to untied embeddings.
  HW_ASSIGN_OR_RETURN(c.tie_word_embeddings, ReadBool(config, "tie_word_embeddings", false));

  // Sliding-window attention changes the result once a sequence outgrows the window; we only
  // do full causal attention, which is exact when no sequence can be that long.
  int window = 0;
  bool window_active = false;
  if (c.architecture == Architecture::kMistral) {
    HW_ASSIGN_OR_RETURN(window, ReadInt(config, "sliding_window", 0));
    window_active = FindKey(config, "sliding_window") != nullptr;
  } else if (c.architecture == Architecture::kQwen2) {
    HW_ASSIGN_OR_RETURN(window_active, ReadBool(config, "use_sliding_window", false));
    HW_ASSIGN_OR_RETURN(window, ReadInt(config, "sliding_window", 4096));
  }
  if (window_active && window < c.max_position_embeddings) {
    return Unimplemented(
        "config.json: sliding-window attention (sliding_window {} < max_position_embeddings {}) "
        "is not supported",
        window, c.max_position_embeddings);
  }

  if (const json* bos = FindKey(config, "bos_token_id")) {
    if (!bos->is_number_integer()) {
      return InvalidArgument("config.json: 'bos_token_id' must be an integer, got {}", bos->dump());
    }
    c.bos_token_id = bos->get<int>();
  }
  if (const json* eos = FindKey(config, "eos_token_id")) {
    if (eos->is_number_integer()) {
      c.eos_token_ids.push_back(eos->get<int>());
    } else if (eos->is_array()) {
      for (const json& id : *eos) {
        if (!id.is_number_integer()) {
          return InvalidArgument("config.json: 'eos_token_id' list holds {}", id.dump());
        }
        c.eos_token_ids.push_back(id.get<int>());
      }
    } else {
      return InvalidArgument("config.json: 'eos_token_id' must be an integer or a list, got {}",
                             eos->dump());
    }
  }
  if (Status s = c.Validate(); !s.ok()) return s.WithContext("config.json");
  return c;
}

StatusOr<ModelConfig> ParseGgufConfig(const GgufFile& gguf) {
  ModelConfig c;
  HW_ASSIGN_OR_RETURN(c.architecture_name, gguf.GetString("general.architecture"));
  const std::string& arch = c.architecture_name;
  if (arch == "llama") {
    c.architecture = Architecture::kLlama;
  } else if (arch == "qwen2") {
    c.architecture = Architecture::kQwen2;
    c.attention_bias = true;
  } else {
    return Unimplemented("{}: GGUF architecture '{}' is not supported (supported: llama, qwen2)",
                         gguf.path(), arch);
  }
  auto get_int = [&](const std::string& key, std::optional<int64_t> fallback) -> StatusOr<int> {
    if (!gguf.Has(key) && fallback) return static_cast<int>(*fallback);
    HW_ASSIGN_OR_RETURN(int64_t v, gguf.GetInt(key));
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) {
      return InvalidArgument("{}: metadata '{}' = {} is out of range", gguf.path(), key, v);
    }
    return static_cast<int>(v);
  };
  auto get_float = [&](const std::string& key, double fallback) -> StatusOr<double> {
    if (!gguf.Has(key)) return fallback;
    return gguf.GetFloat(key);
  };
  HW_ASSIGN_OR_RETURN(c.max_position_embeddings, get_int(arch + ".context_length", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.hidden_size, get_int(arch + ".embedding_length", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.num_layers, get_int(arch + ".block_count", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.intermediate_size, get_int(arch + ".feed_forward_length", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.num_heads, get_int(arch + ".attention.head_count", std::nullopt));
  HW_ASSIGN_OR_RETURN(c.num_kv_heads, get_int(arch + ".attention.head_count_kv", c.num_heads));
  if (c.num_heads <= 0) {
    return InvalidArgument("{}: {}.attention.head_count {} must be positive", gguf.path(), arch,
                           c.num_heads);
  }
  if (!gguf.Has(arch + ".attention.key_length") && c.hidden_size % c.num_heads != 0) {
    return InvalidArgument("{}: {}.embedding_length {} is not a multiple of the head count {}",
                           gguf.path(), arch, c.hidden_size, c.num_heads);
  }
  HW_ASSIGN_OR_RETURN(c.head_dim,
                      get_int(arch + ".attention.key_length", c.hidden_size / c.num_heads));
  HW_ASSIGN_OR_RETURN(int rope_dims, get_int(arch + ".rope.dimension_count", c.head_dim));
  if (rope_dims != c.head_dim) {
    return Unimplemented(
        "{}: partial rotary embedding ({}.rope.dimension_count {} != head_dim {})"
        " is not supported",
        gguf.path(), arch, rope_dims, c.head_dim);
  }
  HW_ASSIGN_OR_RETURN(c.rms_norm_eps, get_float(arch + ".attention.layer_norm_rms_epsilon", 1e-5));
  HW_ASSIGN_OR_RETURN(c.rope_theta, get_float(arch + ".rope.freq_base", 10000.0));

  const std::string scaling_key = arch + ".rope.scaling.type";
  if (gguf.Has(scaling_key)) {
    HW_ASSIGN_OR_RETURN(std::string type, gguf.GetString(scaling_key));
    if (type == "linear") {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      HW_ASSIGN_OR_RETURN(c.rope_scaling.factor, gguf.GetFloat(arch + ".rope.scaling.factor"));
    } else if (type != "none") {
      return Unimplemented("{}: rope scaling type '{}' is not supported (supported: none, linear)",
                           gguf.path(), type);
    }
  } else if (gguf.Has(arch + ".rope.scale_linear")) {  // older converters
    HW_ASSIGN_OR_RETURN(double factor, gguf.GetFloat(arch + ".rope.scale_linear"));
    if (factor != 1.0) {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      c.rope_scaling.factor = factor;
    }
  }

  // The embedding's row count is what the weights need; the tokenizer's list is the fallback.
  if (const GgufTensorInfo* embd = gguf.FindTensor("token_embd.weight");
      embd != nullptr && embd->dims.size() == 2) {
    if (embd->dims[1] > kMaxVocab) {
      return InvalidArgument("{}: token_embd.weight has {} rows, out of range", gguf.path(),
                             embd->dims[1]);
    }
    c.vocab_size = static_cast<int>(embd->dims[1]);
  } else if (gguf.Has("tokenizer.ggml.tokens")) {
    HW_ASSIGN_OR_RETURN(uint64_t n, gguf.GetArraySize("tokenizer.ggml.tokens"));
    c.vocab_size = static_cast<int>(std::min<uint64_t>(n, kMaxVocab + 1));
  } else {
    return InvalidArgument(
        "{}: cannot tell the vocabulary size (no token_embd.weight, no "
        "tokenizer.ggml.tokens)",
        gguf.path());
  }
  c.tie_word_embeddings = gguf.FindTensor("output.weight") == nullptr;
  if (gguf.FindTensor("blk.0.attn_q.bias") != nullptr) c.attention_bias = true;

  if (gguf.Has("tokenizer.ggml.bos_token_id")) {
    HW_ASSIGN_OR_RETURN(c.bos_token_id, get_int("tokenizer.ggml.bos_token_id", std::nullopt));
  }
  // End of generation: eos, plus the end-of-turn / end-of-message tokens of chat models,
  // which HF lists among generation_config's eos_token_id too.
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    if (!gguf.Has(key)) continue;
    HW_ASSIGN_OR_RETURN(int id, get_int(key, std::nullopt));
    if (id >= 0 &&
        std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) {
      c.eos_token_ids.push_back(id);
    }
  }

  if (Status s = c.Validate(); !s.ok()) return s.WithContext(gguf.path());
  if (gguf.FindTensor("rope_freqs.weight") != nullptr) {
    if (c.rope_scaling.type != RopeScaling::Type::kNone) {
      return Unimplemented("{}: both rope_freqs.weight and {} are set", gguf.path(), scaling_key);
    }
    HW_ASSIGN_OR_RETURN(c.rope_scaling, RopeScalingFromFreqsTensor(gguf, c));
  }
  return c;
}

float AttentionScale(const ModelConfig& config) {
  return 1.0f / std::sqrt(static_cast<float>(config.head_dim));
}

std::vector<float> RopeInverseFrequencies(const ModelConfig& config) {
  const int half = config.head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  const RopeScaling& rs = config.rope_scaling;
  // transformers' _compute_llama3_parameters, element by element.
  const double old_context = rs.original_max_position_embeddings;
  const double low_freq_wavelen = old_context / rs.low_freq_factor;
  const double high_freq_wavelen = old_context / rs.high_freq_factor;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(config.rope_theta, 2.0 * i / config.head_dim);
    switch (rs.type) {
      case RopeScaling::Type::kNone:
        break;
      case RopeScaling::Type::kLinear:
        f /= rs.factor;
        break;
      case RopeScaling::Type::kLlama3: {
        const double wavelen = 2 * std::numbers::pi / f;
        if (wavelen > low_freq_wavelen) {
          f /= rs.factor;  // low frequencies: fully interpolated
        } else if (wavelen >= high_freq_wavelen) {
          // medium: blend between interpolated and original
          const double smooth = (old_context / wavelen - rs.low_freq_factor) /
                                (rs.high_freq_factor - rs.low_freq_factor);
          f = (1 - smooth) * f / rs.factor + smooth * f;
        }  // high frequencies: unchanged
        break;
      }
    }
    inv_freq[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return inv_freq;
}

StatusOr<std::vector<int>> ParseEosTokenIds(const nlohmann::json& generation_config,
                                            const std::string& source) {
  std::vector<int> out;
  auto it = generation_config.find("eos_token_id");
  if (it == generation_config.end() || it->is_null()) return out;
  // A value for a message: its JSON text, cut short.
  const auto shown = [](const nlohmann::json& v) {
    std::string text = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return text.size() > 64 ? text.substr(0, 61) + "..." : text;
  };
  const std::vector<nlohmann::json> ids = it->is_array()
                                              ? std::vector<nlohmann::json>(it->begin(), it->end())
                                              : std::vector<nlohmann::json>{*it};
  constexpr int kMax = std::numeric_limits<int>::max();
  for (const auto& id : ids) {
    if (!id.is_number_integer()) {
      return InvalidArgument("{}: eos_token_id must be a token id or a list of them, got {}",
                             source, shown(*it));
    }
    const bool too_big = id.is_number_unsigned() && id.get<uint64_t>() > uint64_t{kMax};
    if (too_big || id.get<int64_t>() < 0) {
      return InvalidArgument("{}: eos_token_id must be an integer in [0, {}], got {}", source, kMax,
                             shown(id));
    }
    out.push_back(id.get<int>());
  }
  return out;
}

}  // namespace headwise::models
