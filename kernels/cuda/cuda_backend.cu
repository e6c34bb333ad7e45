#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"

namespace headwise::kernels {
namespace {

// A failed CUDA or cuBLAS call is a bug or a dead device, not bad input: stop loudly.
#define HW_CUDA_CHECK(expr)                                                         \
  do {                                                                              \
    cudaError_t hw_err_ = (expr);                                                   \
    HW_CHECK(hw_err_ == cudaSuccess, "{}: {}", #expr, cudaGetErrorString(hw_err_)); \
  } while (0)
#define HW_CUBLAS_CHECK(expr)                                                \
  do {                                                                       \
    cublasStatus_t hw_st_ = (expr);                                          \
    HW_CHECK(hw_st_ == CUBLAS_STATUS_SUCCESS, "{}: cuBLAS status {}", #expr, \
             static_cast<int>(hw_st_));                                      \
  } while (0)
#define HW_CUDA_LAUNCHED() HW_CUDA_CHECK(cudaGetLastError())

using bf16 = __nv_bfloat16;

void CheckDevice(const Tensor& t, const char* what) {
  HW_CHECK(t.device == Device::kCuda, "{} must live on the GPU", what);
}

int Blocks(int64_t n, int threads) {
  return static_cast<int>((n + threads - 1) / threads);
}

__device__ __forceinline__ float Load(const bf16* p) {
  return __bfloat162float(*p);
}
__device__ __forceinline__ float Load(const float* p) {
  return *p;
}
__device__ __forceinline__ void Store(bf16* p, float v) {
  *p = __float2bfloat16(v);
}
__device__ __forceinline__ void Store(float* p, float v) {
  *p = v;
}

__device__ float BlockSum(float v, float* scratch) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = lane < warps ? scratch[lane] : 0.0f;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

__global__ void F32ToBf16Kernel(const float* in, bf16* out, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = __float2bfloat16(in[i]);
}

__global__ void EmbeddingKernel(const bf16* table, const int32_t* ids, bf16* out, int64_t hidden) {
  const int64_t t = blockIdx.x;
  const bf16* row = table + ids[t] * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[t * hidden + i] = row[i];
}

// One block per row: out = x / rms(x) * w, optionally after residual += x.
__global__ void RmsNormKernel(bf16* residual, const bf16* x, const bf16* w, float eps, bf16* out,
                              int64_t n, bool add) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  bf16* res = residual + r * n;
  const bf16* xr = x + r * n;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float v = __bfloat162float(xr[i]);
    if (add) {
      // The residual stream is bf16, as in a bf16 transformers model.
      v = __bfloat162float(__float2bfloat16(__bfloat162float(res[i]) + v));
      res[i] = __float2bfloat16(v);
    }
    ss += v * v;
  }
  const float scale = rsqrtf(BlockSum(ss, scratch) / static_cast<float>(n) + eps);
  const bf16* src = add ? res : xr;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    out[r * n + i] = __float2bfloat16(__bfloat162float(w[i]) * (__bfloat162float(src[i]) * scale));
  }
}

template <typename Out>
__global__ void AddBiasKernel(Out* out, const bf16* bias, int64_t rows, int64_t n) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < rows * n) Store(out + i, Load(out + i) + __bfloat162float(bias[i % n]));
}

__global__ void SiluMulKernel(const bf16* gate_up, bf16* out, int64_t rows, int64_t inter) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= rows * inter) return;
  const int64_t r = i / inter, c = i % inter;
  const float g = __bfloat162float(gate_up[r * 2 * inter + c]);
  const float u = __bfloat162float(gate_up[r * 2 * inter + inter + c]);
  out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
}

