// Turns rows of logits into next tokens: logit bias, penalties, temperature, top-k, top-p,
// min-p, then a draw (rules in kernels/cpu/sampling.h). The draw for output position i of a
// sequence uses the counter-based noise of (seed, i), so a request's tokens depend only on its
// seed and its logits: never on what else shares the batch, on the backend, or on a
// preemption that recomputes it.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "engine/sampling_params.h"  // SampledToken
#include "kernels/backend.h"

namespace headwise::engine {

// One sequence's sampling parameters and seed.
class Sampler {
 public:
  // Without params.seed, a seed is drawn from std::random_device here, at admission.
  explicit Sampler(const SamplingParams& params);

  const SamplingParams& params() const { return params_; }
  uint64_t seed() const { return seed_; }

  // The next token after `output_tokens`, from host logits, with the CPU reference.
  SampledToken Sample(std::span<const float> logits, std::span<const int32_t> prompt_tokens,
                      std::span<const int32_t> output_tokens) const;

 private:
  SamplingParams params_;
  uint64_t seed_;
};

// Samples rows of device logits on the backend in one call (Backend::Sample); only tokens and
// logprobs come back to the host. Device buffers are reused from call to call.
class BatchSampler {
 public:
  explicit BatchSampler(kernels::Backend& backend) : backend_(backend) {}

  struct Row {
    const Sampler* sampler = nullptr;
    int logits_row = 0;  // row of the logits tensor this sequence samples
    std::span<const int32_t> prompt;
    std::span<const int32_t> output;  // tokens generated so far; its size is the draw index
  };
  // logits: f32 [N, V] on the backend's device. One token per row, in order.
  std::vector<SampledToken> Sample(const Tensor& logits, std::span<const Row> rows);

 private:
  kernels::Backend& backend_;
  kernels::Buffer in_, out_;
};

}  // namespace headwise::engine
