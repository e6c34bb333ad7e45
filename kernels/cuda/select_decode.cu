// Decode-time selection's kernels other than attention: Quest's page summaries and page bounds,
// the recycle sets' refresh gate, and top-k. Each reads lengths, slots and flags from device
// memory, so that one captured launch serves every step.
//
// Top-k is a radix select on the candidates' reduced scores as order-preserving 32-bit keys, one
// thread-block cluster per set: the cluster's blocks split the candidates (in position order),
// keep their keys in shared memory, and settle the threshold key in four rounds of 8 bits, each a
// histogram per block summed over the cluster through distributed shared memory. The set is then
// every key above the threshold and the first (lowest-position) keys equal to it, written in
// position order by an ordered compaction over the blocks. Scores are read from device memory
// once (plus once for the softmax's log-sum-exp), everything else stays on chip.

#include <cooperative_groups.h>

#include <cmath>
#include <cstddef>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ordered_select.cuh"
#include "kernels/cuda/ptx.cuh"
#include "kernels/cuda/select_decode.h"

namespace headwise::kernels::cuda {
namespace {

namespace cg = cooperative_groups;
using bf16 = __nv_bfloat16;
using ptx::AllowDependentLaunch;
using ptx::WaitForPriorGrids;

// Launched as programmatic dependents (launch.cuh): the next kernel may get scheduled at once, and
// nothing here is touched before the previous kernel is done; every block waits before it exits.
__device__ __forceinline__ void OverlapWithNeighbours() {
  AllowDependentLaunch();
  WaitForPriorGrids();
}

__device__ float WarpSum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The sum of v over the block (every thread gets it); scratch holds 32 floats.
__device__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) / 32;
  v = WarpSum(lane < warps ? scratch[lane] : 0.0f);
  __syncthreads();
  return v;
}

// --- UpdatePageSummaries ---

constexpr int kSummaryThreads = 128;

// Block (token, KV head). The page's last token of the batch recomputes its bounds from the
// page's keys 0 .. its slot: min and max of bf16 values are exact, so this equals the running
// bounds, and several tokens of one page in a batch (a prefill chunk) need no ordering.
__global__ void __launch_bounds__(kSummaryThreads)
    PageSummaryKernel(const DecodeKvCache kv, const int32_t* token_seq, const int32_t* token_pos,
                      int64_t tokens, int d, bf16* kmin, bf16* kmax) {
  OverlapWithNeighbours();
  const int64_t t = blockIdx.x;
  const int kv_head = static_cast<int>(blockIdx.y);
  const int pos = token_pos[t];
  if (pos < 0) return;  // padding
  const int seq = token_seq[t];
  const KvHead head = kv.Head(seq, kv_head);
  if (head.decode != kDecodePages) return;
  const int page_size = kv.page_size, offset = pos % page_size;
  const bool later_in_page = offset != page_size - 1 && t + 1 < tokens && token_seq[t + 1] == seq &&
                             token_pos[t + 1] == pos + 1;
  if (later_in_page) return;
  const int64_t page = int64_t{kv.BlocksOf(seq, head.retention)[pos / page_size]} + head.page;
  const bf16* keys = kv.k_pool + page * page_size * d;
  for (int c = threadIdx.x; c < d; c += kSummaryThreads) {
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i <= offset; ++i) {
      const float x = __bfloat162float(keys[int64_t{i} * d + c]);
      lo = fminf(lo, x);
      hi = fmaxf(hi, x);
    }
    kmin[page * d + c] = __float2bfloat16(lo);
    kmax[page * d + c] = __float2bfloat16(hi);
  }
}

// --- SelectionGate ---

constexpr int kGateThreads = 256;

// Whether head h's rule is the first of the sequence's layout (KV heads in order) whose heads of
// `decode` use set `set`: per-set work runs once however many heads share the set.
__device__ bool FirstOfSet(const DecodeKvCache& kv, const SelectDecodeView& sel, int seq, int h,
                           int set, int decode) {
  for (int other = 0; other < h; ++other) {
    const KvSelect r = sel.Select(kv, seq, other);
    if (r.decode == decode && r.set == set) return false;
  }
  return true;
}

