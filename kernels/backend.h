// The backend interface: every numeric operation the Llama-family forward pass needs.
//
// The model graph (models/) is written once against this interface. The CPU backend
// (kernels/cpu/) is the fp32 reference; the CUDA backend (kernels/cuda/) implements the same
// operations in bf16 with fp32 accumulation. All tensors passed to a backend live on that
// backend's device; index tensors are i32. Shapes use these letters:
//   T  tokens in the batch (all sequences' new tokens, concatenated)
//   H  hidden size, I intermediate size, V vocabulary size
//   Hq query heads, Hkv KV heads, D head dim
//   S  sequences in the batch
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "core/tensor.h"
#include "kernels/kv_head.h"

namespace headwise::kernels {

// Owning device allocation; the view is what operations take.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Tensor view, std::function<void(void*)> release)
      : view_(view), release_(std::move(release)) {}
  Buffer(Buffer&& o) noexcept : view_(o.view_), release_(std::move(o.release_)) {
    o.release_ = nullptr;
    o.view_ = Tensor();
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      Reset();
      view_ = o.view_;
      release_ = std::move(o.release_);
      o.release_ = nullptr;
      o.view_ = Tensor();
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  const Tensor& view() const { return view_; }
  bool empty() const { return view_.data == nullptr; }

 private:
  void Reset() {
    if (release_) release_(view_.data);
    release_ = nullptr;
  }
  Tensor view_;
  std::function<void(void*)> release_;
};

// Host-resident weights handed to a backend. `keepalive` owns the memory `data` points into
// (a mapped file, or a vector of dequantized values), so a backend may alias it without a copy.
struct HostTensor {
  std::shared_ptr<const void> keepalive;
  const float* data = nullptr;
  Tensor shape;  // dims only; data/dtype/device of this field are ignored
};

// Paged KV storage of all layers and heads. A page holds `page_size` tokens of one KV head of
// one layer; K and V live in two pools indexed by the same page id.
struct KvPoolView {
  Tensor k;  // [num_pages, page_size, D]
  Tensor v;  // [num_pages, page_size, D]
  int page_size = 16;
  // Per-page key bounds for heads that select pages (KvSelect, Quest): the element-wise minimum
  // and maximum of the keys page p holds so far (UpdatePageSummaries). Empty when no layout has
  // such heads.
  Tensor kmin{};  // [num_pages, D], kv dtype
  Tensor kmax{};  // [num_pages, D]
};

// How a KV head keeps its keys (KvRetention) and where its page sits in a block (KvHead):
// kernels/kv_head.h, shared with the device code.

// Where each sequence's keys live, for one layer. Each sequence runs one KV layout (the cache's
// layout of its attention policy: a KvHead per (layer, KV head)); sequences of different layouts
// share a batch. A sequence's keys sit in blocks, one block per logical page (page_size
// positions) and storage kind; a block holds one page per head of its kind, contiguous, and the
// tables hold each block's first page. So key j of (sequence s, KV head h), with
// head = heads[seq_layout[s], h], lives at
//   page = kind_blocks[s][j / page_size] + head.page,  slot j % page_size,
// kind_blocks = ring_blocks, comp_blocks or blocks as head.retention.storage says.
//
// Compress-once heads: once sequence s is compacted (comp_from[s] > 0), the comp blocks of logical
// pages holding only dropped positions are freed and their entries are -1: no operation may read
// such a key (attention does not attend dropped positions; the CPU backend checks). A query at p
// attends keys [0, sink), the compensation token at position sink when compensation, and
// [comp_from[s], p]; before compaction every key.
//
// Ring heads: ring_blocks maps each logical page to the ring block that holds it now. A ring head
// keeps only its first `sink` tokens and the most recent ones, so it attends less
// (PagedAttentionBatch). A ring head may re-index positions (positions reindex): its keys are
// stored pre-RoPE (unrotated) and RopeWriteKv leaves the queries of its GQA group unrotated;
// attention rotates both by rank (PagedAttentionBatch).
//
// `heads` is constant for the cache's life (uploaded once); the rest is per step.
struct BlockTable {
  Tensor heads;       // i32 [num_layouts, Hkv, kKvHeadInts]: KvHead of (layout, KV head)
  Tensor seq_layout;  // i32 [S]: the layout sequence s runs
  Tensor blocks;      // i32 [S, max_blocks]: first page of the full block of each logical page
  // Set when some layout has ring heads (anywhere in the model): first page of the ring block
  // holding each logical page now.
  Tensor ring_blocks{};  // i32 [S, max_blocks]
  // Set when some layout has compress-once heads: first page of each logical page's comp block
  // (-1 where compaction freed it), and where each sequence's kept tokens resume (0: not
  // compacted).
  Tensor comp_blocks{};  // i32 [S, max_blocks]
  Tensor comp_from{};    // i32 [S]
  // Set when some layout has re-indexed heads: the rotary inverse frequencies RopeWriteKv is
  // given.
  Tensor rope_inv_freq{};  // f32 [D/2]
  // Set when some layout has decode-selecting heads (KvHead::decode != dense): the selection
  // slot of sequence s when its query this step is a decode query that selects (SelectState),
  // else -1 (every head of s attends densely); and the KvSelect of every (layout, KV head), as
  // constant as `heads`. PagedAttention leaves the query of a selecting sequence alone on heads
  // whose decode is not dense: the selection operations write those outputs.
  Tensor seq_slot{};  // i32 [S]
  Tensor selects{};   // i32 [num_layouts, Hkv, kKvSelectInts]
  // Over every layout of this layer, known on the host (sizes work without reading `heads`): the
  // most heads of a layout that may attend a whole sequence (full and compress-once heads), and
  // the largest sink + window of a ring head (0 without ring heads).
  int max_full_heads = 0;
  int max_ring_span = 0;

