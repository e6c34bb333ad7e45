// Token sampling, the reference: Backend::Sample on the CPU, and the counter-based noise that
// the CUDA kernels (kernels/cuda/sampling.cu) share with it, so that both backends draw the
// same token from the same (seed, draw index) whatever the batch.
//
// The rules, per row (vLLM / OpenAI semantics):
//   x = logits + logit bias; repetition penalty on tokens of prompt or output (x > 0: x / r,
//   else x * r); x -= frequency * count + presence on tokens of the output.
//   temperature 0: the argmax of x, lowest id on ties.
//   Otherwise y = x * (1 / T). Tokens ordered by (y descending, id ascending); keep the first
//   top_k; of those keep the shortest prefix whose softmax mass reaches top_p (the best token
//   always stays); drop tokens whose probability is below min_p times the best one's, i.e.
//   exp(y - max y) < min_p. Among the kept tokens, take the argmax of y + g(token) (lowest id on
//   ties): with g a standard Gumbel draw this is a draw from softmax(y) restricted to the kept
//   set (the Gumbel-max trick), and it needs no sort and no prefix sum on a GPU.
//   Logprobs are the log-softmax of the unmodified logits; alternatives best first, ties by
//   lower id.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/backend.h"

#if defined(__CUDACC__)
#define HW_SAMPLING_HD __host__ __device__ __forceinline__
#else
#define HW_SAMPLING_HD inline
#endif

namespace headwise::kernels {

// The noise of one row: a key derived once from (seed, draw index).
struct NoiseKey {
  uint32_t a = 0, b = 0;
};

// splitmix64's finaliser: a bijection with full avalanche, so nearby seeds and draw indices
// give unrelated keys.
HW_SAMPLING_HD uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// murmur3's 32-bit finaliser: cheap on a GPU (two 32-bit multiplies), full avalanche.
HW_SAMPLING_HD uint32_t Mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  return h ^ (h >> 16);
}

HW_SAMPLING_HD NoiseKey MakeNoiseKey(uint64_t seed, uint32_t draw) {
  const uint64_t k = Mix64(seed ^ Mix64(0x9e3779b97f4a7c15ull * (uint64_t{draw} + 1)));
  return NoiseKey{static_cast<uint32_t>(k), static_cast<uint32_t>(k >> 32)};
}

// 32 random bits for a token: two keyed rounds, so every key gives a different permutation of
// the token ids.
HW_SAMPLING_HD uint32_t TokenBits(NoiseKey key, uint32_t token) {
  return Mix32(Mix32(token ^ key.a) + key.b);
}

// A standard Gumbel draw -log(E), E = -log(U) ~ Exp(1), U = (m + 1/2) / 2^32. E comes from
// whichever tail of U keeps its precision in float: -log(U) for U < 1/2, -log1p(-(1 - U))
// above, so E reaches down to 2^-33 (the Gumbel's upper tail, which decides whether an
// unlikely token wins, is not cut short at float's 2^-24 spacing near 1). Written with plain
// float operations and logf/log1pf, which both backends implement to within an ulp or two.
HW_SAMPLING_HD float GumbelFromBits(uint32_t m) {
  float e;
  if (m < 0x80000000u) {
    e = -logf((static_cast<float>(m) + 0.5f) * 0x1p-32f);
  } else {
    e = -log1pf(-((static_cast<float>(0xffffffffu - m) + 0.5f) * 0x1p-32f));
  }
  return -logf(e);
}

HW_SAMPLING_HD float GumbelNoise(NoiseKey key, int32_t token) {
  return GumbelFromBits(TokenBits(key, static_cast<uint32_t>(token)));
}

// A float's order as an unsigned key (a < b  <=>  key(a) < key(b)); -0 and +0 share a key, as
// they compare equal. NaN is not expected.
HW_SAMPLING_HD uint32_t OrderedKey(uint32_t bits) {
  if (bits == 0x80000000u) bits = 0;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// a * b rounded on its own: nvcc would otherwise fuse a product into a following add, and the
// CPU never does (sampling.cc is built with -ffp-contract=off).
HW_SAMPLING_HD float MulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// The temperature's reciprocal, applied by multiplication on both backends (1 for greedy rows,
// whose argmax is taken on x).
HW_SAMPLING_HD float InverseTemperature(float temperature) {
  return temperature > 0.0f ? 1.0f / temperature : 1.0f;
}

// One row's parameters, as read from a SamplingBatch.
struct SamplingRow {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  uint32_t draw = 0;
  int32_t num_logprobs = -1;
};

// x after one penalty entry (the token occurs in the prompt and/or `count` times in the
// output); bias already added. Separate multiplies and adds, never fused, on both backends.
HW_SAMPLING_HD float ApplyPenalty(float x, const SamplingRow& p, int32_t count, bool in_prompt) {
  if (p.repetition_penalty != 1.0f && (in_prompt || count > 0)) {
    x = x > 0.0f ? x / p.repetition_penalty : x * p.repetition_penalty;
  }
  if (count > 0) {
    const float fc = MulRn(p.frequency_penalty, static_cast<float>(count));
    x = x - (fc + p.presence_penalty);
  }
  return x;
}

// Backend::Sample on host tensors (f32 logits, i32/f32 batch fields as documented in
// kernels/backend.h). Rows are independent; the result of a row depends only on its logits row
// and its own parameters.
void SampleCpu(const Tensor& logits, const SamplingBatch& batch, const SampleOutputs& out);

}  // namespace headwise::kernels
