// Top-k per row as a radix select on order-preserving 32-bit keys, one block per row: rounds of
// 12, 10 and 10 bits settle the k-th largest key's bits from the top (a histogram of the row's
// candidates per round, read from global memory), until the keys at or above the settled prefix
// fit on chip (kCandidates); those are gathered and sorted (key down, column up) by a bitonic
// sort in shared memory. On real scores the first round is usually enough: two passes over the
// row. A row whose k-th key is shared by more than kCandidates keys settles all 32 bits and
// takes the equal keys in column order.
#include <cstdint>

#include "kernels/cuda/ordered_select.cuh"
#include "kernels/cuda/top_keys.h"

namespace headwise::kernels::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kCandidates = 2048;  // >= kRowTopKMax, a power of two
constexpr int kMaxBins = 4096;

__global__ void __launch_bounds__(kThreads)
    RowTopKKernel(const float* scores, int64_t n, int k, int32_t* ids) {
  __shared__ uint32_t s_hist[kMaxBins];
  // (key << 32) | ~column: larger is better, so one descending sort orders by key, then column.
  __shared__ unsigned long long s_cand[kCandidates];
  __shared__ int s_scan[kWarps + 1];
  __shared__ int s_count;
  __shared__ uint32_t s_bin;
  __shared__ int s_above_bin;

  const int tid = threadIdx.x;
  const float* row = scores + static_cast<int64_t>(blockIdx.x) * n;

  // Invariant: the keys whose top `settled` bits exceed `prefix` number `above` (< k); the k-th
  // largest key has the top bits `prefix`.
  uint32_t prefix = 0;
  int settled = 0;
  int above = 0;
  int64_t matching = n;  // keys with the top bits `prefix`
  for (int round = 0; round < 3 && above + matching > kCandidates; ++round) {
    const int bits = round == 0 ? 12 : 10, bins = 1 << bits;  // 12 + 10 + 10 = 32
    const int shift = 32 - settled - bits;
    for (int b = tid; b < bins; b += kThreads) s_hist[b] = 0;
    __syncthreads();
    for (int64_t j = tid; j < n; j += kThreads) {
      const uint32_t key = OrderedKey(row[j]);
      if (settled == 0 || (key >> (32 - settled)) == prefix) {
        atomicAdd(&s_hist[(key >> shift) & (bins - 1)], 1u);
      }
    }
    __syncthreads();
    // Thread t sums bins_per from the top down; the one whose share crosses `need` finds the bin.
    const int need = k - above;
    const int per = bins / kThreads;
    const int top = bins - 1 - tid * per;
    int local = 0;
    for (int i = 0; i < per; ++i) local += static_cast<int>(s_hist[top - i]);
    int total;
    const int before = BlockExclusiveScan<kWarps>(local, s_scan, &total);
    if (before < need && before + local >= need) {
      int running = before;
      for (int i = 0; i < per; ++i) {
        const int c = static_cast<int>(s_hist[top - i]);
        if (running + c >= need) {
          s_bin = static_cast<uint32_t>(top - i);
          s_above_bin = running;
          break;
        }
        running += c;
      }
    }
    __syncthreads();
    prefix = (prefix << bits) | s_bin;
    settled += bits;
    above += s_above_bin;
    matching = s_hist[s_bin];
    __syncthreads();  // s_hist, s_bin are rewritten next round
  }

  // Gather: every key at or above the prefix; after all 32 bits (the k-th key is `prefix` and
  // shared by more than fit) the keys above it and the first k - above equal to it by column.
  const bool exact = above + matching > kCandidates;
  const uint64_t lowest = settled == 0 ? 0 : static_cast<uint64_t>(prefix) << (32 - settled);
  const uint64_t take_from = exact ? static_cast<uint64_t>(prefix) + 1 : lowest;
  const int need_equal = k - above;
  if (tid == 0) s_count = 0;
  __syncthreads();
  int equal_before = 0;
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t j = base + tid;
    const uint32_t key = j < n ? OrderedKey(row[j]) : 0u;
    const bool equal = exact && j < n && key == prefix;
    int equals;
    const int rank = equal_before + BlockExclusiveScan<kWarps>(equal ? 1 : 0, s_scan, &equals);
    if ((j < n && key >= take_from) || (equal && rank < need_equal)) {
      s_cand[atomicAdd(&s_count, 1)] = (static_cast<unsigned long long>(key) << 32) |
                                       static_cast<uint32_t>(~static_cast<uint32_t>(j));
    }
    equal_before += equals;
  }
  __syncthreads();
  const int count = s_count;
  int size = 1;
  while (size < count) size *= 2;
  for (int i = count + tid; i < size; i += kThreads) s_cand[i] = 0ull;  // sorts last
  __syncthreads();
  // Bitonic sort, descending.
  for (int width = 2; width <= size; width *= 2) {
    for (int stride = width / 2; stride > 0; stride /= 2) {
      for (int i = tid; i < size; i += kThreads) {
        const int partner = i ^ stride;
        if (partner > i) {
          const bool descending = (i & width) == 0;
          const unsigned long long a = s_cand[i], b = s_cand[partner];
          if ((a < b) == descending) {
            s_cand[i] = b;
            s_cand[partner] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  int32_t* out = ids + static_cast<int64_t>(blockIdx.x) * k;
  for (int i = tid; i < k; i += kThreads) {
    out[i] = static_cast<int32_t>(~static_cast<uint32_t>(s_cand[i] & 0xffffffffull));
  }
}

}  // namespace

bool LaunchRowTopK(cudaStream_t stream, const float* scores, int64_t rows, int64_t n, int k,
                   int32_t* ids) {
  if (k < 1 || k > kRowTopKMax || k > n || n > INT32_MAX || rows < 1 || rows > INT32_MAX) {
    return false;
  }
  RowTopKKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(scores, n, k, ids);
  return cudaGetLastError() == cudaSuccess;
}

}  // namespace headwise::kernels::cuda
