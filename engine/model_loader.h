// Loads everything a model path brings: config and weights (models/), the tokenizer
// (tokenizer/), generation defaults and the chat template.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "kernels/backend.h"
#include "kernels/communicator.h"
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
  std::unique_ptr<models::LlamaModel> model;  // rank 0's share with tensor parallelism
  // Tensor parallelism: ranks 1 .. N-1 (models::ModelShard); empty for one rank.
  std::vector<std::unique_ptr<models::LlamaModel>> other_ranks;
  // Every rank's share, rank 0 first: what ModelRunner, EngineCore and Generator take.
  std::vector<models::LlamaModel*> ranks() const {
    std::vector<models::LlamaModel*> all{model.get()};
    for (const auto& m : other_ranks) all.push_back(m.get());
    return all;
  }
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;  // null when the path has no tokenizer files
  std::string chat_template;                        // empty when the model ships none
  std::vector<int32_t> eos_token_ids;  // config, generation_config and the tokenizer's stop ids
  std::string path;
  std::string format;
};

StatusOr<LoadedModel> LoadModel(const std::string& path, const LoadOptions& options,
                                kernels::Backend& backend);

// Tensor parallelism: rank r's share of the model on backends[r], reducing through comms[r]
// (kernels::CreateCommunicators). InvalidArgument, naming the numbers, when the model cannot be
// split over that many ranks (models::LlamaModel::CheckShardable).
struct RankDevices {
  std::vector<kernels::Backend*> backends;
  std::vector<kernels::Communicator*> comms;
};
StatusOr<LoadedModel> LoadModel(const std::string& path, const LoadOptions& options,
                                const RankDevices& ranks);

// A tensor-parallel group's devices, owned: rank r's backend and its communicator (none for one
// rank).
struct RankGroup {
  std::vector<std::unique_ptr<kernels::Backend>> backends;
  std::vector<std::unique_ptr<kernels::Communicator>> comms;
  int size() const { return static_cast<int>(backends.size()); }
  RankDevices devices() const;
};
// `size` backends of `device` ("cuda": GPUs 0 .. size-1, one rank each; "cpu": `threads` split
// among the ranks) and their communicators (kernels::CreateCommunicators).
StatusOr<RankGroup> CreateRankGroup(const std::string& device, int size, int threads);

// The tokenizer that belongs to a model path: tokenizer.json (+ tokenizer_config.json) or
// tokenizer.model in a directory, the vocabulary embedded in a .gguf, or the given file.
StatusOr<std::unique_ptr<tokenizer::Tokenizer>> LoadTokenizerFor(const std::string& path);

}  // namespace headwise::engine
