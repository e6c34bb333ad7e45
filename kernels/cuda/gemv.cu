#include "kernels/cuda/gemv.h"

namespace headwise::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kWarps = 8;        // per block
constexpr int kRowsPerWarp = 2;  // weight rows per warp: each activation load serves both

__device__ __forceinline__ void ToFloat8(const uint4& raw, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

__device__ __forceinline__ void StoreOut(float* out, float v) {
  *out = v;
}
__device__ __forceinline__ void StoreOut(bf16* out, float v) {
  *out = __float2bfloat16(v);
}

// Each warp owns kRowsPerWarp weight rows; lane l reads 16 bytes at k = 8 l, 8 l + 256, ...
// M is the activation row count rounded up to a power of two (rows >= m are skipped).
template <int M, typename Out>
__global__ void __launch_bounds__(32 * kWarps)
    GemvKernel(const bf16* __restrict__ x, const bf16* __restrict__ w,
               const bf16* __restrict__ bias, Out* __restrict__ out, int m, int n, int k) {
  const int lane = threadIdx.x % 32;
  const int row0 = (blockIdx.x * kWarps + threadIdx.x / 32) * kRowsPerWarp;
  if (row0 >= n) return;
  float acc[kRowsPerWarp][M] = {};
  const bf16* w_rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) w_rows[r] = w + int64_t{min(row0 + r, n - 1)} * k;
#pragma unroll 4
  for (int kk = lane * 8; kk < k; kk += 32 * 8) {
    float wf[kRowsPerWarp][8];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      // Weights are read once per step: stream them past L1, which keeps the activations.
      ToFloat8(__ldcs(reinterpret_cast<const uint4*>(w_rows[r] + kk)), wf[r]);
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
      if (i >= m) break;
      float xf[8];
      ToFloat8(__ldg(reinterpret_cast<const uint4*>(x + int64_t{i} * k + kk)), xf);
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[r][i] += wf[r][j] * xf[j];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float v = acc[r][i];
      for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
      acc[r][i] = v;
    }
  }
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = row0 + r;
    if (row >= n) break;
    const float b = bias != nullptr ? __bfloat162float(bias[row]) : 0.0f;
#pragma unroll
    for (int i = 0; i < M; ++i) {
      if (i < m) StoreOut(out + int64_t{i} * n + row, acc[r][i] + b);
    }
  }
}

template <typename Out>
void Launch(cudaStream_t stream, const bf16* x, const bf16* w, const bf16* bias, Out* out, int m,
            int n, int k) {
  const int rows_per_block = kWarps * kRowsPerWarp;
  const dim3 grid((n + rows_per_block - 1) / rows_per_block), block(32 * kWarps);
  if (m <= 1) {
    GemvKernel<1><<<grid, block, 0, stream>>>(x, w, bias, out, m, n, k);
  } else if (m <= 2) {
    GemvKernel<2><<<grid, block, 0, stream>>>(x, w, bias, out, m, n, k);
  } else if (m <= 4) {
    GemvKernel<4><<<grid, block, 0, stream>>>(x, w, bias, out, m, n, k);
  } else {
    GemvKernel<8><<<grid, block, 0, stream>>>(x, w, bias, out, m, n, k);
  }
}

}  // namespace

void LaunchGemv(cudaStream_t stream, const bf16* x, const bf16* w, const bf16* bias, void* out,
                bool out_f32, int m, int n, int k) {
  if (out_f32) {
    Launch(stream, x, w, bias, static_cast<float*>(out), m, n, k);
  } else {
    Launch(stream, x, w, bias, static_cast<bf16*>(out), m, n, k);
  }
}

}  // namespace headwise::kernels::cuda
