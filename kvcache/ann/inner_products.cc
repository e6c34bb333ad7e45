#include "kvcache/ann/inner_products.h"

#include <cstdint>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace headwise::kvcache::ann {
namespace {

using kernels::cpu::Bf16;
using kernels::cpu::InnerProduct;

template <typename Key>
void Portable(const Key* key, const float* queries, size_t count, size_t dim, float* out) {
  for (size_t g = 0; g < count; ++g) out[g] = InnerProduct(key, queries + g * dim, dim);
}

#if defined(__x86_64__)
// Lane j of a group's accumulator is FixedOrderSum's acc[j]: it takes the terms i = j (mod 8) in
// increasing i, then the eight lanes are summed in FixedOrderSum's tree.
__attribute__((target("avx2"))) inline __m256 Load8(const float* p) {
  return _mm256_loadu_ps(p);
}
__attribute__((target("avx2"))) inline __m256 Load8(const Bf16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}

// FixedOrderSum's tree, ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)), in registers.
__attribute__((target("avx2"))) inline float SumLanes(__m256 acc) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 t = _mm_add_ps(s, _mm_shuffle_ps(s, s, _MM_SHUFFLE(2, 3, 0, 1)));  // s0+s1, s2+s3
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehl_ps(t, t)));
}

// Up to kMaxGroup queries a pass (their accumulators stay in registers).
constexpr size_t kMaxGroup = 4;

template <size_t G, typename Key>
__attribute__((target("avx2"))) void Avx2Group(const Key* key, const float* queries, size_t dim,
                                               float* out) {
  __m256 acc[G];
  for (size_t g = 0; g < G; ++g) acc[g] = _mm256_setzero_ps();
  for (size_t i = 0; i < dim; i += 8) {
    const __m256 k = Load8(key + i);
    for (size_t g = 0; g < G; ++g) {
      acc[g] = _mm256_add_ps(acc[g], _mm256_mul_ps(k, _mm256_loadu_ps(queries + g * dim + i)));
    }
  }
  for (size_t g = 0; g < G; ++g) out[g] = SumLanes(acc[g]);
}

template <typename Key>
__attribute__((target("avx2"))) void Avx2(const Key* key, const float* queries, size_t count,
                                          size_t dim, float* out) {
  size_t g = 0;
  for (; g + kMaxGroup <= count; g += kMaxGroup) {
    Avx2Group<kMaxGroup>(key, queries + g * dim, dim, out + g);
  }
  switch (count - g) {
    case 3:
      Avx2Group<3>(key, queries + g * dim, dim, out + g);
      break;
    case 2:
      Avx2Group<2>(key, queries + g * dim, dim, out + g);
      break;
    case 1:
      Avx2Group<1>(key, queries + g * dim, dim, out + g);
      break;
    default:
      break;
  }
}

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

template <typename Key>
void Dispatch(const Key* key, const float* queries, size_t count, size_t dim, float* out) {
#if defined(__x86_64__)
  // The vector path needs whole groups of eight values (every head_dim of the models served).
  if (kHaveAvx2 && dim % 8 == 0) return Avx2(key, queries, count, dim, out);
#endif
  Portable(key, queries, count, dim, out);
}

}  // namespace

void InnerProducts(const float* key, const float* queries, size_t count, size_t dim, float* out) {
  Dispatch(key, queries, count, dim, out);
}

void InnerProducts(const Bf16* key, const float* queries, size_t count, size_t dim, float* out) {
  Dispatch(key, queries, count, dim, out);
}

}  // namespace headwise::kvcache::ann
