// Split-KV decode attention on tensor cores. Decode is bound by reading the KV cache once, so the
// design is about bytes in flight: one block per (query row, KV head, split) takes all query heads
// of the GQA group at once (padded to the 16 rows of an mma tile), so each K/V row is read from
// device memory once per group; K/V tiles of 64 keys are gathered page by page with cp.async into
// a 2-stage shared-memory ring: the next tile streams in while this one is computed, with two
// blocks per SM. The same kernel, instantiated with kSelect, runs decode-time selection's attention
// passes (kernels::SelectDecodeBatch): dense attention that also writes its logits
// (ScoreAttention), and attention over a sink, a chosen set and a tail (SelectedAttention).

#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ptx.cuh"

namespace headwise::kernels::cuda {
namespace {

using ptx::AllowDependentLaunch;
using ptx::CopyAsync16;
using ptx::CopyAsyncCommit;
using ptx::CopyAsyncWait;
using ptx::Exp2;
using ptx::LoadMatrixX4;
using ptx::LoadMatrixX4Trans;
using ptx::Mma;
using ptx::PackBf16;
using ptx::WaitForPriorGrids;

using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileKeys = 16 * kWarps;  // each warp owns 16 keys of a tile (one mma k-step)
#ifndef HW_DECODE_STAGES
constexpr int kStages = 2;  // measured: 3 and 4 were no faster (4 much slower: one block per SM)
#else                       // experiments
constexpr int kStages = HW_DECODE_STAGES;
#endif
constexpr int kRing = kStages + 1;  // slot/bias ring: see the main loop for why one more
constexpr int kHeadRows = 16;       // query heads per block: the M of m16n8k16
constexpr int kPrefetchTiles = 4;   // tiles pulled into L2 before the previous kernel is done
static_assert(kPrefetchTiles >= kStages);
constexpr float kLog2e = 1.4426950408889634f;

// Everything a block needs; sparse when indptr is set. The kSelect instantiation serves decode-time
// selection instead (kernels::SelectDecodeBatch): ScoreAttention's dense pass when scores is set,
// else SelectedAttention.
struct Params {
  const bf16* q;
  DecodeKvCache kv;
  const int32_t* token_seq;  // paged
  const int32_t* token_pos;
  const int32_t* seq_first_pos;  // paged, may be null: each token starts its own chunk
  const int32_t* row_seq;        // sparse
  const int32_t* row_kv_head;
  const int32_t* indptr;
  const int32_t* indices;
  const float* bias;
  int hq, group, head_chunks, d;
  float scale_log2;
  bf16* out;
  float* lse;  // sparse only
  // Split partials are indexed by partial row: the output row, except in selection, where output
  // rows follow seq_token (rows of a step's whole batch) and partial rows the sequences
  // (seq * hq + query head), so that the scratch scales with the sequences, not the tokens.
  float* part_o;      // [partial rows, splits, d] when split
  float* part_lse;    // [partial rows, splits]
  uint32_t* arrived;  // [grid rows * grid heads] when the last split merges: splits done so far
  // Selection (kSelect).
  SelectDecodeView sel;
  float* scores;  // ScoreAttention: [S, hq, scores_width] f32, the scaled logits; else null
  int64_t scores_width;
  float scale;
};

// A split's partial lse of NaN marks output rows that a block left alone (a selecting sequence's
// non-dense head in paged attention; a head the selection operation does not handle): the merge
// kernel leaves them untouched. Only split 0 marks, and only where that kernel merges (the
// last-block merge never runs for such rows: no block of theirs arrives).
__device__ void MarkRowsLeftAlone(const Params& p, int64_t part_row, int ng, int split,
                                  int splits) {
  if (splits > 1 && p.arrived == nullptr && split == 0 && threadIdx.x < ng) {
    p.part_lse[(part_row + threadIdx.x) * splits] = NAN;
  }
}

// P as a bf16 pair hi + lo: hi alone would round the probabilities to 8 bits (~2e-3 relative
// error per weight); with lo the weights keep ~16 bits, so the output is as exact as fp32 CUDA-core
// code, for one more mma per V fragment (tensor cores are idle here anyway).
__device__ __forceinline__ void SplitBf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = PackBf16(x0 - __low2float(h), x1 - __high2float(h));
}

__device__ __forceinline__ void PrefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

__device__ __forceinline__ unsigned NumSms() {
  unsigned n;
  asm("mov.u32 %0, %%nsmid;\n" : "=r"(n));
  return n;
}

template <int kDim>
struct Layout {
  static constexpr int kStride = kDim + 8;  // bf16 per smem row: +16 B keeps ldmatrix conflict-free
  static constexpr int kChunks = kDim / 8;  // 16-byte chunks per row
  static constexpr int kTileElems = kTileKeys * kStride;
  static constexpr size_t kBytes = 2 * kStages * kTileElems * sizeof(bf16) +
                                   kHeadRows * kStride * sizeof(bf16) +
                                   kRing * kTileKeys * (sizeof(int64_t) + sizeof(float));
};

// Split-KV with few splits: the last split of a (row, head chunk) to finish merges all of them,
// out = sum_s exp(lse_s - lse) o_s (the log-sum-exp merge), and resets the arrival counter for the
// next call. This saves the merge kernel's dependent launch, which is what a decode step at short
// context is made of (batch 1 and 8 at 1K, 8 splits: 6.15 against 6.20 ms a step on the H100).
// Past kLastBlockMergeMaxSplits one block's serial rounds of loads cost more than the launch
// (batch 1 at 32K, 33 splits: 58.2 against 55.5 us for the attention), and MergeSplitsKernel
// spreads the splits over blocks instead. Every split arrives, empty ones included (lse -inf,
// their o never written nor weighted). Partials are read with ld.global.cg: another block on this
// SM may have pulled a line of them into L1 before they were written.
constexpr int kLastBlockMergeMaxSplits = 8;
__device__ void MergeSplitsIfLast(const Params& p, int64_t part_row, int64_t out_row, int ng,
                                  int splits) {
  __shared__ bool s_last;
  __threadfence();  // this block's partials are visible device-wide before it counts itself
  __syncthreads();
  uint32_t* arrived = p.arrived + (int64_t{blockIdx.x} * gridDim.y + blockIdx.y);
  if (threadIdx.x == 0) s_last = atomicAdd(arrived, 1u) == static_cast<uint32_t>(splits - 1);
  __syncthreads();
  if (!s_last) return;
  __threadfence();
  const int d = p.d, chunks = d / 4;
  for (int i = threadIdx.x; i < ng * chunks; i += kThreads) {
    const int g = i / chunks, c = (i % chunks) * 4;
    const float* lse = p.part_lse + (part_row + g) * splits;
    const float* src = p.part_o + (part_row + g) * splits * int64_t{d} + c;
    float m = -INFINITY, den = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // Rounds of kLastBlockMergeMaxSplits (one, as launched): their loads issue back to back
    // before the first is used.
    constexpr int kRound = kLastBlockMergeMaxSplits;
    for (int s0 = 0; s0 < splits; s0 += kRound) {
      float w[kRound];
      float4 x[kRound];
#pragma unroll
      for (int u = 0; u < kRound; ++u) {
        const bool in = s0 + u < splits;
        w[u] = in ? __ldcg(lse + s0 + u) : -INFINITY;
        x[u] = in ? __ldcg(reinterpret_cast<const float4*>(src + int64_t{s0 + u} * d))
                  : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
      float mx = m;
#pragma unroll
      for (int u = 0; u < kRound; ++u) mx = fmaxf(mx, w[u]);
      if (mx == -INFINITY) continue;      // nothing but empty splits so far
      const float corr = __expf(m - mx);  // m -inf: 0, and den, acc are 0 anyway
      den *= corr;
      acc.x *= corr;
      acc.y *= corr;
      acc.z *= corr;
      acc.w *= corr;
#pragma unroll
      for (int u = 0; u < kRound; ++u) {
        if (w[u] != -INFINITY) {  // an empty split's o is garbage: skip, never multiply by 0
          const float wu = __expf(w[u] - mx);
          den += wu;
          acc.x += wu * x[u].x;
          acc.y += wu * x[u].y;
          acc.z += wu * x[u].z;
          acc.w += wu * x[u].w;
        }
      }
      m = mx;
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(p.out + (out_row + g) * d + c);
    dst[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
    dst[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
    if (p.lse != nullptr && c == 0) p.lse[out_row + g] = den > 0.0f ? m + logf(den) : -INFINITY;
  }
  if (threadIdx.x == 0) *arrived = 0;
}

// What a selection block attends (kSelect): sequence blockIdx.x, query heads [first_g, first_g +
// ng) of KV head kv_head. ScoreAttention: blocks (KV head, chunk of 16 query heads), keys [0, n).
// SelectedAttention: blocks (KV head, query head g); a set per KV head is attended by the blocks
// g < head_chunks (one chunk of 16 heads each), a set per query head by block g alone; keys
// [0, sink), the set, then the tail [tail, n) (KvSelect), as one index range whose indices
// [n_sink, n_sink + set_count) read the set. Set entries outside [n_sink, tail) are masked
// (never counted twice, even where a consume head's sink or recent differ from its select
// head's).
struct SelectBlock {
  bool owns = false;    // the block owns these output rows (it marks them when it leaves them)
  bool active = false;  // and computes them
  int kv_head = 0, first_g = 0, ng = 0;
  KvHead head;
  AttendedKeys keys{0, 0, 0};
  const int32_t* set = nullptr;
  int set_count = 0, set_hi = 0;
};

__device__ SelectBlock SelectBlockOf(const Params& p, int seq, int slot) {
  SelectBlock b;
  const int group = p.group;
  const bool scoring = p.scores != nullptr;
  b.kv_head =
      scoring ? static_cast<int>(blockIdx.y) / p.head_chunks : static_cast<int>(blockIdx.y) / group;
  b.head = p.kv.Head(seq, b.kv_head);
  const KvSelect sel = p.sel.Select(p.kv, seq, b.kv_head);
  const int g = static_cast<int>(blockIdx.y) % (scoring ? p.head_chunks : group);
  if (scoring || !sel.per_q_head) {
    b.owns = scoring || g < p.head_chunks;
    b.first_g = g * kHeadRows;
    b.ng = max(0, min(kHeadRows, group - b.first_g));
  } else {
    b.owns = true;
    b.first_g = g;
    b.ng = 1;
  }
  if (!b.owns || slot < 0) return b;
  const int n = p.sel.seq_len[seq];
  if (scoring) {
    b.active = sel.decode != kDecodePages && p.sel.Chooses(sel, slot);
    b.keys = AttendedKeys{n, n, 0};
    return b;
  }
  b.active = p.sel.AttendsSet(sel, slot);
  if (!b.active) return b;
  const int n_sink = min(sel.sink, n);
  int tail;
  if (sel.decode == kDecodePages) {
    tail = (n - 1) / p.kv.page_size * p.kv.page_size;  // the page holding n - 1
  } else {
    tail = n - sel.recent;
    if (sel.decode == kDecodeRecycle && sel.since_refresh) {
      // The tail when the set was chosen, and everything after it.
      tail = min(tail, p.sel.chosen_len[p.sel.SetIndex(slot, sel.set)] - sel.recent);
    }
  }
  tail = min(max(tail, n_sink), n);
  const int row = p.sel.SetRow(sel, b.kv_head, group, b.first_g);
  b.set = p.sel.SetPositions(slot, sel.set, row, p.hq);
  b.set_count = min(max(*p.sel.SetCount(slot, sel.set, row, p.hq), 0), p.sel.width);
  b.set_hi = tail;
  b.keys = AttendedKeys{n_sink + b.set_count + (n - tail), n_sink, tail - n_sink - b.set_count};
  return b;
}

// Block (row, head chunk, split): attention of up to 16 query heads sharing one KV head over the
// split's share of the row's keys. Splits are multiples of a tile, sized on the device from the
// row's key count, so one captured launch serves every length. Each warp runs its own online
// softmax over its 16 keys of every tile; the 4 warps merge once at the end. kSelect: decode-time
// selection's passes (SelectBlock), which may also write the logits.
template <int kDim, bool kSelect>
__global__ void __launch_bounds__(kThreads) DecodeAttentionKernel(const Params p) {
  using L = Layout<kDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* s_k = reinterpret_cast<bf16*>(smem);
  bf16* s_v = s_k + kStages * L::kTileElems;
  bf16* s_q = s_v + kStages * L::kTileElems;
  int64_t* s_slot = reinterpret_cast<int64_t*>(s_q + kHeadRows * L::kStride);  // [kRing][keys]
  float* s_bias = reinterpret_cast<float*>(s_slot + kRing * kTileKeys);
  __shared__ float s_w[kWarps][kHeadRows], s_lse[kHeadRows];

  // Launched as a programmatic dependent (kernels/cuda/launch.cuh) of whatever precedes it on the
  // stream (the KV write, or the last call's merge kernel reusing the scratch). What follows (a
  // merge kernel, or the output projection, which streams its weights meanwhile) may get
  // scheduled at once. The paged path's metadata (positions, sequences, block
  // table) is uploaded by the host before the step and never written by its kernels, so it is read,
  // and the first tiles' K/V pulled into L2, while the KV write still runs: at short contexts this
  // kernel is a chain of dependent loads on the critical path of the step. A prefetch cannot read
  // stale data (L2 is where writes land); the copies into shared memory happen after the wait.
  // Index lists may be computed on the device, so the sparse path waits first.
  // Selection reads sets and flags that the step's earlier kernels write: it waits first too.
  AllowDependentLaunch();
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const bool sparse = !kSelect && p.indptr != nullptr;
  if (sparse || kSelect) WaitForPriorGrids();
  // Only a grid of one wave prefetches: its blocks all start at once, and what they pull in fits
  // in L2 (264 blocks x 4 tiles x 32 KB at d 128). Blocks of later waves start after the wait
  // anyway, and their prefetches would evict the first wave's data before use (batch 8 at 8K:
  // 10.4 against 9.4 ms a step).
  const bool prefetch = !sparse && !kSelect && gridDim.x * gridDim.y * gridDim.z <= 2 * NumSms();
  const int64_t row = blockIdx.x;
  const int split = blockIdx.z, splits = gridDim.z;
  int kv_head, first_g, seq, count, list = 0;
  int64_t q_row, out_row, part_row;
  AttendedKeys keys{0, INT_MAX, 0};  // sparse: list entries are positions
  // The (sequence, KV head)'s retention and page, read once here: the key loop only indexes.
  KvHead head;
  // Selection: the set read at key indices [keys.n_sink, + set_count), its entries past set_hi
  // (or below n_sink) masked; ScoreAttention's logits rows.
  const int32_t* set = nullptr;
  int set_count = 0, set_hi = 0, ng;
  float* scores = nullptr;
  if constexpr (kSelect) {
    seq = static_cast<int>(row);
    const int slot = p.kv.seq_slot[seq];
    const SelectBlock b = SelectBlockOf(p, seq, slot);
    kv_head = b.kv_head;
    first_g = b.first_g;
    ng = b.ng;
    part_row = int64_t{seq} * p.hq + kv_head * p.group + first_g;
    if (!b.active) {
      if (b.owns) MarkRowsLeftAlone(p, part_row, ng, split, splits);
      return;
    }
    head = b.head;
    if (head.retention.reindex()) __trap();  // selection needs original positions (kv_layout.cc)
    keys = b.keys;
    count = keys.count;
    set = b.set;
    set_count = b.set_count;
    set_hi = b.set_hi;
    q_row = int64_t{p.sel.seq_token[seq]} * p.hq + kv_head * p.group + first_g;
    out_row = q_row;
    if (p.scores != nullptr) scores = p.scores + part_row * p.scores_width;
  } else if (sparse) {
    kv_head = p.row_kv_head[row];
    first_g = blockIdx.y * kHeadRows;
    seq = p.row_seq[row];
    head = p.kv.Head(seq, kv_head);
    // Not defined on re-indexed heads (kernels::SparseDecodeBatch): a bug upstream, stop loudly.
    if (head.retention.reindex()) __trap();
    list = p.indptr[row];
    count = p.indptr[row + 1] - list;
    q_row = int64_t{seq} * p.hq + kv_head * p.group + first_g;
    out_row = row * p.group + first_g;
    part_row = out_row;
    ng = min(kHeadRows, p.group - first_g);
  } else {
    kv_head = blockIdx.y / p.head_chunks;
    first_g = (blockIdx.y % p.head_chunks) * kHeadRows;
    const int pos = p.token_pos[row];  // < 0: padding
    seq = p.token_seq[row];            // not dereferenced for padding; loaded beside token_pos
    if (pos >= 0) head = p.kv.Head(seq, kv_head);
    q_row = row * p.hq + kv_head * p.group + first_g;
    out_row = q_row;
    part_row = out_row;
    ng = min(kHeadRows, p.group - first_g);
    // A selecting sequence's non-dense head: the selection operations write these rows.
    if (pos >= 0 && p.kv.LeftToSelection(seq, head)) {
      WaitForPriorGrids();  // before the mark (scratch) and before exiting (launch.cuh)
      MarkRowsLeftAlone(p, part_row, ng, split, splits);
      return;
    }
    keys = AttendedKeys::Of(p.kv, head.retention, seq, pos,
                            p.seq_first_pos != nullptr && pos >= 0 ? p.seq_first_pos[seq] : pos);
    count = keys.count;
  }
  const int d = p.d;
  const int per_split =
      ((max(count, 0) + splits - 1) / splits + kTileKeys - 1) / kTileKeys * kTileKeys;
  const int begin = split * per_split;
  const int n_keys = min(count, begin + per_split) - begin;
  if (n_keys <= 0) {  // padding, an empty list, or a split past the end
    if (!sparse && !kSelect) WaitForPriorGrids();
    for (int i = tid; i < ng * d; i += kThreads) {
      if (splits == 1) {
        p.out[out_row * d + i] = __float2bfloat16(0.0f);
      } else if (i % d == 0) {
        p.part_lse[(part_row + i / d) * splits + split] = -INFINITY;
      }
    }
    if (splits == 1 && p.lse != nullptr && tid < ng) p.lse[out_row + tid] = -INFINITY;
    if (splits > 1 && p.arrived != nullptr) MergeSplitsIfLast(p, part_row, out_row, ng, splits);
    return;
  }
  const int n_tiles = (n_keys + kTileKeys - 1) / kTileKeys;
  const int32_t* seq_blocks = p.kv.BlocksOf(seq, head.retention);
  const int64_t head_page = head.page;
  const int page_size = p.kv.page_size;

  // Slot and bias of key `tile * kTileKeys + tid` of the split (threads < kTileKeys); -1: none.
  // Staged in shared memory one tile ahead so that no cp.async waits on a table lookup.
  const auto fetch = [&](int tile, int64_t& slot, float& bias) {
    const int n = tile * kTileKeys + tid;
    slot = -1;
    bias = 0.0f;
    if (n < n_keys) {
      int pos;
      if constexpr (kSelect) {
        const int in_set = begin + n - keys.n_sink;
        if (static_cast<unsigned>(in_set) < static_cast<unsigned>(set_count)) {
          pos = set[in_set];
          if (pos < keys.n_sink || pos >= set_hi) {  // attended as sink or tail, or stale: masked
            bias = -INFINITY;
            return;
          }
        } else {
          pos = keys.Position(begin + n);
        }
      } else {
        pos = sparse ? p.indices[list + begin + n] : keys.Position(begin + n);
      }
      slot = (seq_blocks[pos / page_size] + head_page) * page_size + pos % page_size;
      if (p.bias != nullptr) {
        bias = p.bias[list + begin + n] * kLog2e;
      } else if (begin + n == keys.bias_index) {
        bias = keys.bias * kLog2e;
      }
    }
  };
  const auto issue = [&](int tile) {
    if (tile < n_tiles) {
      const int stage = tile % kStages;
      const int64_t* slots = s_slot + (tile % kRing) * kTileKeys;
#pragma unroll
      for (int i = 0; i < kTileKeys * L::kChunks / kThreads; ++i) {
        const int c = tid + i * kThreads;
        const int r = c / L::kChunks, col = (c % L::kChunks) * 8;
        const int64_t slot = slots[r];
        const bool ok = slot >= 0 && col < d;
        const int64_t off = ok ? slot * d + col : 0;
        const int dst = stage * L::kTileElems + r * L::kStride + col;
        CopyAsync16(s_k + dst, p.kv.k_pool + off, ok);
        CopyAsync16(s_v + dst, p.kv.v_pool + off, ok);
      }
    }
    CopyAsyncCommit();  // empty groups too: keeps wait_group's count uniform
  };

  if (tid < kTileKeys) {
    for (int t = 0; t < (prefetch ? kPrefetchTiles : kStages); ++t) {
      int64_t slot;
      float bias;
      fetch(t, slot, bias);
      if (t < kStages) {
        s_slot[t * kTileKeys + tid] = slot;
        s_bias[t * kTileKeys + tid] = bias;
      }
      if (prefetch && slot >= 0) {
        for (int b = 0; b < d * 2; b += 128) {
          PrefetchL2(reinterpret_cast<const char*>(p.kv.k_pool + slot * d) + b);
          PrefetchL2(reinterpret_cast<const char*>(p.kv.v_pool + slot * d) + b);
        }
      }
    }
  }
  if (!sparse) WaitForPriorGrids();
  for (int i = tid; i < kHeadRows * L::kChunks; i += kThreads) {
    const int g = i / L::kChunks, col = (i % L::kChunks) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);  // padded heads and dims: zero rows and columns of Q
    if (g < ng && col < d) v = *reinterpret_cast<const uint4*>(p.q + (q_row + g) * d + col);
    *reinterpret_cast<uint4*>(s_q + g * L::kStride + col) = v;
  }
  // A re-indexed head's q and keys arrive unrotated: q turns by its rank, the last of its list
  // (count - 1), each key by its index in the list as its tile lands (the paged path only).
  // Thread tid turns column tid % half of rows tid / half, + rot_rows, ... (RankRotation); threads
  // past the last whole set of columns idle.
  const bool by_rank = !sparse && !kSelect && head.retention.reindex();
  const int half = d / 2, rot_rows = kThreads / half, rot_col = tid % half, rot_row0 = tid / half;
  const bool rotates = by_rank && rot_row0 < rot_rows;
  RankRotation rotation(rotates ? p.kv.rope_inv_freq[rot_col] : 0.0f, rot_rows);
  if (by_rank) {
    __syncthreads();
    if (rotates) {
      for (int g = rot_row0; g < ng; g += rot_rows) {
        // The same rank for every head of the group: Start again rather than advance.
        bf16* row = s_q + g * L::kStride;
        rotation.Start(count - 1);
        rotation.Apply(row[rot_col], row[rot_col + half]);
      }
    }
  }
  __syncthreads();
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) issue(t);

  // Q as A fragments (rows = heads, k = head dim), kept in registers for the whole split.
  uint32_t qf[kDim / 16][4];
#pragma unroll
  for (int kk = 0; kk < kDim / 16; ++kk) {
    LoadMatrixX4(
        qf[kk], s_q + ((lane % 8) + ((lane / 8) % 2) * 8) * L::kStride + kk * 16 + (lane / 16) * 8);
  }
  float o[kDim / 8][4];
#pragma unroll
  for (int j = 0; j < kDim / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows lane / 4 and lane / 4 + 8

  for (int tile = 0; tile < n_tiles; ++tile) {
    CopyAsyncWait<kStages - 2>();
    __syncthreads();  // tile's data visible to all; everyone is done with tile - 1's stage
    issue(tile + kStages - 1);
    int64_t next_slot = -1;
    float next_bias = 0.0f;
    if (tid < kTileKeys) fetch(tile + kStages, next_slot, next_bias);

    const int stage = tile % kStages;
    if (by_rank) {
      const int first = tile * kTileKeys;  // the tile's first key, counted from the split's begin
      if (rotates) {
        rotation.Start(begin + first + rot_row0);
        for (int r = rot_row0; r < kTileKeys && first + r < n_keys; r += rot_rows) {
          bf16* row = s_k + stage * L::kTileElems + r * L::kStride;
          rotation.Apply(row[rot_col], row[rot_col + half]);
        }
      }
      __syncthreads();
    }
    const bf16* k_tile = s_k + stage * L::kTileElems + warp * 16 * L::kStride;
    const bf16* v_tile = s_v + stage * L::kTileElems + warp * 16 * L::kStride;
    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int kk = 0; kk < kDim / 16; ++kk) {
      if (kk * 16 < d) {
        uint32_t b[4];
        LoadMatrixX4(b, k_tile + ((lane % 8) + (lane / 16) * 8) * L::kStride + kk * 16 +
                            ((lane / 8) % 2) * 8);
        Mma(s[0], qf[kk], b[0], b[1]);
        Mma(s[1], qf[kk], b[2], b[3]);
      }
    }
    const int key0 = tile * kTileKeys + warp * 16;
    if constexpr (kSelect) {
      if (scores != nullptr) {  // ScoreAttention: the scaled logits, keys being positions here
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int h = lane / 4 + 8 * (e / 2), col = nt * 8 + (lane % 4) * 2 + (e % 2);
            if (h < ng && key0 + col < n_keys) {
              scores[h * p.scores_width + begin + key0 + col] = s[nt][e] * p.scale;
            }
          }
        }
      }
    }
    const float* bias = s_bias + (tile % kRing) * kTileKeys + warp * 16;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = nt * 8 + (lane % 4) * 2 + (e % 2);
        s[nt][e] = key0 + col < n_keys ? s[nt][e] * p.scale_log2 + bias[col] : -INFINITY;
      }
    }
    uint32_t ph[4], pl[4];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[r], mx);
      const float base = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: avoid inf - inf
      const float corr = Exp2(m[r] - base);
      m[r] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        s[nt][2 * r] = Exp2(s[nt][2 * r] - base);
        s[nt][2 * r + 1] = Exp2(s[nt][2 * r + 1] - base);
        sum += s[nt][2 * r] + s[nt][2 * r + 1];
      }
      l[r] = l[r] * corr + sum;
