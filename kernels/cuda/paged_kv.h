// The paged KV cache of one layer as the attention and KV-write kernels read it (the device side
// of kernels::BlockTable). Header only: CUDA runtime types and kernels/kv_head.h (dependency-free)
// only, so that bench/gpu builds the attention kernels standalone.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/kv_head.h"

namespace headwise::kernels::cuda {

// The paged cache of one layer as the kernels read it (kernels::BlockTable states the rules).
// Sequence s runs layout seq_layout[s]; its KV head h keeps keys as head = heads[seq_layout[s] *
// hkv + h] says (KvHead: retention and page in a block). Key j lives at page
// BlocksOf(s, head.retention)[j / page_size] + head.page, slot j % page_size: element
// (page * page_size + slot) * d + c of k_pool / v_pool. Ring heads take their blocks from
// ring_blocks and attend fewer keys (AttendedKeys); compress-once heads from comp_blocks, whose
// entries are -1 where compaction freed the page (never read: those positions are not attended).
// A kernel reads a (sequence, KV head)'s KvHead once (Head), then only indexes.
struct DecodeKvCache {
  const __nv_bfloat16* k_pool;
  const __nv_bfloat16* v_pool;
  const KvHead* heads;        // [num_layouts, hkv]
  const int32_t* seq_layout;  // [S]
  const int32_t* blocks;      // [S, max_blocks]: first pages of full blocks
  int max_blocks;
  int page_size;
  int hkv;
  // Null when no layout has heads of the kind.
  const int32_t* ring_blocks = nullptr;  // [S, max_blocks]
  const int32_t* comp_blocks = nullptr;  // [S, max_blocks]
  const int32_t* comp_from = nullptr;    // [S]: 0 until the sequence is compacted
  // Ring heads with re-indexed positions (StreamingLLM): their keys are stored unrotated, and
  // attention rotates q and each key by its rank (RankRotation). Null when no layout has one.
  const float* rope_inv_freq = nullptr;  // [d / 2]
  // Decode-time selection (kernels::BlockTable::seq_slot): sequence s's selection slot this step,
  // -1 when it attends densely. Null when no layout has selecting heads: then nothing is checked.
  const int32_t* seq_slot = nullptr;  // [S]

#ifdef __CUDACC__
  __device__ KvHead Head(int seq, int kv_head) const {
    return heads[int64_t{seq_layout[seq]} * hkv + kv_head];
  }
  // Whether paged attention leaves (seq, head) to the selection operations: a selecting
  // sequence's head whose decode is not dense. Dense heads cost no load: the head's role is
  // tested first, the sequence's slot only for the others.
  __device__ bool LeftToSelection(int seq, const KvHead& head) const {
    return head.decode != kDecodeDense && seq_slot != nullptr && seq_slot[seq] >= 0;
  }
  // The block table row of `seq` for the kind of block a head of retention r keeps keys in.
  __device__ const int32_t* BlocksOf(int seq, const KvRetention& r) const {
    const int32_t* table = r.ring() ? ring_blocks : r.compacts() ? comp_blocks : blocks;
    return table + int64_t{seq} * max_blocks;
  }
  // Slot (page * page_size + offset) of key `pos` from its sequence's block row (BlocksOf) and its
  // head's page: the row of k_pool / v_pool.
  __device__ int64_t Slot(const int32_t* seq_blocks, int head_page, int pos) const {
    return (int64_t{seq_blocks[pos / page_size]} + head_page) * page_size + pos % page_size;
  }
#endif
};

#ifdef __CUDACC__
// Rotary rotation of one frequency (the pair x[i], x[i + d/2], rotate-half as in RopeWriteKv) by
// a run of ranks rank0, rank0 + step, rank0 + 2 step, ...: one sincosf for the run and angle
// addition from row to row, so a tile of keys costs a thread one sincosf instead of one per row
// (per-row sincosf made StreamingLLM decode steps 20% slower). The recurrence's fp32 error over a
// tile's rows stays orders of magnitude below bf16's rounding of the result.
class RankRotation {
 public:
  // The step's angle, shared by every run of a block.
  __device__ RankRotation(float inv_freq, int step) : inv_freq_(inv_freq) {
    sincosf(static_cast<float>(step) * inv_freq, &sin_step_, &cos_step_);
  }
  __device__ void Start(int rank0) { sincosf(static_cast<float>(rank0) * inv_freq_, &sin_, &cos_); }
  // Rotates (lo, hi) by the current rank, then moves on by one step.
  __device__ void Apply(__nv_bfloat16& lo, __nv_bfloat16& hi) {
    const float a = __bfloat162float(lo), b = __bfloat162float(hi);
    lo = __float2bfloat16(a * cos_ - b * sin_);
    hi = __float2bfloat16(b * cos_ + a * sin_);
    const float c = cos_ * cos_step_ - sin_ * sin_step_;
    sin_ = sin_ * cos_step_ + cos_ * sin_step_;
    cos_ = c;
  }

 private:
  float inv_freq_, cos_step_, sin_step_;
  float cos_ = 1.0f, sin_ = 0.0f;
};
#endif

// The keys a query attends, as a dense index range [0, count): index n is position n below
// n_sink and position n + shift from there; the key at index bias_index (if any) gets `bias`
// added to its logit. Every head attends keys 0 .. pos; a ring head the sinks
// [0, min(sink, pos + 1)) and the window [lo, pos], lo = max(sink, chunk_start - window),
// chunk_start the position of its sequence's first query token of the step; a compress-once
// head of a compacted sequence the sinks, the compensation token and [comp_from, pos]
// (kernels::BlockTable states the rules). Positions grow with the index, so a range of indices
// is a range of positions.
struct AttendedKeys {
  int count;
  int n_sink;
  int shift;
  int bias_index = -1;
  float bias = 0.0f;

#ifdef __CUDACC__
  // Of a query at `pos` (< 0: padding, nothing) of sequence `seq` on a head of retention r.
  __device__ static AttendedKeys Of(const DecodeKvCache& kv, const KvRetention& r, int seq, int pos,
                                    int chunk_start) {
    if (pos < 0 || !(r.ring() || r.compacts())) return {pos + 1, pos + 1, 0};
    if (r.ring()) {
      const int lo = max(r.sink, chunk_start - r.window);
      const int n_sink = min(r.sink, pos + 1);
      return {n_sink + max(0, pos + 1 - lo), n_sink, lo - n_sink};
    }
    const int from = kv.comp_from[seq];
    if (from <= 0) return {pos + 1, pos + 1, 0};  // not compacted yet: everything
    const int n_sink = min(r.sink + (r.compensation ? 1 : 0), pos + 1);
    AttendedKeys keys{n_sink + max(0, pos + 1 - from), n_sink, from - n_sink};
    if (r.compensation && r.sink <= pos) {
      keys.bias_index = r.sink;
      keys.bias = r.compensation_by_count ? logf(static_cast<float>(from - r.sink)) : 0.0f;
    }
    return keys;
  }
  __device__ int Position(int n) const {
    return n < n_sink ? n : n + shift;
  }
  // The index of attended position `pos`: its rank on a re-indexed head (kernels::BlockTable).
  __device__ int Index(int pos) const {
    return pos < n_sink ? pos : pos - shift;
  }
#endif
};

}  // namespace headwise::kernels::cuda
