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
//  - storage offload (RetrievalAttention): on the device as compress_once without compensation
//    (the first `sink` tokens and those from the last `window` of the prompt on); the dropped
//    span goes to host memory first, where its keys are searched at each decode step
//    (kDecodeRetrieve). Both kinds compact: `compacts()`.
enum KvStorage : int32_t {
  kStorageFull = 0,
  kStorageRing = 1,
  kStorageCompressOnce = 2,
  kStorageOffload = 3,
};
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
  static constexpr KvRetention Offload(int32_t sink, int32_t window) {
    return {kStorageOffload, sink, window, kPositionsOriginal, 0, 1};
  }

  HW_KV_HEAD_FN bool ring() const { return storage == kStorageRing; }
  HW_KV_HEAD_FN bool compress_once() const { return storage == kStorageCompressOnce; }
  HW_KV_HEAD_FN bool offload() const { return storage == kStorageOffload; }
  // Keys in comp blocks, dropped after the prompt (BlockTable::comp_from): compress_once and
  // offload heads.
  HW_KV_HEAD_FN bool compacts() const {
    return storage == kStorageCompressOnce || storage == kStorageOffload;
  }
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

// How a KV head's decode query attends on a step that selects for its sequence (decode-time
// selection: TidalDecode, Recycled Attention, Quest; ALGORITHMS.md §6-8 and kernels::KvSelect).
// On every other step (prefill chunks, sequences not longer than the policy's dense_if_len_le)
// every head attends densely.
enum KvDecode : int32_t {
  kDecodeDense = 0,    // every key it keeps (PagedAttention)
  kDecodeSelect = 1,   // every key, and chooses a set from its logits (TidalDecode selection layer)
  kDecodeConsume = 2,  // the set an earlier layer's select head chose this step (TidalDecode)
  kDecodeRecycle = 3,  // chooses its own set on refresh steps (attending every key), attends it
                       // on the others (Recycled Attention)
  kDecodePages = 4,    // scores pages by their key bounds, attends the best pages (Quest)
  kDecodeRetrieve = 5,  // offload heads: the keys on the device merged with the host's result
                        // over the keys it retrieved (OffloadAttention)
};

// One (KV layout, layer, KV head) as the kernels read it: its retention, its page inside a
// block of its storage kind (BlockTable) and its decode role. Eight int32, so a table of them is
// an i32 tensor.
struct KvHead {
  KvRetention retention;
  int32_t page = 0;
  int32_t decode = kDecodeDense;  // KvDecode
};
inline constexpr int kKvHeadInts = 8;
static_assert(sizeof(KvHead) == kKvHeadInts * sizeof(int32_t), "KvHead is read as int32[8]");

// How a selecting head's set is reduced over its GQA group (ALGORITHMS.md §9.4).
enum KvReduce : int32_t {
  kReduceSumSoftmax = 0,  // softmax per query head over all keys, summed over the group
  kReduceSumLogits = 1,   // logits (or page bounds) summed over the group
  kReduceMax = 2,         // their maximum over the group
};

