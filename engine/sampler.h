// Turns one row of logits into the next token of one sequence: logit bias, penalties,
// temperature, top-k, top-p, min-p, then a draw from the sequence's own seeded generator, so a
// request's output depends only on its seed, never on what else shares the batch.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "engine/sampling_params.h"

namespace headwise::engine {

struct SampledToken {
  int32_t id = -1;
  float logprob = 0.0f;  // under the model's raw distribution (log-softmax of the logits)
  std::vector<std::pair<int32_t, float>> top_logprobs;  // the k most likely, best first
};

class Sampler {
 public:
  // Without params.seed the generator is seeded from std::random_device.
  explicit Sampler(const SamplingParams& params);

  SampledToken Sample(std::span<const float> logits, std::span<const int32_t> prompt_tokens,
                      std::span<const int32_t> output_tokens);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace headwise::engine