// Block per sequence: each recycle set of its layout refreshes or counts a step
// (SelectDecodeBatch).
__global__ void __launch_bounds__(kGateThreads)
    SelectionGateKernel(const DecodeKvCache kv, const SelectDecodeView sel, const bf16* q, int hq,
                        int d) {
  __shared__ float scratch[32];
  OverlapWithNeighbours();
  const int seq = static_cast<int>(blockIdx.x);
  const int slot = kv.seq_slot[seq];
  if (slot < 0) return;
  for (int h = 0; h < kv.hkv; ++h) {
    const KvSelect rule = sel.Select(kv, seq, h);
    if (rule.decode != kDecodeRecycle || !FirstOfSet(kv, sel, seq, h, rule.set, kDecodeRecycle)) {
      continue;
    }
    const int64_t set = sel.SetIndex(slot, rule.set);
    // Read by every thread before thread 0 changes them below (the barrier).
    const int chosen_len = sel.chosen_len[set], steps = sel.steps[set];
    bool refresh = chosen_len < 0 || steps + 1 >= rule.refresh_every;
    if (!refresh && rule.refresh_below_cos && sel.q_ref != nullptr) {
      // cos(q, q_ref) over the layer's query heads as one vector; the branch is block-uniform.
      const int64_t width = int64_t{hq} * d;
      const bf16* qv = q + int64_t{sel.seq_token[seq]} * width;
      const float* ref = sel.q_ref + set * width;
      float dot = 0.0f, qq = 0.0f, rr = 0.0f;
      for (int64_t i = threadIdx.x; i < width; i += kGateThreads) {
        const float x = __bfloat162float(qv[i]), y = ref[i];
        dot += x * y;
        qq += x * x;
        rr += y * y;
      }
      dot = BlockSum(dot, scratch);
      qq = BlockSum(qq, scratch);
      rr = BlockSum(rr, scratch);
      refresh = dot / (sqrtf(qq) * sqrtf(rr)) < rule.refresh_cos;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      sel.refresh[set] = refresh ? 1 : 0;
      if (!refresh) sel.steps[set] = steps + 1;
    }
  }
}

// --- ScoreAttention's pages heads ---

// One page per warp: the kernel is bound by how many page bounds are in flight. With 32 pages a
// block and 4 warps each warp read its 8 pages one after another, and the kernel moved 0.4-0.7
// TB/s of bounds on the H100 (Quest's "score" in sparse-decode-speed-full-2026-12-07-h100.md's
// operation times: 22-45 us a layer at 32K-128K for 8-34 MB).
constexpr int kBoundWarps = 8;
constexpr int kBoundThreads = 32 * kBoundWarps;
constexpr int kPagesPerBlock = kBoundWarps;
constexpr int kMaxDimPerLane = 8;  // d <= 256

// Block (sequence, KV head, run of kPagesPerBlock pages); a warp per page: its bounds' columns
// over the lanes, the bound of each query head of the group reduced over the warp.
__global__ void __launch_bounds__(kBoundThreads)
    PageBoundsKernel(const DecodeKvCache kv, const SelectDecodeView sel, const bf16* q,
                     const bf16* kmin, const bf16* kmax, int hq, int d, float scale, float* scores,
                     int64_t scores_width) {
  extern __shared__ float s_q[];  // [group, d]
  OverlapWithNeighbours();
  const int seq = static_cast<int>(blockIdx.x), kv_head = static_cast<int>(blockIdx.y);
  const int slot = kv.seq_slot[seq];
  if (slot < 0) return;
  const KvHead head = kv.Head(seq, kv_head);
  if (head.decode != kDecodePages) return;
  if (kmin == nullptr) __trap();  // a pages head without page summaries (KvPoolView::kmin)
  const int n = sel.seq_len[seq], page_size = kv.page_size;
  const int pages = (n + page_size - 1) / page_size;
  const int first = static_cast<int>(blockIdx.z) * kPagesPerBlock;
  if (first >= pages) return;
  const int group = hq / kv.hkv;
  const bf16* qv = q + (int64_t{sel.seq_token[seq]} * hq + kv_head * group) * d;
  for (int i = threadIdx.x; i < group * d; i += kBoundThreads) s_q[i] = __bfloat162float(qv[i]);
  __syncthreads();
  const int32_t* blocks = kv.BlocksOf(seq, head.retention);
  float* out = scores + (int64_t{seq} * hq + kv_head * group) * scores_width;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int last = min(pages, first + kPagesPerBlock);
  for (int pg = first + warp; pg < last; pg += kBoundWarps) {
    const int64_t page = int64_t{blocks[pg]} + head.page;
    float lo[kMaxDimPerLane], hi[kMaxDimPerLane];
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      const int c = lane + 32 * i;
      lo[i] = c < d ? __bfloat162float(kmin[page * d + c]) : 0.0f;
      hi[i] = c < d ? __bfloat162float(kmax[page * d + c]) : 0.0f;
    }
    for (int g = 0; g < group; ++g) {
      float acc = 0.0f;
#pragma unroll
      for (int i = 0; i < kMaxDimPerLane; ++i) {
        const int c = lane + 32 * i;
        if (c < d) {
          const float qc = s_q[g * d + c];
          acc += fmaxf(qc * hi[i], qc * lo[i]);
        }
      }
      acc = WarpSum(acc);
      if (lane == 0) out[g * scores_width + pg] = acc * scale;
    }
  }
}

