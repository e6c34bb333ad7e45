// How a KV head keeps its keys: the POD that the KV cache's layouts, the block table
// (kernels/backend.h) and the device kernels (kernels/cuda/paged_kv.h) share. Dependency-free and
// C++17, so that CUDA sources (compiled as C++17, some standalone by bench/gpu) include it as is.
#pragma once

#include <cstdint>

// Members callable from host and device code alike.
#ifdef __CUDACC__
#define HW_KV_HEAD_FN __host__ __device__ constexpr
#else
#define HW_KV_HEAD_FN constexpr
#endif

namespace headwise::kernels {

// How one (layer, KV head) keeps its keys, in the attention-policy file's words (attn-policy/v1,
// ALGORITHMS.md §10). The same POD is the KV cache's layout entry (kvcache/kv_layout.h), the block
// table's (kernels/backend.h) and the device's (kernels/cuda/paged_kv.h): a rule has one name at
// every hop.
//  - storage full: every token.
//  - storage ring: the first `sink` tokens and the most recent `window`, in a fixed set of pages
//    per sequence reused as the window moves on (StreamingLLM, DuoAttention's streaming heads).
//    With positions reindex (StreamingLLM) keys are stored pre-RoPE and attention rotates them by
//    their rank in the ring (PagedAttentionBatch).
//  - storage compress_once (RazorAttention): every token until the prompt is in; then the
//    sequence is compacted (BlockTable::comp_from) and attends the first `sink` tokens, the
//    compensation token (with `compensation`: the mean K and V of the dropped span, written over
//    position `sink`; its logit + log(dropped count) with compensation_by_count) and the tokens
//    from the last `window` of the prompt on.
enum KvStorage : int32_t { kStorageFull = 0, kStorageRing = 1, kStorageCompressOnce = 2 };
enum KvPositions : int32_t { kPositionsOriginal = 0, kPositionsReindex = 1 };
struct KvRetention {
  int32_t storage = kStorageFull;          // KvStorage
  int32_t sink = 0;                        // ring, compress_once
  int32_t window = 0;                      // ring, compress_once
  int32_t positions = kPositionsOriginal;  // KvPositions; reindex on ring heads only
  int32_t compensation = 0;                // compress_once
  int32_t compensation_by_count = 1;       // compress_once with compensation

  // The rules by name, as a policy file states them.
  static constexpr KvRetention Ring(int32_t sink, int32_t window, bool reindex = false) {
    return {kStorageRing, sink, window, reindex ? kPositionsReindex : kPositionsOriginal, 0, 1};
  }
  static constexpr KvRetention CompressOnce(int32_t sink, int32_t window, bool compensation = true,
                                            bool by_count = true) {
    return {kStorageCompressOnce, sink, window, kPositionsOriginal, compensation ? 1 : 0,
            by_count ? 1 : 0};
  }

  HW_KV_HEAD_FN bool ring() const { return storage == kStorageRing; }
  HW_KV_HEAD_FN bool compress_once() const { return storage == kStorageCompressOnce; }
  HW_KV_HEAD_FN bool reindex() const { return positions == kPositionsReindex; }
  // Spelled out rather than defaulted (C++20), which the CUDA sources cannot compile; the size
  // check below catches a field added without its comparison.
  HW_KV_HEAD_FN bool operator==(const KvRetention& o) const {
    return storage == o.storage && sink == o.sink && window == o.window &&
           positions == o.positions && compensation == o.compensation &&
           compensation_by_count == o.compensation_by_count;
  }
  HW_KV_HEAD_FN bool operator!=(const KvRetention& o) const { return !(*this == o); }
};
static_assert(sizeof(KvRetention) == 6 * sizeof(int32_t),
              "KvRetention::operator== lists every field");

// One (KV layout, layer, KV head) as the kernels read it: its retention and its page inside a
// block of its storage kind (BlockTable). Eight int32, so a table of them is an i32 tensor.
struct KvHead {
  KvRetention retention;
  int32_t page = 0;
  int32_t reserved = 0;
};
inline constexpr int kKvHeadInts = 8;
static_assert(sizeof(KvHead) == kKvHeadInts * sizeof(int32_t), "KvHead is read as int32[8]");

}  // namespace headwise::kernels

#undef HW_KV_HEAD_FN