#pragma unroll
      for (int j = 0; j < kDim / 8; ++j) {
        o[j][2 * r] *= corr;
        o[j][2 * r + 1] *= corr;
      }
      // A fragment of P: a[r] = (row r, keys 0-7), a[r + 2] = (row r, keys 8-15).
      SplitBf16(s[0][2 * r], s[0][2 * r + 1], ph[r], pl[r]);
      SplitBf16(s[1][2 * r], s[1][2 * r + 1], ph[r + 2], pl[r + 2]);
    }
#pragma unroll
    for (int nd = 0; nd < kDim / 16; ++nd) {
      if (nd * 16 < d) {
        uint32_t b[4];
        LoadMatrixX4Trans(b, v_tile + ((lane % 8) + ((lane / 8) % 2) * 8) * L::kStride + nd * 16 +
                                 (lane / 16) * 8);
        Mma(o[2 * nd], ph, b[0], b[1]);
        Mma(o[2 * nd], pl, b[0], b[1]);
        Mma(o[2 * nd + 1], ph, b[2], b[3]);
        Mma(o[2 * nd + 1], pl, b[2], b[3]);
      }
    }
    // Ring entry of tile + kStages is tile - 1's, whose last readers (this iteration's issue is
    // for tile + kStages - 1; tile - 1's bias was read last iteration) passed the barrier above.
    if (tid < kTileKeys) {
      s_slot[((tile + kStages) % kRing) * kTileKeys + tid] = next_slot;
      s_bias[((tile + kStages) % kRing) * kTileKeys + tid] = next_bias;
    }
  }

  // Merge the warps: each holds (m, l, o) over its keys of every tile.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  CopyAsyncWait<0>();
  __syncthreads();  // the K/V ring is free: reuse it for the warps' partial outputs
  float* s_o = reinterpret_cast<float*>(smem);  // [kWarps][kHeadRows][kDim]
  float* s_m = s_o + kWarps * kHeadRows * kDim;
  float* s_l = s_m + kWarps * kHeadRows;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int h = lane / 4 + 8 * r;
    if (lane % 4 == 0) {
      s_m[warp * kHeadRows + h] = m[r];
      s_l[warp * kHeadRows + h] = l[r];
    }
