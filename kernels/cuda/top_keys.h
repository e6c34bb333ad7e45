// Top-k per row of a score matrix on the GPU: the selection half of Backend::TopKeys (the offload
// tier's RoarGraph build, ALGORITHMS.md §5.1), whose scores come from one cuBLASLt product of the
// queries with a head's keys. Standalone: the CUDA runtime only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace headwise::kernels::cuda {

// ids[r, 0..k) = the k largest of scores[r, 0..n) (f32, rows of n), best first, ties to the lower
// column, for r < rows. 1 <= k <= kRowTopKMax and k <= n, else false and nothing launched.
inline constexpr int kRowTopKMax = 1024;
bool LaunchRowTopK(cudaStream_t stream, const float* scores, int64_t rows, int64_t n, int k,
                   int32_t* ids);

}  // namespace headwise::kernels::cuda
