// The CPU backend's GEMM: out[i][j] = dot(x[i], w[j]) with a summation order that depends only
// on k — never on how many rows x has, where a row sits in the batch, or how rows are split
// over threads. A sequence's logits are then bitwise the same whatever else shares its batch
// (DESIGN.md §6), which OpenBLAS does not give (its sgemm and sgemv kernels block differently
// by shape).
#pragma once

#include <cstdint>

#include "kernels/cpu/thread_pool.h"

namespace headwise::kernels::cpu {

// x [m, k], w [n, k], out [m, n], all row-major f32.
void MatmulBatchInvariant(const float* x, int64_t m, const float* w, int64_t n, int64_t k,
                          float* out, ThreadPool& pool);

}  // namespace headwise::kernels::cpu
