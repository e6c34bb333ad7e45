#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <numeric>
#include <vector>

namespace headwise::kernels {
namespace {

void Check(const Tensor& t, DType dtype, int64_t min_elems, const char* what) {
  HW_CHECK(t.device == Device::kCpu, "Sample: {} must live on the CPU", what);
  if (min_elems == 0) return;
  HW_CHECK(t.dtype == dtype && t.numel() >= min_elems,
           "Sample: {} must be {} with {} entries, got {}", what, DTypeName(dtype), min_elems,
           t.ShapeString());
}

template <typename T>
T At(const Tensor& t, int64_t i) {
  return t.ptr<T>()[i];
}

// Tokens in sampling order: higher value first, then lower id.
struct Better {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] != v[b] ? v[a] > v[b] : a < b; }
};

void SampleRow(const float* raw, int vocab, const SamplingRow& p, const int32_t* bias_ids,
               const float* bias_values, int num_bias, const int32_t* pen_ids,
               const int32_t* pen_counts, const int32_t* pen_in_prompt, int num_pen, int k_out,
               int32_t* token, float* logprob, int32_t* top_ids, float* top_logprobs) {
  const size_t n = static_cast<size_t>(vocab);
  std::vector<float> x(raw, raw + n);
  for (int j = 0; j < num_bias; ++j) x[static_cast<size_t>(bias_ids[j])] += bias_values[j];
  for (int j = 0; j < num_pen; ++j) {
    float& v = x[static_cast<size_t>(pen_ids[j])];
    v = ApplyPenalty(v, p, pen_counts[j], pen_in_prompt[j] != 0);
  }

  int32_t chosen = 0;
  if (p.temperature <= 0.0f) {
    chosen = static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
  } else {
    const float inv_t = InverseTemperature(p.temperature);
    for (float& v : x) v = MulRn(v, inv_t);
    const float ymax = *std::max_element(x.begin(), x.end());
    const bool cut_k = p.top_k > 0 && p.top_k < vocab;
    const bool cut_p = p.top_p < 1.0f;
    // The kept tokens, or all of them when neither top-k nor top-p cuts (min-p is a plain
    // threshold and needs no order).
    std::vector<int32_t> kept;
    if (cut_k || cut_p) {
      kept.resize(n);
      std::iota(kept.begin(), kept.end(), 0);
      const Better better{x.data()};
      if (cut_k) {
        const auto k = static_cast<std::ptrdiff_t>(p.top_k);
        std::partial_sort(kept.begin(), kept.begin() + k, kept.end(), better);
        kept.resize(static_cast<size_t>(k));
      } else {
        std::sort(kept.begin(), kept.end(), better);
      }
      if (cut_p) {
        double z = 0.0;
        for (int32_t id : kept) z += std::exp(x[static_cast<size_t>(id)] - ymax);
        const double target = static_cast<double>(p.top_p) * z;
        double mass = 0.0;
        size_t len = 0;
        while (len < kept.size()) {
          mass += std::exp(x[static_cast<size_t>(kept[len++])] - ymax);
          if (mass >= target) break;
        }
        kept.resize(len);
      }
    }
    auto draw = [&, key = MakeNoiseKey(p.seed, p.draw), best = -INFINITY](int32_t id) mutable {
      const float y = x[static_cast<size_t>(id)];
      if (p.min_p > 0.0f && !(std::exp(y - ymax) >= p.min_p)) return;
      const float score = y + GumbelNoise(key, id);
      // Ties go to the lower id whatever order the kept list is in.
      if (chosen < 0 || score > best || (score == best && id < chosen)) {
        best = score;
        chosen = id;
      }
    };
    chosen = -1;
    if (cut_k || cut_p) {
      for (int32_t id : kept) draw(id);
    } else {
      for (int32_t id = 0; id < vocab; ++id) draw(id);
    }
    HW_CHECK(chosen >= 0, "Sample: no token kept");
  }
  *token = chosen;

  if (p.num_logprobs < 0) {
    *logprob = 0.0f;
    for (int j = 0; j < k_out; ++j) {
      top_ids[j] = -1;
      top_logprobs[j] = -INFINITY;
    }
    return;
  }
  const float rmax = *std::max_element(raw, raw + n);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(raw[i] - rmax);
  const float lse = rmax + static_cast<float>(std::log(sum));
  *logprob = raw[chosen] - lse;
  const int k = std::min({p.num_logprobs, vocab, k_out});
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), Better{raw});
  for (int j = 0; j < k_out; ++j) {
    top_ids[j] = j < k ? order[static_cast<size_t>(j)] : -1;
    top_logprobs[j] = j < k ? raw[order[static_cast<size_t>(j)]] - lse : -INFINITY;
  }
}

}  // namespace

