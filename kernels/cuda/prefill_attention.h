// Causal paged prefill attention on tensor cores (FlashAttention-2 style), bf16 in and out with
// fp32 accumulation. Standalone: depends on the CUDA runtime only, so bench/gpu can build it alone.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/paged_kv.h"

namespace headwise::kernels::cuda {

// Attention of a chunk of new query tokens per sequence over all keys of that sequence already in
// the paged cache (causal: the token at position p sees keys 0..p; a ring head of kv the keys
// AttendedKeys gives, with its sequence's chunk start seq_first_pos[s]).
//   q, out        bf16 [T, hq, d]; sequence s owns rows query_start[s] .. query_start[s + 1] - 1,
//                 at positions seq_first_pos[s] + i (consecutive). A sequence may own no rows.
//   kv            the layer's paged cache (DecodeKvCache). Keys 0 .. seq_first_pos[s] + rows(s) - 1
//                 must be written; nothing past them (nor block-table entries past them) is read.
//   query head qh reads KV head qh / (hq / kv.hkv). scale multiplies the logits (1/sqrt(d)
//   usually). With kv.seq_slot set, a selecting sequence's (slot >= 0) rows on heads whose decode
//   is not dense are left untouched (DecodeKvCache::LeftToSelection).
// All pointers are device pointers; max_query_len bounds every sequence's row count (it sizes the
// grid). Returns false, launching nothing, when the shape is unsupported: d not 64 or 128,
// hq not a multiple of hkv, page_size < 1, or more than 65535 sequences. Launch errors surface
// through cudaGetLastError as for any kernel launch.
bool LaunchPagedPrefillAttention(cudaStream_t stream, const __nv_bfloat16* q,
                                 const DecodeKvCache& kv, const int32_t* query_start,
                                 const int32_t* seq_first_pos, int num_seqs, int max_query_len,
                                 int hq, int d, float scale, __nv_bfloat16* out);

}  // namespace headwise::kernels::cuda
