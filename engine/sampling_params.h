// What a request asks of the sampler and of the stop logic, with the semantics of vLLM's
// SamplingParams (and therefore of the OpenAI API).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
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
  // Range checks, with the parameter named in the message.
  Status Validate(int vocab_size) const;
};

}  // namespace headwise::engine
