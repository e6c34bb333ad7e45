// Attention of a GQA group's query heads over one explicit list of keys: the arithmetic every CPU
// attention operation shares (PagedAttention, SparseDecodeAttention and the decode-time selection
// operations), so that attending the same keys in the same order gives the same bits whichever
// operation asks. That is what lets the selection tests compare a selecting step bit for bit
// with dense attention (every key) and with index-list attention (the same list).
#pragma once

#include <cstdint>
#include <vector>

namespace headwise::kernels::cpu {

// The keys one (token, KV head) attends, in the order summed: rows of head_dim floats.
struct KeyList {
  std::vector<const float*> k, v;
  std::vector<float> bias;  // added to each key's scaled logit; empty: none
  int32_t size() const { return static_cast<int32_t>(k.size()); }
  void Clear() {
    k.clear();
    v.clear();
    bias.clear();
  }
};

struct ListOutputs {
  float* out = nullptr;     // [n, head_dim]
  float* lse = nullptr;     // [n] or null: log-sum-exp of the scaled, biased logits
  float* logits = nullptr;  // [n, logits_stride] or null: the scaled, biased logit of each key
  int64_t logits_stride = 0;
};

// Reused buffers of one worker.
struct ListScratch {
  std::vector<float> scores, max, denom, dots;
};

// softmax(q_h . k_j * scale + bias_j) . v over the list, for the n query heads q_h = q + h *
// head_dim. Each dot product is a sequential sum over the head dimension; the softmax is taken
// with the row maximum subtracted and an f32 denominator summed in list order; the output is
// summed in list order. An empty list gives out 0 and lse -inf.
void AttendList(const float* q, int64_t n, int64_t head_dim, const KeyList& keys, float scale,
                const ListOutputs& outputs, ListScratch& s);

}  // namespace headwise::kernels::cpu
