#include <climits>
#include <cmath>

#include "kernels/cpu/sampling.h"
#include "kernels/cuda/sampling.h"

namespace headwise::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kPivots = 15;  // a 16-way split of the key interval per pass: at most 8 passes
constexpr int kMaxTop = 20;  // the OpenAI limit on top_logprobs
constexpr int kUnroll = 4;   // loads in flight per thread
constexpr int kScanIds = 8;  // contiguous ids per thread in id-order scans

struct Args {
  const float* logits;
  int vocab;
  float* scratch;
  const int32_t* logits_row;
  const float* temperature;
  const int32_t* top_k;
  const float* top_p;
  const float* min_p;
  const float* repetition_penalty;
  const float* presence_penalty;
  const float* frequency_penalty;
  const int32_t* bias_indptr;
  const int32_t* bias_ids;
  const float* bias_values;
  const int32_t* penalty_indptr;
  const int32_t* penalty_ids;
  const int32_t* penalty_counts;
  const int32_t* penalty_in_prompt;
  const int32_t* seed;
  const int32_t* draw;
  const int32_t* num_logprobs;
  int32_t* token;
  float* logprob;
  int32_t* top_ids;
  float* top_logprobs;
  int k_out;
};

struct Shared {
  double sums[kWarps][kPivots];
  double result[kPivots];
  float best_value[kWarps];
  int32_t best_id[kWarps];
  int32_t scan[kWarps];
  int32_t found;
  float top_value[kMaxTop];
  int32_t top_id[kMaxTop];
  int32_t top_count;
};

// A prefix of the order (value descending, id ascending): the tokens with a larger key, and
// those with an equal key up to id `tie`.
struct Cut {
  uint32_t key;
  int32_t tie;
};
constexpr Cut kAll{0u, INT_MAX};

__device__ __forceinline__ bool Inside(Cut c, uint32_t key, int id) {
  return key > c.key || (key == c.key && id <= c.tie);
}

__device__ __forceinline__ uint32_t KeyOf(float y) {
  return OrderedKey(__float_as_uint(y));
}

__device__ __forceinline__ float ValueOf(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// f(id, value) over the row; each thread's ids in a fixed order, so per-thread partial sums,
// and the block reductions over them, are the same on every run.
template <typename F>
__device__ __forceinline__ void ForRow(const float* row, int vocab, F&& f) {
  for (int base = threadIdx.x; base < vocab; base += kUnroll * kThreads) {
    float v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kThreads;
      v[u] = i < vocab ? row[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int i = base + u * kThreads;
      if (i < vocab) f(i, v[u]);
    }
  }
}

struct Best {
  float value;
  int32_t id;
};

__device__ __forceinline__ Best Pick(Best a, Best b) {
  return (a.value > b.value || (a.value == b.value && a.id < b.id)) ? a : b;
}

// The block's best (value, id): largest value, lowest id among equals; (-inf, INT_MAX) when
// no thread has a candidate.
__device__ Best BlockBest(Best b, Shared& sh) {
  for (int o = 16; o > 0; o /= 2) {
    b = Pick(b,
             Best{__shfl_xor_sync(0xffffffffu, b.value, o), __shfl_xor_sync(0xffffffffu, b.id, o)});
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    sh.best_value[warp] = b.value;
    sh.best_id[warp] = b.id;
  }
  __syncthreads();
  if (warp == 0) {
    b = lane < kWarps ? Best{sh.best_value[lane], sh.best_id[lane]} : Best{-INFINITY, INT_MAX};
    for (int o = 16; o > 0; o /= 2) {
      b = Pick(
          b, Best{__shfl_xor_sync(0xffffffffu, b.value, o), __shfl_xor_sync(0xffffffffu, b.id, o)});
    }
    if (lane == 0) {
      sh.best_value[0] = b.value;
      sh.best_id[0] = b.id;
    }
  }
  __syncthreads();
  const Best out{sh.best_value[0], sh.best_id[0]};
  __syncthreads();
  return out;
}

// Sums n (<= kPivots) values per thread over the block into sh.result, in a fixed tree.
template <int N>
__device__ void BlockSums(const double (&v)[N], Shared& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    double s = v[j];
    for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) sh.sums[warp][j] = s;
  }
  __syncthreads();
  if (threadIdx.x < N) {
    double s = 0.0;
    for (int w = 0; w < kWarps; ++w) s += sh.sums[w][threadIdx.x];
    sh.result[threadIdx.x] = s;
  }
  __syncthreads();
}

