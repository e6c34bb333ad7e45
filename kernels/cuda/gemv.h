// Skinny matrix products for decode steps: out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for a few
// rows m, with w bf16 [N, K] row-major. Such products are a pure stream over the weights, and
// general GEMM libraries tile them for throughput instead; these kernels read each weight row
// once with wide streaming loads and keep the few activation rows in L1.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace headwise::kernels::cuda {

// Rows the skinny kernels take; more go to cuBLAS.
constexpr int kGemvMaxRows = 8;

// x bf16 [m, k], w bf16 [n, k], bias bf16 [n] or null; out [m, n] in bf16 or f32 (out_f32).
// Requires m <= kGemvMaxRows and k % 8 == 0, pointers 16-byte aligned.
void LaunchGemv(cudaStream_t stream, const __nv_bfloat16* x, const __nv_bfloat16* w,
                const __nv_bfloat16* bias, void* out, bool out_f32, int m, int n, int k);

}  // namespace headwise::kernels::cuda