#pragma unroll
    for (int j = 0; j < kDim / 8; ++j) {
      *reinterpret_cast<float2*>(s_o + (warp * kHeadRows + h) * kDim + j * 8 + (lane % 4) * 2) =
          make_float2(o[j][2 * r], o[j][2 * r + 1]);
    }
  }
  __syncthreads();
  if (tid < kHeadRows) {
    float m_all = -INFINITY;
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_m[w * kHeadRows + tid]);
    float l_all = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      const float mw = s_m[w * kHeadRows + tid];
      s_w[w][tid] = mw == -INFINITY ? 0.0f : Exp2(mw - m_all);
      l_all += s_w[w][tid] * s_l[w * kHeadRows + tid];
    }
    for (int w = 0; w < kWarps; ++w) s_w[w][tid] /= l_all;
    s_lse[tid] = (m_all + log2f(l_all)) / kLog2e;
  }
  __syncthreads();
  for (int i = tid; i < ng * (d / 2); i += kThreads) {
    const int g = i / (d / 2), c = (i % (d / 2)) * 2;
    float2 v = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float2 x = *reinterpret_cast<const float2*>(s_o + (w * kHeadRows + g) * kDim + c);
      v.x += s_w[w][g] * x.x;
      v.y += s_w[w][g] * x.y;
    }
    if (splits == 1) {
      *reinterpret_cast<__nv_bfloat162*>(p.out + (out_row + g) * d + c) =
          __floats2bfloat162_rn(v.x, v.y);
    } else {
      *reinterpret_cast<float2*>(p.part_o + ((part_row + g) * splits + split) * d + c) = v;
    }
  }
  if (tid < ng) {
    if (splits > 1) {
      p.part_lse[(part_row + tid) * splits + split] = s_lse[tid];
    } else if (p.lse != nullptr) {
      p.lse[out_row + tid] = s_lse[tid];
    }
  }
  if (splits > 1 && p.arrived != nullptr) MergeSplitsIfLast(p, part_row, out_row, ng, splits);
}

