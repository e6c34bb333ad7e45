// The CPU backend: the fp32 reference implementation of kernels::Backend. Simple loops that are
// obviously correct, a batch-invariant vectorised GEMM (cpu/matmul.h), a thread pool for the rest.
#pragma once

#include <memory>

#include "kernels/backend.h"

namespace headwise::kernels {

// num_threads <= 0: one per hardware thread.
std::unique_ptr<Backend> CreateCpuBackend(int num_threads = 0);

}  // namespace headwise::kernels
