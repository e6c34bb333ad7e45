#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/lt_gemm.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/select_decode.h"
#include "kernels/cuda/top_keys.h"

namespace headwise::kernels {
namespace {

// A failed CUDA or cuBLAS call is a bug or a dead device, not bad input: stop loudly.
#define HW_CUDA_CHECK(expr)                                                         \
  do {                                                                              \
    cudaError_t hw_err_ = (expr);                                                   \
    HW_CHECK(hw_err_ == cudaSuccess, "{}: {}", #expr, cudaGetErrorString(hw_err_)); \
  } while (0)
#define HW_CUDA_LAUNCHED() HW_CUDA_CHECK(cudaGetLastError())

using bf16 = __nv_bfloat16;
using cuda::PdlLaunch;
using cuda::ptx::AllowDependentLaunch;
using cuda::ptx::WaitForPriorGrids;

// The forward pass's kernels are launched as programmatic dependents and open with this: the
// next kernel (a matrix product streaming its weights, typically) may get scheduled at once, and
// nothing here is touched before the previous kernel is done.
__device__ __forceinline__ void OverlapWithNeighbours() {
  AllowDependentLaunch();
  WaitForPriorGrids();
}

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

__global__ void EmbeddingKernel(const bf16* table, const int32_t* ids, int32_t first_id,
                                int64_t rows, bf16* out, int64_t hidden) {
  OverlapWithNeighbours();
  const int64_t t = blockIdx.x;
  const int64_t row = int64_t{ids[t]} - first_id;
  if (row < 0 || row >= rows) {  // another rank's share of the vocabulary
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[t * hidden + i] = bf16(0.0f);
    return;
  }
  const bf16* src = table + row * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[t * hidden + i] = src[i];
}

// 8 bf16 <-> 8 floats, for 16-byte loads and stores.
__device__ __forceinline__ void Unpack8(const uint4& raw, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(h[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}
__device__ __forceinline__ uint4 Pack8(const float (&f)[8]) {
  uint4 raw;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  return raw;
}

// One block per row: out = x / rms(x) * w, optionally after residual += x. With kVecs > 0 the
// row (a multiple of 8 elements, at most kVecs 16-byte pieces per thread) stays in registers and
// the weights load before the previous kernel has finished: at decode sizes this kernel is a
// chain of dependent loads on the critical path, and the weights are the one link that does not
// depend on that kernel. kVecs == 0: any row length, one element at a time.
constexpr int kNormThreads = 256;
template <int kVecs>
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(bf16* residual, const bf16* x, const bf16* w, float eps, bf16* out, int64_t n,
                  bool add) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  bf16* res = residual + r * n;
  const bf16* xr = x + r * n;
  bf16* o = out + r * n;
  float ss = 0.0f;
  if constexpr (kVecs > 0) {
    float wv[kVecs][8], v[kVecs][8];
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int64_t i = (threadIdx.x + int64_t{u} * kNormThreads) * 8;
      if (i < n) Unpack8(*reinterpret_cast<const uint4*>(w + i), wv[u]);
    }
    OverlapWithNeighbours();
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int64_t i = (threadIdx.x + int64_t{u} * kNormThreads) * 8;
      if (i >= n) continue;
      Unpack8(*reinterpret_cast<const uint4*>(xr + i), v[u]);
      if (add) {
        float rv[8];
        Unpack8(*reinterpret_cast<const uint4*>(res + i), rv);
        for (int j = 0; j < 8; ++j) v[u][j] += rv[j];
        const uint4 packed = Pack8(v[u]);  // the residual stream is bf16, as in transformers
        *reinterpret_cast<uint4*>(res + i) = packed;
        Unpack8(packed, v[u]);
      }
      for (int j = 0; j < 8; ++j) ss += v[u][j] * v[u][j];
    }
    const float scale = rsqrtf(BlockSum(ss, scratch) / static_cast<float>(n) + eps);
#pragma unroll
    for (int u = 0; u < kVecs; ++u) {
      const int64_t i = (threadIdx.x + int64_t{u} * kNormThreads) * 8;
      if (i >= n) continue;
      for (int j = 0; j < 8; ++j) v[u][j] = wv[u][j] * (v[u][j] * scale);
      *reinterpret_cast<uint4*>(o + i) = Pack8(v[u]);
    }
  } else {
    OverlapWithNeighbours();
    for (int64_t i = threadIdx.x; i < n; i += kNormThreads) {
      float v = __bfloat162float(xr[i]);
      if (add) {
        v = __bfloat162float(__float2bfloat16(__bfloat162float(res[i]) + v));
        res[i] = __float2bfloat16(v);
      }
      ss += v * v;
    }
    const float scale = rsqrtf(BlockSum(ss, scratch) / static_cast<float>(n) + eps);
    const bf16* src = add ? res : xr;
    for (int64_t i = threadIdx.x; i < n; i += kNormThreads) {
      o[i] = __float2bfloat16(__bfloat162float(w[i]) * (__bfloat162float(src[i]) * scale));
    }
  }
}

template <typename Out>
__global__ void AddBiasKernel(Out* out, const bf16* bias, int64_t rows, int64_t n) {
  OverlapWithNeighbours();
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < rows * n) Store(out + i, Load(out + i) + __bfloat162float(bias[i % n]));
}

// out = silu(gate) * up over groups of `vec` (1 or 8) consecutive columns per thread.
__global__ void SiluMulKernel(const bf16* gate_up, bf16* out, int64_t rows, int64_t inter,
                              int vec) {
  OverlapWithNeighbours();
  const int64_t i = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) * vec;
  if (i >= rows * inter) return;
  const int64_t r = i / inter, c = i % inter;
  const bf16* g = gate_up + r * 2 * inter + c;
  const bf16* u = g + inter;
  if (vec == 8) {
    float gv[8], uv[8];
    Unpack8(*reinterpret_cast<const uint4*>(g), gv);
    Unpack8(*reinterpret_cast<const uint4*>(u), uv);
    for (int j = 0; j < 8; ++j) gv[j] = gv[j] / (1.0f + __expf(-gv[j])) * uv[j];
    *reinterpret_cast<uint4*>(out + i) = Pack8(gv);
  } else {
    const float gf = __bfloat162float(*g);
    out[i] = __float2bfloat16(gf / (1.0f + __expf(-gf)) * __bfloat162float(*u));
  }
}

