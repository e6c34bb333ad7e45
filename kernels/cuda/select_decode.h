// Decode-time selection on the GPU (kernels::SelectDecodeBatch states the order of the operations
// and kernels::KvSelect the rules): the selection state as the kernels read it, and the launches of
// the operations' kernels other than attention (page summaries, the refresh gate, Quest's page
// bounds, top-k). The attention passes (ScoreAttention's dense pass emitting logits,
// SelectedAttention) are the decode kernel's (kernels/cuda/decode_attention.h). Standalone: the
// CUDA runtime and kernels/kv_head.h only, like the attention kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/paged_kv.h"

namespace headwise::kernels::cuda {

// One layer's selection step on the device: kernels::SelectDecodeBatch and its SelectState. The
// sequence's slot is DecodeKvCache::seq_slot (set), its layout DecodeKvCache::seq_layout.
struct SelectDecodeView {
  const int32_t* seq_token;  // [S]: the sequence's query row of q and out
  const int32_t* seq_len;    // [S]: keys of the sequence, the query's position + 1
  const KvSelect* selects;   // [layouts, hkv]
  int32_t* positions;        // [slots, sets, hq, width]
  int32_t* counts;           // [slots, sets, hq]
  int32_t* chosen_len;       // [slots, sets]
  int32_t* steps;            // [slots, sets]
  int32_t* refresh;          // [slots, sets]
  float* q_ref;              // [slots, sets, hq * d], or null
  int num_sets = 0;
  int width = 0;  // SelectState::budget(): entries of a set, at most

#ifdef __CUDACC__
  __device__ KvSelect Select(const DecodeKvCache& kv, int seq, int kv_head) const {
    return selects[int64_t{kv.seq_layout[seq]} * kv.hkv + kv_head];
  }
  __device__ int64_t SetIndex(int slot, int set) const {
    return int64_t{slot} * num_sets + set;
  }
  // Whether a head of rule `sel` of a sequence in `slot` chooses its set this step: select and
  // pages heads always, recycle heads when SelectionGate said so.
  __device__ bool Chooses(const KvSelect& sel, int slot) const {
    return sel.decode == kDecodeSelect || sel.decode == kDecodePages ||
           (sel.decode == kDecodeRecycle && refresh[SetIndex(slot, sel.set)] != 0);
  }
  // Whether it attends a set chosen earlier (SelectedAttention): consume and pages heads, recycle
  // heads not refreshing.
  __device__ bool AttendsSet(const KvSelect& sel, int slot) const {
    return sel.decode == kDecodeConsume || sel.decode == kDecodePages ||
           (sel.decode == kDecodeRecycle && refresh[SetIndex(slot, sel.set)] == 0);
  }
  // The set row (of hq) holding the set of query head `g` of KV head `kv_head`'s group.
  __device__ int SetRow(const KvSelect& sel, int kv_head, int group, int g) const {
    return sel.per_q_head ? kv_head * group + g : kv_head;
  }
  __device__ int32_t* SetPositions(int slot, int set, int row, int hq) const {
    return positions + (SetIndex(slot, set) * hq + row) * int64_t{width};
  }
  __device__ int32_t* SetCount(int slot, int set, int row, int hq) const {
    return counts + SetIndex(slot, set) * hq + row;
  }
#endif
};

// Every launcher returns false, launching nothing, where the shape is unsupported; launch errors
// surface through cudaGetLastError. All read lengths, slots and flags from device memory and size
// their grids from the arguments only, so that a captured launch serves any lengths up to those.

// UpdatePageSummaries: for each query token t (token_pos[t] >= 0) on a KV head whose decode is
// kDecodePages, kmin / kmax [pages, d] of its page = the element-wise min / max of the page's keys
// at slots 0 .. token_pos[t] % page_size. Of several tokens of one page in the batch (consecutive
// positions of one sequence) only the last writes. tokens may be 0.
bool LaunchUpdatePageSummaries(cudaStream_t stream, const DecodeKvCache& kv,
                               const int32_t* token_seq, const int32_t* token_pos, int64_t tokens,
                               int d, __nv_bfloat16* kmin, __nv_bfloat16* kmax);

// SelectionGate over num_seqs sequences; q bf16 [T, hq, d]. Needs kv.seq_slot.
bool LaunchSelectionGate(cudaStream_t stream, const DecodeKvCache& kv, const SelectDecodeView& sel,
                         const __nv_bfloat16* q, int num_seqs, int hq, int d);

// ScoreAttention's pages heads: scores[s, qh, p] = scale * sum_c max(q_c kmax_c, q_c kmin_c) for
// every page p < ceil(seq_len / page_size) of each selecting sequence's heads of decode
// kDecodePages. scores f32 [num_seqs, hq, width]; max_len (>= every seq_len) sizes the grid.
bool LaunchPageBounds(cudaStream_t stream, const DecodeKvCache& kv, const SelectDecodeView& sel,
                      const __nv_bfloat16* q, const __nv_bfloat16* kmin, const __nv_bfloat16* kmax,
                      int num_seqs, int hq, int d, float scale, int max_len, float* scores,
                      int64_t scores_width);

// SelectTopK: every set chosen this step (KvSelect's choosing rule) from scores f32 [num_seqs, hq,
// scores_width] (ScoreAttention's): positions and counts, and per (slot, set) chosen_len, steps and
// q_ref. rows: hq, or hkv where no rule chooses per query head. max_len (>= every seq_len) sizes
// the grid and shared memory; more than MaxSelectTopKLen() is unsupported.
bool LaunchSelectTopK(cudaStream_t stream, const DecodeKvCache& kv, const SelectDecodeView& sel,
                      const __nv_bfloat16* q, const float* scores, int64_t scores_width,
                      int num_seqs, int hq, int d, int rows, int max_len);
int MaxSelectTopKLen();

}  // namespace headwise::kernels::cuda