// The log-sum-exp merge for more than kLastBlockMergeMaxSplits splits, one block per output
// row, its threads spread over (split, 4 dims) so that many partial loads are in flight at once: a
// loop over the splits one after another would wait out an L2 round trip per split. All splits
// empty (padding, empty list): out 0, lse -inf. Rows marked left alone (MarkRowsLeftAlone) stay
// untouched. With row_token (selection) partial row r is output row row_token[r / hq] * hq +
// r % hq.
constexpr int kMergeThreads = 256;
__global__ void __launch_bounds__(kMergeThreads)
    MergeSplitsKernel(const float* part_o, const float* part_lse, int splits, int d, bf16* out,
                      float* lse_out, const int32_t* row_token, int hq) {
  // Launched as a programmatic dependent of the attention kernel: it may start early, and must
  // wait here for that grid's partials. The kernel after it may start early too.
  AllowDependentLaunch();
  WaitForPriorGrids();
  __shared__ float s_red[kMergeThreads / 32];
  __shared__ float4 s_acc[kMergeThreads];
  __shared__ bool s_left_alone;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const float* lse = part_lse + row * splits;
  float m = -INFINITY;
  for (int s = tid; s < splits; s += kMergeThreads) {
    const float x = lse[s];
    if (s == 0) s_left_alone = isnan(x);  // thread 0, in the loads it makes anyway
    m = fmaxf(m, x);
  }
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if (lane == 0) s_red[warp] = m;
  __syncthreads();
  if (s_left_alone) return;  // no split computed this row: leave its output as it is
  const int64_t out_row = row_token != nullptr ? int64_t{row_token[row / hq]} * hq + row % hq : row;
  m = s_red[0];
  for (int w = 1; w < kMergeThreads / 32; ++w) m = fmaxf(m, s_red[w]);
  const float base = m == -INFINITY ? 0.0f : m;
  float den = 0.0f;  // lse -inf: weight 0, its o never written
  for (int s = tid; s < splits; s += kMergeThreads) den += __expf(lse[s] - base);
  for (int o = 16; o > 0; o /= 2) den += __shfl_xor_sync(0xffffffffu, den, o);
  __syncthreads();  // everyone has read s_red's maxima
  if (lane == 0) s_red[warp] = den;
  __syncthreads();
  den = 0.0f;
  for (int w = 0; w < kMergeThreads / 32; ++w) den += s_red[w];
  const int chunks = d / 4, groups = kMergeThreads / chunks;
  const int chunk = tid % chunks, group = tid / chunks;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  if (group < groups) {
    const float* src = part_o + row * splits * int64_t{d} + chunk * 4;
    int s = group;
    // Eight splits per round: their loads issue back to back before the first is used.
    for (; s + 7 * groups < splits; s += 8 * groups) {
      float w[8];
      float4 x[8];
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        w[u] = lse[s + u * groups];
        x[u] = *reinterpret_cast<const float4*>(src + int64_t{s + u * groups} * d);
      }
#pragma unroll
      for (int u = 0; u < 8; ++u) {
        const float wu = __expf(w[u] - base);
        if (wu > 0.0f) {
          acc.x += wu * x[u].x;
          acc.y += wu * x[u].y;
          acc.z += wu * x[u].z;
          acc.w += wu * x[u].w;
        }
      }
    }
    for (; s < splits; s += groups) {
      const float wu = __expf(lse[s] - base);
      if (wu > 0.0f) {
        const float4 x = *reinterpret_cast<const float4*>(src + int64_t{s} * d);
        acc.x += wu * x.x;
        acc.y += wu * x.y;
        acc.z += wu * x.z;
        acc.w += wu * x.w;
      }
    }
  }
  s_acc[tid] = acc;
  __syncthreads();
  if (tid < chunks) {
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int g = 0; g < groups; ++g) {
      const float4 x = s_acc[g * chunks + tid];
      sum.x += x.x;
      sum.y += x.y;
      sum.z += x.z;
      sum.w += x.w;
    }
    const float inv = den > 0.0f ? 1.0f / den : 0.0f;
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(out + out_row * d + tid * 4);
    dst[0] = __floats2bfloat162_rn(sum.x * inv, sum.y * inv);
    dst[1] = __floats2bfloat162_rn(sum.z * inv, sum.w * inv);
    if (lse_out != nullptr && tid == 0) lse_out[out_row] = den > 0.0f ? m + logf(den) : -INFINITY;
  }
}