// --- SelectTopK ---

constexpr int kTopKThreads = 512;
constexpr int kTopKWarps = kTopKThreads / 32;
constexpr int kMaxGroup = 64;               // query heads per KV head
constexpr int kBins = 256;                  // 8 bits a round, four rounds
constexpr int kMaxCluster = 8;              // portable cluster size
constexpr int kKeysPerBlockTarget = 16384;  // a cluster grows until its blocks hold this many
constexpr int kMaxKeysPerBlock = 51200;     // 200 KB of keys: what shared memory holds

struct TopKParams {
  DecodeKvCache kv;
  SelectDecodeView sel;
  const bf16* q;
  const float* scores;
  int64_t scores_width;
  int hq, d;
  int cap;  // keys a block holds
};

// (m, l) = (max, sum of exp(x - max)) merged with (m2, l2); (-inf, 0) is empty.
__device__ __forceinline__ void MergeMaxSum(float& m, float& l, float m2, float l2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;
  l = l * expf(m - mx) + l2 * expf(m2 - mx);
  m = mx;
}

// Per (slot, set) chosen this step: chosen_len = n, steps = 0, and q_ref = q for recycle sets of
// the cosine rule. One block per sequence runs it.
__device__ void RecordChoices(const TopKParams& p, int seq, int slot, int n) {
  const DecodeKvCache& kv = p.kv;
  const SelectDecodeView& sel = p.sel;
  for (int h = 0; h < kv.hkv; ++h) {
    const KvSelect rule = sel.Select(kv, seq, h);
    if (!sel.Chooses(rule, slot) || !FirstOfSet(kv, sel, seq, h, rule.set, rule.decode)) continue;
    const int64_t set = sel.SetIndex(slot, rule.set);
    if (threadIdx.x == 0) {
      sel.chosen_len[set] = n;
      sel.steps[set] = 0;
    }
    if (rule.decode == kDecodeRecycle && rule.refresh_below_cos && sel.q_ref != nullptr) {
      const int64_t width = int64_t{p.hq} * p.d;
      const bf16* qv = p.q + int64_t{sel.seq_token[seq]} * width;
      for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
        sel.q_ref[set * width + i] = __bfloat162float(qv[i]);
      }
    }
  }
}

