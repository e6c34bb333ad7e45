#include "models/weight_source.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/json_file.h"
#include "models/gguf_file.h"
#include "models/gguf_weights.h"
#include "models/host_buffer.h"
#include "models/safetensors.h"

namespace headwise::models {
namespace {

namespace fs = std::filesystem;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

constexpr std::string_view kEmbed = "model.embed_tokens.weight";
constexpr std::string_view kLmHead = "lm_head.weight";

class SafetensorsWeightSource : public WeightSource {
 public:
  SafetensorsWeightSource(std::unique_ptr<SafetensorsModel> model, bool tied)
      : model_(std::move(model)), tied_(tied) {}

  bool Has(const std::string& name) const override { return Resolve(name).first != nullptr; }

  Status Check(const std::string& name, const std::vector<int64_t>& shape) const override {
    const auto [t, file] = Resolve(name);
    if (t == nullptr) return NotFound("tensor '{}' not found in the safetensors files", name);
    if (t->shape != shape) {
      return InvalidArgument("{}: tensor '{}' has shape {}, expected {} from the model config",
                             file->path(), t->name, ShapeString(t->shape), ShapeString(shape));
    }
    if (!IsSupportedSafetensorsDtype(t->dtype)) {
      return Unimplemented(
          "{}: tensor '{}' has dtype {}, which is not supported (supported: "
          "F32, F16, BF16)",
          file->path(), t->name, t->dtype);
    }
    return Status::Ok();
  }

  StatusOr<kernels::HostTensor> Load(const std::string& name,
                                     const std::vector<int64_t>& shape) override {
    HW_RETURN_IF_ERROR(Check(name, shape));
    const auto [t, file] = Resolve(name);
    return file->ToF32(*t);
  }

 private:
  // With tied embeddings transformers saves only one of the pair (TinyStories keeps
  // lm_head.weight and drops the embedding); either name then serves the other.
  std::pair<const SafetensorsTensor*, const SafetensorsFile*> Resolve(
      const std::string& name) const {
    auto found = model_->Find(name);
    if (found.first == nullptr && tied_) {
      if (name == kEmbed) found = model_->Find(std::string(kLmHead));
      if (name == kLmHead) found = model_->Find(std::string(kEmbed));
    }
    return found;
  }

  std::unique_ptr<SafetensorsModel> model_;
  bool tied_;
};

// Counter-based generator: the value of element i of a tensor depends only on (seed, name, i),
// so tensors can be drawn in any order, lazily, and split over threads.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t HashName(std::string_view name, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ull ^ SplitMix64(seed);  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ull;
  return SplitMix64(h);
}

// Approximately N(0, std): the sum of four 16-bit uniforms (Irwin-Hall, variance 4/12),
// standardised. Much cheaper than Box-Muller, which matters at Llama-3-8B's 8e9 values, and
// bounded (|x| < 3.5 std), which keeps dummy activations tame.
inline float DummyNormal(uint64_t key, uint64_t i, float std) {
  const uint64_t r = SplitMix64(key ^ (i * 0xd1342543de82ef95ull));
  const float sum =
      static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) *
      (1.0f / 65536.0f);
  constexpr float kScale = 1.7320508f;  // sqrt(3) = 1 / sqrt(4/12)
  return (sum - 2.0f) * kScale * std;
}

class DummyWeightSource : public WeightSource {
 public:
  DummyWeightSource(const ModelConfig& config, uint64_t seed)
      : seed_(seed), tied_(config.tie_word_embeddings) {
    for (WeightSpec& w : ExpectedWeights(config)) shapes_.emplace(w.name, std::move(w.shape));
    // Tied: lm_head.weight is served too, as the embedding (same values), like the file sources.
    if (config.tie_word_embeddings) shapes_.emplace(kLmHead, shapes_.at(std::string(kEmbed)));
  }

  bool Has(const std::string& name) const override { return shapes_.count(name) != 0; }

  Status Check(const std::string& name, const std::vector<int64_t>& shape) const override {
    auto it = shapes_.find(name);
    if (it == shapes_.end()) return NotFound("dummy weights: no tensor '{}'", name);
    if (it->second != shape) {
      return InvalidArgument("dummy weights: tensor '{}' has shape {}, asked for {}", name,
                             ShapeString(it->second), ShapeString(shape));
    }
    return Status::Ok();
  }

  StatusOr<kernels::HostTensor> Load(const std::string& name,
                                     const std::vector<int64_t>& shape) override {
    HW_RETURN_IF_ERROR(Check(name, shape));
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::shared_ptr<float[]> buf = AllocateHostFloats(static_cast<size_t>(n));
    float* out = buf.get();
    if (EndsWith(name, "norm.weight")) {
      std::fill(out, out + n, 1.0f);  // RMSNorm gains start at one, as in training
    } else {
      const uint64_t key =
          HashName(tied_ && name == kLmHead ? kEmbed : std::string_view(name), seed_);
      constexpr int64_t kPerThread = 1 << 20;
      const int threads = static_cast<int>(std::clamp<int64_t>(
          n / kPerThread, 1, std::max(1u, std::thread::hardware_concurrency())));
      auto fill = [&](int64_t first, int64_t last) {
        for (int64_t i = first; i < last; ++i) {
          out[i] = DummyNormal(key, static_cast<uint64_t>(i), 0.02f);
        }
      };
      if (threads == 1) {
        fill(0, n);
      } else {
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t)
          pool.emplace_back(fill, n * t / threads, n * (t + 1) / threads);
        for (auto& th : pool) th.join();
      }
    }
    kernels::HostTensor t;
    t.shape.rank = static_cast<int>(shape.size());
    std::copy(shape.begin(), shape.end(), t.shape.dims.begin());
    t.data = out;
    t.keepalive = std::move(buf);
    return t;
  }

 private:
  uint64_t seed_;
  bool tied_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