template <int kDim, bool kSelect>
bool LaunchAttention(const Params& p, dim3 grid, cudaStream_t stream) {
  static const cudaError_t configured = cudaFuncSetAttribute(
      DecodeAttentionKernel<kDim, kSelect>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(Layout<kDim>::kBytes));
  if (configured != cudaSuccess) return false;
#ifndef HW_DECODE_NO_ATTN_PDL
  PdlLaunch(grid, dim3(kThreads), Layout<kDim>::kBytes, stream)(
      DecodeAttentionKernel<kDim, kSelect>, p);
#else  // experiments: a plain launch
  // clang-format off
  DecodeAttentionKernel<kDim, kSelect><<<grid, kThreads, Layout<kDim>::kBytes, stream>>>(p);
  // clang-format on
#endif
  return true;
}

template <bool kSelect>
bool LaunchForDim(const Params& p, dim3 grid, cudaStream_t stream) {
  return p.d <= 64    ? LaunchAttention<64, kSelect>(p, grid, stream)
         : p.d <= 128 ? LaunchAttention<128, kSelect>(p, grid, stream)
                      : LaunchAttention<256, kSelect>(p, grid, stream);
}

int ChooseSplits(int64_t blocks, int64_t max_keys, int num_sms) {
  // Measured on the H100 at d 128 (two blocks per SM): a small grid is latency-bound, and one
  // full wave of long splits beats several waves of short ones (batch 1 at 32K: 77% of the copy
  // bandwidth with 33 splits, 72% with 66). Where one wave would split the keys fewer than 8
  // ways, several waves (~8 blocks per SM) keep the SMs busy through uneven lengths. Every split
  // is at least 256 keys (4 tiles): single-tile splits were no faster at batch 1 / 1K and slower
  // at batch 8 (6.84 against 6.64 ms a step). A grid of a full wave or more is not split.
  const int64_t resident = 2 * int64_t{num_sms};
  if (blocks >= resident) return 1;
  int64_t want = resident / std::max<int64_t>(blocks, 1);
  if (want < 8) want = (4 * resident + blocks - 1) / std::max<int64_t>(blocks, 1);
  const int64_t cap = std::max<int64_t>(1, max_keys / 256);
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(cap, 65535)));
}

