// What a request asks of the sampler and of the stop logic, with the semantics of vLLM's
// SamplingParams and the OpenAI API's ranges, and what sampling gives back for each token.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace headwise::engine {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  int top_k = 0;             // 0 or -1: off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;  // over prompt and output tokens (HF/vLLM semantics)
  float presence_penalty = 0.0f;    // over output tokens
  float frequency_penalty = 0.0f;   // over output tokens
  std::map<int32_t, float> logit_bias;
  std::optional<uint64_t> seed;
  int max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop;  // stop strings; excluded from the output text
  bool ignore_eos = false;
  int logprobs = -1;  // -1: none; k >= 0: the sampled token's logprob and k alternatives

  bool greedy() const { return temperature <= 0.0f; }
  // The one range check of a request's parameters (the server's parser checks JSON types only):
  // InvalidArgument with the parameter in Status::field, under the names above, which are the
  // OpenAI API's. The ranges are the API's too (temperature in [0, 2], as OpenAI allows).
  Status Validate(int vocab_size) const;
};

struct SampledToken {
  int32_t id = -1;
  float logprob = 0.0f;  // under the model's raw distribution (log-softmax of the logits)
  std::vector<std::pair<int32_t, float>> top_logprobs;  // the k most likely, best first
};

}  // namespace headwise::engine