// Block (token, kRopeHeads heads) over the qkv heads; thread (j, h) rotates the pair (j, j + d/2)
// of its head in f32, or copies two elements of a V head. A few heads per block keep a decode
// step's single token spread over the SMs instead of one block looping over every head, without
// the hundreds of thousands of tiny blocks one head each would make of a long prompt.
constexpr int kRopeHeads = 4;
__global__ void RopeWriteKvKernel(const bf16* qkv, const int32_t* token_seq,
                                  const int32_t* positions, const float* inv_freq,
                                  cuda::DecodeKvCache table, bf16* k_pool, bf16* v_pool,
                                  bf16* q_out, int hq, int d, int64_t num_slots) {
  const int hkv = table.hkv;
  // Positions, sequences and the block table are step metadata uploaded by the host, never
  // written by a kernel of the step: the addressing and the angles are worked out while the qkv
  // product still runs, and only qkv itself waits for it.
  AllowDependentLaunch();
  const int64_t t = blockIdx.x;
  const int head = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  const int j = static_cast<int>(threadIdx.x);
  const int pos = head < hq + 2 * hkv ? positions[t] : -1;
  const int half = d / 2;
  bf16* dst = nullptr;
  float s = 0.0f, c = 1.0f;
  if (pos >= 0) {
    const int seq = token_seq[t];
    const int kv_head = head < hq         ? head / (hq / hkv)
                        : head < hq + hkv ? head - hq
                                          : head - hq - hkv;
    const KvHead layout_head = table.Head(seq, kv_head);  // of the sequence's layout
    if (head < hq) {
      dst = q_out + (t * hq + head) * int64_t{d};
    } else {
      const int64_t slot =
          table.Slot(table.BlocksOf(seq, layout_head.retention), layout_head.page, pos);
      if (slot < 0 || slot >= num_slots) __trap();
      dst = (head < hq + hkv ? k_pool : v_pool) + slot * d;
    }
    // Re-indexed heads keep k and their queries' q unrotated: attention turns them by rank.
    if (head < hq + hkv && !layout_head.retention.reindex()) {
      sincosf(static_cast<float>(pos) * inv_freq[j], &s, &c);
    }
  }
  WaitForPriorGrids();
  if (pos < 0) return;  // padding, or past the last head
  const bf16* x = qkv + (t * (hq + 2 * hkv) + head) * int64_t{d};
  if (head >= hq + hkv) {
    dst[j] = x[j];
    dst[j + half] = x[j + half];
    return;
  }
  const float a = __bfloat162float(x[j]), b = __bfloat162float(x[j + half]);
  dst[j] = __float2bfloat16(a * c - b * s);
  dst[j + half] = __float2bfloat16(b * c + a * s);
}

// first_pos[s] = position of sequence s's first query token (the prefill kernel's input).
__global__ void FirstPositionsKernel(const int32_t* query_start, const int32_t* token_pos,
                                     int num_seqs, int32_t* first_pos) {
  const int s = blockIdx.x * blockDim.x + threadIdx.x;
  if (s < num_seqs) {
    first_pos[s] = query_start[s + 1] > query_start[s] ? token_pos[query_start[s]] : 0;
  }
}

// Block (row, K or V): each thread averages its columns of the row's keys (or values) over
// [begin, end) in f32, then writes the mean over position dest (one thread per column reads
// and writes it, so dest may lie inside the range).
__global__ void MeanKvKernel(cuda::DecodeKvCache kv, bf16* k_pool, bf16* v_pool,
                             const int32_t* row_seq, const int32_t* row_kv_head,
                             const int32_t* begin, const int32_t* end, const int32_t* dest, int d) {
  const int r = blockIdx.x;
  bf16* pool = blockIdx.y == 0 ? k_pool : v_pool;
  const int seq = row_seq[r], b = begin[r], e = end[r];
  const KvHead head = kv.Head(seq, row_kv_head[r]);
  const int32_t* seq_blocks = kv.BlocksOf(seq, head.retention);
  const int64_t dst = kv.Slot(seq_blocks, head.page, dest[r]) * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float sum = 0.0f;
    for (int pos = b; pos < e; ++pos)
      sum += __bfloat162float(pool[kv.Slot(seq_blocks, head.page, pos) * d + c]);
    pool[dst + c] = __float2bfloat16(sum / static_cast<float>(e - b));
  }
}

// OffloadAttention (kernels::OffloadDecodeBatch): block (sequence, KV head), four warps. For each
// query head of the group: keys in tiles of kOffloadTile, each warp computing the logits of a
// quarter of the tile (lanes split the head dimension, a warp sum), then an online softmax whose
// output columns are split over the threads (d <= kOffloadMaxDim); last, the log-sum-exp merge with
// the host's (o, lse) of that query head. Static sets are small (sink + window + generated tokens),
// so this simple kernel reads them at a fraction of the step's time.
constexpr int kOffloadThreads = 128;
constexpr int kOffloadTile = 64;
constexpr int kOffloadMaxDim = 256;
__global__ void OffloadAttentionKernel(cuda::DecodeKvCache kv, const bf16* q,
                                       const int32_t* seq_token, const int32_t* seq_len,
                                       const float* host_out, const float* host_lse, int hq, int d,
                                       float scale, bf16* out) {
  const int seq = blockIdx.x, kv_head = blockIdx.y;
  if (kv.seq_slot == nullptr || kv.seq_slot[seq] < 0) return;
  const KvHead head = kv.Head(seq, kv_head);
  if (head.decode != kDecodeRetrieve) return;
  __shared__ float q_s[kOffloadMaxDim];
  __shared__ float logit_s[kOffloadTile];
  __shared__ float m_s, l_s;
  const int n = seq_len[seq], token = seq_token[seq];
  const int from = kv.comp_from[seq];
  // Index i of [0, count) is position i below n_sink, i + shift from there.
  const int n_sink = from > 0 ? min(head.retention.sink, n) : n;
  const int shift = from > 0 ? max(from, n_sink) - n_sink : 0;
  const int count = n_sink + max(0, n - (n_sink + shift));
  const int32_t* seq_blocks = kv.BlocksOf(seq, head.retention);
  const int group = hq / kv.hkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int g = 0; g < group; ++g) {
    const int qh = kv_head * group + g;
    for (int c = threadIdx.x; c < d; c += kOffloadThreads) {
      q_s[c] = __bfloat162float(q[(int64_t{token} * hq + qh) * d + c]);
    }
    if (threadIdx.x == 0) {
      m_s = -INFINITY;
      l_s = 0.0f;
    }
    float acc[kOffloadMaxDim / kOffloadThreads] = {};
    __syncthreads();
    for (int tile = 0; tile < count; tile += kOffloadTile) {
      for (int j = warp; j < kOffloadTile; j += kOffloadThreads / 32) {
        const int i = tile + j;
        float dot = 0.0f;
        if (i < count) {
          const int pos = i < n_sink ? i : i + shift;
          const bf16* k = kv.k_pool + kv.Slot(seq_blocks, head.page, pos) * d;
          for (int c = lane; c < d; c += 32) dot += q_s[c] * __bfloat162float(k[c]);
        }
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        if (lane == 0) logit_s[j] = i < count ? dot * scale : -INFINITY;
      }
      __syncthreads();
      float tile_max = -INFINITY;
      for (int j = 0; j < kOffloadTile; ++j) tile_max = fmaxf(tile_max, logit_s[j]);
      const float m_old = m_s, m_new = fmaxf(m_old, tile_max);
      const float rescale = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new);
      float tile_sum = 0.0f;
      for (int r = 0; r * kOffloadThreads < d; ++r) acc[r] *= rescale;
      for (int j = 0; j < kOffloadTile && tile + j < count; ++j) {
        const float p = __expf(logit_s[j] - m_new);
        tile_sum += p;
        const int i = tile + j;
        const int pos = i < n_sink ? i : i + shift;
        const bf16* v = kv.v_pool + kv.Slot(seq_blocks, head.page, pos) * d;
        for (int r = 0, c = threadIdx.x; c < d; ++r, c += kOffloadThreads) {
          acc[r] += p * __bfloat162float(v[c]);
        }
      }
      __syncthreads();  // every thread has read m_s and logit_s
      if (threadIdx.x == 0) {
        l_s = l_s * rescale + tile_sum;
        m_s = m_new;
      }
      __syncthreads();
    }
    // Merge with the host's result over the retrieved keys (lse -inf: none).
    const float dev_lse = l_s > 0.0f ? m_s + __logf(l_s) : -INFINITY;
    const int64_t row = int64_t{seq} * hq + qh;
    const float h_lse = host_lse[row];
    const float top = fmaxf(dev_lse, h_lse);
    const float a = dev_lse == -INFINITY ? 0.0f : __expf(dev_lse - top);
    const float b = h_lse == -INFINITY ? 0.0f : __expf(h_lse - top);
    const float inv_l = l_s > 0.0f ? 1.0f / l_s : 0.0f;
    for (int r = 0, c = threadIdx.x; c < d; ++r, c += kOffloadThreads) {
      const float o_dev = acc[r] * inv_l;
      const float o_host = b > 0.0f ? host_out[row * d + c] : 0.0f;
      const float merged = a + b > 0.0f ? (a * o_dev + b * o_host) / (a + b) : 0.0f;
      out[(int64_t{token} * hq + qh) * d + c] = __float2bfloat16(merged);
    }
    __syncthreads();  // q_s, m_s and l_s are reused by the next query head
  }
}