// part_rows: the partial rows (Params::part_o), the output rows but in selection.
template <bool kSelect>
bool Launch(Params p, int64_t grid_rows, int grid_heads, int num_splits, int64_t part_rows,
            void* scratch, size_t scratch_bytes, uint32_t* split_counters, cudaStream_t stream) {
  const int d = p.d;
  if (d < 8 || d > 256 || d % 8 != 0 || p.kv.page_size < 1 || num_splits < 1 ||
      num_splits > 65535 || grid_rows > 0x7fffffff || part_rows > 0x7fffffff ||
      grid_heads > 65535) {
    return false;
  }
  if (grid_rows == 0) return true;
  if (scratch_bytes < DecodeAttentionScratchBytes(part_rows, num_splits, d)) return false;
  if (num_splits > 1) {
    if (split_counters == nullptr) return false;
    p.part_o = static_cast<float*>(scratch);
    p.part_lse = p.part_o + part_rows * num_splits * d;
    if (num_splits <= kLastBlockMergeMaxSplits) p.arrived = split_counters;
  }
  const dim3 grid(static_cast<unsigned>(grid_rows), static_cast<unsigned>(grid_heads),
                  static_cast<unsigned>(num_splits));
  if (!LaunchForDim<kSelect>(p, grid, stream)) return false;
  if (num_splits > 1 && p.arrived == nullptr) {
    PdlLaunch(dim3(static_cast<unsigned>(part_rows)), dim3(kMergeThreads), 0, stream)(
        MergeSplitsKernel, static_cast<const float*>(p.part_o),
        static_cast<const float*>(p.part_lse), num_splits, d, p.out, p.lse,
        kSelect ? p.sel.seq_token : static_cast<const int32_t*>(nullptr), p.hq);
  }
  return true;
}

