// Decode-time selection on the CPU (TidalDecode, Recycled Attention, Quest): the fp32 reference of
// Backend::UpdatePageSummaries, SelectionGate, ScoreAttention, SelectTopK and SelectedAttention.
// kernels::KvSelect states what a selecting step attends and how sets are chosen,
// kernels::SelectDecodeBatch the order of the operations and the gate rule; this header adds what
// those leave to the backend:
//  - attention (ScoreAttention's dense heads, SelectedAttention) is list attention
//    (cpu/list_attention.h) over the attended keys in increasing position, so it equals
//    PagedAttention bit for bit when the list is every key, and SparseDecodeAttention bit for bit
//    over the same list;
//  - scores: a token's scaled logit q . k * scale; a page's bound times the same scale,
//    scale * Σ_c max(q_c kmax_c, q_c kmin_c) (in double, stored f32), so that sum_softmax weighs
//    pages as attention would weigh keys of that logit;
//  - set scores in double: sum_softmax Σ_g exp(l_g - lse_g) with lse_g over every scored key (or
//    page) of query head g, sum_logits Σ_g l_g, max max_g l_g; the best first, ties to the lower
//    position (page);
//  - the cosine of the gate in double over the Hq * D query; a zero query or q_ref counts as
//    cosine 0;
//  - the keys attended are the union of sink, set and tail, each key once, so rules whose parts
//    overlap (a consume head with a smaller sink than its select head, a context shorter than
//    sink + recent) never count a key twice.
// Every operation is a no-op when the table has no selecting heads, and touches only sequences
// with seq_slot >= 0.
#pragma once

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace headwise::kernels::cpu {

// Whether PagedAttention leaves (sequence seq, KV head `head`) alone: the sequence selects this
// step and the head's decode role is not dense, so the selection operations write its outputs.
bool SelectionAttends(const BlockTable& table, int32_t seq, const KvHead& head);

void UpdatePageSummaries(const KvPoolView& pool, const PagedAttentionBatch& batch);
void SelectionGate(const Tensor& q, const SelectDecodeBatch& batch);
void ScoreAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                    float scale, const Tensor& out, const Tensor& scores, ThreadPool& threads);
void SelectTopK(const Tensor& q, const Tensor& scores, const SelectDecodeBatch& batch);
void SelectedAttention(const Tensor& q, const KvPoolView& pool, const SelectDecodeBatch& batch,
                       float scale, const Tensor& out, ThreadPool& threads);

}  // namespace headwise::kernels::cpu
