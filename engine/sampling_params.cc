#include "engine/sampling_params.h"

#include <cmath>

namespace headwise::engine {
namespace {

// InvalidArgument naming `field`, which the message also starts with.
template <typename... Args>
Status FieldError(const char* field, fmt::format_string<Args...> f, Args&&... args) {
  return InvalidArgument(f, std::forward<Args>(args)...).WithField(field);
}

}  // namespace

Status SamplingParams::Validate(int vocab_size) const {
  if (!(temperature >= 0.0f && temperature <= 2.0f)) {
    return FieldError("temperature", "temperature must be in [0, 2], got {}", temperature);
  }
  if (top_k < -1) {
    return FieldError("top_k", "top_k must be -1, 0 or positive, got {}", top_k);
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return FieldError("top_p", "top_p must be in (0, 1], got {}", top_p);
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return FieldError("min_p", "min_p must be in [0, 1], got {}", min_p);
  }
  if (!(repetition_penalty > 0.0f && repetition_penalty <= 100.0f)) {
    return FieldError("repetition_penalty", "repetition_penalty must be in (0, 100], got {}",
                      repetition_penalty);
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return FieldError("presence_penalty", "presence_penalty must be in [-2, 2], got {}",
                      presence_penalty);
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return FieldError("frequency_penalty", "frequency_penalty must be in [-2, 2], got {}",
                      frequency_penalty);
  }
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return FieldError("logit_bias", "logit_bias token id {} outside vocabulary of {}", id,
                        vocab_size);
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return FieldError("logit_bias", "logit_bias for token {} must be in [-100, 100], got {}", id,
                        bias);
    }
  }
  if (max_tokens < 1) {
    return FieldError("max_tokens", "max_tokens must be >= 1, got {}", max_tokens);
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return FieldError("stop_token_ids", "stop_token_ids: {} outside vocabulary of {}", id,
                        vocab_size);
    }
  }
  for (const auto& s : stop) {
    if (s.empty()) return FieldError("stop", "stop strings must not be empty");
  }
  if (logprobs < -1 || logprobs > 20) {
    return FieldError("logprobs", "logprobs must be in [0, 20], got {}", logprobs);
  }
  return Status::Ok();
}

}  // namespace headwise::engine