__device__ double BlockSum(double v, Shared& sh) {
  const double one[1] = {v};
  BlockSums(one, sh);
  const double s = sh.result[0];
  __syncthreads();
  return s;
}

// The largest key t such that the weight of the members with key >= t reaches `target`, the
// weight being 1 per member or exp(y - ymax) with `mass`; members lie in keys [lo, hi) and
// their total weight reaches target. Returns t and the weight strictly above it.
__device__ void SearchKey(const float* row, int vocab, float inv_t, float ymax, bool mass,
                          Cut member, double target, uint64_t lo, uint64_t hi, Shared& sh,
                          uint32_t* t_out, double* above_out) {
  double above = 0.0;  // weight of the members with key >= hi
  while (hi - lo > 1) {
    const uint64_t step = hi - lo;
    uint32_t pivot[kPivots];
#pragma unroll
    for (int j = 0; j < kPivots; ++j) pivot[j] = static_cast<uint32_t>(lo + step * (j + 1) / 16);
    double w[kPivots];
#pragma unroll
    for (int j = 0; j < kPivots; ++j) w[j] = 0.0;
    const uint64_t l = lo, h = hi;
    ForRow(row, vocab, [&](int i, float x) {
      const float y = MulRn(x, inv_t);
      const uint32_t k = KeyOf(y);
      if (k < l || k >= h || !Inside(member, k, i)) return;
      const double wi = mass ? static_cast<double>(expf(y - ymax)) : 1.0;
#pragma unroll
      for (int j = 0; j < kPivots; ++j) w[j] += k >= pivot[j] ? wi : 0.0;
    });
    BlockSums(w, sh);
    // Weights at or above each pivot are nested: take the highest pivot that still reaches
    // the target. Every thread reads the same sums, so all take the same branch.
    int j = kPivots - 1;
    while (j >= 0 && above + sh.result[j] < target) --j;
    if (j < 0) {
      above += sh.result[0];
      hi = pivot[0];
    } else {
      lo = pivot[j];
      if (j + 1 < kPivots) {
        above += sh.result[j + 1];
        hi = pivot[j + 1];
      }
    }
    __syncthreads();
  }
  *t_out = static_cast<uint32_t>(lo);
  *above_out = above;
}

// The id of the n-th member (in id order) whose key is t, or INT_MAX when there are fewer.
__device__ int32_t NthWithKey(const float* row, int vocab, float inv_t, Cut member, uint32_t t,
                              int n, Shared& sh) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int seen = 0;
  for (int base = 0; base < vocab; base += kThreads * kScanIds) {
    const int first = base + threadIdx.x * kScanIds;
    auto matches = [&](int i) {
      if (i >= vocab) return false;
      const uint32_t k = KeyOf(MulRn(row[i], inv_t));
      return k == t && Inside(member, k, i);
    };
    int count = 0;
    for (int q = 0; q < kScanIds; ++q) count += matches(first + q);
    int incl = count;  // inclusive scan over the block, in thread (= id) order
    for (int o = 1; o < 32; o *= 2) {
      const int up = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += up;
    }
    if (lane == 31) sh.scan[warp] = incl;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) incl += sh.scan[w];
      total += sh.scan[w];
    }
    if (seen + total >= n) {
      const int before = seen + incl - count;
      if (before < n && n <= before + count) {
        int left = n - before;
        for (int q = 0; q < kScanIds; ++q) {
          if (matches(first + q) && --left == 0) sh.found = first + q;
        }
      }
      __syncthreads();
      const int32_t id = sh.found;
      __syncthreads();
      return id;
    }
    seen += total;
    __syncthreads();
  }
  return INT_MAX;
}