Params CommonParams(const bf16* q, const DecodeKvCache& kv, int hq, int d, float scale, bf16* out) {
  Params p{};
  p.q = q;
  p.kv = kv;
  p.hq = hq;
  p.group = hq / kv.hkv;
  p.head_chunks = (p.group + kHeadRows - 1) / kHeadRows;
  p.d = d;
  p.scale_log2 = scale * kLog2e;
  p.out = out;
  return p;
}

}  // namespace

int PagedDecodeSplits(int64_t tokens, int hq, int hkv, int64_t max_keys, int num_sms) {
  const int64_t chunks = (hq / std::max(hkv, 1) + kHeadRows - 1) / kHeadRows;
  return ChooseSplits(tokens * hkv * chunks, max_keys, num_sms);
}

int SparseDecodeSplits(int64_t rows, int group, int64_t max_keys, int num_sms) {
  return ChooseSplits(rows * ((group + kHeadRows - 1) / kHeadRows), max_keys, num_sms);
}

size_t DecodeAttentionScratchBytes(int64_t out_rows, int num_splits, int d) {
  if (num_splits <= 1) return 0;
  return static_cast<size_t>(out_rows) * num_splits * (static_cast<size_t>(d) + 1) * sizeof(float);
}

bool LaunchPagedDecodeAttention(cudaStream_t stream, const bf16* q, const DecodeKvCache& kv,
                                const int32_t* token_seq, const int32_t* token_pos,
                                const int32_t* seq_first_pos, int64_t tokens, int hq, int d,
                                float scale, int num_splits, void* scratch, size_t scratch_bytes,
                                uint32_t* split_counters, bf16* out) {
  if (kv.hkv < 1 || hq % kv.hkv != 0) return false;
  Params p = CommonParams(q, kv, hq, d, scale, out);
  p.token_seq = token_seq;
  p.token_pos = token_pos;
  p.seq_first_pos = seq_first_pos;
  return Launch<false>(p, tokens, kv.hkv * p.head_chunks, num_splits, tokens * hq, scratch,
                       scratch_bytes, split_counters, stream);
}

