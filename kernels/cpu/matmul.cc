#include "kernels/cpu/matmul.h"

#include <algorithm>

namespace headwise::kernels::cpu {
namespace {

// Lane l of an accumulator adds elements l, l + kLanes, l + 2 kLanes, ... of the product; the
// lanes are then summed pairwise in a fixed tree. Every dot product, alone or in a tile of
// rows, performs exactly these operations in this order. This file is built with
// -ffp-contract=off so that no variant fuses multiply and add differently.
constexpr int kLanes = 16;

float ReduceLanes(float* acc) {
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

// An AVX2 clone beside the baseline, picked at load time. The baseline only where that fails:
// clang (the fuzz build, scripts/fuzz.sh) does not support target_clones on templates, and
// under ThreadSanitizer the clone's ifunc resolver, instrumented, runs during relocation before
// the TSan runtime exists and crashes every binary at startup (scripts/sanitize.sh thread).
#if defined(__clang__) || defined(__SANITIZE_THREAD__)
#define HW_MATMUL_CLONES
#else
#define HW_MATMUL_CLONES __attribute__((target_clones("avx2", "default")))
#endif

// Left out of sanitizer instrumentation: this loop is nearly all of a CPU model run, and
// checking each load (ASan) and each array index (UBSan's bounds checks, which also stop the
// loop from vectorizing) makes sanitized runs some 20x slower: a CI test of `headwise eval`
// timed out. It reads k floats from each row, and Matmul checks those extents against the
// tensors' shapes before calling it; every other access to the tensors stays instrumented.
#if defined(__SANITIZE_ADDRESS__)
#define HW_MATMUL_UNCHECKED __attribute__((no_sanitize("address", "undefined")))
#else
#define HW_MATMUL_UNCHECKED
#endif

// Eight lanes in one vector register (GCC vector extension: element-wise arithmetic, so each
// lane performs exactly the scalar operations of the order above). Loads go through memcpy: rows
// have no alignment guarantee.
typedef float Lanes8 __attribute__((vector_size(32)));

inline void Load8(Lanes8& v, const float* p) { __builtin_memcpy(&v, p, sizeof v); }

// R dot products of rows x[0..R) with one row w. Lanes 0-7 of a row's accumulator live in lo,
// lanes 8-15 in hi: written as vectors because GCC's vectorizer, given the scalar lane loop,
// kept the accumulators in memory (4 of a possible 16 flops per cycle).
template <int R>
HW_MATMUL_CLONES HW_MATMUL_UNCHECKED void DotTile(const float* const* x, const float* w, int64_t k,
                                                 float* out) {
  static_assert(kLanes == 16, "lo and hi hold the 16 lanes");
  Lanes8 lo[R] = {}, hi[R] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    Lanes8 w_lo, w_hi, x_lo, x_hi;
    Load8(w_lo, w + i);
    Load8(w_hi, w + i + 8);
    for (int r = 0; r < R; ++r) {
      Load8(x_lo, x[r] + i);
      Load8(x_hi, x[r] + i + 8);
      lo[r] += x_lo * w_lo;
      hi[r] += x_hi * w_hi;
    }
  }
  for (int r = 0; r < R; ++r) {
    float acc[kLanes];
    __builtin_memcpy(acc, &lo[r], sizeof lo[r]);
    __builtin_memcpy(acc + 8, &hi[r], sizeof hi[r]);
    for (int l = 0; i + l < k; ++l) acc[l] += x[r][i + l] * w[i + l];
    out[r] = ReduceLanes(acc);
  }
}

}  // namespace

void MatmulBatchInvariant(const float* x, int64_t m, const float* w, int64_t n, int64_t k,
                          float* out, ThreadPool& pool) {
  constexpr int kTile = 4;
  // Rows of x in blocks of about 256 KiB, so that a block stays in L2 while each row of w in
  // the thread's range passes over it (blocking changes which products run when, never how
  // one is summed).
  const int64_t block_rows =
      std::max<int64_t>(kTile, (256 * 1024 / (4 * std::max<int64_t>(k, 1))) / kTile * kTile);
  pool.ParallelFor(n, m * n * k, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = 0; i0 < m; i0 += block_rows) {
      const int64_t i1 = std::min(m, i0 + block_rows);
      for (int64_t j = begin; j < end; ++j) {
        const float* wj = w + j * k;
        int64_t i = i0;
        for (; i + kTile <= i1; i += kTile) {
          const float* rows[kTile] = {x + i * k, x + (i + 1) * k, x + (i + 2) * k,
                                      x + (i + 3) * k};
          float dots[kTile];
          DotTile<kTile>(rows, wj, k, dots);
          for (int r = 0; r < kTile; ++r) out[(i + r) * n + j] = dots[r];
        }
        for (; i < i1; ++i) {
          const float* row = x + i * k;
          DotTile<1>(&row, wj, k, out + i * n + j);
        }
      }
    }
  });
}

}  // namespace headwise::kernels::cpu
