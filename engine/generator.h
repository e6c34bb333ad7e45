// Runs one prompt to completion on one model: chunked prefill, then decode steps, sampling and
// stop conditions. The CLI's engine; the server's continuous-batching engine (issue 3) reuses
// the same pieces per sequence.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"
#include "kvcache/kv_cache.h"
#include "models/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine {

struct GenerationResult {
  std::vector<int32_t> output_ids;
  std::string text;
  std::string finish_reason;         // "stop" (eos, stop token or stop string) or "length"
  std::vector<SampledToken> tokens;  // per output token, with logprobs when asked
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};

class Generator {
 public:
  // `eos_ids` end generation unless params.ignore_eos.
  Generator(models::LlamaModel& model, kvcache::KvCache& cache, const tokenizer::Tokenizer* tok,
            std::vector<int32_t> eos_ids);

  void set_use_graphs(bool on) { runner_.set_use_graphs(on); }

  // `on_text` receives the output text as it grows, never half a UTF-8 character nor a prefix
  // of a stop string that may still complete.
  StatusOr<GenerationResult> Generate(std::span<const int32_t> prompt, const SamplingParams& params,
                                      int prefill_chunk = 512,
                                      const std::function<void(std::string_view)>& on_text = {});

 private:
  models::LlamaModel& model_;
  kvcache::KvCache& cache_;
  ModelRunner runner_;
  const tokenizer::Tokenizer* tokenizer_;
  std::vector<int32_t> eos_ids_;
};

}  // namespace headwise::engine
