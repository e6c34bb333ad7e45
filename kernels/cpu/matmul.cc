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

// R dot products of rows x[0..R) with one row w.
template <int R>
HW_MATMUL_CLONES void DotTile(const float* const* x, const float* w, int64_t k, float* out) {
  float acc[R][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    for (int r = 0; r < R; ++r) {
      for (int l = 0; l < kLanes; ++l) acc[r][l] += x[r][i + l] * w[i + l];
    }
  }
  for (int l = 0; i + l < k; ++l) {
    for (int r = 0; r < R; ++r) acc[r][l] += x[r][i + l] * w[i + l];
  }
  for (int r = 0; r < R; ++r) out[r] = ReduceLanes(acc[r]);
}

}  // namespace

void MatmulBatchInvariant(const float* x, int64_t m, const float* w, int64_t n, int64_t k,
                          float* out, ThreadPool& pool) {
  constexpr int kTile = 4;
  pool.ParallelFor(n, m * n * k, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const float* wj = w + j * k;
      int64_t i = 0;
      for (; i + kTile <= m; i += kTile) {
        const float* rows[kTile] = {x + i * k, x + (i + 1) * k, x + (i + 2) * k, x + (i + 3) * k};
        float dots[kTile];
        DotTile<kTile>(rows, wj, k, dots);
        for (int r = 0; r < kTile; ++r) out[(i + r) * n + j] = dots[r];
      }
      for (; i < m; ++i) {
        const float* row = x + i * k;
        DotTile<1>(&row, wj, k, out + i * n + j);
      }
    }
  });
}

}  // namespace headwise::kernels::cpu
