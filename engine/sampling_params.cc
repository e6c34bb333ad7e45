#include "engine/sampling_params.h"

#include <cmath>

namespace headwise::engine {

Status SamplingParams::Validate(int vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return InvalidArgument("temperature must be >= 0, got {}", temperature);
  }
  if (top_k < -1) return InvalidArgument("top_k must be -1, 0 or positive, got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f))
    return InvalidArgument("top_p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f))
    return InvalidArgument("min_p must be in [0, 1], got {}", min_p);
  if (!(repetition_penalty > 0.0f && std::isfinite(repetition_penalty))) {
    return InvalidArgument("repetition_penalty must be > 0, got {}", repetition_penalty);
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return InvalidArgument("presence_penalty must be in [-2, 2], got {}", presence_penalty);
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return InvalidArgument("frequency_penalty must be in [-2, 2], got {}", frequency_penalty);
  }
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return InvalidArgument("logit_bias token id {} outside vocabulary of {}", id, vocab_size);
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return InvalidArgument("logit_bias for token {} must be in [-100, 100], got {}", id, bias);
    }
  }
  if (max_tokens < 1) return InvalidArgument("max_tokens must be >= 1, got {}", max_tokens);
  for (int32_t id : stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return InvalidArgument("stop_token_ids: {} outside vocabulary of {}", id, vocab_size);
    }
  }
  for (const auto& s : stop) {
    if (s.empty()) return InvalidArgument("stop strings must not be empty");
  }
  if (logprobs > 20) return InvalidArgument("logprobs must be at most 20, got {}", logprobs);
  return Status::Ok();
}

}  // namespace headwise::engine
