// Offload heads' decode attention on the CPU (RetrievalAttention's device half and the merge,
// Backend::OffloadAttention; kernels::OffloadDecodeBatch states the rule): list attention
// (cpu/list_attention.h) over the keys the pool holds in increasing position, giving (o, lse) per
// query head, then the log-sum-exp merge with the host tier's (o, lse) in f32.
#pragma once

#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"

namespace headwise::kernels::cpu {

// The merge of two attention results over disjoint key sets, in place on (o, lse): o and
// other_o hold head_dim floats. A side with lse -inf contributes nothing (both -inf: o is 0).
void MergeAttention(float* o, float& lse, const float* other_o, float other_lse, int64_t head_dim);

void OffloadAttention(const Tensor& q, const KvPoolView& pool, const OffloadDecodeBatch& batch,
                      float scale, const Tensor& out, ThreadPool& threads);

}  // namespace headwise::kernels::cpu