// Chooses set row `row` of a (sequence, set): the set of KV head kv_head's rule, reduced over its
// query heads [first_g, first_g + ng) (per KV head: the group; per query head: one, unreduced).
// Run by every block of the cluster; every early return is uniform over it (it depends on the
// sequence, the rule and the state only), so cluster barriers are always matched, and the last
// barrier lets a next call reuse the shared memory.
__device__ void ChooseSet(const TopKParams& p, cg::cluster_group& cluster, int seq, int slot, int n,
                          const KvSelect& rule, int kv_head, int first_g, int ng, int row) {
  extern __shared__ uint32_t s_keys[];   // [cap]: this block's candidates' keys, in position order
  __shared__ uint32_t s_hist[2][kBins];  // this block's histogram, alternating rounds
  __shared__ uint32_t s_total[kBins];    // the cluster's
  __shared__ float2 s_part[kMaxGroup];   // this block's (max, sum of exp) per query head
  __shared__ float2 s_warp[kTopKWarps];
  __shared__ float s_lse[kMaxGroup];
  __shared__ int s_counts[2];                 // keys above the threshold, equal to it
  __shared__ int2 s_warp_counts[kTopKWarps];  // the same per warp's run of keys
  __shared__ int s_found[2];                  // a round's bin and the keys above it

  const int rank = static_cast<int>(cluster.block_rank());
  const int blocks = static_cast<int>(cluster.num_blocks());
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const DecodeKvCache& kv = p.kv;
  const SelectDecodeView& sel = p.sel;
  const int group = p.hq / kv.hkv;

  // Candidates in units (tokens, or pages of page_size), and how many to choose (KvSelect).
  const bool pages = rule.decode == kDecodePages;
  const int unit = pages ? kv.page_size : 1;
  int units, cand_begin, cand_end, k;
  if (pages) {
    units = (n + unit - 1) / unit;
    cand_begin = (rule.sink + unit - 1) / unit;
    cand_end = (n - 1) / unit;  // the tail page's
    k = (rule.budget - rule.sink) / unit - 1;
  } else {
    units = n;
    cand_begin = rule.sink;
    cand_end = n - rule.recent;
    k = rule.budget - rule.sink - rule.recent;
  }
  cand_end = max(cand_end, cand_begin);
  const int cands = cand_end - cand_begin;
  k = max(0, min(k, sel.width / unit));
  const int chosen = min(k, cands);
  int32_t* out = sel.SetPositions(slot, rule.set, row, p.hq);
  if (rank == 0 && tid == 0) *sel.SetCount(slot, rule.set, row, p.hq) = chosen * unit;
  if (chosen == 0) return;
  // This block's share of the candidates: [lo, hi), blocks in position order.
  const int per = (cands + blocks - 1) / blocks;
  const int lo = cand_begin + min(cands, rank * per),
            hi = cand_begin + min(cands, (rank + 1) * per);
  const int count = hi - lo;
  if (count > p.cap) __trap();  // a sequence longer than the launch's max_len
  const auto emit = [&](int at, int j) {
    for (int u = 0; u < unit; ++u) out[at * unit + u] = j * unit + u;
  };
  if (cands <= k) {  // every candidate
    for (int i = tid; i < count; i += kTopKThreads) emit(lo - cand_begin + i, lo + i);
    return;
  }

  // The group's score rows (row g of head first_g + g); per query head: its own row unreduced.
  const float* rows = p.scores + (int64_t{seq} * p.hq + kv_head * group + first_g) * p.scores_width;
  const int64_t width = p.scores_width;
  const int reduce = rule.per_q_head ? -1 : rule.reduce;
  if (reduce == kReduceSumSoftmax) {
    // Each query head's log-sum-exp over all its units [0, units), the cluster's blocks each
    // over a share.
    const int per_unit = (units + blocks - 1) / blocks;
    const int ulo = min(units, rank * per_unit), uhi = min(units, (rank + 1) * per_unit);
    for (int g = 0; g < ng; ++g) {
      float m = -INFINITY, l = 0.0f;
      for (int j = ulo + tid; j < uhi; j += kTopKThreads)
        MergeMaxSum(m, l, rows[g * width + j], 1.0f);
      for (int o = 16; o > 0; o /= 2) {
        MergeMaxSum(m, l, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, l, o));
      }
      if (lane == 0) s_warp[warp] = make_float2(m, l);
      __syncthreads();
      if (tid == 0) {
        float bm = -INFINITY, bl = 0.0f;
        for (int w = 0; w < kTopKWarps; ++w) MergeMaxSum(bm, bl, s_warp[w].x, s_warp[w].y);
        s_part[g] = make_float2(bm, bl);
      }
      __syncthreads();
    }
    cluster.sync();
    if (tid < ng) {
      float m = -INFINITY, l = 0.0f;
      for (int b = 0; b < blocks; ++b) {
        const float2 x = cluster.map_shared_rank(s_part, b)[tid];
        MergeMaxSum(m, l, x.x, x.y);
      }
      s_lse[tid] = m + logf(l);
    }
    __syncthreads();
  }

  for (int i = tid; i < count; i += kTopKThreads) {
    const int64_t j = lo + i;
    float v;
    if (reduce < 0) {
      v = rows[j];
    } else if (reduce == kReduceSumSoftmax) {
      v = 0.0f;
      for (int g = 0; g < ng; ++g) v += expf(rows[g * width + j] - s_lse[g]);
    } else if (reduce == kReduceSumLogits) {
      v = 0.0f;
      for (int g = 0; g < ng; ++g) v += rows[g * width + j];
    } else {  // kReduceMax
      v = -INFINITY;
      for (int g = 0; g < ng; ++g) v = fmaxf(v, rows[g * width + j]);
    }
    s_keys[i] = OrderedKey(v);
  }
  __syncthreads();

  // The chosen-th largest key, 8 bits a round from the top: `prefix` holds the bits settled so
  // far, `remaining` how many keys still to take among those matching them.
  uint32_t prefix = 0, mask = 0;
  int remaining = chosen;
  for (int round = 0; round < 4; ++round) {
    const int shift = 24 - 8 * round;
    uint32_t* hist = s_hist[round % 2];  // its peers' reads of two rounds ago are over (barrier)
    if (tid < kBins) hist[tid] = 0;
    __syncthreads();
    // The lanes of a warp whose keys fall in one bin add once: most keys share their top bits
    // (round 0's are the sign and exponent), and shared-memory atomics on one address serialize
    // lane by lane: the likely cause of SelectTopK's ~25 us a layer over a few thousand pages in
    // sparse-decode-speed-full-2026-12-07-h100.md (inferred; not yet timed after this change).
    for (int i0 = warp * 32; i0 < count; i0 += kTopKThreads) {
      const int i = i0 + lane;
      const uint32_t key = i < count ? s_keys[i] : 0u;
      const bool counted = i < count && (key & mask) == prefix;
      if (!__any_sync(0xffffffffu, counted)) continue;
      const uint32_t bin = counted ? (key >> shift) & 0xffu : kBins;  // kBins: not counted
      const uint32_t peers = __match_any_sync(0xffffffffu, bin);
      if (counted && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
    }
    cluster.sync();
    if (tid < kBins) {
      uint32_t total = 0;
      for (int b = 0; b < blocks; ++b) total += cluster.map_shared_rank(hist, b)[tid];
      s_total[tid] = total;
    }
    __syncthreads();
    if (warp == 0) {
      // Lane l takes bins 255 - 8l down to 248 - 8l: counts above a bin are the lanes before's
      // and its own higher bins'.
      uint32_t c[8], sum = 0;
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        c[u] = s_total[kBins - 1 - 8 * lane - u];
        sum += c[u];
      }
      uint32_t inclusive = sum;
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const uint32_t y = __shfl_up_sync(0xffffffffu, inclusive, o);
        if (lane >= o) inclusive += y;
      }
      uint32_t above = inclusive - sum;
      const uint32_t want = static_cast<uint32_t>(remaining);
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        if (above < want && above + c[u] >= want) {
          s_found[0] = kBins - 1 - 8 * lane - u;
          s_found[1] = static_cast<int>(above);
        }
        above += c[u];
      }
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(s_found[0]) << shift;
    mask |= 0xffu << shift;
    remaining -= s_found[1];
  }
  const uint32_t threshold = prefix;  // `remaining` keys equal to it are taken, the lowest first

  // The set in position order: each warp takes a contiguous run of this block's keys, so that an
  // entry's place follows from counts before its run (earlier blocks', then earlier warps') and
  // ballots within it, with no block barrier per tile of keys. An entry's place: the keys above
  // the threshold before it, plus the equal keys before it that are taken (the first `remaining`).
  const int per_warp = (count + kTopKWarps - 1) / kTopKWarps;
  const int wlo = min(count, warp * per_warp), whi = min(count, wlo + per_warp);
  int above = 0, equal = 0;
  for (int i = wlo + lane; i < whi; i += 32) {
    above += s_keys[i] > threshold;
    equal += s_keys[i] == threshold;
  }
  above = static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(above)));
  equal = static_cast<int>(__reduce_add_sync(0xffffffffu, static_cast<unsigned>(equal)));
  if (lane == 0) s_warp_counts[warp] = make_int2(above, equal);
  __syncthreads();
  if (tid == 0) {
    int2 block = make_int2(0, 0);
    for (int w = 0; w < kTopKWarps; ++w) {
      block.x += s_warp_counts[w].x;
      block.y += s_warp_counts[w].y;
    }
    s_counts[0] = block.x;
    s_counts[1] = block.y;
  }
  cluster.sync();
  int above_before = 0, equal_before = 0;
  for (int b = 0; b < rank; ++b) {
    const int* peer = cluster.map_shared_rank(s_counts, b);
    above_before += peer[0];
    equal_before += peer[1];
  }
  for (int w = 0; w < warp; ++w) {
    above_before += s_warp_counts[w].x;
    equal_before += s_warp_counts[w].y;
  }
  const uint32_t lanes_below = (1u << lane) - 1u;
  for (int i0 = wlo; i0 < whi; i0 += 32) {
    const int i = i0 + lane;
    const uint32_t key = i < whi ? s_keys[i] : 0u;
    const bool is_above = i < whi && key > threshold, is_equal = i < whi && key == threshold;
    const uint32_t above_lanes = __ballot_sync(0xffffffffu, is_above);
    const uint32_t equal_lanes = __ballot_sync(0xffffffffu, is_equal);
    const int a = above_before + __popc(above_lanes & lanes_below);
    const int e = equal_before + __popc(equal_lanes & lanes_below);
    if (is_above) emit(a + min(e, remaining), lo + i);
    if (is_equal && e < remaining) emit(a + e, lo + i);
    above_before += __popc(above_lanes);
    equal_before += __popc(equal_lanes);
  }
  cluster.sync();  // peers have read s_counts (distributed shared memory outlives no block)
}