  int num_seqs() const { return static_cast<int>(blocks.dim(0)); }
  int num_layouts() const { return static_cast<int>(heads.dim(0)); }
  int num_kv_heads() const { return static_cast<int>(heads.dim(1)); }
  int max_blocks() const { return static_cast<int>(blocks.dim(1)); }
  bool has_ring_heads() const { return ring_blocks.data != nullptr; }
  bool has_compressed_heads() const { return comp_blocks.data != nullptr; }
  bool has_reindex_heads() const { return rope_inv_freq.data != nullptr; }
  bool has_select_heads() const { return seq_slot.data != nullptr; }
};

// Which cache entries a batch of query tokens attends to, for one layer. A query token at
// position p attends keys 0..p of its sequence (causal), which covers both prefill chunks and
// decode. On a ring head (BlockTable) it attends the sinks and what the ring held when its chunk
// began, plus the chunk up to itself: keys [0, min(sink, p + 1)) and [max(sink, c - window), p],
// c the position of its sequence's first query token in the batch (DuoAttention's streaming
// heads; the first chunk, c = 0, is causal over everything).
//
// Re-indexed ring heads (KvRetention positions reindex, StreamingLLM §1.2) attend the same keys,
// but position enters attention by rank: with sink_end = min(sink, p + 1) and lo = max(sink_end, c
// - window), the attended keys in increasing position are
//   j in [0, sink_end)  with rank(j) = j, then
//   j in [lo, p]        with rank(j) = sink_end + (j - lo),
// and the query takes rank(p) = sink_end + (p - lo), the last rank. The rank is the key's index
// in that list, so ranks are 0 .. count - 1 and never reach sink + window + chunk length, however
// long the sequence. The stored (unrotated) k and the unrotated q are each rotated by their rank
// in fp32, rotate-half convention as in RopeWriteKv: with a = rank * inv_freq[i] (f32 product),
// x'[i] = x[i] cos a - x[i + D/2] sin a and x'[i + D/2] = x[i + D/2] cos a + x[i] sin a, i < D/2;
// then softmax(q' . k' * scale) . v as on any head. While nothing is evicted (lo == sink_end,
// e.g. the first chunk) ranks equal positions, so the result equals ordinary RoPE attention.
//
// A token with a negative position is
// padding (fixed-size batches of a captured graph): it writes no KV and its output is unspecified.
// The tensors are step metadata uploaded from the host: a backend may read them before earlier
// device work of the step has finished (the CUDA backend does), so no device operation may write
// them.
struct PagedAttentionBatch {
  Tensor token_seq;  // i32 [T]: batch index of each query token's sequence
  Tensor token_pos;  // i32 [T]: position of each query token
  BlockTable table;
  // Tokens of one sequence are contiguous, positions consecutive: sequence s owns query rows
  // query_start[s] .. query_start[s + 1] - 1. Lets prefill kernels tile by sequence; may be
  // empty when max_query_len is 1.
  Tensor query_start;     // i32 [S + 1]
  int max_query_len = 1;  // a bound on query_start[s + 1] - query_start[s]
};

// Decode attention over explicit token lists (ALGORITHMS.md §9.2), the primitive of the
// sparse policies. Row r is one (sequence, KV head); its query heads (the GQA group of that KV
// head) attend only to the token positions indices[indptr[r] .. indptr[r + 1]) of the
// sequence's cache, each logit shifted by logit_bias (when given). Not defined for re-indexed
// heads (their keys are unrotated and an index list carries no ranks): a row on one is refused
// (the CPU backend stops with a check; the CUDA kernel, which alone sees the row's head, traps).
// Sequences of re-indexing layouts may share the batch's table when no row is theirs.
struct SparseDecodeBatch {
  Tensor row_seq;      // i32 [R]: batch index of the row's sequence
  Tensor row_kv_head;  // i32 [R]
  Tensor indptr;       // i32 [R + 1]
  Tensor indices;      // i32 [nnz]: token positions, any order
  Tensor logit_bias;   // f32 [nnz], or empty for none
  BlockTable table;
};

// The selection state of every sequence that may select, by slot (BlockTable::seq_slot), and of
// every set index (KvSelect::set), kept across steps on the device. `heads` below is Hq: a set
// per query head fits, a set per KV head uses the first Hkv rows.
struct SelectState {
  Tensor positions;   // i32 [slots, sets, Hq, budget]: a set's key positions, increasing
  Tensor counts;      // i32 [slots, sets, Hq]: entries of each set
  Tensor chosen_len;  // i32 [slots, sets]: keys of the sequence when the set was chosen; -1: none
                      // yet (a slot is reset to -1 when it is given to a sequence)
  Tensor steps;       // i32 [slots, sets]: selecting steps since then (recycle)
  Tensor refresh;     // i32 [slots, sets]: 1 when this step chooses anew (SelectionGate)
  Tensor q_ref;       // f32 [slots, sets, Hq * D]: the query when chosen (recycle with a cosine
                      // rule), or empty
  int budget() const { return static_cast<int>(positions.dim(3)); }
};

// One layer's decode-time selection for a step (ALGORITHMS.md §6-8, §9.4-9.6; KvSelect states
// the rules). Sequence s selects when table.seq_slot[s] >= 0; then its one query token is row
// seq_token[s] of q and out, at position seq_len[s] - 1. The operations run in this order, each
// over the selecting sequences' heads its role names:
//   SelectionGate     for each set of recycle heads: refresh[slot, set] = 1 when the set is
//                     none yet (chosen_len < 0), steps + 1 >= refresh_every, or (with the cosine
//                     rule) cos(q, q_ref) < refresh_cos, q being all Hq query heads of the layer
//                     as one vector; else 0 and steps += 1. (Select and pages sets choose every
//                     step; their refresh entries are not read.)
//   ScoreAttention    select heads, and recycle heads refreshing: dense attention into out, and
//                     the scaled logits of every key into scores; pages heads: page bounds into
//                     scores
//   SelectTopK        chooses the sets of those heads from scores: positions, counts,
//                     chosen_len = seq_len, steps = 0, and q_ref = q for recycle sets with the
//                     cosine rule
//   SelectedAttention consume and pages heads, and recycle heads not refreshing: attention over
//                     sink + set + tail into out
// The step's metadata tensors follow PagedAttentionBatch's rule: uploaded, never written by the
// device.
struct SelectDecodeBatch {
  Tensor seq_token;  // i32 [S]
  Tensor seq_len;    // i32 [S]
  BlockTable table;  // with seq_slot and selects
  SelectState state;
  int max_len = 0;  // >= every selecting seq_len: the width of scores
  // KvPoolView::page_size: SelectTopK, which has no pool, chooses and expands pages by it (pages
  // heads); the other operations check it against the pool's.
  int page_size = 16;
  // The decode kinds the layer's heads have, as SelectOp bits (KvCache::layer_select_ops): a
  // backend may skip ScoreAttention's pass over every key without kSelectOpScoreKeys and its
  // page bounds without kSelectOpScorePages, and shape SelectTopK's grid by them.
  int ops = kSelectOpAll;
};

// Decode attention of offload heads (KvRetention offload, KvDecode retrieve; RetrievalAttention,
// ALGORITHMS.md §5.1 and §9.3) for one layer. Sequence s retrieves this step when
// table.seq_slot[s] >= 0; its one query token is row seq_token[s] of q and out, at position
// seq_len[s] - 1. For each of its offload KV heads and each query head h of that head's group:
//   (o_dev, lse_dev)  attention over the keys the device holds, as PagedAttention attends a
//                     compacting head: [0, sink) and [comp_from[s], seq_len[s]), or every key
//                     before compaction (comp_from[s] == 0);
//   (o_host, lse_host) = (host_out[s, h], host_lse[s, h]): the host's attention over the keys it
//                     retrieved from the offloaded span (lse -inf: none, o_host then unread);
//   out[seq_token[s], h] = (e^lse_dev o_dev + e^lse_host o_host) / (e^lse_dev + e^lse_host),
// computed with the larger lse subtracted. The two key sets are disjoint (the offloaded span is
// [sink, comp_from)), so this equals attention over their union. Other heads and sequences are
// left alone (PagedAttention writes them; it leaves these). The tensors follow
// PagedAttentionBatch's rule: uploaded, never written by the device.
struct OffloadDecodeBatch {
  Tensor seq_token;  // i32 [S]
  Tensor seq_len;    // i32 [S]
  BlockTable table;  // with seq_slot, selects and comp_from
  Tensor host_out;   // f32 [S, Hq, D]
  Tensor host_lse;   // f32 [S, Hq]
};

// One-shot KV compaction (ALGORITHMS.md §9.8): row r replaces K and V at position dest[r] of
// (sequence row_seq[r], KV head row_kv_head[r]) with their means over positions
// [begin[r], end[r]) (end > begin); dest may lie inside the range, the means are taken first.
struct KvMeanBatch {
  Tensor row_seq;      // i32 [R]
  Tensor row_kv_head;  // i32 [R]
  Tensor begin;        // i32 [R]
  Tensor end;          // i32 [R]
  Tensor dest;         // i32 [R]
  BlockTable table;
};

// The most keys Backend::TopKeys returns per query (the CUDA kernel sorts its candidates on chip).
inline constexpr int kMaxTopKeys = 1024;

// A recorded sequence of operations that replays with the same arguments (a CUDA graph):
// replaying skips the per-launch cost of hundreds of small kernels in a decode step.
class CapturedOps {
 public:
  virtual ~CapturedOps() = default;
  virtual void Replay() = 0;
};

// Token sampling for R rows at once (kernels/cpu/sampling.h states the rules). Row r samples
// logits row logits_row[r]; one entry per row unless stated. Randomness is counter-based: a
// row's draw depends only on its logits, its parameters, seed and draw index, never on the
// other rows or the backend.
struct SamplingBatch {
  Tensor logits_row;          // i32 [R]
  Tensor temperature;         // f32 [R]: 0 is greedy (argmax, lowest id on ties)
  Tensor top_k;               // i32 [R]: <= 0 or >= V: off
  Tensor top_p;               // f32 [R]: 1: off
  Tensor min_p;               // f32 [R]: 0: off
  Tensor repetition_penalty;  // f32 [R]: 1: off
  Tensor presence_penalty;    // f32 [R]
  Tensor frequency_penalty;   // f32 [R]
  // Logit bias of row r: bias_values[j] added to token bias_ids[j], j in
  // [bias_indptr[r], bias_indptr[r + 1]); a row's ids are distinct.
  Tensor bias_indptr;  // i32 [R + 1]
  Tensor bias_ids;     // i32 [nb]
  Tensor bias_values;  // f32 [nb]
  // What the penalties see of row r: its distinct tokens of prompt and output
  // (penalty_ids[j], j in [penalty_indptr[r], penalty_indptr[r + 1])), each with its count in
  // the output and whether it occurs in the prompt (0/1). Empty for rows without penalties.
  Tensor penalty_indptr;     // i32 [R + 1]
  Tensor penalty_ids;        // i32 [np]
  Tensor penalty_counts;     // i32 [np]
  Tensor penalty_in_prompt;  // i32 [np]
  Tensor seed;               // i32 [R, 2]: the 64-bit seed, low word first
  Tensor draw;               // i32 [R]: index of this draw in the seed's stream
  Tensor num_logprobs;       // i32 [R]: -1: none; k >= 0: the chosen token's and k alternatives
};

// Sample's results. K = the largest num_logprobs (<= 20); may be 0, then top_* are empty.
struct SampleOutputs {
  Tensor token;         // i32 [R]
  Tensor logprob;       // f32 [R]: log-softmax of the raw logits at token (0 without logprobs)
  Tensor top_ids;       // i32 [R, K]: best first, ties by lower id; -1 past the row's count
  Tensor top_logprobs;  // f32 [R, K]: -inf past the row's count
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual Device device() const = 0;
  // What the backend stores KV pages and activations in: f32 on the CPU reference, bf16 on CUDA.
  virtual DType kv_dtype() const = 0;
  virtual DType activation_dtype() const = 0;