// The decode-time selection rule of one (KV layout, layer, KV head), for heads whose KvHead::
// decode is not dense; the selection kernels read a table of them (BlockTable::selects).
//
// Sets. A set is a list of key positions, chosen at some step for one (sequence, set index,
// head): for a KV head, or, with per_q_head, for each query head of its group. Set index `set`
// names where the head's set lives in the sequence's selection state (SelectState): select,
// recycle and pages heads write their own set; consume heads read the set of the select head of
// the same KV head at an earlier layer (the file's publish / consume channel), chosen this step.
//
// What a selecting step attends, for a query at position n - 1 (n keys):
//  - dense: nothing here (PagedAttention);
//  - select: keys [0, n) (the dense result), and chooses the set (below);
//  - recycle: on a refresh step as select; otherwise the set as consume does, plus, with
//    since_refresh, keys [chosen_len - recent, n) (the tail when the set was chosen and every
//    key added since; without it those between that tail and this one are not attended);
//  - consume: keys [0, sink), the set, and the tail [n - recent, n);
//  - pages: keys [0, sink), the chosen pages' keys, and the tail = the page holding n - 1 (from
//    its first key to n - 1).
// Choosing (token unit: select, recycle): candidates are keys [sink, n - recent); each gets a
// score from the logits of its group (reduce) or of its query head (per_q_head); the set is the
// budget - sink - recent best candidates (all of them when fewer), ties to the lower position,
// stored in increasing position. Choosing (pages): candidate pages are those wholly in
// [sink, start of the tail page), scored Σ_c max(q_c kmax_c, q_c kmin_c) per query head (Quest's
// bound; KvPoolView::kmin / kmax), reduced over the group, and the set is the positions of the
// (budget - sink) / page_size - 1 best pages. The sets of the tail and sink are disjoint from the
// set by construction, so attended keys are never counted twice.
struct KvSelect {
  int32_t decode = kDecodeDense;  // KvDecode, the same as the head's KvHead::decode
  int32_t set = -1;               // set index in SelectState; -1 for dense heads
  int32_t budget = 0;             // keys attended on a selecting step, at most (sink + set + tail)
  int32_t sink = 0;               // first keys always attended
  int32_t recent = 1;             // last keys always attended (1: the current token); token unit
  int32_t per_q_head = 0;         // 1: a set per query head; 0: one per KV head (reduce)
  int32_t reduce = kReduceSumSoftmax;  // KvReduce, for sets per KV head
  int32_t since_refresh = 0;           // recycle: also attend the keys added since choosing
  int32_t refresh_every = 1;           // recycle: choose anew after this many steps
  int32_t refresh_below_cos = 0;       // recycle: 1: also choose anew when cos(q, q_ref) < ...
  float refresh_cos = 0.0f;            // ... this (q over the layer's query heads, SelectState)
  int32_t reserved[5] = {0, 0, 0, 0, 0};
};
inline constexpr int kKvSelectInts = 16;
static_assert(sizeof(KvSelect) == kKvSelectInts * sizeof(int32_t), "KvSelect is read as int32[16]");

// The selection operations of Backend (SelectDecodeBatch's order) that heads of a rule take part
// in, and how their launches are shaped. A layer launches only those some head of it needs
// (KvCache::layer_select_ops, over the layouts): the others would launch grids that only find
// nothing to do, several microseconds each in a decode step of a few milliseconds.
enum SelectOp : int {
  kSelectOpGate = 1,        // SelectionGate: recycle heads
  kSelectOpScoreKeys = 2,   // ScoreAttention's pass over every key, SelectTopK: select, recycle
  kSelectOpScorePages = 4,  // ScoreAttention's page bounds, SelectTopK: pages heads
  kSelectOpAttend = 8,      // SelectedAttention: consume, recycle and pages heads
  kSelectOpPerQHead = 16,   // SelectTopK chooses a set per query head (else per KV head only)
  kSelectOpScore = kSelectOpScoreKeys | kSelectOpScorePages,
  kSelectOpAll = kSelectOpGate | kSelectOpScore | kSelectOpAttend | kSelectOpPerQHead,
};
constexpr int SelectOpsOf(const KvSelect& rule) {
  int ops = 0;
  switch (rule.decode) {
    case kDecodeSelect:
      ops = kSelectOpScoreKeys;
      break;
    case kDecodeConsume:
      ops = kSelectOpAttend;
      break;
    case kDecodeRecycle:
      ops = kSelectOpGate | kSelectOpScoreKeys | kSelectOpAttend;
      break;
    case kDecodePages:
      ops = kSelectOpScorePages | kSelectOpAttend;
      break;
    default:  // dense (PagedAttention), retrieve (OffloadAttention)
      return 0;
  }
  return (ops & kSelectOpScore) && rule.per_q_head ? ops | kSelectOpPerQHead : ops;
}

}  // namespace headwise::kernels

#undef HW_KV_HEAD_FN
