#include "kernels/cuda/lt_gemm.h"

#include <algorithm>

#include "core/status.h"

namespace headwise::kernels::cuda {
namespace {

#define HW_LT_CHECK(expr)                                                      \
  do {                                                                         \
    const cublasStatus_t hw_st_ = (expr);                                      \
    HW_CHECK(hw_st_ == CUBLAS_STATUS_SUCCESS, "{}: cuBLASLt status {}", #expr, \
             static_cast<int>(hw_st_));                                        \
  } while (0)

// The largest power of two up to 256 that divides the address: cuBLASLt assumes 256-byte
// alignment unless told otherwise, and views into a buffer may start anywhere.
int Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int align = 256;
  while (align > 1 && a % static_cast<uintptr_t>(align) != 0) align /= 2;
  return align;
}

template <typename T>
void SetDesc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  HW_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

}  // namespace

LtGemm::LtGemm(cudaStream_t stream, void* workspace, size_t workspace_bytes)
    : stream_(stream), workspace_(workspace), workspace_bytes_(workspace_bytes) {
  HW_LT_CHECK(cublasLtCreate(&handle_));
}

LtGemm::~LtGemm() {
  for (auto& [key, plan] : plans_) {
    cublasLtMatrixLayoutDestroy(plan.out);
    cublasLtMatrixLayoutDestroy(plan.x);
    cublasLtMatrixLayoutDestroy(plan.w);
    cublasLtMatmulDescDestroy(plan.desc);
  }
  cublasLtDestroy(handle_);
}

LtGemm::Plan& LtGemm::PlanFor(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, out_f32, bias, align_x, align_w, align_out] = key;
  Plan& plan = plans_[key];
  // Row-major out[m, n] = x w^T is column-major out^T[n, m] = (w as [k, n])^T (x as [k, m]).
  HW_LT_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  SetDesc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  SetDesc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  if (bias) SetDesc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, CUBLASLT_EPILOGUE_BIAS);
  const cudaDataType out_type = out_f32 ? CUDA_R_32F : CUDA_R_16BF;
  HW_LT_CHECK(cublasLtMatrixLayoutCreate(&plan.w, CUDA_R_16BF, static_cast<uint64_t>(k),
                                         static_cast<uint64_t>(n), k));
  HW_LT_CHECK(cublasLtMatrixLayoutCreate(&plan.x, CUDA_R_16BF, static_cast<uint64_t>(k),
                                         static_cast<uint64_t>(m), k));
  HW_LT_CHECK(cublasLtMatrixLayoutCreate(&plan.out, out_type, static_cast<uint64_t>(n),
                                         static_cast<uint64_t>(m), n));

  cublasLtMatmulPreference_t pref = nullptr;
  HW_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, auto value) {
    HW_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
  };
  set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{workspace_bytes_});
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, static_cast<uint32_t>(align_w));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, static_cast<uint32_t>(align_x));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, static_cast<uint32_t>(align_out));
  set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, static_cast<uint32_t>(align_out));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      handle_, plan.desc, plan.w, plan.x, plan.out, plan.out, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  plan.ok = st == CUBLAS_STATUS_SUCCESS && found > 0;
  if (plan.ok) plan.algo = result.algo;
  return plan;
}

bool LtGemm::Run(const void* x, const void* w, const void* bias, void* out, bool out_f32, int64_t m,
                 int64_t n, int64_t k) {
  if (bias != nullptr && out_f32) return false;
  Plan& plan =
      PlanFor(Key{m, n, k, out_f32, bias != nullptr, Alignment(x), Alignment(w), Alignment(out)});
  if (!plan.ok) return false;
  // Layers share shapes, so the bias pointer is set per call.
  if (bias != nullptr) SetDesc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  const float alpha = 1.0f, beta = 0.0f;
  HW_LT_CHECK(cublasLtMatmul(handle_, plan.desc, &alpha, w, plan.w, x, plan.x, &beta, out, plan.out,
                             out, plan.out, &plan.algo, workspace_, workspace_bytes_, stream_));
  return true;
}

}  // namespace headwise::kernels::cuda