  // --- memory ---
  virtual Buffer Allocate(DType dtype, std::initializer_list<int64_t> shape) = 0;
  virtual void CopyFromHost(const Tensor& dst, const void* src, size_t bytes) = 0;
  virtual void CopyToHost(void* dst, const Tensor& src, size_t bytes) = 0;
  // A copy to the host that later operations overlap: CopyToHostStart queues it behind the work
  // queued so far, CopyToHostWait waits for it alone (not for what was queued after it) and
  // returns the bytes, in host memory the backend owns until the next CopyToHostStart. One copy
  // at a time; operations queued in between must not write src. The CPU backend copies at once.
  virtual void CopyToHostStart(const Tensor& src, size_t bytes) = 0;
  virtual const void* CopyToHostWait() = 0;
  // Weights in the backend's storage type; the CPU backend aliases f32 host memory.
  virtual Buffer LoadWeight(const HostTensor& weight) = 0;
  // Bytes of device memory free now and in total (host memory for the CPU backend).
  struct MemoryInfo {
    size_t free_bytes = 0, total_bytes = 0;
  };
  virtual MemoryInfo DeviceMemory() const = 0;
  // dst = src on the device, bytes of each.
  virtual void CopyOnDevice(const Tensor& dst, const Tensor& src, size_t bytes) = 0;
  // Waits for queued work (no-op on the CPU).
  virtual void Synchronize() = 0;
  // Makes the calling thread issue operations to this backend's device (CUDA: its GPU current).
  // A thread that launches operations calls it first when a process drives several devices
  // (tensor parallelism); memory operations (Allocate, copies, LoadWeight) work from any thread.
  virtual void BindThread() {}

