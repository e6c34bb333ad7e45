// The pieces of radix top-k shared by the decode selection's top-k (select_decode.cu) and
// Backend::TopKeys's row top-k (top_keys.cu): floats as order-preserving 32-bit keys, and a
// block-wide exclusive prefix sum for compacting the chosen entries in order. Header-only device
// code.
#pragma once

#include <cstdint>

namespace headwise::kernels::cuda {

// Larger floats give larger keys; -0 counts as +0 (they compare equal).
__device__ __forceinline__ uint32_t OrderedKey(float v) {
  const uint32_t bits = __float_as_uint(v == 0.0f ? 0.0f : v);
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// Exclusive prefix sum of v over a block of kWarps full warps, in thread order; *total gets the
// sum. scratch: kWarps + 1 ints of shared memory. Every thread of the block must call it.
template <int kWarps>
__device__ int BlockExclusiveScan(int v, int* scratch, int* total) {
  static_assert(kWarps >= 1 && kWarps <= 32);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int x = v;
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const int y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    int w = lane < kWarps ? scratch[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < kWarps) scratch[lane] = w;  // inclusive sums of the warps' totals
    if (lane == kWarps - 1) scratch[kWarps] = w;
  }
  __syncthreads();
  const int before = (warp > 0 ? scratch[warp - 1] : 0) + x - v;
  *total = scratch[kWarps];
  __syncthreads();  // scratch is free again
  return before;
}

}  // namespace headwise::kernels::cuda