// The n-th best members of the row by (value, id), as a Cut: n <= the members' count.
__device__ Cut TopCount(const float* row, int vocab, float inv_t, float ymax, int n, Shared& sh) {
  uint32_t t;
  double above;
  SearchKey(row, vocab, inv_t, ymax, false, kAll, n, 0, uint64_t{KeyOf(ymax)} + 1, sh, &t, &above);
  const int need = n - static_cast<int>(above);
  return Cut{t, NthWithKey(row, vocab, inv_t, kAll, t, need, sh)};
}

__global__ void __launch_bounds__(kThreads) SampleKernel(Args a) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const int vocab = a.vocab;
  const float* src = a.logits + int64_t{a.logits_row[r]} * vocab;

  SamplingRow p;
  p.temperature = a.temperature[r];
  p.top_k = a.top_k[r];
  p.top_p = a.top_p[r];
  p.min_p = a.min_p[r];
  p.repetition_penalty = a.repetition_penalty[r];
  p.presence_penalty = a.presence_penalty[r];
  p.frequency_penalty = a.frequency_penalty[r];
  p.seed = uint64_t{static_cast<uint32_t>(a.seed[2 * r])} |
           uint64_t{static_cast<uint32_t>(a.seed[2 * r + 1])} << 32;
  p.draw = static_cast<uint32_t>(a.draw[r]);
  p.num_logprobs = a.num_logprobs[r];

  // Logprobs of the raw logits.
  float lse = 0.0f;
  if (p.num_logprobs >= 0) {
    Best m{-INFINITY, INT_MAX};
    ForRow(src, vocab, [&](int i, float x) { m = Pick(m, Best{x, i}); });
    const float rmax = BlockBest(m, sh).value;
    double s = 0.0;
    ForRow(src, vocab, [&](int, float x) { s += static_cast<double>(expf(x - rmax)); });
    lse = rmax + static_cast<float>(log(BlockSum(s, sh)));
    const int k = min(min(p.num_logprobs, vocab), a.k_out);
    if (threadIdx.x == 0) sh.top_count = 0;
    __syncthreads();
    if (k > 0) {
      const Cut cut = TopCount(src, vocab, 1.0f, rmax, k, sh);
      ForRow(src, vocab, [&](int i, float x) {
        if (!Inside(cut, KeyOf(x), i)) return;
        const int slot = atomicAdd(&sh.top_count, 1);
        if (slot < kMaxTop) {
          sh.top_value[slot] = x;
          sh.top_id[slot] = i;
        }
      });
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      const int n = min(sh.top_count, kMaxTop);
      // At most 20 entries: insertion sort into (value descending, id ascending).
      for (int i = 1; i < n; ++i) {
        const Best e{sh.top_value[i], sh.top_id[i]};
        int j = i - 1;
        while (j >= 0 && Pick(e, Best{sh.top_value[j], sh.top_id[j]}).id == e.id) {
          sh.top_value[j + 1] = sh.top_value[j];
          sh.top_id[j + 1] = sh.top_id[j];
          --j;
        }
        sh.top_value[j + 1] = e.value;
        sh.top_id[j + 1] = e.id;
      }
      for (int j = 0; j < a.k_out; ++j) {
        a.top_ids[r * a.k_out + j] = j < n ? sh.top_id[j] : -1;
        a.top_logprobs[r * a.k_out + j] = j < n ? sh.top_value[j] - lse : -INFINITY;
      }
    }
  } else if (threadIdx.x == 0) {
    for (int j = 0; j < a.k_out; ++j) {
      a.top_ids[r * a.k_out + j] = -1;
      a.top_logprobs[r * a.k_out + j] = -INFINITY;
    }
  }

  // Bias and penalties touch a few tokens: applied to a copy of the row, in the CPU's order
  // (copy, then bias, then penalties), a barrier between each.
  const int b0 = a.bias_indptr[r], b1 = a.bias_indptr[r + 1];
  const int p0 = a.penalty_indptr[r], p1 = a.penalty_indptr[r + 1];
  const float* row = src;
  if (b1 > b0 || p1 > p0) {
    float* ws = a.scratch + int64_t{r} * vocab;
    for (int i = threadIdx.x; i < vocab; i += kThreads) ws[i] = src[i];
    __syncthreads();
    for (int j = b0 + threadIdx.x; j < b1; j += kThreads) ws[a.bias_ids[j]] += a.bias_values[j];
    __syncthreads();
    for (int j = p0 + threadIdx.x; j < p1; j += kThreads) {
      float& x = ws[a.penalty_ids[j]];
      x = ApplyPenalty(x, p, a.penalty_counts[j], a.penalty_in_prompt[j] != 0);
    }
    __syncthreads();
    row = ws;
  }

  int32_t chosen;
  if (p.temperature <= 0.0f) {
    Best m{-INFINITY, INT_MAX};
    ForRow(row, vocab, [&](int i, float x) { m = Pick(m, Best{x, i}); });
    chosen = BlockBest(m, sh).id;
  } else {
    const float inv_t = InverseTemperature(p.temperature);
    Best m{-INFINITY, INT_MAX};
    ForRow(row, vocab, [&](int i, float x) { m = Pick(m, Best{MulRn(x, inv_t), i}); });
    const float ymax = BlockBest(m, sh).value;
    Cut cut_k = kAll, cut_p = kAll;
    if (p.top_k > 0 && p.top_k < vocab) cut_k = TopCount(row, vocab, inv_t, ymax, p.top_k, sh);
    if (p.top_p < 1.0f) {
      double z = 0.0;
      ForRow(row, vocab, [&](int i, float x) {
        const float y = MulRn(x, inv_t);
        if (Inside(cut_k, KeyOf(y), i)) z += static_cast<double>(expf(y - ymax));
      });
      const double target = static_cast<double>(p.top_p) * BlockSum(z, sh);
      uint32_t t;
      double above;
      SearchKey(row, vocab, inv_t, ymax, true, cut_k, target, cut_k.key, uint64_t{KeyOf(ymax)} + 1,
                sh, &t, &above);
      // Tokens tied at t join in id order until the mass reaches the target.
      const double e = static_cast<double>(expf(ValueOf(t) - ymax));
      const double q = e > 0.0 ? ceil((target - above) / e) : 1.0;
      int need = q >= vocab ? vocab : max(1, static_cast<int>(q));
      while (need > 1 && above + (need - 1) * e >= target) --need;
      while (above + need * e < target && need < vocab) ++need;
      cut_p = Cut{t, NthWithKey(row, vocab, inv_t, cut_k, t, need, sh)};
    }
    const NoiseKey key = MakeNoiseKey(p.seed, p.draw);
    Best best{-INFINITY, INT_MAX};
    ForRow(row, vocab, [&](int i, float x) {
      const float y = MulRn(x, inv_t);
      const uint32_t k = KeyOf(y);
      if (!Inside(cut_k, k, i) || !Inside(cut_p, k, i)) return;
      if (p.min_p > 0.0f && !(expf(y - ymax) >= p.min_p)) return;
      best = Pick(best, Best{y + GumbelNoise(key, i), i});
    });
    chosen = BlockBest(best, sh).id;
  }
  // The best token is always kept, so only NaN logits leave nothing to choose.
  if (chosen == INT_MAX) chosen = 0;
  if (threadIdx.x == 0) {
    a.token[r] = chosen;
    a.logprob[r] = p.num_logprobs >= 0 ? src[chosen] - lse : 0.0f;
  }
}

