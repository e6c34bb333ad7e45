#include "tools/engine_flags.h"

#include <cctype>
#include <string_view>
#include <utility>

#include "kernels/backend_factory.h"

namespace headwise::tools {

StatusOr<int64_t> ParseBytes(const std::string& flag, std::string s) {
  int64_t mult = 1;
  if (!s.empty()) {
    switch (std::toupper(static_cast<unsigned char>(s.back()))) {
      case 'K':
        mult = int64_t{1} << 10;
        break;
      case 'M':
        mult = int64_t{1} << 20;
        break;
      case 'G':
        mult = int64_t{1} << 30;
        break;
      case 'T':
        mult = int64_t{1} << 40;
        break;
      default:
        break;
    }
    if (mult != 1) s.pop_back();
    if (!s.empty() && std::toupper(static_cast<unsigned char>(s.back())) == 'I') s.pop_back();
  }
  auto v = ParseFloat(s);
  if (!v.ok() || *v <= 0 || *v * static_cast<double>(mult) > 9e18) {
    return InvalidArgument("--{} expects a positive byte count such as 512M or 2G, got '{}'", flag,
                           s);
  }
  return static_cast<int64_t>(*v * static_cast<double>(mult));
}

Status InFlagTerms(const Status& s) {
  static const std::pair<const char*, const char*> kFlags[] = {
      {"max_model_len", "--max-model-len"},
      {"max_num_seqs", "--max-num-seqs"},
      {"max_num_batched_tokens", "--max-num-batched-tokens"},
      {"max_waiting", "--max-waiting"},
      {"num_kv_pages", "--num-kv-pages"},
      {"kv_cache_bytes", "--kv-cache-memory"},
      {"cpu_kv_bytes", "--cpu-kv-memory"},
      {"gpu_memory_utilization", "--gpu-memory-utilization"},
      {"arms", "--arms"},
      {"tensor_parallel_size", "--tensor-parallel-size"},
  };
  for (const auto& [field, flag] : kFlags) {
    if (s.field() != field) continue;
    const std::string& msg = s.message();
    const std::string text = msg.rfind(field, 0) == 0
                                 ? flag + msg.substr(std::string_view(field).size())
                                 : fmt::format("{}: {}", flag, msg);
    return Status(s.code(), text);
  }
  return s;
}

void EngineFlags::Register(FlagParser& flags) {
  flags.Int("max-model-len", config.max_model_len);
  flags.Int("max-num-seqs", config.max_num_seqs);
  flags.Int("max-num-batched-tokens", config.max_num_batched_tokens);
  flags.String("kv-cache-memory", kv_memory_);
  flags.String("cpu-kv-memory", cpu_kv_memory_);
  flags.Int("num-kv-pages", config.num_kv_pages);
  gpu_memory_utilization_ = static_cast<float>(config.gpu_memory_utilization);
  flags.Float("gpu-memory-utilization", gpu_memory_utilization_);
  flags.String("device", device);
  flags.Int("threads", threads);
  flags.Int("tensor-parallel-size", tensor_parallel_size);
  flags.Bool("enforce-eager", enforce_eager);
  flags.String("tokenizer", tokenizer_path);
}

Status EngineFlags::Finish() {
  config.gpu_memory_utilization = gpu_memory_utilization_;
  config.enforce_eager = enforce_eager;
  if (!kv_memory_.empty()) {
    HW_ASSIGN_OR_RETURN(config.kv_cache_bytes, ParseBytes("kv-cache-memory", kv_memory_));
  }
  if (!cpu_kv_memory_.empty()) {
    HW_ASSIGN_OR_RETURN(config.cpu_kv_bytes, ParseBytes("cpu-kv-memory", cpu_kv_memory_));
  }
  return Status::Ok();
}

StatusOr<ModelOnBackend> LoadModelOnBackend(const std::string& path, const EngineFlags& flags) {
  ModelOnBackend out;
  HW_ASSIGN_OR_RETURN(
      out.ranks, engine::CreateRankGroup(flags.device, flags.tensor_parallel_size, flags.threads));
  engine::LoadOptions load;
  load.tokenizer_path = flags.tokenizer_path;
  HW_ASSIGN_OR_RETURN(out.model, engine::LoadModel(path, load, out.ranks.devices()));
  if (!out.model.tokenizer) {
    return InvalidArgument("{}: no tokenizer found; pass --tokenizer PATH", path);
  }
  return out;
}

}  // namespace headwise::tools