// One block per token; threads walk the (head, pair) grid of q and k, rotate in f32.
__global__ void RopeWriteKvKernel(const bf16* qkv, const int32_t* positions, const float* inv_freq,
                                  const int32_t* slots, bf16* k_pool, bf16* v_pool, bf16* q_out,
                                  int hq, int hkv, int d, int64_t num_slots) {
  const int64_t t = blockIdx.x;
  const int half = d / 2;
  const float pos = static_cast<float>(positions[t]);
  const bf16* row = qkv + t * int64_t{hq + 2 * hkv} * d;
  for (int i = threadIdx.x; i < (hq + hkv) * half; i += blockDim.x) {
    const int head = i / half, j = i % half;
    float s, c;
    sincosf(pos * inv_freq[j], &s, &c);
    const bf16* x = row + head * d;
    const float a = __bfloat162float(x[j]), b = __bfloat162float(x[j + half]);
    const float y0 = a * c - b * s, y1 = b * c + a * s;
    bf16* dst;
    if (head < hq) {
      dst = q_out + (t * hq + head) * int64_t{d};
    } else {
      const int64_t slot = slots[t * hkv + (head - hq)];
      if (slot < 0 || slot >= num_slots) __trap();
      dst = k_pool + slot * d;
    }
    dst[j] = __float2bfloat16(y0);
    dst[j + half] = __float2bfloat16(y1);
  }
  for (int i = threadIdx.x; i < hkv * d; i += blockDim.x) {
    const int h = i / d, j = i % d;
    const int64_t slot = slots[t * hkv + h];
    v_pool[slot * d + j] = row[(hq + hkv + h) * int64_t{d} + j];
  }
}

constexpr int kAttnWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kSplitKeys = 512;

// One block's attention of the query in s_q (pre-scaled) over keys n = 0 .. count-1 of one
// (sequence, KV head) page table, key n at position pos_of(n) with logit bias bias_of(n). Each
// warp takes 32 keys at a time, one key per lane (a whole dot product per lane, no shuffles per
// key), runs an online softmax across them, then accumulates V with each lane owning
// head_dim / 32 output dimensions; the warps merge in shared memory. Calls store(c, o_c) for
// every output dimension and returns the log-sum-exp (to every thread). count > 0.
template <typename PosOf, typename BiasOf, typename Store>
__device__ float AttendKeys(const float* s_q, const bf16* k_pool, const bf16* v_pool,
                            const int32_t* table, int page_size, int d, int count, PosOf pos_of,
                            BiasOf bias_of, Store store) {
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps];
  __shared__ float s_acc[kAttnWarps][kMaxHeadDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int per_lane = (d + 31) / 32;  // output dims lane * per_lane + e, those below d
  float acc[kMaxHeadDim / 32];
  for (int e = 0; e < per_lane; ++e) acc[e] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  for (int base = warp * 32; base < count; base += kAttnWarps * 32) {
    const int n = base + lane;
    int64_t slot = -1;
    float score = -INFINITY;
    if (n < count) {
      const int pos = pos_of(n);
      slot = int64_t{table[pos / page_size]} * page_size + pos % page_size;
      const bf16* kr = k_pool + slot * d;
      float dot = 0.0f;
      for (int c = 0; c < d; c += 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(kr + c);
        const bf16* kv8 = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
        for (int x = 0; x < 8; ++x) dot += s_q[c + x] * __bfloat162float(kv8[x]);
      }
      score = dot + bias_of(n);
    }
    float chunk_max = score;
    for (int o = 16; o > 0; o /= 2) {
      chunk_max = fmaxf(chunk_max, __shfl_xor_sync(0xffffffffu, chunk_max, o));
    }
    const float m_new = fmaxf(m, chunk_max);
    const float p = n < count ? __expf(score - m_new) : 0.0f;
    float p_sum = p;
    for (int o = 16; o > 0; o /= 2) p_sum += __shfl_xor_sync(0xffffffffu, p_sum, o);
    const float correction = __expf(m - m_new);
    l = l * correction + p_sum;
    for (int e = 0; e < per_lane; ++e) acc[e] *= correction;
    const int keys = min(32, count - base);
    for (int kk = 0; kk < keys; ++kk) {
      const float pk = __shfl_sync(0xffffffffu, p, kk);
      const int64_t sk = __shfl_sync(0xffffffffu, slot, kk);
      const bf16* vr = v_pool + sk * d + lane * per_lane;
      for (int e = 0; e < per_lane && lane * per_lane + e < d; ++e) {
        acc[e] += pk * __bfloat162float(vr[e]);
      }
    }
    m = m_new;
  }
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
  for (int e = 0; e < per_lane && lane * per_lane + e < d; ++e) {
    s_acc[warp][lane * per_lane + e] = acc[e];
  }
  __syncthreads();
  float m_all = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) m_all = fmaxf(m_all, s_m[w]);
  float l_all = 0.0f;
  for (int w = 0; w < kAttnWarps; ++w) {
    if (s_m[w] != -INFINITY) l_all += __expf(s_m[w] - m_all) * s_l[w];
  }
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float num = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) {
      if (s_m[w] != -INFINITY) num += __expf(s_m[w] - m_all) * s_acc[w][c];
    }
    store(c, num / l_all);
  }
  return m_all + logf(l_all);
}

