// What the commands that start an Engine share on their command line: the engine's flags
// (--max-model-len, --max-num-seqs, --kv-cache-memory, ...), byte counts such as 512M,
// Engine::Start's refusals in the words of those flags, and loading the model onto its backend.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "engine/engine_config.h"
#include "engine/model_loader.h"
#include "kernels/backend.h"
#include "tools/flags.h"

namespace headwise::tools {

// "512M", "2G", "1048576", "64k": binary multiples. Errors name --`flag`.
StatusOr<int64_t> ParseBytes(const std::string& flag, std::string s);

// An Engine::Start refusal in the words of the command line: the EngineConfig field it names
// becomes the flag that sets it ("max_num_seqs must be >= 1" -> "--max-num-seqs must be >= 1").
Status InFlagTerms(const Status& s);

// The engine's flags as `headwise serve` spells them, for commands other than serve (which
// registers its own among its server flags).
struct EngineFlags {
  engine::EngineConfig config;
  std::string device = "cpu";
  std::string tokenizer_path;
  int threads = 0;
  int tensor_parallel_size = 1;
  bool enforce_eager = false;

  // --max-model-len --max-num-seqs --max-num-batched-tokens --kv-cache-memory --num-kv-pages
  // --gpu-memory-utilization --device --threads --tensor-parallel-size --enforce-eager
  // --tokenizer
  void Register(FlagParser& flags);
  // After FlagParser::Finish: the values that need parsing (byte counts).
  Status Finish();

 private:
  std::string kv_memory_;
  std::string cpu_kv_memory_;
  float gpu_memory_utilization_ = 0.9f;
};

struct ModelOnBackend {
  engine::RankGroup ranks;  // one backend without tensor parallelism
  engine::LoadedModel model;
};
// The backends of `flags.device` (--tensor-parallel-size of them) and the model at `path` on
// them (with its tokenizer: an error without one).
StatusOr<ModelOnBackend> LoadModelOnBackend(const std::string& path, const EngineFlags& flags);

}  // namespace headwise::tools