// Cluster (sequence blockIdx.z, set row blockIdx.y). Row r holds KV head r's set where r < hkv and
// that head's rule is per KV head, and query head r's set where its KV head's rule is per query
// head; the two are sets of different indices (a set is per KV head or per query head
// throughout), and the cluster chooses whichever of them is chosen this step.
__global__ void __launch_bounds__(kTopKThreads) SelectTopKKernel(const TopKParams p) {
  OverlapWithNeighbours();
  cg::cluster_group cluster = cg::this_cluster();
  const int seq = static_cast<int>(blockIdx.z), row = static_cast<int>(blockIdx.y);
  const DecodeKvCache& kv = p.kv;
  const SelectDecodeView& sel = p.sel;
  const int slot = kv.seq_slot[seq];
  if (slot < 0) return;
  const int n = sel.seq_len[seq];
  if (row == 0 && cluster.block_rank() == 0) RecordChoices(p, seq, slot, n);
  const int group = p.hq / kv.hkv;
  if (row < kv.hkv) {
    const KvSelect rule = sel.Select(kv, seq, row);
    if (!rule.per_q_head && sel.Chooses(rule, slot)) {
      ChooseSet(p, cluster, seq, slot, n, rule, row, 0, group, row);
    }
  }
  const KvSelect rule = sel.Select(kv, seq, row / group);
  if (rule.per_q_head && sel.Chooses(rule, slot)) {
    ChooseSet(p, cluster, seq, slot, n, rule, row / group, row % group, 1, row);
  }
}

}  // namespace

