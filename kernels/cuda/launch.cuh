// Kernel launches with programmatic dependent launch (see ptx::WaitForPriorGrids): the decode
// path's kernels are mostly short, and letting each one get scheduled while its predecessor
// drains hides the launch gap, and lets a matrix product stream its weights before its input is
// ready. Header-only, for the kernel files and the standalone checks in bench/gpu.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace headwise::kernels::cuda {

class PdlLaunch {
 public:
  PdlLaunch(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream) {
    config_.gridDim = grid;
    config_.blockDim = block;
    config_.dynamicSmemBytes = shared_bytes;
    config_.stream = stream;
    attrs_[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs_[0].val.programmaticStreamSerializationAllowed = 1;
  }
  PdlLaunch& Cluster(unsigned blocks) {
    attrs_[1].id = cudaLaunchAttributeClusterDimension;
    attrs_[1].val.clusterDim.x = blocks;
    attrs_[1].val.clusterDim.y = 1;
    attrs_[1].val.clusterDim.z = 1;
    num_attrs_ = 2;
    return *this;
  }
  // The error, if any, is also left for the caller's cudaGetLastError.
  template <typename... Params, typename... Args>
  cudaError_t operator()(void (*kernel)(Params...), Args&&... args) {
    config_.attrs = attrs_;
    config_.numAttrs = num_attrs_;
    return cudaLaunchKernelEx(&config_, kernel, std::forward<Args>(args)...);
  }

 private:
  cudaLaunchConfig_t config_{};
  cudaLaunchAttribute attrs_[2]{};
  unsigned num_attrs_ = 1;
};

}  // namespace headwise::kernels::cuda