void SampleCpu(const Tensor& logits, const SamplingBatch& b, const SampleOutputs& out) {
  const int64_t rows = b.logits_row.numel();
  HW_CHECK(logits.rank == 2 && logits.dtype == DType::kF32 && logits.device == Device::kCpu,
           "Sample: logits must be f32 [N, V] on the CPU, got {}", logits.ShapeString());
  const int vocab = static_cast<int>(logits.dim(1));
  Check(b.logits_row, DType::kI32, rows, "logits_row");
  for (const auto& [t, what] : {std::pair{&b.temperature, "temperature"},
                                {&b.top_p, "top_p"},
                                {&b.min_p, "min_p"},
                                {&b.repetition_penalty, "repetition_penalty"},
                                {&b.presence_penalty, "presence_penalty"},
                                {&b.frequency_penalty, "frequency_penalty"}}) {
    Check(*t, DType::kF32, rows, what);
  }
  Check(b.top_k, DType::kI32, rows, "top_k");
  Check(b.bias_indptr, DType::kI32, rows + 1, "bias_indptr");
  Check(b.penalty_indptr, DType::kI32, rows + 1, "penalty_indptr");
  Check(b.seed, DType::kI32, 2 * rows, "seed");
  Check(b.draw, DType::kI32, rows, "draw");
  Check(b.num_logprobs, DType::kI32, rows, "num_logprobs");
  Check(out.token, DType::kI32, rows, "token");
  Check(out.logprob, DType::kF32, rows, "logprob");
  const int k_out = out.top_ids.rank == 2 ? static_cast<int>(out.top_ids.dim(1)) : 0;
  Check(out.top_ids, DType::kI32, rows * k_out, "top_ids");
  Check(out.top_logprobs, DType::kF32, rows * k_out, "top_logprobs");

  for (int64_t r = 0; r < rows; ++r) {
    const int32_t lrow = At<int32_t>(b.logits_row, r);
    HW_CHECK(lrow >= 0 && lrow < logits.dim(0), "Sample: row {} reads logits row {} of {}", r, lrow,
             logits.dim(0));
    SamplingRow p;
    p.temperature = At<float>(b.temperature, r);
    p.top_k = At<int32_t>(b.top_k, r);
    p.top_p = At<float>(b.top_p, r);
    p.min_p = At<float>(b.min_p, r);
    p.repetition_penalty = At<float>(b.repetition_penalty, r);
    p.presence_penalty = At<float>(b.presence_penalty, r);
    p.frequency_penalty = At<float>(b.frequency_penalty, r);
    p.seed = uint64_t{static_cast<uint32_t>(At<int32_t>(b.seed, 2 * r))} |
             uint64_t{static_cast<uint32_t>(At<int32_t>(b.seed, 2 * r + 1))} << 32;
    p.draw = static_cast<uint32_t>(At<int32_t>(b.draw, r));
    p.num_logprobs = At<int32_t>(b.num_logprobs, r);
    HW_CHECK(p.num_logprobs <= k_out, "Sample: row {} wants {} logprobs, outputs hold {}", r,
             p.num_logprobs, k_out);
    const int32_t b0 = At<int32_t>(b.bias_indptr, r), b1 = At<int32_t>(b.bias_indptr, r + 1);
    const int32_t p0 = At<int32_t>(b.penalty_indptr, r), p1 = At<int32_t>(b.penalty_indptr, r + 1);
    HW_CHECK(0 <= b0 && b0 <= b1 && b1 <= b.bias_ids.numel() && b1 <= b.bias_values.numel(),
             "Sample: row {} bias entries [{}, {}) of {}", r, b0, b1, b.bias_ids.numel());
    HW_CHECK(0 <= p0 && p0 <= p1 && p1 <= b.penalty_ids.numel() && p1 <= b.penalty_counts.numel() &&
                 p1 <= b.penalty_in_prompt.numel(),
             "Sample: row {} penalty entries [{}, {}) of {}", r, p0, p1, b.penalty_ids.numel());
    const int32_t* bias_ids = b1 > b0 ? b.bias_ids.ptr<int32_t>() + b0 : nullptr;
    const int32_t* pen_ids = p1 > p0 ? b.penalty_ids.ptr<int32_t>() + p0 : nullptr;
    for (int32_t j = 0; j < b1 - b0; ++j) {
      HW_CHECK(bias_ids[j] >= 0 && bias_ids[j] < vocab, "Sample: row {} bias token {} of {}", r,
               bias_ids[j], vocab);
    }
    for (int32_t j = 0; j < p1 - p0; ++j) {
      HW_CHECK(pen_ids[j] >= 0 && pen_ids[j] < vocab, "Sample: row {} penalty token {} of {}", r,
               pen_ids[j], vocab);
    }
    SampleRow(logits.ptr<float>() + int64_t{lrow} * vocab, vocab, p, bias_ids,
              b1 > b0 ? b.bias_values.ptr<float>() + b0 : nullptr, b1 - b0, pen_ids,
              p1 > p0 ? b.penalty_counts.ptr<int32_t>() + p0 : nullptr,
              p1 > p0 ? b.penalty_in_prompt.ptr<int32_t>() + p0 : nullptr, p1 - p0, k_out,
              out.token.ptr<int32_t>() + r, out.logprob.ptr<float>() + r,
              k_out ? out.top_ids.ptr<int32_t>() + r * k_out : nullptr,
              k_out ? out.top_logprobs.ptr<float>() + r * k_out : nullptr);
  }
}

}  // namespace headwise::kernels
