// Decode attention over the paged KV cache (split-KV, GQA-grouped, tensor cores), bf16 in and out
// with fp32 accumulation. Standalone: depends on the CUDA runtime only, so bench/gpu can build it
// alone (bench/gpu/build-check.sh decode).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/paged_kv.h"
#include "kernels/cuda/select_decode.h"

namespace headwise::kernels::cuda {

// How many splits of the keys each (token, KV head) gets. Depends on the shapes only (never on
// the actual lengths), so a launch captured in a CUDA graph stays valid for any lengths up to
// max_keys (the table's capacity, max_blocks * page_size).
int PagedDecodeSplits(int64_t tokens, int hq, int hkv, int64_t max_keys, int num_sms);
// Same for sparse decode: rows (sequence, KV head) of `group` query heads, lists of at most
// max_keys entries (a bound the caller knows, e.g. the table's capacity).
int SparseDecodeSplits(int64_t rows, int group, int64_t max_keys, int num_sms);

// Device scratch bytes the launchers need for `out_rows` output rows (tokens * hq for paged,
// rows * group for sparse) of head dim d split num_splits ways; 0 when num_splits is 1.
size_t DecodeAttentionScratchBytes(int64_t out_rows, int num_splits, int d);

// Split launches also take split_counters: at least out_rows uint32 in device memory, all zero
// before the first call (cudaMemset) and left zero by every call, for the launches of one stream
// only (with few splits, the last split of each output group to finish merges the others'
// partials, counting arrivals there). Unused, and may be null, when num_splits is 1.

// Paged decode: q, out bf16 [tokens, hq, d]. Token t of sequence token_seq[t] at position
// token_pos[t] attends keys 0 .. token_pos[t] of its sequence (AttendedKeys on ring heads, with
// chunk start seq_first_pos[token_seq[t]], or token_pos[t] itself when seq_first_pos is null);
// token_pos[t] < 0 is padding, its output rows are zeros. Query head qh reads KV head qh / (hq /
// hkv). scale multiplies the logits. With kv.seq_slot set, the rows of a sequence with a slot
// (>= 0) on a head whose decode is not dense are left untouched (DecodeKvCache::LeftToSelection).
// Nothing past a token's position (nor block-table entries past it) is read. Returns false,
// launching nothing, when the shape is unsupported (d not a multiple of 8 in 8..256, hq not a
// multiple of kv.hkv, page_size < 1, num_splits outside 1..65535, grid too large), scratch_bytes is
// below DecodeAttentionScratchBytes(tokens * hq, num_splits, d) or a split launch has no
// split_counters. Launch errors surface through cudaGetLastError as for any kernel launch.
bool LaunchPagedDecodeAttention(cudaStream_t stream, const __nv_bfloat16* q,
                                const DecodeKvCache& kv, const int32_t* token_seq,
                                const int32_t* token_pos, const int32_t* seq_first_pos,
                                int64_t tokens, int hq, int d, float scale, int num_splits,
                                void* scratch, size_t scratch_bytes, uint32_t* split_counters,
                                __nv_bfloat16* out);

// Sparse decode over index lists: row r = (sequence row_seq[r], KV head row_kv_head[r]); query
// heads kv_head * group + g (g < group) of q row row_seq[r] (q bf16 [S, hq, d]) attend only the
// key positions indices[indptr[r] .. indptr[r + 1]) (any order, repeats count twice; a ring
// head's positions are looked up in its ring table, Slot), each logit
// (scaled) shifted by logit_bias[i] (f32, or null for none). out bf16 [rows, group, d]; lse f32
// [rows, group]: natural-log log-sum-exp of the scaled, biased logits (-inf with out 0 for an
// empty list). Scratch: DecodeAttentionScratchBytes(rows * group, num_splits, d).
bool LaunchSparseDecodeAttention(cudaStream_t stream, const __nv_bfloat16* q,
                                 const DecodeKvCache& kv, const int32_t* row_seq,
                                 const int32_t* row_kv_head, const int32_t* indptr,
                                 const int32_t* indices, const float* logit_bias, int64_t rows,
                                 int hq, int d, float scale, int num_splits, void* scratch,
                                 size_t scratch_bytes, uint32_t* split_counters, __nv_bfloat16* out,
                                 float* lse);

// Decode-time selection's attention (kernels::SelectDecodeBatch; kernels::KvSelect gives what each
// role attends), over num_seqs sequences: sequence s with a slot (kv.seq_slot[s] >= 0) has its
// one query at row sel.seq_token[s] of q and out (bf16 [T, hq, d]), position sel.seq_len[s] - 1;
// sequences without are left alone. Splits: SelectDecodeSplits with max_keys >= every seq_len
// (the batch's max_len); scratch DecodeAttentionScratchBytes(num_seqs * hq, num_splits, d) and
// split counters for num_seqs * hq rows, as for the other launches. Rows these launches do not
// compute stay untouched.
int SelectDecodeSplits(int64_t seqs, int hq, int hkv, int64_t max_keys, int num_sms);
// ScoreAttention's dense pass: select heads, and recycle heads whose set refreshes (sel.refresh),
// attend keys [0, seq_len) into out and write their scaled logits (q . k * scale, f32) into
// scores[s, qh, j], j < seq_len, of scores [num_seqs, hq, scores_width].
bool LaunchScoreDecodeAttention(cudaStream_t stream, const __nv_bfloat16* q,
                                const DecodeKvCache& kv, const SelectDecodeView& sel, int num_seqs,
                                int hq, int d, float scale, float* scores, int64_t scores_width,
                                int num_splits, void* scratch, size_t scratch_bytes,
                                uint32_t* split_counters, __nv_bfloat16* out);
// SelectedAttention: consume and pages heads, and recycle heads not refreshing, attend their
// sink, set (sel.positions, sel.counts; per KV head or per query head) and tail.
bool LaunchSelectedDecodeAttention(cudaStream_t stream, const __nv_bfloat16* q,
                                   const DecodeKvCache& kv, const SelectDecodeView& sel,
                                   int num_seqs, int hq, int d, float scale, int num_splits,
                                   void* scratch, size_t scratch_bytes, uint32_t* split_counters,
                                   __nv_bfloat16* out);

}  // namespace headwise::kernels::cuda