  // --- capture ---
  // Operations issued between BeginCapture and EndCapture are recorded, not run; EndCapture
  // returns them for replay. Buffers they touch must outlive the recording. Backends without
  // capture return false / nullptr and run everything eagerly.
  virtual bool SupportsCapture() const { return false; }
  virtual void BeginCapture() {}
  virtual std::unique_ptr<CapturedOps> EndCapture() { return nullptr; }

  // --- operations ---
  // out[t] = table[ids[t] - first_id] where 0 <= ids[t] - first_id < V_s, else zeros.
  // table [V_s, H] (the whole vocabulary, or a tensor-parallel rank's rows first_id .. first_id +
  // V_s - 1), ids [T], out [T, H]
  virtual void Embedding(const Tensor& table, const Tensor& ids, int32_t first_id,
                         const Tensor& out) = 0;
  // out = x / rms(x) * weight.  x, out [T, H], weight [H]
  virtual void RmsNorm(const Tensor& x, const Tensor& weight, float eps, const Tensor& out) = 0;
  // residual += x; out = RmsNorm(residual).  The pre-norm block boundary in one pass.
  virtual void AddRmsNorm(const Tensor& residual, const Tensor& x, const Tensor& weight, float eps,
                          const Tensor& out) = 0;
  // out = x * w^T (+ bias).  x [M, K], w [N, K], bias [N] or empty, out [M, N]
  virtual void Matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) = 0;
  // out = silu(gate) * up, where gate_up [T, 2I] holds gate in its first I columns.
  virtual void SiluMul(const Tensor& gate_up, const Tensor& out) = 0;
  // Splits a fused projection qkv [T, (Hq + 2 Hkv) D] into q, k, v; applies rotary embedding
  // (rotate-half convention, angle pos * inv_freq[i]) to q and k; writes q to q_out
  // [T, Hq, D] and k, v into the KV pool at each token's position (batch.token_seq,
  // batch.token_pos, batch.table). Re-indexed heads (KvRetention::reindex()) skip the rotation:
  // their k is stored and the q of their query heads written unrotated.
  virtual void RopeWriteKv(const Tensor& qkv, const PagedAttentionBatch& batch,
                           const Tensor& inv_freq, const KvPoolView& pool, const Tensor& q_out) = 0;
  // Causal attention of q [T, Hq, D] over the paged cache; out [T, Hq, D]. GQA: query head
  // qh reads KV head qh / (Hq / Hkv). Ring and re-indexed heads as PagedAttentionBatch says.
  virtual void PagedAttention(const Tensor& q, const KvPoolView& pool,
                              const PagedAttentionBatch& batch, float scale, const Tensor& out) = 0;
  // q [S, Hq, D] (one decode query per sequence); out [R, G, D] with G = Hq / Hkv; lse [R, G]
  // f32: log-sum-exp of the scaled, biased logits (-inf for an empty list, whose out is 0), so
  // partial results over disjoint lists merge exactly (§9.3).
  virtual void SparseDecodeAttention(const Tensor& q, const KvPoolView& pool,
                                     const SparseDecodeBatch& batch, float scale, const Tensor& out,
                                     const Tensor& lse) = 0;
  // Decode-time selection (SelectDecodeBatch gives the order and the rules). scores is f32
  // [S, Hq, max_len] scratch, written by ScoreAttention and read by SelectTopK.
  // Keeps KvPoolView::kmin / kmax of the pages the batch's tokens were written to, for heads
  // that select pages: a page's bounds over its keys up to the token. Call after RopeWriteKv.
  virtual void UpdatePageSummaries(const KvPoolView& pool, const PagedAttentionBatch& batch) = 0;
  virtual void SelectionGate(const Tensor& q, const SelectDecodeBatch& batch) = 0;
  virtual void ScoreAttention(const Tensor& q, const KvPoolView& pool,
                              const SelectDecodeBatch& batch, float scale, const Tensor& out,
                              const Tensor& scores) = 0;
  virtual void SelectTopK(const Tensor& q, const Tensor& scores,
                          const SelectDecodeBatch& batch) = 0;
  virtual void SelectedAttention(const Tensor& q, const KvPoolView& pool,
                                 const SelectDecodeBatch& batch, float scale,
                                 const Tensor& out) = 0;
  // Offload heads' decode attention: the device's keys merged with the host's result
  // (OffloadDecodeBatch).
  virtual void OffloadAttention(const Tensor& q, const KvPoolView& pool,
                                const OffloadDecodeBatch& batch, float scale,
                                const Tensor& out) = 0;
  // RazorAttention's compensation token: KvMeanBatch.
  virtual void MeanKv(const KvPoolView& pool, const KvMeanBatch& batch) = 0;
  // out[r] = x[rows[r]].  x [T, H], rows [R], out [R, H]
  virtual void GatherRows(const Tensor& x, const Tensor& rows, const Tensor& out) = 0;
  // Exact maximum-inner-product search for a batch of queries (step 1 of the offload tier's
  // RoarGraph build, ALGORITHMS.md §5.1 and §9.10): ids[m] = the k keys with the largest inner
  // product with queries[m], best first, ties to the lower id. queries [M, D] in the activation
  // dtype, keys [N, D] in the KV dtype (one head's rows), ids i32 [M, k], 1 <= k <= min(N,
  // kMaxTopKeys). The CPU sums in f32 (kernels/cpu/top_keys.h); CUDA multiplies the bf16 rows with
  // f32 accumulation (cuBLASLt), so keys whose scores differ only by rounding may order
  // differently.
  virtual void TopKeys(const Tensor& queries, const Tensor& keys, const Tensor& ids) = 0;
  // Draws one token per row of `batch` from logits [N, V] f32 (SamplingBatch); the logits are
  // left as they are.
  virtual void Sample(const Tensor& logits, const SamplingBatch& batch,
                      const SampleOutputs& out) = 0;
};

}  // namespace headwise::kernels
