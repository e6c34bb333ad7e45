// Runs one prompt to completion on one model: `headwise generate`, the goldens and the passkey
// benchmark. A synchronous driver over the serving engine's step (engine/engine_core.h) with one
// sequence, so it admits, chunks the prefill, compacts, samples and stops exactly as the server
// does; only the caller's thread runs it.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/request_output.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"
#include "kvcache/kv_cache.h"
#include "models/llama_model.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine {

struct GenerationResult {
  std::vector<int32_t> output_ids;
  std::string text;
  FinishReason finish_reason = FinishReason::kStop;  // kStop (eos, stop token or string), kLength
  std::vector<SampledToken> tokens;                  // per output token, with logprobs when asked
  // The steps that computed the prompt (the last of them also samples the first token), and
  // the steps after it.
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
};

class Generator {
 public:
  // `eos_ids` end generation unless params.ignore_eos. The cache's pages are taken as the
  // request grows and all given back when it ends.
  Generator(models::LlamaModel& model, kvcache::KvCache& cache, const tokenizer::Tokenizer* tok,
            std::vector<int32_t> eos_ids);
  // Tensor parallelism: every rank's share of the model, rank 0 first (ModelRunner).
  Generator(std::vector<models::LlamaModel*> ranks, kvcache::KvCache& cache,
            const tokenizer::Tokenizer* tok, std::vector<int32_t> eos_ids);

  // Decode steps replay captured graphs where the backend can (default); off: all eager.
  void set_use_graphs(bool on) { use_graphs_ = on; }

  // `prefill_chunk` is the step's token budget (the engine's max_num_batched_tokens). `on_text`
  // receives the output text as it grows, never half a UTF-8 character nor a prefix of a stop
  // string that may still complete. InvalidArgument: bad parameters, or a request longer than
  // the model's context allows; ResourceExhausted: it does not fit in the KV cache.
  StatusOr<GenerationResult> Generate(std::span<const int32_t> prompt, const SamplingParams& params,
                                      int prefill_chunk = 512,
                                      const std::function<void(std::string_view)>& on_text = {});

 private:
  std::vector<models::LlamaModel*> ranks_;
  kvcache::KvCache& cache_;
  const tokenizer::Tokenizer* tokenizer_;
  std::vector<int32_t> eos_ids_;
  bool use_graphs_ = true;
};

}  // namespace headwise::engine
