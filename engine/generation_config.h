// A served model's generation defaults, as vLLM takes them: the sampling parameters of the
// model's generation_config.json (or of a given folder's), with --override-generation-config on
// top, given to every request field the client did not send; and the file's eos_token_id,
// added to the model's end-of-generation tokens.
//
// The flags are vLLM's:
//   --generation-config auto     (default) the model's generation_config.json: in a Hugging
//                                Face directory, or in the directory of a .gguf file (GGUF files
//                                carry none; scripts/get-model.sh puts the upstream one there)
//   --generation-config vllm     no sampling defaults from any file: the engine's own
//                                (temperature 1, top_p 1, ...); the model's eos_token_id still
//                                counts, as in vLLM
//   --generation-config FOLDER   the generation_config.json in FOLDER (which must hold one)
//   --override-generation-config JSON   an object of the keys below, applied on top of the
//                                file's; a null value removes the file's default
//
// The keys vLLM reads (ModelConfig.get_diff_sampling_param), in the file's names:
// temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens. max_new_tokens is the
// max_tokens of a chat request that gives none (completions keep OpenAI's 16, as in vLLM); when
// it comes from --override-generation-config, or from a FOLDER's file, it also caps every
// request's max_tokens (vLLM's override_max_tokens). Other keys of the file are ignored, as
// transformers ignores keys it does not know (do_sample too: vLLM ignores it); a key of the
// override outside these six is refused, since a misspelt flag value would otherwise change
// nothing without a word. A bad value (wrong type, or outside SamplingParams::Validate's
// ranges) is refused at startup, naming the file or flag and the key.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/sampling_params.h"

namespace headwise::engine {

// The file's name, wherever it is looked for.
inline constexpr std::string_view kGenerationConfigFile = "generation_config.json";
// Real generation_config.json files are a few hundred bytes; this only stops a wrong path from
// being read whole.
inline constexpr size_t kMaxGenerationConfigBytes = size_t{1} << 20;

// The two flags, as given on the command line.
struct GenerationConfigFlags {
  std::string generation_config = "auto";  // "auto", "vllm" or a folder
  std::string override_generation_config;  // a JSON object; empty: none
};

enum class GenerationConfigMode { kAuto, kVllm, kFolder };

struct GenerationDefaults {
  // Sampling defaults: unset ones leave SamplingParams' own.
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
  // max_new_tokens: the max_tokens of a chat request that gives none.
  std::optional<int> max_tokens;
  // A cap on every request's max_tokens (see above); unset: none.
  std::optional<int> max_tokens_cap;
  // The file's eos_token_id (an int or a list in the file), in its order.
  std::vector<int32_t> eos_token_ids;
  // Where they came from, for messages and the startup log: the generation_config.json read
  // (empty: none was), the mode, and whether --override-generation-config was given.
  std::string file;
  GenerationConfigMode mode = GenerationConfigMode::kAuto;
  bool overridden = false;

  bool has_sampling_defaults() const;
  // One line for the startup log: "default sampling parameters from FILE: {...}", or why there
  // are none.
  std::string Describe() const;
  // Sets the fields that have a default; a request's own fields are then parsed over them.
  void ApplyTo(SamplingParams& params) const;
  // max_tokens of a request after the defaults: the client's value (nullopt: none given) or
  // this default or `fallback`, then at most max_tokens_cap. `chat` says whether the default
  // applies (vLLM's completions keep their own 16, which `fallback` is then).
  int ResolveMaxTokens(std::optional<int> requested, bool chat, int fallback) const;
  // The sampling defaults under vLLM's names (max_tokens for max_new_tokens), only those set:
  // {"temperature": 0.7, "top_p": 0.8, ...}; plus "max_tokens_cap" when one is set.
  nlohmann::json SamplingJson() const;
  // Adds eos_token_ids to `eos` (the model's end-of-generation tokens), keeping it sorted and
  // without repeats. An id outside the vocabulary is InvalidArgument naming the file.
  Status AddEosTokenIds(int vocab_size, std::vector<int32_t>& eos) const;
};

// "auto", "vllm" or a folder, as --generation-config takes it (an empty value is refused).
StatusOr<GenerationConfigMode> ParseGenerationConfigMode(const std::string& value);

// The merge, without files: `file` is the parsed generation_config.json (null: none; its
// sampling keys count in kAuto and kFolder only, its eos_token_id always), named `file_name` in
// messages and in GenerationDefaults::file; `override_object` the parsed
// --override-generation-config (null: none).
StatusOr<GenerationDefaults> MergeGenerationConfig(GenerationConfigMode mode,
                                                   const nlohmann::json& file,
                                                   const std::string& file_name,
                                                   const nlohmann::json& override_object);

// Reads what the flags name for the model at `model_path` (a Hugging Face directory or a model
// file) and merges it. kAuto and kVllm read `model_path`'s generation_config.json when there is
// one (none is no error); kFolder's must exist.
StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_path,
                                                    const GenerationConfigFlags& flags);

}  // namespace headwise::engine
