#include "engine/generation_config.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "core/json_file.h"
#include "models/model_config.h"

namespace headwise::engine {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kOverrideFlag = "--override-generation-config";

// The keys vLLM takes from a generation config (ModelConfig.get_diff_sampling_param).
const std::set<std::string>& SamplingKeyNames() {
  static const auto* keys = new std::set<std::string>{
      "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens"};
  return *keys;
}

// A value for a message: its JSON text, cut short.
std::string Shown(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 61) + "...";
  return s;
}

// The six keys of one source. A key given as null is absent in a file (vLLM reads `get(p) is not
// None`) and, in the override, removes the file's default (it replaces the file's value in
// vLLM's dict update): `cleared`.
struct SamplingKeys {
  std::optional<float> temperature, top_p, min_p, repetition_penalty;
  std::optional<int> top_k, max_new_tokens;
  std::set<std::string> cleared;
};

Status ReadFloat(const nlohmann::json& v, const std::string& source, const std::string& key,
                 std::optional<float>& out) {
  if (!v.is_number()) {
    return InvalidArgument("{}: {} must be a number, got {}", source, key, Shown(v));
  }
  const double d = v.get<double>();
  if (!std::isfinite(d) || std::fabs(d) > 1e30) {
    return InvalidArgument("{}: {} must be a finite number, got {}", source, key, Shown(v));
  }
  out = static_cast<float>(d);
  return Status::Ok();
}

Status ReadInt(const nlohmann::json& v, const std::string& source, const std::string& key,
               int64_t lo, std::optional<int>& out) {
  if (!v.is_number_integer()) {
    return InvalidArgument("{}: {} must be an integer, got {}", source, key, Shown(v));
  }
  const bool too_big = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT_MAX);
  const int64_t i = too_big ? INT64_MAX : v.get<int64_t>();
  if (i < lo || i > INT_MAX) {
    return InvalidArgument("{}: {} must be an integer in [{}, {}], got {}", source, key, lo,
                           INT_MAX, Shown(v));
  }
  out = static_cast<int>(i);
  return Status::Ok();
}

// Reads the six keys of `obj` (a JSON object). `is_override`: other keys are refused and null
// clears; otherwise other keys are ignored and null is absent. Then checks the values' ranges
// with SamplingParams::Validate, so that a default no request could pass is refused here.
Status ReadSamplingKeys(const nlohmann::json& obj, const std::string& source, bool is_override,
                        SamplingKeys& out) {
  for (const auto& [key, value] : obj.items()) {
    if (!SamplingKeyNames().count(key)) {
      if (!is_override) continue;
      return InvalidArgument(
          "{}: unknown key '{}'; the keys taken are temperature, top_p, top_k, min_p, "
          "repetition_penalty and max_new_tokens",
          source, key);
    }
    if (value.is_null()) {
      if (is_override) out.cleared.insert(key);
      continue;
    }
    if (key == "temperature") HW_RETURN_IF_ERROR(ReadFloat(value, source, key, out.temperature));
    if (key == "top_p") HW_RETURN_IF_ERROR(ReadFloat(value, source, key, out.top_p));
    if (key == "min_p") HW_RETURN_IF_ERROR(ReadFloat(value, source, key, out.min_p));
    if (key == "repetition_penalty") {
      HW_RETURN_IF_ERROR(ReadFloat(value, source, key, out.repetition_penalty));
    }
    // top_k: -1 and 0 both mean off (SamplingParams); the range is Validate's.
    if (key == "top_k") HW_RETURN_IF_ERROR(ReadInt(value, source, key, INT_MIN, out.top_k));
    if (key == "max_new_tokens") {
      HW_RETURN_IF_ERROR(ReadInt(value, source, key, 1, out.max_new_tokens));
    }
  }
  SamplingParams p;
  if (out.temperature) p.temperature = *out.temperature;
  if (out.top_p) p.top_p = *out.top_p;
  if (out.top_k) p.top_k = *out.top_k;
  if (out.min_p) p.min_p = *out.min_p;
  if (out.repetition_penalty) p.repetition_penalty = *out.repetition_penalty;
  // The names of Validate's messages are the file's keys ("temperature must be in [0, 2]...").
  if (Status s = p.Validate(INT_MAX); !s.ok()) return s.WithContext(source);
  return Status::Ok();
}

}  // namespace