bool LaunchUpdatePageSummaries(cudaStream_t stream, const DecodeKvCache& kv,
                               const int32_t* token_seq, const int32_t* token_pos, int64_t tokens,
                               int d, bf16* kmin, bf16* kmax) {
  if (kv.hkv < 1 || kv.hkv > 65535 || kv.page_size < 1 || d < 1 || tokens > 0x7fffffff ||
      kmin == nullptr || kmax == nullptr) {
    return false;
  }
  if (tokens == 0) return true;
  PdlLaunch(dim3(static_cast<unsigned>(tokens), static_cast<unsigned>(kv.hkv)),
            dim3(kSummaryThreads), 0,
            stream)(PageSummaryKernel, kv, token_seq, token_pos, tokens, d, kmin, kmax);
  return true;
}

bool LaunchSelectionGate(cudaStream_t stream, const DecodeKvCache& kv, const SelectDecodeView& sel,
                         const bf16* q, int num_seqs, int hq, int d) {
  if (kv.seq_slot == nullptr || kv.hkv < 1 || num_seqs < 0) return false;
  if (num_seqs == 0) return true;
  PdlLaunch(dim3(static_cast<unsigned>(num_seqs)), dim3(kGateThreads), 0, stream)(
      SelectionGateKernel, kv, sel, q, hq, d);
  return true;
}