// Paged attention, split-KV (flash-decoding): block (query token, query head, split) covers
// keys [split * kSplitKeys, ...) up to the token's position and writes (o, lse) that
// MergeSplitsKernel combines. Each query head reads its KV rows itself (GQA-shared reads and
// tensor cores are the next step).
__global__ void PagedAttentionSplitKernel(const bf16* q, const bf16* k_pool, const bf16* v_pool,
                                          const int32_t* token_seq, const int32_t* token_pos,
                                          const int32_t* block_table, int max_pages, int page_size,
                                          int hq, int hkv, int d, float scale, int num_splits,
                                          float* part_o, float* part_lse) {
  const int64_t t = blockIdx.x;
  const int qh = blockIdx.y, split = blockIdx.z;
  const int begin = split * kSplitKeys, end = min(token_pos[t] + 1, begin + kSplitKeys);
  const int64_t part = (t * hq + qh) * num_splits + split;
  if (begin >= end) {  // this split lies beyond the token's position
    if (threadIdx.x == 0) part_lse[part] = -INFINITY;
    return;
  }
  __shared__ float s_q[kMaxHeadDim];
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    s_q[c] = __bfloat162float(q[(t * hq + qh) * int64_t{d} + c]) * scale;
  }
  __syncthreads();
  const int32_t* table = block_table + (int64_t{token_seq[t]} * hkv + qh / (hq / hkv)) * max_pages;
  const float lse = AttendKeys(
      s_q, k_pool, v_pool, table, page_size, d, end - begin, [&](int n) { return begin + n; },
      [](int) { return 0.0f; }, [&](int c, float o) { part_o[part * d + c] = o; });
  if (threadIdx.x == 0) part_lse[part] = lse;
}

// out = sum_s w_s o_s with w_s = exp(lse_s - lse): the log-sum-exp merge of ALGORITHMS.md §9.3.
__global__ void MergeSplitsKernel(const float* part_o, const float* part_lse, int num_splits, int d,
                                  bf16* out) {
  const int64_t row = blockIdx.x;  // (token, query head)
  const float* lse = part_lse + row * num_splits;
  float m = -INFINITY;
  for (int s = 0; s < num_splits; ++s) m = fmaxf(m, lse[s]);
  float den = 0.0f;
  for (int s = 0; s < num_splits; ++s) den += lse[s] == -INFINITY ? 0.0f : __expf(lse[s] - m);
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float num = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      if (lse[s] != -INFINITY) num += __expf(lse[s] - m) * part_o[(row * num_splits + s) * d + c];
    }
    out[row * d + c] = __float2bfloat16(num / den);
  }
}

