#include "kernels/cuda/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <set>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

namespace headwise::kernels {
namespace {

#define HW_NCCL_CHECK(call)                                                                       \
  do {                                                                                            \
    const ncclResult_t hw_nccl_result = (call);                                                   \
    HW_CHECK(hw_nccl_result == ncclSuccess, "{}: {}", #call, ncclGetErrorString(hw_nccl_result)); \
  } while (0)
#define HW_CUDA_RT_CHECK(call)                                                              \
  do {                                                                                      \
    const cudaError_t hw_cuda_err = (call);                                                 \
    HW_CHECK(hw_cuda_err == cudaSuccess, "{}: {}", #call, cudaGetErrorString(hw_cuda_err)); \
  } while (0)

ncclDataType_t NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    default:
      HW_CHECK(false, "NCCL: no reduction for {}", DTypeName(dtype));
  }
  return ncclFloat32;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device, cudaStream_t stream)
      : comm_(comm), rank_(rank), size_(size), device_(device), stream_(stream) {}
  ~NcclCommunicator() override {
    if (staging_ != nullptr) cudaFree(staging_);
    ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void AllReduceSum(const Tensor& x) override {
    HW_NCCL_CHECK(ncclAllReduce(x.data, x.data, static_cast<size_t>(x.numel()), NcclType(x.dtype),
                                ncclSum, comm_, stream_));
  }

  // Every rank sends its [R, C_r] rows to the root, which receives them contiguously in a staging
  // buffer and places each rank's block into its columns of out with a strided copy.
  void GatherColumns(const Tensor& local, const Tensor& out, int root) override {
    HW_CHECK(local.dtype == DType::kF32 && local.rank == 2, "GatherColumns: f32 [R, C] tensor");
    const int64_t rows = local.dim(0), cols = local.dim(1);
    const size_t count = static_cast<size_t>(rows * cols);
    if (rank_ != root) {
      HW_NCCL_CHECK(ncclSend(local.data, count, ncclFloat32, root, comm_, stream_));
      return;
    }
    const int64_t width = out.dim(1);
    HW_CHECK(width <= cols * size_, "GatherColumns: {} columns from {} x {}", width, size_, cols);
    const size_t block = count * sizeof(float);
    if (staging_bytes_ < block * static_cast<size_t>(size_)) {
      // Sized by the first (eager) step, never while a graph is captured.
      if (staging_ != nullptr) HW_CUDA_RT_CHECK(cudaFree(staging_));
      staging_bytes_ = block * static_cast<size_t>(size_);
      HW_CUDA_RT_CHECK(cudaMalloc(&staging_, staging_bytes_));
    }
    HW_NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < size_; ++r) {
      if (r == root) continue;
      HW_NCCL_CHECK(ncclRecv(static_cast<char*>(staging_) + block * static_cast<size_t>(r), count,
                             ncclFloat32, r, comm_, stream_));
    }
    HW_NCCL_CHECK(ncclGroupEnd());
    int64_t col = 0;
    for (int r = 0; r < size_; ++r) {
      const void* src = r == root ? local.data : static_cast<char*>(staging_) + block * r;
      const int64_t c = std::min(cols, width - col);
      if (c <= 0) break;
      HW_CUDA_RT_CHECK(cudaMemcpy2DAsync(
          out.ptr<float>() + col, static_cast<size_t>(width) * sizeof(float), src,
          static_cast<size_t>(cols) * sizeof(float), static_cast<size_t>(c) * sizeof(float),
          static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream_));
      col += c;
    }
  }

 private:
  ncclComm_t comm_;
  int rank_, size_, device_;
  cudaStream_t stream_;
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
};

}  // namespace

StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateNcclCommunicators(
    std::span<Backend* const> backends) {
  const int n = static_cast<int>(backends.size());
  std::vector<int> devices;
  std::vector<cudaStream_t> streams;
  for (Backend* be : backends) {
    const std::optional<CudaHandles> h = CudaHandlesOf(*be);
    if (!h) return InvalidArgument("NCCL needs CUDA backends, got {}", be->name());
    devices.push_back(h->device);
    streams.push_back(static_cast<cudaStream_t>(h->stream));
  }
  if (std::set<int>(devices.begin(), devices.end()).size() != devices.size()) {
    return InvalidArgument("tensor parallelism needs a distinct GPU per rank");
  }
  std::vector<ncclComm_t> comms(static_cast<size_t>(n));
  const ncclResult_t init = ncclCommInitAll(comms.data(), n, devices.data());
  if (init != ncclSuccess) {
    return Internal("NCCL: ncclCommInitAll over {} GPUs: {}", n, ncclGetErrorString(init));
  }
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r) {
    out.push_back(std::make_unique<NcclCommunicator>(comms[static_cast<size_t>(r)], r, n,
                                                     devices[static_cast<size_t>(r)],
                                                     streams[static_cast<size_t>(r)]));
  }
  return out;
}

}  // namespace headwise::kernels