bool LaunchPageBounds(cudaStream_t stream, const DecodeKvCache& kv, const SelectDecodeView& sel,
                      const bf16* q, const bf16* kmin, const bf16* kmax, int num_seqs, int hq,
                      int d, float scale, int max_len, float* scores, int64_t scores_width) {
  if (kv.seq_slot == nullptr || kv.hkv < 1 || kv.hkv > 65535 || hq % kv.hkv != 0 ||
      kv.page_size < 1 || d < 1 || d > 32 * kMaxDimPerLane || num_seqs < 0) {
    return false;
  }
  const size_t smem = static_cast<size_t>(hq / kv.hkv) * d * sizeof(float);
  if (smem > 48 * 1024) return false;
  const int64_t pages = (int64_t{max_len} + kv.page_size - 1) / kv.page_size;
  const int64_t runs = (pages + kPagesPerBlock - 1) / kPagesPerBlock;
  if (num_seqs == 0 || runs == 0) return true;
  if (runs > 65535) return false;
  PdlLaunch(dim3(static_cast<unsigned>(num_seqs), static_cast<unsigned>(kv.hkv),
                 static_cast<unsigned>(runs)),
            dim3(kBoundThreads), smem,
            stream)(PageBoundsKernel, kv, sel, q, kmin, kmax, hq, d, scale, scores, scores_width);
  return true;
}

int MaxSelectTopKLen() {
  return kMaxCluster * kMaxKeysPerBlock;
}

bool LaunchSelectTopK(cudaStream_t stream, const DecodeKvCache& kv, const SelectDecodeView& sel,
                      const bf16* q, const float* scores, int64_t scores_width, int num_seqs,
                      int hq, int d, int rows, int max_len) {
  if (kv.seq_slot == nullptr || kv.hkv < 1 || hq % kv.hkv != 0 || hq / kv.hkv > kMaxGroup ||
      hq > 65535 || (rows != hq && rows != kv.hkv) || num_seqs < 0 || num_seqs > 65535 ||
      max_len > MaxSelectTopKLen() || scores_width < max_len) {
    return false;
  }
  if (num_seqs == 0 || max_len < 1) return true;
  int cluster = 1;
  while (cluster < kMaxCluster && (max_len + cluster - 1) / cluster > kKeysPerBlockTarget) {
    cluster *= 2;
  }
  TopKParams p{kv, sel, q, scores, scores_width, hq, d, (max_len + cluster - 1) / cluster};
  const size_t smem = static_cast<size_t>(p.cap) * sizeof(uint32_t);
  static const cudaError_t configured =
      cudaFuncSetAttribute(SelectTopKKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kMaxKeysPerBlock * sizeof(uint32_t)));
  if (configured != cudaSuccess) return false;
  // A failed launch leaves its error for the caller's cudaGetLastError.
  (void)PdlLaunch(dim3(static_cast<unsigned>(cluster), static_cast<unsigned>(rows),
                       static_cast<unsigned>(num_seqs)),
                  dim3(kTopKThreads), smem, stream)
      .Cluster(static_cast<unsigned>(cluster))(SelectTopKKernel, p);
  return true;
}

}  // namespace headwise::kernels::cuda
