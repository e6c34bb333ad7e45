// A block-wide exclusive prefix sum for the kernels that compact selections in order (the decode
// selection's top-k, Backend::TopKeys's row top-k). Header-only device code.
#pragma once

namespace headwise::kernels::cuda {

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
