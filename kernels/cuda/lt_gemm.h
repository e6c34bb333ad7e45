// Matrix products of more than a few rows (prefill, large decode batches) through cuBLASLt. The
// algorithm for a shape is picked once by cuBLASLt's heuristic and kept with its descriptors, so
// a repeated shape costs one library call; a bias rides in the GEMM's epilogue instead of a second
// pass over the output.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace headwise::kernels::cuda {

class LtGemm {
 public:
  // workspace must outlive this object and is used on `stream` only.
  LtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // out[m, n] = x[m, k] w[n, k]^T (+ bias[n]), row-major; x, w and bias bf16, out bf16 or f32
  // (out_f32), fp32 accumulation. A bias with an f32 output is not taken (false), nor is a shape
  // cuBLASLt has no algorithm for; errors of the library itself abort (HW_CHECK).
  bool Run(const void* x, const void* w, const void* bias, void* out, bool out_f32, int64_t m,
           int64_t n, int64_t k);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w = nullptr, x = nullptr, out = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  // (m, n, k, out_f32, bias, alignment of x, w and out): the heuristic's answer depends on all.
  using Key = std::tuple<int64_t, int64_t, int64_t, bool, bool, int, int, int>;
  Plan& PlanFor(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  cudaStream_t stream_;
  void* workspace_;
  size_t workspace_bytes_;
  std::map<Key, Plan> plans_;
};

}  // namespace headwise::kernels::cuda