__global__ void GatherRowsKernel(const bf16* x, const int32_t* rows, bf16* out, int64_t width) {
  OverlapWithNeighbours();
  const int64_t r = blockIdx.x;
  const bf16* src = x + int64_t{rows[r]} * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = src[i];
}

// Makes `device` current for a scope and restores the caller's. The memory operations use it: they
// may come from any thread (loading weights, setting up the KV cache of each tensor-parallel
// rank), where the kernels are launched from a thread bound to the backend (BindThread).
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    HW_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ == device) {
      previous_ = -1;
    } else {
      HW_CUDA_CHECK(cudaSetDevice(device));
    }
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    HW_CUDA_CHECK(cudaSetDevice(device_));
    HW_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // An explicit workspace: nothing may allocate while a graph is being captured.
    gemm_workspace_ = Allocate(DType::kI32, {kGemmWorkspaceBytes / 4});
    lt_gemm_ =
        std::make_unique<cuda::LtGemm>(stream_, gemm_workspace_.view().data, kGemmWorkspaceBytes);
    HW_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
  }
  ~CudaBackend() override {
    const DeviceScope scope(device_);
    for (void* p : scratch_) cudaFree(p);
    for (uint32_t* p : split_counters_) cudaFree(p);
    lt_gemm_.reset();
    if (copy_event_ != nullptr) cudaEventDestroy(copy_event_);
    if (host_copy_ != nullptr) cudaFreeHost(host_copy_);
    cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  Device device() const override { return Device::kCuda; }
  DType kv_dtype() const override { return DType::kBF16; }
  DType activation_dtype() const override { return DType::kBF16; }

  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  void BindThread() override { HW_CUDA_CHECK(cudaSetDevice(device_)); }

  Buffer Allocate(DType dtype, std::initializer_list<int64_t> shape) override {
    const DeviceScope scope(device_);
    Tensor view(nullptr, dtype, Device::kCuda, shape);
    HW_CUDA_CHECK(cudaMalloc(&view.data, std::max<size_t>(view.nbytes(), 16)));
    return Buffer(view, [](void* p) { cudaFree(p); });
  }

  void CopyFromHost(const Tensor& dst, const void* src, size_t bytes) override {
    const DeviceScope scope(device_);
    HW_CHECK_LE(bytes, dst.nbytes());
    HW_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, bytes, cudaMemcpyHostToDevice, stream_));
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may go away after return
  }
  void CopyToHost(void* dst, const Tensor& src, size_t bytes) override {
    const DeviceScope scope(device_);
    HW_CHECK_LE(bytes, src.nbytes());
    HW_CUDA_CHECK(cudaMemcpyAsync(dst, src.data, bytes, cudaMemcpyDeviceToHost, stream_));
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  // Into pinned memory (a pageable destination would make the copy wait for the stream) and an
  // event behind it, so the host waits for the copy while later kernels run.
  void CopyToHostStart(const Tensor& src, size_t bytes) override {
    const DeviceScope scope(device_);
    HW_CHECK_LE(bytes, src.nbytes());
    if (copy_event_ == nullptr) {
      HW_CUDA_CHECK(cudaEventCreateWithFlags(&copy_event_, cudaEventDisableTiming));
    }
    if (host_copy_bytes_ < bytes) {
      HW_CUDA_CHECK(cudaEventSynchronize(copy_event_));  // a copy still landing in the old one
      if (host_copy_ != nullptr) HW_CUDA_CHECK(cudaFreeHost(host_copy_));
      host_copy_ = nullptr;
      HW_CUDA_CHECK(cudaMallocHost(&host_copy_, bytes));
      host_copy_bytes_ = bytes;
    }
    HW_CUDA_CHECK(cudaMemcpyAsync(host_copy_, src.data, bytes, cudaMemcpyDeviceToHost, stream_));
    HW_CUDA_CHECK(cudaEventRecord(copy_event_, stream_));
  }
  const void* CopyToHostWait() override {
    HW_CHECK(copy_event_ != nullptr, "CopyToHostWait without CopyToHostStart");
    HW_CUDA_CHECK(cudaEventSynchronize(copy_event_));
    return host_copy_;
  }

  Buffer LoadWeight(const HostTensor& weight) override {
    const DeviceScope scope(device_);
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

  MemoryInfo DeviceMemory() const override {
    const DeviceScope scope(device_);
    MemoryInfo info;
    HW_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
    return info;
  }
  void CopyOnDevice(const Tensor& dst, const Tensor& src, size_t bytes) override {
    const DeviceScope scope(device_);
    HW_CHECK(bytes <= dst.nbytes() && bytes <= src.nbytes(), "copy of {} bytes", bytes);
    HW_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, bytes, cudaMemcpyDeviceToDevice, stream_));
  }

  void Synchronize() override {
    const DeviceScope scope(device_);
    HW_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  bool SupportsCapture() const override { return true; }
  void BeginCapture() override {
    HW_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
  }
  std::unique_ptr<CapturedOps> EndCapture() override {
    cudaGraph_t graph = nullptr;
    capturing_ = false;
    HW_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    HW_CUDA_CHECK(err);
    return std::make_unique<CudaGraph>(exec, stream_);
  }

  void Embedding(const Tensor& table, const Tensor& ids, int32_t first_id,
                 const Tensor& out) override {
    CheckDevice(table, "table");
    const int64_t tokens = ids.numel(), hidden = table.dim(1);
    PdlLaunch(dim3(static_cast<unsigned>(tokens)), dim3(256), 0, stream_)(
        EmbeddingKernel, table.ptr<bf16>(), ids.ptr<int32_t>(), first_id, table.dim(0),
        out.ptr<bf16>(), hidden);
    HW_CUDA_LAUNCHED();
  }

  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) override {
    LaunchRmsNorm(nullptr, x, weight, eps, out);
  }

  void AddRmsNorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                  const Tensor& out) override {
    LaunchRmsNorm(residual.ptr<bf16>(), x, weight, eps, out);
  }

  void Matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) override {
    CheckDevice(x, "x");
    CheckDevice(w, "w");
    const int64_t m = x.dim(0), k = x.dim(1), n = w.dim(0);
    HW_CHECK_EQ(w.dim(1), k);
    HW_CHECK(out.dim(0) == m && out.dim(1) == n, "out {} for [{}, {}]", out.ShapeString(), m, n);
    HW_CHECK(x.dtype == DType::kBF16 && w.dtype == DType::kBF16 &&
                 (bias.data == nullptr || bias.dtype == DType::kBF16) &&
                 (out.dtype == DType::kBF16 || out.dtype == DType::kF32),
             "matmul: x {}, w {}, out {}: bf16 inputs and a bf16 or f32 output only",
             DTypeName(x.dtype), DTypeName(w.dtype), DTypeName(out.dtype));
    const bool aligned =
        (reinterpret_cast<uintptr_t>(x.data) | reinterpret_cast<uintptr_t>(w.data)) % 16 == 0;
    if (m <= cuda::kGemvMaxRows && k % 8 == 0 && aligned) {
      cuda::LaunchGemv(stream_, x.ptr<bf16>(), w.ptr<bf16>(),
                       bias.data != nullptr ? bias.ptr<bf16>() : nullptr, out.data,
                       out.dtype == DType::kF32, static_cast<int>(m), static_cast<int>(n),
                       static_cast<int>(k));
      HW_CUDA_LAUNCHED();
      return;
    }
    const bool fused_bias = bias.data != nullptr && out.dtype == DType::kBF16;
    HW_CHECK(lt_gemm_->Run(x.data, w.data, fused_bias ? bias.data : nullptr, out.data,
                           out.dtype == DType::kF32, m, n, k),
             "matmul: cuBLASLt has no algorithm for [{}, {}] x [{}, {}]^T", m, k, n, k);
    if (bias.data != nullptr && !fused_bias) {
      PdlLaunch launch(dim3(Blocks(m * n, 256)), dim3(256), 0, stream_);
      if (out.dtype == DType::kF32) {
        launch(AddBiasKernel<float>, out.ptr<float>(), bias.ptr<bf16>(), m, n);
      } else {
        launch(AddBiasKernel<bf16>, out.ptr<bf16>(), bias.ptr<bf16>(), m, n);
      }
      HW_CUDA_LAUNCHED();
    }
  }

  void SiluMul(const Tensor& gate_up, const Tensor& out) override {
    const int64_t rows = out.dim(0), inter = out.dim(1);
    const int vec = inter % 8 == 0 ? 8 : 1;
    PdlLaunch(dim3(Blocks(rows * inter / vec, 256)), dim3(256), 0, stream_)(
        SiluMulKernel, gate_up.ptr<bf16>(), out.ptr<bf16>(), rows, inter, vec);
    HW_CUDA_LAUNCHED();
  }

  void RopeWriteKv(const Tensor& qkv, const PagedAttentionBatch& batch, const Tensor& inv_freq,
                   const KvPoolView& pool, const Tensor& q_out) override {
    HW_CHECK(inv_freq.dtype == DType::kF32, "inv_freq must be f32");
    const int hq = static_cast<int>(q_out.dim(1)), d = static_cast<int>(q_out.dim(2));
    const int hkv = batch.table.num_kv_heads();
    HW_CHECK(d % 2 == 0 && d <= 512, "head dim {} must be even and at most 512", d);
    PdlLaunch(dim3(static_cast<unsigned>(qkv.dim(0)),
                   static_cast<unsigned>((hq + 2 * hkv + kRopeHeads - 1) / kRopeHeads)),
              dim3(static_cast<unsigned>(d / 2), kRopeHeads), 0,
              stream_)(RopeWriteKvKernel, qkv.ptr<bf16>(), batch.token_seq.ptr<int32_t>(),
                       batch.token_pos.ptr<int32_t>(), inv_freq.ptr<float>(),
                       DecodeCache(pool, batch.table), pool.k.ptr<bf16>(), pool.v.ptr<bf16>(),
                       q_out.ptr<bf16>(), hq, d, pool.k.dim(0) * pool.k.dim(1));
    HW_CUDA_LAUNCHED();
  }

  void PagedAttention(const Tensor& q, const KvPoolView& pool, const PagedAttentionBatch& batch,
                      float scale, const Tensor& out) override {
    const int64_t tokens = q.dim(0);
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    const cuda::DecodeKvCache kv = DecodeCache(pool, batch.table);
    // Chunks of several tokens: where each sequence's chunk starts (ring heads' windows start
    // there; the prefill kernel tiles from it). Decode tokens start their own.
    const int32_t* first_pos = nullptr;
    if (batch.max_query_len > 1 && batch.query_start.data != nullptr) {
      first_pos = FirstPositions(batch);
      if (PrefillAttention(q, kv, batch, first_pos, scale, out)) return;
    }
    // Decode, and prefill shapes the tensor-core prefill kernel does not take: each token
    // attends its own keys. The split count depends on shapes only (graph replays).
    const int num_splits = PagedDecodeSplits(batch.table, tokens, hq, kv);
    const size_t scratch = cuda::DecodeAttentionScratchBytes(tokens * hq, num_splits, d);
    EnsureScratch(scratch);
    EnsureSplitCounters(std::max<int64_t>(1, tokens * hq));
    HW_CHECK(
        cuda::LaunchPagedDecodeAttention(stream_, q.ptr<bf16>(), kv, batch.token_seq.ptr<int32_t>(),
                                         batch.token_pos.ptr<int32_t>(), first_pos, tokens, hq, d,
                                         scale, num_splits, scratch > 0 ? scratch_.back() : nullptr,
                                         scratch_bytes_, split_counters_.back(), out.ptr<bf16>()),
        "paged attention: unsupported shape (Hq {}, Hkv {}, head dim {}, page size {})", hq, kv.hkv,
        d, kv.page_size);
    HW_CUDA_LAUNCHED();
  }

  void SparseDecodeAttention(const Tensor& q, const KvPoolView& pool,
                             const SparseDecodeBatch& batch, float scale, const Tensor& out,
                             const Tensor& lse) override {
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    HW_CHECK(lse.dtype == DType::kF32, "lse must be f32");
    const int64_t rows = batch.row_seq.numel();
    if (rows == 0) return;
    const cuda::DecodeKvCache kv = DecodeCache(pool, batch.table);
    const int group = hq / kv.hkv;
    // No list is longer than all of them together.
    const int num_splits = cuda::SparseDecodeSplits(
        rows, group, std::max<int64_t>(1, batch.indices.numel()), num_sms_);
    const size_t scratch = cuda::DecodeAttentionScratchBytes(rows * group, num_splits, d);
    EnsureScratch(scratch);
    EnsureSplitCounters(std::max<int64_t>(1, rows * group));
    HW_CHECK(cuda::LaunchSparseDecodeAttention(
                 stream_, q.ptr<bf16>(), kv, batch.row_seq.ptr<int32_t>(),
                 batch.row_kv_head.ptr<int32_t>(), batch.indptr.ptr<int32_t>(),
                 batch.indices.ptr<int32_t>(),
                 batch.logit_bias.data ? batch.logit_bias.ptr<float>() : nullptr, rows, hq, d,
                 scale, num_splits, scratch > 0 ? scratch_.back() : nullptr, scratch_bytes_,
                 split_counters_.back(), out.ptr<bf16>(), lse.ptr<float>()),
             "sparse decode attention: unsupported shape (Hq {}, Hkv {}, head dim {})", hq, kv.hkv,
             d);
    HW_CUDA_LAUNCHED();
  }

  // --- decode-time selection (kernels::SelectDecodeBatch) ---
  // Every launch reads lengths, slots and flags on the device and sizes its grid from shapes and
  // max_len only, so a step's selection captures into a graph; the attention passes' scratch is
  // the split-KV scratch of the other attention launches, sized by an eager run.

  void UpdatePageSummaries(const KvPoolView& pool, const PagedAttentionBatch& batch) override {
    if (pool.kmin.data == nullptr) return;  // no layout selects pages
    const int d = static_cast<int>(pool.k.dim(2));
    CheckPageSummaries(pool);
    HW_CHECK(cuda::LaunchUpdatePageSummaries(
                 stream_, DecodeCache(pool, batch.table), batch.token_seq.ptr<int32_t>(),
                 batch.token_pos.ptr<int32_t>(), batch.token_pos.numel(), d, pool.kmin.ptr<bf16>(),
                 pool.kmax.ptr<bf16>()),
             "page summaries: unsupported shape (Hkv {}, head dim {}, page size {})",
             batch.table.num_kv_heads(), d, pool.page_size);
    HW_CUDA_LAUNCHED();
  }

  void SelectionGate(const Tensor& q, const SelectDecodeBatch& batch) override {
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    const cuda::SelectDecodeView sel = SelectView(batch, hq, d);
    HW_CHECK(cuda::LaunchSelectionGate(stream_, SelectCache(batch), sel, q.ptr<bf16>(),
                                       batch.table.num_seqs(), hq, d),
             "selection gate: unsupported shape");
    HW_CUDA_LAUNCHED();
  }

  void ScoreAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                      float scale, const Tensor& out, const Tensor& scores) override {
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    const int num_seqs = batch.table.num_seqs();
    const cuda::SelectDecodeView sel = SelectView(batch, hq, d);
    const cuda::DecodeKvCache kv = SelectCache(batch, pool);
    HW_CHECK(scores.dtype == DType::kF32 && scores.rank == 3 && scores.dim(0) == num_seqs &&
                 scores.dim(1) == hq && scores.dim(2) >= batch.max_len,
             "scores {} must be f32 [S {}, Hq {}, >= max_len {}]", scores.ShapeString(), num_seqs,
             hq, batch.max_len);
    if (num_seqs == 0) return;
    const int max_keys = std::max(batch.max_len, 1);
    const int num_splits = cuda::SelectDecodeSplits(num_seqs, hq, kv.hkv, max_keys, num_sms_);
    const size_t scratch = cuda::DecodeAttentionScratchBytes(int64_t{num_seqs} * hq, num_splits, d);
    EnsureScratch(scratch);
    EnsureSplitCounters(int64_t{num_seqs} * hq);
    // The layer's kinds (batch.ops) say which passes have heads to do.
    if (batch.ops & kSelectOpScoreKeys) {
      HW_CHECK(cuda::LaunchScoreDecodeAttention(
                   stream_, q.ptr<bf16>(), kv, sel, num_seqs, hq, d, scale, scores.ptr<float>(),
                   scores.dim(2), num_splits, scratch > 0 ? scratch_.back() : nullptr,
                   scratch_bytes_, split_counters_.back(), out.ptr<bf16>()),
               "score attention: unsupported shape (Hq {}, Hkv {}, head dim {})", hq, kv.hkv, d);
      HW_CUDA_LAUNCHED();
    }
    if (pool.kmin.data != nullptr && (batch.ops & kSelectOpScorePages)) {  // pages heads' bounds
      CheckPageSummaries(pool);
      HW_CHECK(cuda::LaunchPageBounds(stream_, kv, sel, q.ptr<bf16>(), pool.kmin.ptr<bf16>(),
                                      pool.kmax.ptr<bf16>(), num_seqs, hq, d, scale, max_keys,
                                      scores.ptr<float>(), scores.dim(2)),
               "page bounds: unsupported shape (Hq {}, Hkv {}, head dim {})", hq, kv.hkv, d);
      HW_CUDA_LAUNCHED();
    }
  }

  void SelectTopK(const Tensor& q, const Tensor& scores, const SelectDecodeBatch& batch) override {
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    const int num_seqs = batch.table.num_seqs();
    const cuda::SelectDecodeView sel = SelectView(batch, hq, d);
    HW_CHECK(scores.dtype == DType::kF32 && scores.rank == 3 && scores.dim(0) == num_seqs &&
                 scores.dim(1) == hq && scores.dim(2) >= batch.max_len,
             "scores {} must be f32 [S {}, Hq {}, >= max_len {}]", scores.ShapeString(), num_seqs,
             hq, batch.max_len);
    HW_CHECK(batch.max_len <= cuda::MaxSelectTopKLen(),
             "selection top-k takes sequences of at most {} keys; max_len is {}",
             cuda::MaxSelectTopKLen(), batch.max_len);
    // A row per query head only where some head chooses per query head. The cluster stays sized
    // by keys even where every chooser scores pages: one block per head over a 128K context's
    // 8192 pages took Quest's top-k from 0.75 to 1.48 ms a step on the H100
    // (sparse-decode-speed-full-2026-12-07-h100.md), eight blocks of 1024 pages are faster.
    const int rows = (batch.ops & kSelectOpPerQHead) ? hq : batch.table.num_kv_heads();
    HW_CHECK(
        cuda::LaunchSelectTopK(stream_, SelectCache(batch), sel, q.ptr<bf16>(), scores.ptr<float>(),
                               scores.dim(2), num_seqs, hq, d, rows, batch.max_len),
        "selection top-k: unsupported shape (Hq {}, Hkv {}, max_len {})", hq,
        batch.table.num_kv_heads(), batch.max_len);
    HW_CUDA_LAUNCHED();
  }

  void SelectedAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                         float scale, const Tensor& out) override {
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    const int num_seqs = batch.table.num_seqs();
    const cuda::SelectDecodeView sel = SelectView(batch, hq, d);
    const cuda::DecodeKvCache kv = SelectCache(batch, pool);
    if (num_seqs == 0) return;
    // A list holds at most every key of its sequence.
    const int num_splits =
        cuda::SelectDecodeSplits(num_seqs, hq, kv.hkv, std::max(batch.max_len, 1), num_sms_);
    const size_t scratch = cuda::DecodeAttentionScratchBytes(int64_t{num_seqs} * hq, num_splits, d);
    EnsureScratch(scratch);
    EnsureSplitCounters(int64_t{num_seqs} * hq);
    HW_CHECK(cuda::LaunchSelectedDecodeAttention(
                 stream_, q.ptr<bf16>(), kv, sel, num_seqs, hq, d, scale, num_splits,
                 scratch > 0 ? scratch_.back() : nullptr, scratch_bytes_, split_counters_.back(),
                 out.ptr<bf16>()),
             "selected attention: unsupported shape (Hq {}, Hkv {}, head dim {})", hq, kv.hkv, d);
    HW_CUDA_LAUNCHED();
  }

  void OffloadAttention(const Tensor& q, const KvPoolView& pool, const OffloadDecodeBatch& batch,
                        float scale, const Tensor& out) override {
    const BlockTable& table = batch.table;
    if (!table.has_select_heads() || table.num_seqs() == 0) return;
    const int hq = static_cast<int>(q.dim(1)), d = static_cast<int>(q.dim(2));
    HW_CHECK(table.has_compressed_heads(), "offload heads need comp_blocks and comp_from");
    HW_CHECK(d <= kOffloadMaxDim && hq % table.num_kv_heads() == 0,
             "offload attention: head dim {} (at most {}), {} query heads for {} KV heads", d,
             kOffloadMaxDim, hq, table.num_kv_heads());
    HW_CHECK(batch.host_out.dtype == DType::kF32 && batch.host_lse.dtype == DType::kF32 &&
                 batch.host_out.numel() == int64_t{table.num_seqs()} * hq * d &&
                 batch.host_lse.numel() == int64_t{table.num_seqs()} * hq,
             "host_out {} and host_lse {} must be f32 [S {}, Hq {}, D {}] and [S, Hq]",
             batch.host_out.ShapeString(), batch.host_lse.ShapeString(), table.num_seqs(), hq, d);
    OffloadAttentionKernel<<<dim3(static_cast<unsigned>(table.num_seqs()),
                                  static_cast<unsigned>(table.num_kv_heads())),
                             kOffloadThreads, 0, stream_>>>(
        DecodeCache(pool, table), q.ptr<bf16>(), batch.seq_token.ptr<int32_t>(),
        batch.seq_len.ptr<int32_t>(), batch.host_out.ptr<float>(), batch.host_lse.ptr<float>(), hq,
        d, scale, out.ptr<bf16>());
    HW_CUDA_LAUNCHED();
  }

  void MeanKv(const KvPoolView& pool, const KvMeanBatch& batch) override {
    const int64_t rows = batch.row_seq.numel();
    if (rows == 0) return;
    const int d = static_cast<int>(pool.k.dim(2));
    MeanKvKernel<<<dim3(static_cast<unsigned>(rows), 2), 128, 0, stream_>>>(
        DecodeCache(pool, batch.table), pool.k.ptr<bf16>(), pool.v.ptr<bf16>(),
        batch.row_seq.ptr<int32_t>(), batch.row_kv_head.ptr<int32_t>(), batch.begin.ptr<int32_t>(),
        batch.end.ptr<int32_t>(), batch.dest.ptr<int32_t>(), d);
    HW_CUDA_LAUNCHED();
  }

  void GatherRows(const Tensor& x, const Tensor& rows, const Tensor& out) override {
    PdlLaunch(dim3(static_cast<unsigned>(rows.numel())), dim3(256), 0, stream_)(
        GatherRowsKernel, x.ptr<bf16>(), rows.ptr<int32_t>(), out.ptr<bf16>(), x.dim(1));
    HW_CUDA_LAUNCHED();
  }

  // Scores of a block of queries against every key (one cuBLASLt product into at most 1 GiB of
  // f32), then the row top-k (kernels/cuda/top_keys.h).
  void TopKeys(const Tensor& queries, const Tensor& keys, const Tensor& ids) override {
    static_assert(kMaxTopKeys <= cuda::kRowTopKMax);
    const int64_t m = queries.dim(0), n = keys.dim(0), d = keys.dim(1), k = ids.dim(1);
    HW_CHECK(
        queries.dim(1) == d && ids.dim(0) == m && k >= 1 && k <= std::min<int64_t>(n, kMaxTopKeys),
        "TopKeys: queries [{}, {}], keys [{}, {}], ids [{}, {}]", m, queries.dim(1), n, d,
        ids.dim(0), k);
    if (m == 0) return;
    const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 28) / n, 1, m);
    Buffer scores = Allocate(DType::kF32, {chunk, n});
    for (int64_t first = 0; first < m; first += chunk) {
      const int64_t rows = std::min(chunk, m - first);
      HW_CHECK(lt_gemm_->Run(queries.ptr<bf16>() + first * d, keys.ptr<bf16>(), nullptr,
                             scores.view().data, /*out_f32=*/true, rows, n, d),
               "TopKeys: no cuBLASLt algorithm for [{}, {}] x [{}, {}]^T", rows, d, n, d);
      HW_CHECK(cuda::LaunchRowTopK(stream_, scores.view().ptr<float>(), rows, n,
                                   static_cast<int>(k), ids.ptr<int32_t>() + first * k),
               "TopKeys: row top-{} of {} scores did not launch", k, n);
    }
    Synchronize();  // the scores go with this scope
  }

  void Sample(const Tensor& logits, const SamplingBatch& batch, const SampleOutputs& out) override {
    EnsureScratch(SampleScratchBytes(batch.logits_row.numel(), logits.dim(-1)));
    LaunchSample(logits, batch, out, scratch_.back(), stream_);
  }

 private:
  // residual null: plain RMSNorm; else residual += x first.
  void LaunchRmsNorm(bf16* residual, const Tensor& x, const Tensor& weight, float eps,
                     const Tensor& out) {
    const int64_t n = x.dim(1);
    const int64_t pieces = n % 8 == 0 ? (n / 8 + kNormThreads - 1) / kNormThreads : 0;
    auto kernel = pieces == 0   ? RmsNormKernel<0>
                  : pieces == 1 ? RmsNormKernel<1>
                  : pieces == 2 ? RmsNormKernel<2>
                  : pieces <= 4 ? RmsNormKernel<4>
                  : pieces <= 8 ? RmsNormKernel<8>
                                : RmsNormKernel<0>;
    PdlLaunch(dim3(static_cast<unsigned>(x.dim(0))), dim3(kNormThreads), 0, stream_)(
        kernel, residual, x.ptr<bf16>(), weight.ptr<bf16>(), eps, out.ptr<bf16>(), n,
        residual != nullptr);
    HW_CUDA_LAUNCHED();
  }

  // Splits of the decode kernel, from shapes only (graph replays). Ring heads attend at most
  // sink + window + the chunk, so the splits go to the full heads: with half the heads rings,
  // twice as many, or the full heads' blocks alone would set the time of a half-empty grid. The
  // table's host-known summaries stand for the layouts (a batch's sequences may run several): the
  // most full heads of a layout, and else the longest ring.
  int PagedDecodeSplits(const BlockTable& table, int64_t tokens, int hq,
                        const cuda::DecodeKvCache& kv) const {
    // Unset summaries would size a long context's work as a ring's: slow, not wrong, so check.
    HW_CHECK(table.max_full_heads >= 0 && table.max_full_heads <= kv.hkv &&
                 (table.max_full_heads > 0 || table.max_ring_span > 0),
             "BlockTable::max_full_heads {} (of {} KV heads) and max_ring_span {} must be set",
             table.max_full_heads, kv.hkv, table.max_ring_span);
    const int64_t capacity = int64_t{kv.max_blocks} * kv.page_size;
    const int full_heads = table.max_full_heads;
    if (full_heads > 0) {
      return cuda::PagedDecodeSplits(tokens, hq / kv.hkv * full_heads, full_heads, capacity,
                                     num_sms_);
    }
    const int64_t ring_keys = int64_t{table.max_ring_span} + tokens;
    return cuda::PagedDecodeSplits(tokens, hq, kv.hkv, std::min(capacity, ring_keys), num_sms_);
  }

  // Position of each sequence's first query token of the batch, on the device.
  const int32_t* FirstPositions(const PagedAttentionBatch& batch) {
    const int num_seqs = batch.table.num_seqs();
    if (first_pos_.empty() || first_pos_.view().numel() < num_seqs) {
      HW_CHECK(!capturing_, "prefill metadata must be sized before capture");
      first_pos_ = Allocate(
          DType::kI32,
          {std::max(num_seqs,
                    2 * static_cast<int>(first_pos_.empty() ? 0 : first_pos_.view().numel()))});
    }
    FirstPositionsKernel<<<Blocks(num_seqs, 128), 128, 0, stream_>>>(
        batch.query_start.ptr<int32_t>(), batch.token_pos.ptr<int32_t>(), num_seqs,
        first_pos_.view().ptr<int32_t>());
    HW_CUDA_LAUNCHED();
    return first_pos_.view().ptr<int32_t>();
  }

  // Chunks of new tokens on tensor cores; false where the kernel does not take the shape.
  bool PrefillAttention(const Tensor& q, const cuda::DecodeKvCache& kv,
                        const PagedAttentionBatch& batch, const int32_t* first_pos, float scale,
                        const Tensor& out) {
    const bool launched = cuda::LaunchPagedPrefillAttention(
        stream_, q.ptr<bf16>(), kv, batch.query_start.ptr<int32_t>(), first_pos,
        batch.table.num_seqs(), batch.max_query_len, static_cast<int>(q.dim(1)),
        static_cast<int>(q.dim(2)), scale, out.ptr<bf16>());
    HW_CUDA_LAUNCHED();
    return launched;
  }

  // Every attention and KV-write path goes through here. The heads and the block rows stay on
  // the device: what the host can check is the table's shape.
  static cuda::DecodeKvCache DecodeCache(const KvPoolView& pool, const BlockTable& table) {
    HW_CHECK(table.heads.dtype == DType::kI32 && table.heads.rank == 3 &&
                 table.heads.dim(2) == kKvHeadInts && table.num_layouts() > 0,
             "BlockTable::heads {} must be i32 [layouts, Hkv, {}]", table.heads.ShapeString(),
             kKvHeadInts);
    HW_CHECK(table.blocks.rank == 2 && table.seq_layout.numel() == table.num_seqs(),
             "BlockTable::blocks {} and seq_layout {} must be [S, max_blocks] and [S]",
             table.blocks.ShapeString(), table.seq_layout.ShapeString());
    cuda::DecodeKvCache kv{pool.k.ptr<bf16>(),
                           pool.v.ptr<bf16>(),
                           static_cast<const KvHead*>(table.heads.data),
                           table.seq_layout.ptr<int32_t>(),
                           table.blocks.ptr<int32_t>(),
                           table.max_blocks(),
                           pool.page_size,
                           table.num_kv_heads()};
    if (table.has_ring_heads()) {
      HW_CHECK(table.ring_blocks.dim(0) == table.blocks.dim(0) &&
                   table.ring_blocks.dim(1) == table.blocks.dim(1),
               "ring table {} must have the block table's shape {}",
               table.ring_blocks.ShapeString(), table.blocks.ShapeString());
      kv.ring_blocks = table.ring_blocks.ptr<int32_t>();
    }
    if (table.has_reindex_heads()) {
      HW_CHECK(table.has_ring_heads(), "re-indexed heads must be ring heads: no ring table");
      HW_CHECK(table.rope_inv_freq.dtype == DType::kF32 &&
                   table.rope_inv_freq.numel() == pool.k.dim(2) / 2,
               "rope_inv_freq must be f32 with {} entries for head dim {}, has {}",
               pool.k.dim(2) / 2, pool.k.dim(2), table.rope_inv_freq.numel());
      kv.rope_inv_freq = table.rope_inv_freq.ptr<float>();
    }
    if (table.has_compressed_heads()) {
      HW_CHECK_EQ(table.comp_from.numel(), table.blocks.dim(0));
      HW_CHECK(table.comp_blocks.dim(0) == table.blocks.dim(0) &&
                   table.comp_blocks.dim(1) == table.blocks.dim(1),
               "comp table {} must have the block table's shape {}",
               table.comp_blocks.ShapeString(), table.blocks.ShapeString());
      kv.comp_blocks = table.comp_blocks.ptr<int32_t>();
      kv.comp_from = table.comp_from.ptr<int32_t>();
    }
    if (table.has_select_heads()) {
      HW_CHECK(table.seq_slot.dtype == DType::kI32 && table.seq_slot.numel() == table.num_seqs(),
               "BlockTable::seq_slot {} must be i32 [S {}]", table.seq_slot.ShapeString(),
               table.num_seqs());
      kv.seq_slot = table.seq_slot.ptr<int32_t>();
    }
    return kv;
  }

  // The selection step's table on the device, with the pool where keys are read (its page size
  // must be the batch's).
  static cuda::DecodeKvCache SelectCache(const SelectDecodeBatch& batch, const KvPoolView& pool) {
    HW_CHECK(batch.table.has_select_heads(),
             "decode-time selection needs BlockTable::seq_slot and selects");
    HW_CHECK(pool.page_size == batch.page_size,
             "SelectDecodeBatch::page_size {} differs from the pool's {}", batch.page_size,
             pool.page_size);
    return DecodeCache(pool, batch.table);
  }
  static cuda::DecodeKvCache SelectCache(const SelectDecodeBatch& batch) {
    HW_CHECK(batch.page_size >= 1, "SelectDecodeBatch::page_size {}", batch.page_size);
    KvPoolView no_keys;
    no_keys.page_size = batch.page_size;
    return SelectCache(batch, no_keys);
  }

  static void CheckPageSummaries(const KvPoolView& pool) {
    HW_CHECK(pool.kmin.dtype == DType::kBF16 && pool.kmax.dtype == DType::kBF16 &&
                 pool.kmin.rank == 2 && pool.kmin.dim(0) == pool.k.dim(0) &&
                 pool.kmin.dim(1) == pool.k.dim(2) && pool.kmax.rank == 2 &&
                 pool.kmax.dim(0) == pool.k.dim(0) && pool.kmax.dim(1) == pool.k.dim(2),
             "page summaries kmin {} / kmax {} must be bf16 [pages {}, D {}]",
             pool.kmin.ShapeString(), pool.kmax.ShapeString(), pool.k.dim(0), pool.k.dim(2));
  }

  // SelectDecodeBatch's state and step tensors as the kernels read them, after checking their
  // shapes against the table and q [T, hq, d].
  static cuda::SelectDecodeView SelectView(const SelectDecodeBatch& batch, int hq, int d) {
    const BlockTable& table = batch.table;
    HW_CHECK(table.has_select_heads(),
             "decode-time selection needs BlockTable::seq_slot and selects");
    const int64_t num_seqs = table.num_seqs();
    HW_CHECK(table.seq_slot.dtype == DType::kI32 && table.seq_slot.numel() == num_seqs &&
                 batch.seq_token.numel() == num_seqs && batch.seq_len.numel() == num_seqs,
             "seq_slot {}, seq_token {} and seq_len {} must be i32 [S {}]",
             table.seq_slot.ShapeString(), batch.seq_token.ShapeString(),
             batch.seq_len.ShapeString(), num_seqs);
    HW_CHECK(table.selects.dtype == DType::kI32 && table.selects.rank == 3 &&
                 table.selects.dim(0) == table.num_layouts() &&
                 table.selects.dim(1) == table.num_kv_heads() &&
                 table.selects.dim(2) == kKvSelectInts,
             "BlockTable::selects {} must be i32 [layouts {}, Hkv {}, {}]",
             table.selects.ShapeString(), table.num_layouts(), table.num_kv_heads(), kKvSelectInts);
    const SelectState& st = batch.state;
    HW_CHECK(st.positions.rank == 4 && st.positions.dim(2) == hq && st.positions.dim(3) >= 1,
             "SelectState::positions {} must be i32 [slots, sets, Hq {}, budget]",
             st.positions.ShapeString(), hq);
    const int64_t slots = st.positions.dim(0), sets = st.positions.dim(1);
    const auto is_slots_sets = [&](const Tensor& t) {
      return t.dtype == DType::kI32 && t.rank == 2 && t.dim(0) == slots && t.dim(1) == sets;
    };
    HW_CHECK(st.counts.dtype == DType::kI32 && st.counts.rank == 3 && st.counts.dim(0) == slots &&
                 st.counts.dim(1) == sets && st.counts.dim(2) == hq &&
                 is_slots_sets(st.chosen_len) && is_slots_sets(st.steps) &&
                 is_slots_sets(st.refresh),
             "SelectState counts {} must be i32 [slots {}, sets {}, Hq {}], chosen_len {}, steps "
             "{} and refresh {} i32 [slots, sets]",
             st.counts.ShapeString(), slots, sets, hq, st.chosen_len.ShapeString(),
             st.steps.ShapeString(), st.refresh.ShapeString());
    HW_CHECK(st.q_ref.data == nullptr ||
                 (st.q_ref.dtype == DType::kF32 && st.q_ref.rank == 3 && st.q_ref.dim(0) == slots &&
                  st.q_ref.dim(1) == sets && st.q_ref.dim(2) == int64_t{hq} * d),
             "SelectState::q_ref {} must be empty or f32 [slots {}, sets {}, Hq * D {}]",
             st.q_ref.ShapeString(), slots, sets, int64_t{hq} * d);
    cuda::SelectDecodeView v{};
    v.seq_token = batch.seq_token.ptr<int32_t>();
    v.seq_len = batch.seq_len.ptr<int32_t>();
    v.selects = static_cast<const KvSelect*>(table.selects.data);
    v.positions = st.positions.ptr<int32_t>();
    v.counts = st.counts.ptr<int32_t>();
    v.chosen_len = st.chosen_len.ptr<int32_t>();
    v.steps = st.steps.ptr<int32_t>();
    v.refresh = st.refresh.ptr<int32_t>();
    v.q_ref = st.q_ref.data != nullptr ? st.q_ref.ptr<float>() : nullptr;
    v.num_sets = static_cast<int>(sets);
    v.width = static_cast<int>(st.positions.dim(3));
    return v;
  }

  // Scratch for split-KV partials, grown on demand. Outgrown buffers stay allocated until
  // the backend goes: a captured graph may still point into them.
  void EnsureScratch(size_t bytes) {
    if (bytes <= scratch_bytes_) return;
    HW_CHECK(!capturing_, "attention scratch must be sized by an eager run before capture");
    scratch_bytes_ = std::max(bytes, 2 * scratch_bytes_);
    void* p = nullptr;
    HW_CUDA_CHECK(cudaMalloc(&p, scratch_bytes_));
    scratch_.push_back(p);
  }

  // The split-KV launches' arrival counters (kernels/cuda/decode_attention.h): zero when
  // allocated, left zero by every launch; grown and kept like the scratch.
  void EnsureSplitCounters(int64_t count) {
    if (count <= split_counter_count_) return;
    HW_CHECK(!capturing_, "attention counters must be sized by an eager run before capture");
    split_counter_count_ = std::max(count, 2 * split_counter_count_);
    void* p = nullptr;
    const size_t bytes = static_cast<size_t>(split_counter_count_) * sizeof(uint32_t);
    HW_CUDA_CHECK(cudaMalloc(&p, bytes));
    HW_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    split_counters_.push_back(static_cast<uint32_t*>(p));
  }

  class CudaGraph final : public CapturedOps {
   public:
    CudaGraph(cudaGraphExec_t exec, cudaStream_t stream) : exec_(exec), stream_(stream) {}
    ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
    void Replay() override { HW_CUDA_CHECK(cudaGraphLaunch(exec_, stream_)); }

   private:
    cudaGraphExec_t exec_;
    cudaStream_t stream_;
  };

  static constexpr int64_t kGemmWorkspaceBytes = int64_t{32} << 20;

  int device_;
  int num_sms_ = 1;
  bool capturing_ = false;
  std::vector<void*> scratch_;
  size_t scratch_bytes_ = 0;
  std::vector<uint32_t*> split_counters_;
  int64_t split_counter_count_ = 0;
  cudaStream_t stream_ = nullptr;
  Buffer gemm_workspace_;
  std::unique_ptr<cuda::LtGemm> lt_gemm_;
  Buffer first_pos_;  // per-sequence first query position, for the prefill kernel
  // CopyToHostStart's pinned destination and the event behind its copy.
  void* host_copy_ = nullptr;
  size_t host_copy_bytes_ = 0;
  cudaEvent_t copy_event_ = nullptr;
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
  const DeviceScope scope(device_index);  // the backend's constructor makes its GPU current
  return std::unique_ptr<Backend>(new CudaBackend(device_index));
}

std::optional<CudaHandles> CudaHandlesOf(Backend& backend) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (cuda == nullptr) return std::nullopt;
  return CudaHandles{cuda->device_index(), cuda->stream()};
}

}  // namespace headwise::kernels
