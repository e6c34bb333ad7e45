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
// ring_pages_per_block instead, and attends fewer keys (RingKeys).
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

#ifdef __CUDACC__
  __device__ bool IsRing(int kv_head) const {
    return head_ring != nullptr && head_ring[kv_head] != 0;
  }
  // Slot (page * page_size + offset) of key `pos` of (seq, kv_head): the row of k_pool / v_pool.
  __device__ int64_t Slot(int seq, int kv_head, int pos) const {
    const bool ring = IsRing(kv_head);
    const int32_t* table = ring ? ring_blocks : blocks;
    const int64_t page = int64_t{table[int64_t{seq} * max_blocks + pos / page_size]} *
                             (ring ? ring_pages_per_block : pages_per_block) +
                         head_page[kv_head];
    return page * page_size + pos % page_size;
  }
#endif
};

// The keys a query attends, as a dense index range [0, count): index n is position n below
// n_sink and position n + shift from there. Every head attends keys 0 .. pos (count pos + 1,
// nothing shifted); a ring head the sinks [0, min(sink, pos + 1)) and the window [lo, pos],
// lo = max(sink, chunk_start - window), chunk_start the position of its sequence's first query
// token of the step (kernels::BlockTable states the rule). Positions grow with the index, so a
// range of indices is a range of positions.
struct AttendedKeys {
  int count;
  int n_sink;
  int shift;

#ifdef __CUDACC__
  __device__ static AttendedKeys Of(const DecodeKvCache& kv, bool ring, int pos, int chunk_start) {
    if (!ring || pos < 0) return {pos + 1, pos + 1, 0};
    const int lo = max(kv.ring_sink, chunk_start - kv.ring_window);
    const int n_sink = min(kv.ring_sink, pos + 1);
    return {n_sink + max(0, pos + 1 - lo), n_sink, lo - n_sink};
  }
  __device__ int Position(int n) const {
    return n < n_sink ? n : n + shift;
  }
#endif
};

}  // namespace headwise::kernels::cuda
