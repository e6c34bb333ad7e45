// The paged KV cache of one layer as the attention and KV-write kernels read it (the device side
// of kernels::BlockTable). Header only, CUDA runtime types only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace headwise::kernels::cuda {

// The paged cache of one layer as the kernels read it. Key j of (sequence s, KV head h) lives at
// page blocks[s * max_blocks + j / page_size] * pages_per_block + head_page[h], slot
// j % page_size: element (page * page_size + slot) * d + c of k_pool / v_pool. A ring head
// (head_ring[h] != 0; kernels::BlockTable) takes its page from ring_blocks and
// ring_pages_per_block instead, and attends fewer keys (AttendedKeys); a compress-once head
// (head_comp[h] != 0) from comp_blocks and comp_pages_per_block, whose entries are -1 where
// compaction freed the page (never read: those positions are not attended).
struct DecodeKvCache {
  const __nv_bfloat16* k_pool;
  const __nv_bfloat16* v_pool;
  const int32_t* blocks;     // [S, max_blocks]
  const int32_t* head_page;  // [hkv]
  int max_blocks;
  int pages_per_block;
  int page_size;
  int hkv;
  // Sink/window heads; head_ring null when the layer has none.
  const int32_t* head_ring = nullptr;    // [hkv]
  const int32_t* ring_blocks = nullptr;  // [S, max_blocks]
  int ring_pages_per_block = 0;
  int ring_sink = 0;
  int ring_window = 0;
  // Compress-once heads (kernels::BlockTable); head_comp null when the layer has none.
  const int32_t* head_comp = nullptr;    // [hkv]
  const int32_t* comp_blocks = nullptr;  // [S, max_blocks]
  int comp_pages_per_block = 0;
  const int32_t* comp_from = nullptr;  // [S]: 0 until the sequence is compacted
  int comp_sink = 0;
  bool comp_token = false;
  bool comp_log_count = true;
  // Ring heads with re-indexed positions (StreamingLLM; kernels::BlockTable): their keys are
  // stored unrotated, and attention rotates q and each key by its rank (RotateByRank).
  // head_reindex null when the layer has none.
  const int32_t* head_reindex = nullptr;  // [hkv]
  const float* rope_inv_freq = nullptr;   // [d / 2]

#ifdef __CUDACC__
  __device__ bool IsRing(int kv_head) const {
    return head_ring != nullptr && head_ring[kv_head] != 0;
  }
  __device__ bool IsReindexed(int kv_head) const {
    return head_reindex != nullptr && head_reindex[kv_head] != 0;
  }
  __device__ bool IsCompressed(int kv_head) const {
    return head_comp != nullptr && head_comp[kv_head] != 0;
  }
  // The block table row of `seq` for kv_head's kind of block, and that kind's pages per block.
  __device__ const int32_t* BlocksOf(int seq, int kv_head) const {
    const int32_t* table = IsRing(kv_head)         ? ring_blocks
                           : IsCompressed(kv_head) ? comp_blocks
                                                   : blocks;
    return table + int64_t{seq} * max_blocks;
  }
  __device__ int PagesPerBlockOf(int kv_head) const {
    return IsRing(kv_head)         ? ring_pages_per_block
           : IsCompressed(kv_head) ? comp_pages_per_block
                                   : pages_per_block;
  }
  // Slot (page * page_size + offset) of key `pos` of (seq, kv_head): the row of k_pool / v_pool.
  __device__ int64_t Slot(int seq, int kv_head, int pos) const {
    const int64_t page =
        int64_t{BlocksOf(seq, kv_head)[pos / page_size]} * PagesPerBlockOf(kv_head) +
        head_page[kv_head];
    return page * page_size + pos % page_size;
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
  __device__ static AttendedKeys Ring(const DecodeKvCache& kv, bool ring, int pos,
                                      int chunk_start) {
    if (!ring || pos < 0) return {pos + 1, pos + 1, 0};
    const int lo = max(kv.ring_sink, chunk_start - kv.ring_window);
    const int n_sink = min(kv.ring_sink, pos + 1);
    return {n_sink + max(0, pos + 1 - lo), n_sink, lo - n_sink};
  }
  __device__ static AttendedKeys Of(const DecodeKvCache& kv, int kv_head, int seq, int pos,
                                    int chunk_start) {
    if (pos < 0 || !kv.IsCompressed(kv_head)) {
      return Ring(kv, kv.IsRing(kv_head), pos, chunk_start);
    }
    const int from = kv.comp_from[seq];
    if (from <= 0) return {pos + 1, pos + 1, 0};  // not compacted yet: everything
    const int n_sink = min(kv.comp_sink + (kv.comp_token ? 1 : 0), pos + 1);
    AttendedKeys keys{n_sink + max(0, pos + 1 - from), n_sink, from - n_sink};
    if (kv.comp_token && kv.comp_sink <= pos) {
      keys.bias_index = kv.comp_sink;
      keys.bias = kv.comp_log_count ? logf(static_cast<float>(from - kv.comp_sink)) : 0.0f;
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
