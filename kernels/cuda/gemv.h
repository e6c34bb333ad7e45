// Skinny matrix products for decode steps: out[m, n] = x[m, :] . w[n, :] (+ bias[n]) for a few
// rows m, with w bf16 [N, K] row-major. Such products are a pure stream over the weights, and
// general GEMM libraries tile them for throughput instead; this kernel reads each weight row once
// with wide streaming loads and multiplies on the tensor cores, the weight rows as the mma's M
// side and the activation rows as its N side, so that up to 64 rows cost little more than one.
//
// Results are deterministic and batch-invariant: a row's output is bitwise the same whatever m
// is (the K split and the order of its reduction depend on n, k and the device only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace headwise::kernels::cuda {

// Rows the skinny kernel takes; more go to cuBLAS. On the H100, in a graph of a decode step's
// GEMMs as the engine runs them, it beats cuBLAS up to 8 rows (m 1: 5.39 against 5.59 ms, 93%
// of the copy bandwidth) and loses past them; timed one launch at a time, cuBLAS is ahead on some
// shapes (bench/gpu/gemv_check.cu measures both ways).
constexpr int kGemvMaxRows = 8;
// Rows LaunchGemv computes correctly (and batch-invariantly), for callers that want it anyway.
constexpr int kGemvKernelMaxRows = 64;

// x bf16 [m, k], w bf16 [n, k], bias bf16 [n] or null; out [m, n] in bf16 or f32 (out_f32).
// Requires 1 <= m <= kGemvKernelMaxRows, n >= 1, k % 8 == 0, x and w 16-byte aligned. Launched as
// a programmatic dependent (kernels/cuda/launch.cuh): it reads w before the kernels before it on
// the stream have finished, so those must not write w.
void LaunchGemv(cudaStream_t stream, const __nv_bfloat16* x, const __nv_bfloat16* w,
                const __nv_bfloat16* bias, void* out, bool out_f32, int m, int n, int k);

}  // namespace headwise::kernels::cuda
