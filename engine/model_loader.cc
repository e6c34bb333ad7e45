#include "engine/model_loader.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/json_file.h"
#include "kernels/backend_factory.h"
#include "models/gguf_file.h"
#include "tokenizer/gguf_vocab.h"

namespace headwise::engine {
namespace {

namespace fs = std::filesystem;

bool IsGguf(const std::string& path) {
  return fs::is_regular_file(path) && fs::path(path).extension() == ".gguf";
}

StatusOr<tokenizer::GgufVocab> ReadGgufVocab(const models::GgufFile& gguf) {
  tokenizer::GgufVocab vocab;
  HW_ASSIGN_OR_RETURN(vocab.model, gguf.GetString("tokenizer.ggml.model"));
  HW_ASSIGN_OR_RETURN(vocab.tokens, gguf.GetStringArray("tokenizer.ggml.tokens"));
  if (gguf.Has("tokenizer.ggml.pre")) {
    HW_ASSIGN_OR_RETURN(vocab.pre, gguf.GetString("tokenizer.ggml.pre"));
  }
  if (gguf.Has("tokenizer.ggml.scores")) {
    HW_ASSIGN_OR_RETURN(vocab.scores, gguf.GetFloatArray("tokenizer.ggml.scores"));
  }
  if (gguf.Has("tokenizer.ggml.token_type")) {
    HW_ASSIGN_OR_RETURN(std::vector<int64_t> types, gguf.GetIntArray("tokenizer.ggml.token_type"));
    vocab.token_type.assign(types.begin(), types.end());
  }
  if (gguf.Has("tokenizer.ggml.merges")) {
    HW_ASSIGN_OR_RETURN(vocab.merges, gguf.GetStringArray("tokenizer.ggml.merges"));
  }
  auto opt_id = [&](const char* key, std::optional<int32_t>& out) -> Status {
    if (!gguf.Has(key)) return Status::Ok();
    HW_ASSIGN_OR_RETURN(int64_t v, gguf.GetInt(key));
    out = static_cast<int32_t>(v);
    return Status::Ok();
  };
  auto opt_bool = [&](const char* key, std::optional<bool>& out) -> Status {
    if (!gguf.Has(key)) return Status::Ok();
    HW_ASSIGN_OR_RETURN(bool v, gguf.GetBool(key));
    out = v;
    return Status::Ok();
  };
  HW_RETURN_IF_ERROR(opt_id("tokenizer.ggml.bos_token_id", vocab.bos_id));
  HW_RETURN_IF_ERROR(opt_id("tokenizer.ggml.eos_token_id", vocab.eos_id));
  HW_RETURN_IF_ERROR(opt_id("tokenizer.ggml.eot_token_id", vocab.eot_id));
  HW_RETURN_IF_ERROR(opt_id("tokenizer.ggml.eom_token_id", vocab.eom_id));
  HW_RETURN_IF_ERROR(opt_id("tokenizer.ggml.unknown_token_id", vocab.unk_id));
  HW_RETURN_IF_ERROR(opt_id("tokenizer.ggml.padding_token_id", vocab.pad_id));
  HW_RETURN_IF_ERROR(opt_bool("tokenizer.ggml.add_bos_token", vocab.add_bos_token));
  HW_RETURN_IF_ERROR(opt_bool("tokenizer.ggml.add_eos_token", vocab.add_eos_token));
  HW_RETURN_IF_ERROR(opt_bool("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix));
  return vocab;
}

StatusOr<std::unique_ptr<tokenizer::Tokenizer>> TokenizerFromGguf(const models::GgufFile& gguf,
                                                                  const std::string& path) {
  auto vocab = ReadGgufVocab(gguf);
  if (!vocab.ok()) return vocab.status().WithContext(path);
  auto tok = tokenizer::LoadGgufTokenizer(*vocab);
  if (!tok.ok()) return tok.status().WithContext(path);
  return tok;
}

// Parameters of the Llama-family graph the config describes.
double ParameterCount(const models::ModelConfig& c) {
  const double h = c.hidden_size, q = double(c.num_heads) * c.head_dim,
               kv = double(c.num_kv_heads) * c.head_dim;
  const double per_layer = h * (q + 2 * kv) + q * h + 3 * h * c.intermediate_size + 2 * h +
                           (c.attention_bias ? q + 2 * kv : 0);
  return double(c.vocab_size) * h * (c.tie_word_embeddings ? 1 : 2) + c.num_layers * per_layer + h;
}

// The CPU backend keeps f32 weights in host memory: refuse a model that cannot fit before
// spending minutes loading it into swapless memory and dying.
Status CheckHostMemory(const models::ModelConfig& config) {
  const double need = ParameterCount(config) * sizeof(float);
  const double have = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (have > 0 && need > 0.9 * have) {
    return ResourceExhausted(
        "the model needs {:.1f} GiB of f32 weights on the CPU backend, this machine has {:.1f} GiB "
        "of memory",
        need / (1 << 30), have / (1 << 30));
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<tokenizer::Tokenizer>> LoadTokenizerFor(const std::string& path) {
  if (IsGguf(path)) {
    HW_ASSIGN_OR_RETURN(auto gguf, models::GgufFile::Open(path));
    return TokenizerFromGguf(*gguf, path);
  }
  const fs::path p(path);
  if (fs::is_regular_file(p)) {
    if (p.extension() == ".model") return tokenizer::LoadSentencePieceTokenizer(path);
    const fs::path config = p.parent_path() / "tokenizer_config.json";
    return tokenizer::LoadHfTokenizer(path, fs::exists(config) ? config.string() : "");
  }
  if (fs::exists(p / "tokenizer.json")) {
    const fs::path config = p / "tokenizer_config.json";
    return tokenizer::LoadHfTokenizer((p / "tokenizer.json").string(),
                                      fs::exists(config) ? config.string() : "");
  }
  if (fs::exists(p / "tokenizer.model")) {
    return tokenizer::LoadSentencePieceTokenizer((p / "tokenizer.model").string());
  }
  return NotFound("{}: no tokenizer.json, tokenizer.model or GGUF vocabulary", path);
}

RankDevices RankGroup::devices() const {
  RankDevices d;
  for (size_t r = 0; r < backends.size(); ++r) {
    d.backends.push_back(backends[r].get());
    d.comms.push_back(r < comms.size() ? comms[r].get() : nullptr);
  }
  return d;
}

StatusOr<RankGroup> CreateRankGroup(const std::string& device, int size, int threads) {
  if (size < 1) {
    return InvalidArgument("tensor_parallel_size must be >= 1, got {}", size)
        .WithField("tensor_parallel_size");
  }
  RankGroup group;
  // CPU ranks share the cores (threads <= 0: all of them).
  const int all = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  const int per_rank = std::max(1, all / size);
  for (int r = 0; r < size; ++r) {
    HW_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Backend> be,
                        kernels::CreateBackend(device, size == 1 ? threads : per_rank, r));
    group.backends.push_back(std::move(be));
  }
  if (size > 1) {
    std::vector<kernels::Backend*> raw;
    for (auto& be : group.backends) raw.push_back(be.get());
    HW_ASSIGN_OR_RETURN(group.comms, kernels::CreateCommunicators(raw));
  }
  return group;
}

StatusOr<LoadedModel> LoadModel(const std::string& path, const LoadOptions& options,
                                kernels::Backend& backend) {
  return LoadModel(path, options, RankDevices{{&backend}, {nullptr}});
}

StatusOr<LoadedModel> LoadModel(const std::string& path, const LoadOptions& options,
                                const RankDevices& ranks) {
  const int num_ranks = static_cast<int>(ranks.backends.size());
  HW_CHECK(num_ranks >= 1 && ranks.comms.size() == ranks.backends.size(),
           "{} backends and {} communicators", ranks.backends.size(), ranks.comms.size());
  HW_ASSIGN_OR_RETURN(models::ModelFiles files,
                      models::OpenModel(path, options.format, options.dummy_seed));
  LoadedModel out;
  out.path = files.path;
  out.format = files.format;
  if (const Status s = models::LlamaModel::CheckShardable(files.config, num_ranks); !s.ok()) {
    return s.WithContext(path);
  }
  // The ranks' shares add up to one model: the host holds it once whatever the split.
  if (ranks.backends.front()->device() == Device::kCpu) {
    HW_RETURN_IF_ERROR(CheckHostMemory(files.config));
  }
  for (int r = 0; r < num_ranks; ++r) {
    const models::ModelShard shard{r, num_ranks, ranks.comms[static_cast<size_t>(r)]};
    auto model = models::LlamaModel::Load(files.config, *files.weights,
                                          *ranks.backends[static_cast<size_t>(r)], shard);
    if (!model.ok()) return model.status().WithContext(path);
    if (r == 0) {
      out.model = std::move(model).value();
    } else {
      out.other_ranks.push_back(std::move(model).value());
    }
  }

  // config.json and generation_config.json's, or the GGUF's eos/eot/eom ids.
  out.eos_token_ids = files.config.eos_token_ids;

  const std::string tok_path = options.tokenizer_path.empty() ? path : options.tokenizer_path;
  // The model's own GGUF is open already; another one (--tokenizer x.gguf) is opened here.
  std::shared_ptr<const models::GgufFile> gguf;
  if (IsGguf(tok_path)) {
    if (tok_path == path && files.gguf) {
      gguf = files.gguf;
    } else {
      HW_ASSIGN_OR_RETURN(gguf, models::GgufFile::Open(tok_path));
    }
  }
  const bool has_tokenizer = gguf || fs::exists(fs::path(tok_path) / "tokenizer.json") ||
                             fs::exists(fs::path(tok_path) / "tokenizer.model") ||
                             fs::is_regular_file(tok_path);
  // A model without tokenizer files still loads (vLLM's skip_tokenizer_init); users of text
  // then say it is missing.
  if (has_tokenizer) {
    if (gguf) {
      HW_ASSIGN_OR_RETURN(out.tokenizer, TokenizerFromGguf(*gguf, tok_path));
    } else {
      HW_ASSIGN_OR_RETURN(out.tokenizer, LoadTokenizerFor(tok_path));
    }
    // End-of-generation tokens the vocabulary names (eos, <|eot_id|>, <|im_end|>, ...), as
    // llama.cpp stops on them.
    if (auto eos = out.tokenizer->eos_id()) out.eos_token_ids.push_back(*eos);
    for (int32_t id : out.tokenizer->stop_ids()) out.eos_token_ids.push_back(id);
  }

  // Chat template: the GGUF's tokenizer.chat_template, or tokenizer_config.json's.
  if (gguf) {
    if (gguf->Has("tokenizer.chat_template")) {
      HW_ASSIGN_OR_RETURN(out.chat_template, gguf->GetString("tokenizer.chat_template"));
    }
  } else {
    const fs::path tok_dir =
        fs::is_directory(tok_path) ? fs::path(tok_path) : fs::path(tok_path).parent_path();
    if (fs::exists(tok_dir / "tokenizer_config.json")) {
      HW_ASSIGN_OR_RETURN(
          nlohmann::json cfg,
          ReadJsonFile((tok_dir / "tokenizer_config.json").string(), "tokenizer_config.json"));
      if (cfg.contains("chat_template") && cfg["chat_template"].is_string()) {
        out.chat_template = cfg["chat_template"].get<std::string>();
      }
    }
  }
  std::sort(out.eos_token_ids.begin(), out.eos_token_ids.end());
  out.eos_token_ids.erase(std::unique(out.eos_token_ids.begin(), out.eos_token_ids.end()),
                          out.eos_token_ids.end());
  return out;
}

}  // namespace headwise::engine
