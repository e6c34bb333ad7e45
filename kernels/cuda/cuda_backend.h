// The CUDA backend: kernels::Backend on one GPU, bf16 storage (weights, activations, KV
// pages) with fp32 accumulation, GEMMs through cuBLAS. Every operation is checked against the
// CPU reference on random inputs (tests/kernels/cuda_backend_test.cc, run on the GPU machine).
#pragma once

#include <memory>
#include <optional>

#include "core/status.h"
#include "kernels/backend.h"

namespace headwise::kernels {

// Fails with a clear status when no usable GPU is present.
StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_index = 0);

// The GPU and stream of a backend made by CreateCudaBackend, for work issued beside its kernels
// in stream order (kernels/cuda/nccl_communicator.cc); nullopt for any other backend. The stream
// is a cudaStream_t.
struct CudaHandles {
  int device = 0;
  void* stream = nullptr;
};
std::optional<CudaHandles> CudaHandlesOf(Backend& backend);

}  // namespace headwise::kernels