// Decode attention over an explicit token list per (sequence, KV head) row with a per-index
// logit bias, one block per (row, query head of its group); writes (o, lse) for §9.3's merge.
__global__ void SparseDecodeKernel(const bf16* q, const bf16* k_pool, const bf16* v_pool,
                                   const int32_t* row_seq, const int32_t* row_kv_head,
                                   const int32_t* indptr, const int32_t* indices,
                                   const float* logit_bias, const int32_t* block_table,
                                   int max_pages, int page_size, int hq, int hkv, int d,
                                   float scale, bf16* out, float* lse_out) {
  const int64_t r = blockIdx.x;
  const int g = blockIdx.y, group = hq / hkv;
  const int seq = row_seq[r], kv_head = row_kv_head[r];
  const int first = indptr[r], count = indptr[r + 1] - first;
  const int64_t row_out = r * group + g;
  if (count <= 0) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) out[row_out * d + c] = __float2bfloat16(0.0f);
    if (threadIdx.x == 0) lse_out[row_out] = -INFINITY;
    return;
  }
  __shared__ float s_q[kMaxHeadDim];
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    s_q[c] = __bfloat162float(q[(int64_t{seq} * hq + kv_head * group + g) * d + c]) * scale;
  }
  __syncthreads();
  const int32_t* table = block_table + (int64_t{seq} * hkv + kv_head) * max_pages;
  const float lse = AttendKeys(
      s_q, k_pool, v_pool, table, page_size, d, count, [&](int n) { return indices[first + n]; },
      [&](int n) { return logit_bias != nullptr ? logit_bias[first + n] : 0.0f; },
      [&](int c, float o) { out[row_out * d + c] = __float2bfloat16(o); });
  if (threadIdx.x == 0) lse_out[row_out] = lse;
}

__global__ void GatherRowsKernel(const bf16* x, const int32_t* rows, bf16* out, int64_t width) {
  const int64_t r = blockIdx.x;
  const bf16* src = x + int64_t{rows[r]} * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = src[i];
}

