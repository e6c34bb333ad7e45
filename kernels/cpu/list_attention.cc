#include "kernels/cpu/list_attention.h"

#include <algorithm>
#include <cmath>

namespace headwise::kernels::cpu {
namespace {

// dots[h] = q_h . k for the n query rows q_h = q + h * head_dim: each a plain sequential sum
// over d (the same rounding as one head alone), the n sums interleaved so they run in parallel.
template <int N>
void DotRows(const float* q, int64_t head_dim, const float* k, float* dots) {
  float acc[N] = {};
  for (int64_t d = 0; d < head_dim; ++d) {
    for (int h = 0; h < N; ++h) acc[h] += q[h * head_dim + d] * k[d];
  }
  for (int h = 0; h < N; ++h) dots[h] = acc[h];
}
void DotRows(const float* q, int64_t n, int64_t head_dim, const float* k, float* dots) {
  switch (n) {
    case 1:
      return DotRows<1>(q, head_dim, k, dots);
    case 2:
      return DotRows<2>(q, head_dim, k, dots);
    case 3:
      return DotRows<3>(q, head_dim, k, dots);
    case 4:
      return DotRows<4>(q, head_dim, k, dots);
    case 8:
      return DotRows<8>(q, head_dim, k, dots);
    default:
      for (int64_t h = 0; h < n; ++h) DotRows<1>(q + h * head_dim, head_dim, k, dots + h);
  }
}

}  // namespace

void AttendList(const float* q, int64_t n, int64_t head_dim, const KeyList& keys, float scale,
                const ListOutputs& outputs, ListScratch& s) {
  const int32_t count = keys.size();
  const auto count_size = static_cast<size_t>(count);
  const auto heads = static_cast<size_t>(n);
  std::fill(outputs.out, outputs.out + n * head_dim, 0.0f);
  if (count == 0) {
    if (outputs.lse != nullptr) std::fill(outputs.lse, outputs.lse + n, -INFINITY);
    return;
  }
  const bool biased = !keys.bias.empty();
  s.scores.resize(heads * count_size);
  s.max.assign(heads, -INFINITY);
  s.dots.resize(heads);
  for (int32_t j = 0; j < count; ++j) {
    DotRows(q, n, head_dim, keys.k[static_cast<size_t>(j)], s.dots.data());
    const float bias = biased ? keys.bias[static_cast<size_t>(j)] : 0.0f;
    for (size_t h = 0; h < heads; ++h) {
      float& score = s.scores[h * count_size + static_cast<size_t>(j)];
      score = s.dots[h] * scale + bias;
      s.max[h] = std::max(s.max[h], score);
    }
  }
  if (outputs.logits != nullptr) {
    for (size_t h = 0; h < heads; ++h) {
      std::copy_n(s.scores.data() + h * count_size, count_size,
                  outputs.logits + static_cast<int64_t>(h) * outputs.logits_stride);
    }
  }
  s.denom.assign(heads, 0.0f);
  for (size_t h = 0; h < heads; ++h) {
    float* row = s.scores.data() + h * count_size;
    for (size_t j = 0; j < count_size; ++j) {
      row[j] = std::exp(row[j] - s.max[h]);
      s.denom[h] += row[j];
    }
  }
  for (int32_t j = 0; j < count; ++j) {
    const float* vv = keys.v[static_cast<size_t>(j)];
    for (size_t h = 0; h < heads; ++h) {
      const float p = s.scores[h * count_size + static_cast<size_t>(j)] / s.denom[h];
      float* oh = outputs.out + static_cast<int64_t>(h) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) oh[d] += p * vv[d];
    }
  }
  if (outputs.lse != nullptr) {
    for (size_t h = 0; h < heads; ++h) outputs.lse[h] = s.max[h] + std::log(s.denom[h]);
  }
}

}  // namespace headwise::kernels::cpu
