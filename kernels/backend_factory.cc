#include "kernels/backend_factory.h"

#include <algorithm>

#include "kernels/communicator.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/thread_communicator.h"
#ifdef HEADWISE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif
#ifdef HEADWISE_WITH_NCCL
#include "kernels/cuda/nccl_communicator.h"
#endif

namespace headwise::kernels {

StatusOr<std::unique_ptr<Backend>> CreateBackend(const std::string& device, int threads,
                                                 int device_index) {
  if (device == "cpu") return CreateCpuBackend(threads);
  if (device == "cuda") {
#ifdef HEADWISE_WITH_CUDA
    return CreateCudaBackend(device_index);
#else
    (void)device_index;
    return Unimplemented("--device cuda: this build has no CUDA backend (nvcc was not found)");
#endif
  }
  return InvalidArgument("--device must be cpu or cuda, got '{}'", device);
}

StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateCommunicators(
    std::span<Backend* const> backends) {
  if (backends.empty()) return InvalidArgument("a communicator group needs at least one rank");
  const Device device = backends.front()->device();
  if (!std::all_of(backends.begin(), backends.end(),
                   [device](const Backend* b) { return b->device() == device; })) {
    return InvalidArgument("the ranks of a tensor-parallel group run on different device kinds");
  }
  if (device == Device::kCpu) return CreateThreadCommunicators(static_cast<int>(backends.size()));
#ifdef HEADWISE_WITH_NCCL
  return CreateNcclCommunicators(backends);
#else
  return Unimplemented("tensor parallelism on CUDA: this build has no NCCL");
#endif
}

}  // namespace headwise::kernels
