// Loads everything a model path brings: config and weights (models/), the tokenizer
// (tokenizer/), generation defaults and the chat template.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "models/llama_model.h"
#include "models/weight_source.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine {

struct LoadOptions {
  models::LoadFormat format = models::LoadFormat::kAuto;
  uint64_t dummy_seed = 0;
  // A tokenizer to use instead of the model's own (tokenizer.json, .model, or a .gguf).
  std::string tokenizer_path;
};

struct LoadedModel {
  std::unique_ptr<models::LlamaModel> model;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;  // null when the path has no tokenizer files
  std::string chat_template;                        // empty when the model ships none
  std::vector<int32_t> eos_token_ids;  // config, generation_config and the tokenizer's stop ids
  std::string path;
  std::string format;
};

StatusOr<LoadedModel> LoadModel(const std::string& path, const LoadOptions& options,
                                kernels::Backend& backend);

// The tokenizer that belongs to a model path: tokenizer.json (+ tokenizer_config.json) or
// tokenizer.model in a directory, the vocabulary embedded in a .gguf, or the given file.
StatusOr<std::unique_ptr<tokenizer::Tokenizer>> LoadTokenizerFor(const std::string& path);

}  // namespace headwise::engine
