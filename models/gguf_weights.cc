#include "models/gguf_weights.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <thread>

#include "models/gguf_quants.h"
#include "models/host_buffer.h"

namespace headwise::models {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Moves rows between the two layouts; `to_hf` picks the direction.
void MoveRotaryRows(const float* in, float* out, int64_t rows, int64_t cols, int num_heads,
                    bool to_hf) {
  const int64_t head_dim = rows / num_heads;
  const int64_t half = head_dim / 2;
  const size_t row_bytes = static_cast<size_t>(cols) * sizeof(float);
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t hf_row = h * head_dim + s * half + j;
        const int64_t gguf_row = h * head_dim + 2 * j + s;
        const int64_t src = to_hf ? gguf_row : hf_row;
        const int64_t dst = to_hf ? hf_row : gguf_row;
        std::memcpy(out + dst * cols, in + src * cols, row_bytes);
      }
    }
  }
}

class GgufWeightSource : public WeightSource {
 public:
  GgufWeightSource(std::shared_ptr<const GgufFile> gguf, const ModelConfig& config)
      : gguf_(std::move(gguf)), config_(config) {}

  bool Has(const std::string& name) const override { return Resolve(name) != nullptr; }

  Status Check(const std::string& name, const std::vector<int64_t>& shape) const override {
    const GgufTensorInfo* t = Resolve(name);
    if (t == nullptr) {
      const auto mapped = HfToGgufName(name);
      return NotFound("{}: tensor '{}' (GGUF '{}') not found", gguf_->path(), name,
                      mapped ? *mapped : "no GGUF name");
    }
    // GGUF lists dims fastest-varying first; HF shapes are row-major.
    std::vector<int64_t> hf_shape(t->dims.rbegin(), t->dims.rend());
    if (hf_shape != shape) {
      return InvalidArgument(
          "{}: tensor '{}' (GGUF '{}') has shape {}, expected {} from the "
          "model config",
          gguf_->path(), name, t->name, ShapeString(hf_shape), ShapeString(shape));
    }
    if (!CanDequantizeGgml(t->type)) {
      return Unimplemented(
          "{}: tensor '{}' has ggml type {}, which is not supported (supported: F32, F16, BF16, "
          "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
          gguf_->path(), t->name, GgmlTypeName(t->type));
    }
    if (shape.size() > static_cast<size_t>(Tensor::kMaxRank)) {
      return Unimplemented("{}: tensor '{}' has rank {}", gguf_->path(), t->name, shape.size());
    }
    if (RotaryHeads(name) > 0 && (shape[0] % (2 * RotaryHeads(name)) != 0)) {
      return InvalidArgument("{}: tensor '{}' has {} rows, not {} heads of an even size",
                             gguf_->path(), t->name, shape[0], RotaryHeads(name));
    }
    return Status::Ok();
  }

  StatusOr<kernels::HostTensor> Load(const std::string& name,
                                     const std::vector<int64_t>& shape) override {
    HW_RETURN_IF_ERROR(Check(name, shape));
    const GgufTensorInfo* t = Resolve(name);
    kernels::HostTensor out;
    out.shape.rank = static_cast<int>(shape.size());
    std::copy(shape.begin(), shape.end(), out.shape.dims.begin());
    const int heads = RotaryHeads(name);
    if (t->type == static_cast<uint32_t>(GgmlType::kF32) && heads == 0 &&
        reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
      out.keepalive = gguf_->file();  // zero-copy alias of the mapping
      out.data = reinterpret_cast<const float*>(t->data);
      return out;
    }
    const size_t n = static_cast<size_t>(t->num_elements);
    std::shared_ptr<float[]> buf = AllocateHostFloats(n);
    if (Status s = DequantizeGgml(t->type, t->data, t->num_bytes, t->num_elements, buf.get());
        !s.ok()) {
      return s.WithContext(fmt::format("{}: tensor '{}'", gguf_->path(), t->name));
    }
    if (heads > 0) {
      std::shared_ptr<float[]> hf = AllocateHostFloats(n);
      const int64_t rows = shape[0];
      const int64_t cols = shape.size() > 1 ? static_cast<int64_t>(n) / rows : 1;
      UnpermuteRotaryRows(buf.get(), hf.get(), rows, cols, heads);
      buf = std::move(hf);
    }
    out.data = buf.get();
    out.keepalive = std::move(buf);
    return out;
  }

 private:
  const GgufTensorInfo* Resolve(const std::string& name) const {
    const auto mapped = HfToGgufName(name);
    if (!mapped) return nullptr;
    const GgufTensorInfo* t = gguf_->FindTensor(*mapped);
    // Tied embeddings: the output projection is the token embedding.
    if (t == nullptr && name == "lm_head.weight" && config_.tie_word_embeddings) {
      t = gguf_->FindTensor("token_embd.weight");
    }
    return t;
  }

  // The head count whose rotary rows llama.cpp interleaved in this tensor, or 0 if none.
  int RotaryHeads(const std::string& name) const {
    if (config_.architecture_name != "llama") return 0;
    auto ends_with = [&](std::string_view suffix) {
      return name.size() >= suffix.size() &&
             std::string_view(name).substr(name.size() - suffix.size()) == suffix;
    };
    if (ends_with(".self_attn.q_proj.weight") || ends_with(".self_attn.q_proj.bias")) {
      return config_.num_heads;
    }
    if (ends_with(".self_attn.k_proj.weight") || ends_with(".self_attn.k_proj.bias")) {
      return config_.num_kv_heads;
    }
    return 0;
  }

  std::shared_ptr<const GgufFile> gguf_;
  ModelConfig config_;
};

}  // namespace

std::optional<std::string> HfToGgufName(std::string_view hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  constexpr std::string_view kLayers = "model.layers.";
  if (!StartsWith(hf, kLayers)) return std::nullopt;
  std::string_view rest = hf.substr(kLayers.size());
  int layer = -1;
  const auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), layer);
  if (ec != std::errc() || layer < 0 || ptr == rest.data() + rest.size() || *ptr != '.') {
    return std::nullopt;
  }
  rest = rest.substr(static_cast<size_t>(ptr - rest.data()) + 1);
  static constexpr std::pair<std::string_view, std::string_view> kMap[] = {
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
  };
  for (const auto& [from, to] : kMap) {
    if (!StartsWith(rest, from) || rest.size() <= from.size() || rest[from.size()] != '.') continue;
    const std::string_view suffix = rest.substr(from.size() + 1);
    if (suffix != "weight" && suffix != "bias") return std::nullopt;
    return fmt::format("blk.{}.{}.{}", layer, to, suffix);
  }
  return std::nullopt;
}

void PermuteRotaryRows(const float* in, float* out, int64_t rows, int64_t cols, int num_heads) {
  MoveRotaryRows(in, out, rows, cols, num_heads, /*to_hf=*/false);
}

void UnpermuteRotaryRows(const float* in, float* out, int64_t rows, int64_t cols, int num_heads) {
  MoveRotaryRows(in, out, rows, cols, num_heads, /*to_hf=*/true);
}

std::unique_ptr<WeightSource> MakeGgufWeightSource(std::shared_ptr<const GgufFile> gguf,
                                                   const ModelConfig& config) {
  return std::make_unique<GgufWeightSource>(std::move(gguf), config);
}

}  // namespace headwise::models