cudaDataType CudaType(DType t) {
  switch (t) {
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kI32:
      return CUDA_R_32I;
  }
  return CUDA_R_32F;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    HW_CUDA_CHECK(cudaSetDevice(device_));
    HW_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    HW_CUBLAS_CHECK(cublasCreate(&cublas_));
    HW_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  }
  ~CudaBackend() override {
    if (scratch_ != nullptr) cudaFree(scratch_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }

  Buffer Allocate(DType dtype, std::initializer_list<int64_t> shape) override {
    Tensor view(nullptr, dtype, Device::kCuda, shape);
    HW_CUDA_CHECK(cudaMalloc(&view.data, std::max<size_t>(view.nbytes(), 16)));
    return Buffer(view, [](void* p) { cudaFree(p); });
  }

  void CopyFromHost(const Tensor& dst, const void* src, size_t bytes) override {
    HW_CHECK_LE(bytes, dst.nbytes());
    HW_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, bytes, cudaMemcpyHostToDevice, stream_));
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may go away after return
  }
  void CopyToHost(void* dst, const Tensor& src, size_t bytes) override {
    HW_CHECK_LE(bytes, src.nbytes());
    HW_CUDA_CHECK(cudaMemcpyAsync(dst, src.data, bytes, cudaMemcpyDeviceToHost, stream_));
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  Buffer LoadWeight(const HostTensor& weight) override {
    const int64_t n = weight.shape.numel();
    Buffer staging = Allocate(DType::kF32, {n});
    CopyFromHost(staging.view(), weight.data, static_cast<size_t>(n) * sizeof(float));
    Tensor view = weight.shape;
    view.dtype = DType::kBF16;
    view.device = Device::kCuda;
    HW_CUDA_CHECK(cudaMalloc(&view.data, std::max<size_t>(view.nbytes(), 16)));
    Buffer out(view, [](void* p) { cudaFree(p); });
    F32ToBf16Kernel<<<Blocks(n, 256), 256, 0, stream_>>>(staging.view().ptr<float>(),
                                                         out.view().ptr<bf16>(), n);
    HW_CUDA_LAUNCHED();
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));  // before the staging buffer is freed
    return out;
  }

  void Synchronize() override { HW_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  void Embedding(const Tensor& table, const Tensor& ids, const Tensor& out) override {
    CheckDevice(table, "table");
    const int64_t tokens = ids.numel(), hidden = table.dim(1);
    EmbeddingKernel<<<static_cast<int>(tokens), 256, 0, stream_>>>(
        table.ptr<bf16>(), ids.ptr<int32_t>(), out.ptr<bf16>(), hidden);
    HW_CUDA_LAUNCHED();
  }

  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    RmsNormKernel<<<static_cast<int>(x.dim(0)), 256, 0, stream_>>>(
        nullptr, x.ptr<bf16>(), weight.ptr<bf16>(), eps, out.ptr<bf16>(), x.dim(1), false);
    HW_CUDA_LAUNCHED();
  }

  void AddRmsNorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out) override {
    RmsNormKernel<<<static_cast<int>(x.dim(0)), 256, 0, stream_>>>(
        residual.ptr<bf16>(), x.ptr<bf16>(), weight.ptr<bf16>(), eps, out.ptr<bf16>(), x.dim(1),
        true);
    HW_CUDA_LAUNCHED();
  }

  void Matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) override {
    CheckDevice(x, "x");
    CheckDevice(w, "w");
    const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    HW_CHECK_EQ(w.dim(1), k);
    HW_CHECK(out.dim(0) == m && out.dim(1) == n, "out {} for [{}, {}]", out.ShapeString(), m, n);
    const float alpha = 1.0f, beta = 0.0f;
    // Row-major out[m, n] = x w^T is column-major out^T[n, m] = (w as [k, n])^T x^T: cuBLAS
    // reads w transposed (ld k) and x as is (ld k).
    HW_CUBLAS_CHECK(cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n),
                                 static_cast<int>(m), static_cast<int>(k), &alpha, w.data,
                                 CudaType(w.dtype), static_cast<int>(k), x.data, CudaType(x.dtype),
                                 static_cast<int>(k), &beta, out.data, CudaType(out.dtype),
                                 static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias.data != nullptr) {
      if (out.dtype == DType::kF32) {
        AddBiasKernel<<<Blocks(m * n, 256), 256, 0, stream_>>>(out.ptr<float>(), bias.ptr<bf16>(),
                                                               m, n);
      } else {
        AddBiasKernel<<<Blocks(m * n, 256), 256, 0, stream_>>>(out.ptr<bf16>(), bias.ptr<bf16>(), m,
                                                               n);
      }
      HW_CUDA_LAUNCHED();
    }
  }

  void SiluMul(const Tensor& gate_up, const Tensor& out) override {
    const int64_t rows = out.dim(0), inter = out.dim(1);
    SiluMulKernel<<<Blocks(rows * inter, 256), 256, 0, stream_>>>(gate_up.ptr<bf16>(),
                                                                  out.ptr<bf16>(), rows, inter);
    HW_CUDA_LAUNCHED();
  }

  void RopeWriteKv(const Tensor& qkv, const Tensor& positions, const Tensor& inv_freq,
                   const Tensor& slots, const KvPoolView& pool, const Tensor& q_out) override {
    HW_CHECK(inv_freq.dtype == DType::kF32, "inv_freq must be f32");
    const int hq = static_cast<int>(q_out.dim(1)), d = static_cast<int>(q_out.dim(2));
    const int hkv = static_cast<int>(slots.dim(1));
    RopeWriteKvKernel<<<static_cast<int>(qkv.dim(0)), 128, 0, stream_>>>(
        qkv.ptr<bf16>(), positions.ptr<int32_t>(), inv_freq.ptr<float>(), slots.ptr<int32_t>(),
        pool.k.ptr<bf16>(), pool.v.ptr<bf16>(), q_out.ptr<bf16>(), hq, hkv, d,
        pool.k.dim(0) * pool.k.dim(1));
    HW_CUDA_LAUNCHED();
  }

  void PagedAttention(const Tensor& q, const KvPoolView& pool, const PagedAttentionBatch& batch,
                      float scale, const Tensor& out) override {
    const int64_t tokens = q.dim(0);
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    // Keys are read 8 bf16 (16 bytes) at a time.
    HW_CHECK(d <= kMaxHeadDim && d % 8 == 0, "head dim {} must be a multiple of 8, <= {}", d,
             kMaxHeadDim);
    const int hkv = static_cast<int>(batch.block_table.dim(0) / batch.num_seqs);
    const int max_pages = static_cast<int>(batch.block_table.dim(1));
    // Decode-sized batches split long contexts over more blocks; big prefills have blocks
    // enough already.
    const int max_keys = max_pages * pool.page_size;
    const int num_splits = tokens * hq >= 4096 ? 1 : (max_keys + kSplitKeys - 1) / kSplitKeys;
    const size_t parts = static_cast<size_t>(tokens) * hq * num_splits;
    EnsureScratch(parts * (static_cast<size_t>(d) + 1) * sizeof(float));
    float* part_o = static_cast<float*>(scratch_);
    float* part_lse = part_o + parts * static_cast<size_t>(d);
    const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(hq),
                    static_cast<unsigned>(num_splits));
    PagedAttentionSplitKernel<<<grid, 32 * kAttnWarps, 0, stream_>>>(
        q.ptr<bf16>(), pool.k.ptr<bf16>(), pool.v.ptr<bf16>(), batch.token_seq.ptr<int32_t>(),
        batch.token_pos.ptr<int32_t>(), batch.block_table.ptr<int32_t>(), max_pages, pool.page_size,
        hq, hkv, d, scale, num_splits, part_o, part_lse);
    HW_CUDA_LAUNCHED();
    MergeSplitsKernel<<<static_cast<unsigned>(tokens * hq), 128, 0, stream_>>>(
        part_o, part_lse, num_splits, d, out.ptr<bf16>());
    HW_CUDA_LAUNCHED();
  }

  void SparseDecodeAttention(const Tensor& q, const KvPoolView& pool,
                             const SparseDecodeBatch& batch, float scale, const Tensor& out,
                             const Tensor& lse) override {
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    HW_CHECK(d <= kMaxHeadDim && d % 8 == 0, "head dim {} must be a multiple of 8, <= {}", d,
             kMaxHeadDim);
    HW_CHECK(lse.dtype == DType::kF32, "lse must be f32");
    const int hkv = static_cast<int>(batch.block_table.dim(0) / batch.num_seqs);
    const int64_t rows = batch.row_seq.numel();
    if (rows == 0) return;
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(hq / hkv));
    SparseDecodeKernel<<<grid, 32 * kAttnWarps, 0, stream_>>>(
        q.ptr<bf16>(), pool.k.ptr<bf16>(), pool.v.ptr<bf16>(), batch.row_seq.ptr<int32_t>(),
        batch.row_kv_head.ptr<int32_t>(), batch.indptr.ptr<int32_t>(), batch.indices.ptr<int32_t>(),
        batch.logit_bias.data ? batch.logit_bias.ptr<float>() : nullptr,
        batch.block_table.ptr<int32_t>(), static_cast<int>(batch.block_table.dim(1)),
        pool.page_size, hq, hkv, d, scale, out.ptr<bf16>(), lse.ptr<float>());
    HW_CUDA_LAUNCHED();
  }

  void GatherRows(const Tensor& x, const Tensor& rows, const Tensor& out) override {
    GatherRowsKernel<<<static_cast<int>(rows.numel()), 256, 0, stream_>>>(
        x.ptr<bf16>(), rows.ptr<int32_t>(), out.ptr<bf16>(), x.dim(1));
    HW_CUDA_LAUNCHED();
  }

 private:
  // Scratch for split-KV partials, grown on demand (stream-ordered: safe to reuse per launch).
  void EnsureScratch(size_t bytes) {
    if (bytes <= scratch_bytes_) return;
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));
    if (scratch_ != nullptr) HW_CUDA_CHECK(cudaFree(scratch_));
    scratch_bytes_ = std::max(bytes, 2 * scratch_bytes_);
    HW_CUDA_CHECK(cudaMalloc(&scratch_, scratch_bytes_));
  }

  int device_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

}  // namespace

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device_index) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    return Unimplemented("--device cuda: no usable GPU ({})",
                         err != cudaSuccess ? cudaGetErrorString(err) : "none found");
  }
  if (device_index < 0 || device_index >= count) {
    return InvalidArgument("GPU {} does not exist ({} found)", device_index, count);
  }
  return std::unique_ptr<Backend>(new CudaBackend(device_index));
}

}  // namespace headwise::kernels