bool GenerationDefaults::has_sampling_defaults() const {
  return temperature || top_p || top_k || min_p || repetition_penalty || max_tokens ||
         max_tokens_cap;
}

std::string GenerationDefaults::Describe() const {
  std::string from = file;
  if (mode == GenerationConfigMode::kVllm) from = "--generation-config vllm";
  if (overridden)
    from += from.empty() ? std::string(kOverrideFlag) : fmt::format(" and {}", kOverrideFlag);
  if (!has_sampling_defaults()) {
    if (mode == GenerationConfigMode::kVllm || !file.empty()) {
      return fmt::format("no default sampling parameters ({})", from);
    }
    return fmt::format("no default sampling parameters (no {} beside the model)",
                       kGenerationConfigFile);
  }
  return fmt::format("default sampling parameters from {}: {}", from, SamplingJson().dump());
}

void GenerationDefaults::ApplyTo(SamplingParams& params) const {
  if (temperature) params.temperature = *temperature;
  if (top_p) params.top_p = *top_p;
  if (top_k) params.top_k = *top_k;
  if (min_p) params.min_p = *min_p;
  if (repetition_penalty) params.repetition_penalty = *repetition_penalty;
}

int GenerationDefaults::ResolveMaxTokens(std::optional<int> requested, bool chat,
                                         int fallback) const {
  int n = requested ? *requested : (chat && max_tokens ? *max_tokens : fallback);
  if (max_tokens_cap) n = std::min(n, *max_tokens_cap);
  return n;
}

nlohmann::json GenerationDefaults::SamplingJson() const {
  nlohmann::json j = nlohmann::json::object();
  // Floats as the file wrote them (0.7, not 0.699999988).
  auto num = [](float v) { return std::stod(fmt::format("{}", v)); };
  if (temperature) j["temperature"] = num(*temperature);
  if (top_p) j["top_p"] = num(*top_p);
  if (top_k) j["top_k"] = *top_k;
  if (min_p) j["min_p"] = num(*min_p);
  if (repetition_penalty) j["repetition_penalty"] = num(*repetition_penalty);
  if (max_tokens) j["max_tokens"] = *max_tokens;
  if (max_tokens_cap) j["max_tokens_cap"] = *max_tokens_cap;
  return j;
}

Status GenerationDefaults::AddEosTokenIds(int vocab_size, std::vector<int32_t>& eos) const {
  for (int32_t id : eos_token_ids) {
    if (id >= vocab_size) {
      return InvalidArgument("{}: eos_token_id {} is outside the vocabulary of {}", file, id,
                             vocab_size);
    }
    eos.push_back(id);
  }
  std::sort(eos.begin(), eos.end());
  eos.erase(std::unique(eos.begin(), eos.end()), eos.end());
  return Status::Ok();
}

StatusOr<GenerationConfigMode> ParseGenerationConfigMode(const std::string& value) {
  if (value == "auto") return GenerationConfigMode::kAuto;
  if (value == "vllm") return GenerationConfigMode::kVllm;
  if (value.empty()) {
    return InvalidArgument(
        "--generation-config expects auto, vllm or a folder holding {}, got an empty value",
        kGenerationConfigFile);
  }
  return GenerationConfigMode::kFolder;
}

