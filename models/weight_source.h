// Where a model's weights come from: a Hugging Face directory, a GGUF file, or seeded random
// values. Every source speaks Hugging Face tensor names and layouts
// ("model.layers.3.self_attn.q_proj.weight", [out_features, in_features]) and hands out f32
// host tensors; format quirks (GGUF's rotary permutation, quantized blocks, f16/bf16) are
// resolved inside the source.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "models/model_config.h"

namespace headwise::models {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual bool Has(const std::string& name) const = 0;
  // The tensor as f32 of exactly `shape`; a missing tensor or another shape is an error that
  // names the tensor and both shapes.
  virtual StatusOr<kernels::HostTensor> Load(const std::string& name,
                                             const std::vector<int64_t>& shape) = 0;
  // What Load would report about presence, shape and element type, without reading any data
  // (OpenModel runs it over every expected weight so a bad file fails at open).
  virtual Status Check(const std::string& name, const std::vector<int64_t>& /*shape*/) const {
    if (!Has(name)) return NotFound("tensor '{}' not found", name);
    return Status::Ok();
  }
};

// One tensor of the Llama-family graph, in Hugging Face naming and [out, in] layout.
struct WeightSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Every tensor the forward pass of `config` loads: the embedding, per layer the norms, q/k/v/o
// (and q/k/v biases when attention_bias), gate/up/down, the final norm, and lm_head.weight
// unless the embeddings are tied.
std::vector<WeightSpec> ExpectedWeights(const ModelConfig& config);

enum class LoadFormat { kAuto, kDummy };

struct ModelFiles {
  ModelConfig config;
  std::unique_ptr<WeightSource> weights;
  std::string path;    // what was opened
  std::string format;  // "safetensors", "gguf" or "dummy"
  // The open GGUF file (format "gguf" only), so its tokenizer metadata can be read without
  // opening it again.
  std::shared_ptr<const GgufFile> gguf;
};

// Opens `path`: a Hugging Face directory (config.json + *.safetensors), a .gguf file, or with
// kDummy a directory holding config.json (or the config.json itself), whose weights are then
// drawn from `seed`. Every weight of ExpectedWeights(config) is checked (presence, shape,
// supported type) before this returns. For a Hugging Face directory the eos ids of
// generation_config.json, when present, are added to config.eos_token_ids.
StatusOr<ModelFiles> OpenModel(const std::string& path, LoadFormat format, uint64_t seed = 0);

}  // namespace headwise::models