void Check(const Tensor& t, DType dtype, int64_t min_elems, const char* what) {
  if (min_elems == 0) return;
  HW_CHECK(t.device == Device::kCuda && t.dtype == dtype && t.numel() >= min_elems,
           "Sample: {} must be {} on the GPU with {} entries, got {}", what, DTypeName(dtype),
           min_elems, t.ShapeString());
}

}  // namespace

size_t SampleScratchBytes(int64_t rows, int64_t vocab) {
  return static_cast<size_t>(rows) * static_cast<size_t>(vocab) * sizeof(float);
}

void LaunchSample(const Tensor& logits, const SamplingBatch& b, const SampleOutputs& out,
                  void* scratch, cudaStream_t stream) {
  const int64_t rows = b.logits_row.numel();
  HW_CHECK(logits.rank == 2 && logits.dtype == DType::kF32 && logits.device == Device::kCuda,
           "Sample: logits must be f32 [N, V] on the GPU, got {}", logits.ShapeString());
  HW_CHECK(logits.dim(1) < INT_MAX / 2, "Sample: vocabulary of {} is too large", logits.dim(1));
  if (rows == 0) return;
  Check(b.logits_row, DType::kI32, rows, "logits_row");
  Check(b.temperature, DType::kF32, rows, "temperature");
  Check(b.top_k, DType::kI32, rows, "top_k");
  Check(b.top_p, DType::kF32, rows, "top_p");
  Check(b.min_p, DType::kF32, rows, "min_p");
  Check(b.repetition_penalty, DType::kF32, rows, "repetition_penalty");
  Check(b.presence_penalty, DType::kF32, rows, "presence_penalty");
  Check(b.frequency_penalty, DType::kF32, rows, "frequency_penalty");
  Check(b.bias_indptr, DType::kI32, rows + 1, "bias_indptr");
  Check(b.penalty_indptr, DType::kI32, rows + 1, "penalty_indptr");
  Check(b.seed, DType::kI32, 2 * rows, "seed");
  Check(b.draw, DType::kI32, rows, "draw");
  Check(b.num_logprobs, DType::kI32, rows, "num_logprobs");
  Check(out.token, DType::kI32, rows, "token");
  Check(out.logprob, DType::kF32, rows, "logprob");
  const int k_out = out.top_ids.rank == 2 ? static_cast<int>(out.top_ids.dim(1)) : 0;
  HW_CHECK(k_out <= kMaxTop, "Sample: {} top logprobs asked, at most {}", k_out, kMaxTop);
  Check(out.top_ids, DType::kI32, rows * k_out, "top_ids");
  Check(out.top_logprobs, DType::kF32, rows * k_out, "top_logprobs");

  Args a{};
  a.logits = logits.ptr<float>();
  a.vocab = static_cast<int>(logits.dim(1));
  a.scratch = static_cast<float*>(scratch);
  a.logits_row = b.logits_row.ptr<int32_t>();
  a.temperature = b.temperature.ptr<float>();
  a.top_k = b.top_k.ptr<int32_t>();
  a.top_p = b.top_p.ptr<float>();
  a.min_p = b.min_p.ptr<float>();
  a.repetition_penalty = b.repetition_penalty.ptr<float>();
  a.presence_penalty = b.presence_penalty.ptr<float>();
  a.frequency_penalty = b.frequency_penalty.ptr<float>();
  a.bias_indptr = b.bias_indptr.ptr<int32_t>();
  a.bias_ids = b.bias_ids.ptr<int32_t>();
  a.bias_values = b.bias_values.ptr<float>();
  a.penalty_indptr = b.penalty_indptr.ptr<int32_t>();
  a.penalty_ids = b.penalty_ids.ptr<int32_t>();
  a.penalty_counts = b.penalty_counts.ptr<int32_t>();
  a.penalty_in_prompt = b.penalty_in_prompt.ptr<int32_t>();
  a.seed = b.seed.ptr<int32_t>();
  a.draw = b.draw.ptr<int32_t>();
  a.num_logprobs = b.num_logprobs.ptr<int32_t>();
  a.token = out.token.ptr<int32_t>();
  a.logprob = out.logprob.ptr<float>();
  a.top_ids = out.top_ids.ptr<int32_t>();
  a.top_logprobs = out.top_logprobs.ptr<float>();
  a.k_out = k_out;
  SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(a);
  const cudaError_t err = cudaGetLastError();
  HW_CHECK(err == cudaSuccess, "Sample kernel launch ({} rows, vocabulary {}): {}", rows, a.vocab,
           cudaGetErrorString(err));
}

}  // namespace headwise::kernels