StatusOr<GenerationDefaults> MergeGenerationConfig(GenerationConfigMode mode,
                                                   const nlohmann::json& file,
                                                   const std::string& file_name,
                                                   const nlohmann::json& override_object) {
  GenerationDefaults out;
  out.mode = mode;
  out.overridden = !override_object.is_null();
  SamplingKeys merged;
  if (!file.is_null()) {
    if (!file.is_object()) {
      return InvalidArgument("{}: a generation config must be a JSON object, got {}", file_name,
                             Shown(file));
    }
    out.file = file_name;
    HW_ASSIGN_OR_RETURN(const std::vector<int> eos, models::ParseEosTokenIds(file, file_name));
    out.eos_token_ids.assign(eos.begin(), eos.end());
    // Under "vllm" the file's sampling keys are not used, so not checked either.
    if (mode != GenerationConfigMode::kVllm) {
      HW_RETURN_IF_ERROR(ReadSamplingKeys(file, file_name, /*is_override=*/false, merged));
    }
  }
  SamplingKeys over;
  if (!override_object.is_null()) {
    const std::string source(kOverrideFlag);
    if (!override_object.is_object()) {
      return InvalidArgument("{}: expects a JSON object such as '{{\"temperature\": 0.5}}', got {}",
                             source, Shown(override_object));
    }
    HW_RETURN_IF_ERROR(ReadSamplingKeys(override_object, source, /*is_override=*/true, over));
  }
  // vLLM: config.update(override): the override's keys replace the file's; null removes one.
  auto take = [&](const char* key, auto& dst, const auto& src) {
    if (src) dst = src;
    if (over.cleared.count(key)) dst.reset();
  };
  take("temperature", merged.temperature, over.temperature);
  take("top_p", merged.top_p, over.top_p);
  take("top_k", merged.top_k, over.top_k);
  take("min_p", merged.min_p, over.min_p);
  take("repetition_penalty", merged.repetition_penalty, over.repetition_penalty);
  take("max_new_tokens", merged.max_new_tokens, over.max_new_tokens);

  out.temperature = merged.temperature;
  out.top_p = merged.top_p;
  out.top_k = merged.top_k;
  out.min_p = merged.min_p;
  out.repetition_penalty = merged.repetition_penalty;
  out.max_tokens = merged.max_new_tokens;
  // vLLM's override_max_tokens: a folder's merged max_new_tokens, else the override's own.
  out.max_tokens_cap =
      mode == GenerationConfigMode::kFolder ? merged.max_new_tokens : over.max_new_tokens;
  return out;
}

StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_path,
                                                    const GenerationConfigFlags& flags) {
  HW_ASSIGN_OR_RETURN(const GenerationConfigMode mode,
                      ParseGenerationConfigMode(flags.generation_config));
  std::error_code ec;
  fs::path path;
  if (mode == GenerationConfigMode::kFolder) {
    const fs::path folder(flags.generation_config);
    if (!fs::is_directory(folder, ec)) {
      return InvalidArgument(
          "--generation-config: {} is not a folder (expected auto, vllm or a "
          "folder holding {})",
          folder.string(), kGenerationConfigFile);
    }
    path = folder / kGenerationConfigFile;
    if (!fs::exists(path, ec)) {
      return NotFound("--generation-config: {} holds no {}", folder.string(),
                      kGenerationConfigFile);
    }
  } else {
    // A Hugging Face directory holds it; a model file (.gguf, or config.json for dummy
    // weights) has it beside it.
    const fs::path model(model_path);
    const fs::path dir = fs::is_directory(model, ec) ? model : model.parent_path();
    const fs::path candidate = (dir.empty() ? fs::path(".") : dir) / kGenerationConfigFile;
    // exists(), not is_regular_file(): a directory or FIFO of that name is an error below.
    if (fs::exists(candidate, ec)) path = candidate;
  }
  nlohmann::json file;  // null: no file
  if (!path.empty()) {
    HW_ASSIGN_OR_RETURN(
        file, ReadJsonFile(path.string(), kGenerationConfigFile, kMaxGenerationConfigBytes));
  }
  nlohmann::json override_object;
  if (!flags.override_generation_config.empty()) {
    HW_ASSIGN_OR_RETURN(override_object,
                        ParseJson(flags.override_generation_config, std::string(kOverrideFlag)));
  }
  return MergeGenerationConfig(mode, file, path.string(), override_object);
}

}  // namespace headwise::engine
