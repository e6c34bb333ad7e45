#include "kernels/backend_factory.h"

#include "kernels/cpu/cpu_backend.h"
#ifdef HEADWISE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace headwise::kernels {

StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device, int threads) {
  if (device == "cpu") return CreateCpuBackend(threads);
  if (device == "cuda") {
#ifdef HEADWISE_WITH_CUDA
    return CreateCudaBackend(0);
#else
    return Unimplemented("--device cuda: this build has no CUDA backend (nvcc was not found)");
#endif
  }
  return InvalidArgument("--device must be cpu or cuda, got '{}'", device);
}

}  // namespace headwise::kernels