Status CheckAllWeights(const WeightSource& source, const ModelConfig& config) {
  for (const WeightSpec& w : ExpectedWeights(config))
    HW_RETURN_IF_ERROR(source.Check(w.name, w.shape));
  return Status::Ok();
}

// generation_config.json's eos ids (HF's generate stops on them), merged into the config's.
Status MergeGenerationConfig(const fs::path& dir, ModelConfig* config) {
  const fs::path path = dir / "generation_config.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) return Status::Ok();
  HW_ASSIGN_OR_RETURN(nlohmann::json gen, ReadJsonFile(path.string(), "generation_config.json"));
  if (!gen.is_object()) return Status::Ok();
  HW_ASSIGN_OR_RETURN(const std::vector<int> ids, ParseEosTokenIds(gen, path.string()));
  auto& eos = config->eos_token_ids;
  for (int id : ids) {
    if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  }
  return Status::Ok();
}

StatusOr<ModelConfig> ReadHfConfig(const fs::path& config_path) {
  HW_ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonFile(config_path.string(), "config.json"));
  auto config = ParseHfConfig(j);
  if (!config.ok()) {
    // ParseHfConfig names "config.json"; say which one.
    return Status(config.status().code(),
                  fmt::format("{} ({})", config.status().message(), config_path.string()));
  }
  return config;
}

bool LooksLikeGguf(const fs::path& path) {
  // Only a regular file can be a model; fopen of a FIFO would block until a writer came.
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char magic[4] = {};
  const size_t got = std::fread(magic, 1, 4, f);
  std::fclose(f);
  return got == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

}  // namespace

std::vector<WeightSpec> ExpectedWeights(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const int64_t inter = c.intermediate_size;
  std::vector<WeightSpec> w;
  w.push_back({std::string(kEmbed), {c.vocab_size, hidden}});
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    w.push_back({p + "input_layernorm.weight", {hidden}});
    w.push_back({p + "self_attn.q_proj.weight", {q_dim, hidden}});
    w.push_back({p + "self_attn.k_proj.weight", {kv_dim, hidden}});
    w.push_back({p + "self_attn.v_proj.weight", {kv_dim, hidden}});
    if (c.attention_bias) {
      w.push_back({p + "self_attn.q_proj.bias", {q_dim}});
      w.push_back({p + "self_attn.k_proj.bias", {kv_dim}});
      w.push_back({p + "self_attn.v_proj.bias", {kv_dim}});
    }
    w.push_back({p + "self_attn.o_proj.weight", {hidden, q_dim}});
    w.push_back({p + "post_attention_layernorm.weight", {hidden}});
    w.push_back({p + "mlp.gate_proj.weight", {inter, hidden}});
    w.push_back({p + "mlp.up_proj.weight", {inter, hidden}});
    w.push_back({p + "mlp.down_proj.weight", {hidden, inter}});
  }
  w.push_back({"model.norm.weight", {hidden}});
  if (!c.tie_word_embeddings) w.push_back({std::string(kLmHead), {c.vocab_size, hidden}});
  return w;
}

StatusOr<ModelFiles> OpenModel(const std::string& path, LoadFormat format, uint64_t seed) {
  std::error_code ec;
  const fs::path p(path);
  const auto status = fs::status(p, ec);
  if (ec || !fs::exists(status)) return NotFound("{}: no such file or directory", path);
  const bool is_dir = fs::is_directory(status);

  ModelFiles files;
  files.path = path;
  if (format == LoadFormat::kDummy) {
    const fs::path config_path = is_dir ? p / "config.json" : p;
    if (is_dir && !fs::exists(config_path, ec)) {
      return NotFound("{}: no config.json (dummy weights need one)", path);
    }
    HW_ASSIGN_OR_RETURN(files.config, ReadHfConfig(config_path));
    files.weights = std::make_unique<DummyWeightSource>(files.config, seed);
    files.format = "dummy";
    return files;
  }

  if (is_dir) {
    const fs::path config_path = p / "config.json";
    if (!fs::exists(config_path, ec)) {
      return NotFound("{}: no config.json (expected a Hugging Face model directory)", path);
    }
    HW_ASSIGN_OR_RETURN(files.config, ReadHfConfig(config_path));
    HW_RETURN_IF_ERROR(MergeGenerationConfig(p, &files.config));
    HW_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> model,
                        SafetensorsModel::OpenDirectory(path));
    files.weights = std::make_unique<SafetensorsWeightSource>(std::move(model),
                                                              files.config.tie_word_embeddings);
    files.format = "safetensors";
  } else if (p.extension() == ".gguf" || LooksLikeGguf(p)) {
    HW_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(path));
    std::shared_ptr<const GgufFile> shared(std::move(gguf));
    HW_ASSIGN_OR_RETURN(files.config, ParseGgufConfig(*shared));
    files.weights = MakeGgufWeightSource(shared, files.config);
    files.gguf = std::move(shared);
    files.format = "gguf";
  } else {
    return InvalidArgument(
        "{}: not a model: expected a Hugging Face directory (config.json + *.safetensors) or a "
        ".gguf file",
        path);
  }
  HW_RETURN_IF_ERROR(CheckAllWeights(*files.weights, files.config));
  return files;
}

}  // namespace headwise::models