bool LaunchSparseDecodeAttention(cudaStream_t stream, const bf16* q, const DecodeKvCache& kv,
                                 const int32_t* row_seq, const int32_t* row_kv_head,
                                 const int32_t* indptr, const int32_t* indices,
                                 const float* logit_bias, int64_t rows, int hq, int d, float scale,
                                 int num_splits, void* scratch, size_t scratch_bytes,
                                 uint32_t* split_counters, bf16* out, float* lse) {
  if (kv.hkv < 1 || hq % kv.hkv != 0) return false;
  Params p = CommonParams(q, kv, hq, d, scale, out);
  p.row_seq = row_seq;
  p.row_kv_head = row_kv_head;
  p.indptr = indptr;
  p.indices = indices;
  p.bias = logit_bias;
  p.lse = lse;
  return Launch<false>(p, rows, p.head_chunks, num_splits, rows * p.group, scratch, scratch_bytes,
                       split_counters, stream);
}

int SelectDecodeSplits(int64_t seqs, int hq, int hkv, int64_t max_keys, int num_sms) {
  return PagedDecodeSplits(seqs, hq, hkv, max_keys, num_sms);
}

bool LaunchScoreDecodeAttention(cudaStream_t stream, const bf16* q, const DecodeKvCache& kv,
                                const SelectDecodeView& sel, int num_seqs, int hq, int d,
                                float scale, float* scores, int64_t scores_width, int num_splits,
                                void* scratch, size_t scratch_bytes, uint32_t* split_counters,
                                bf16* out) {
  if (kv.hkv < 1 || hq % kv.hkv != 0 || kv.seq_slot == nullptr || scores == nullptr) return false;
  Params p = CommonParams(q, kv, hq, d, scale, out);
  p.sel = sel;
  p.scores = scores;
  p.scores_width = scores_width;
  p.scale = scale;
  return Launch<true>(p, num_seqs, kv.hkv * p.head_chunks, num_splits, int64_t{num_seqs} * hq,
                      scratch, scratch_bytes, split_counters, stream);
}

bool LaunchSelectedDecodeAttention(cudaStream_t stream, const bf16* q, const DecodeKvCache& kv,
                                   const SelectDecodeView& sel, int num_seqs, int hq, int d,
                                   float scale, int num_splits, void* scratch, size_t scratch_bytes,
                                   uint32_t* split_counters, bf16* out) {
  if (kv.hkv < 1 || hq % kv.hkv != 0 || kv.seq_slot == nullptr) return false;
  Params p = CommonParams(q, kv, hq, d, scale, out);
  p.sel = sel;
  p.scale = scale;
  return Launch<true>(p, num_seqs, hq, num_splits, int64_t{num_seqs} * hq, scratch, scratch_bytes,
                      split_counters, stream);
}

}  // namespace headwise::kernels::cuda
