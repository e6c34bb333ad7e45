#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

namespace headwise::engine {
namespace {

std::vector<float> LogSoftmax(std::span<const float> logits) {
  const float max = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float x : logits) sum += std::exp(static_cast<double>(x - max));
  const float log_z = max + static_cast<float>(std::log(sum));
  std::vector<float> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - log_z;
  return out;
}

}  // namespace

Sampler::Sampler(const SamplingParams& params)
    : params_(params), rng_(params.seed ? *params.seed : std::random_device{}()) {}

SampledToken Sampler::Sample(std::span<const float> logits, std::span<const int32_t> prompt_tokens,
                             std::span<const int32_t> output_tokens) {
  const int vocab = static_cast<int>(logits.size());
  std::vector<float> x(logits.begin(), logits.end());

  for (const auto& [id, bias] : params_.logit_bias) {
    if (id >= 0 && id < vocab) x[static_cast<size_t>(id)] += bias;
  }
  if (params_.repetition_penalty != 1.0f) {
    std::vector<char> seen(static_cast<size_t>(vocab), 0);
    for (int32_t t : prompt_tokens) seen[static_cast<size_t>(t)] = 1;
    for (int32_t t : output_tokens) seen[static_cast<size_t>(t)] = 1;
    for (int i = 0; i < vocab; ++i) {
      if (!seen[static_cast<size_t>(i)]) continue;
      float& v = x[static_cast<size_t>(i)];
      v = v > 0 ? v / params_.repetition_penalty : v * params_.repetition_penalty;
    }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : output_tokens) ++counts[t];
    for (const auto& [id, n] : counts) {
      x[static_cast<size_t>(id)] -=
          params_.frequency_penalty * static_cast<float>(n) + params_.presence_penalty;
    }
  }

  int32_t chosen;
  if (params_.greedy()) {
    chosen = static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
  } else {
    for (float& v : x) v /= params_.temperature;
    // Candidates sorted by logit, best first; ties broken by token id for determinism.
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    std::iota(order.begin(), order.end(), 0);
    size_t keep = order.size();
    if (params_.top_k > 0) keep = std::min(keep, static_cast<size_t>(params_.top_k));
    auto better = [&](int32_t a, int32_t b) {
      const float xa = x[static_cast<size_t>(a)], xb = x[static_cast<size_t>(b)];
      return xa != xb ? xa > xb : a < b;
    };
    std::stable_sort(order.begin(), order.end(), better);
    order.resize(keep);
    const float max = x[static_cast<size_t>(order.front())];
    std::vector<double> probs(order.size());
    double total = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      probs[i] = std::exp(static_cast<double>(x[static_cast<size_t>(order[i])] - max));
      total += probs[i];
    }
    for (double& p : probs) p /= total;
    // top-p: the smallest prefix whose mass reaches top_p (the best token always stays).
    if (params_.top_p < 1.0f) {
      double mass = 0.0;
      size_t n = 0;
      while (n < probs.size()) {
        mass += probs[n++];
        if (mass >= params_.top_p) break;
      }
      probs.resize(n);
      order.resize(n);
    }
    // min-p: drop tokens below min_p times the best probability.
    if (params_.min_p > 0.0f) {
      const double threshold = params_.min_p * probs.front();
      size_t n = 1;
      while (n < probs.size() && probs[n] >= threshold) ++n;
      probs.resize(n);
      order.resize(n);
    }
    const double sum = std::accumulate(probs.begin(), probs.end(), 0.0);
    const double u = std::uniform_real_distribution<double>(0.0, sum)(rng_);
    double acc = 0.0;
    chosen = order.back();
    for (size_t i = 0; i < probs.size(); ++i) {
      acc += probs[i];
      if (u < acc) {
        chosen = order[i];
        break;
      }
    }
  }

  SampledToken out;
  out.id = chosen;
  if (params_.logprobs >= 0) {
    const std::vector<float> lp = LogSoftmax(logits);
    out.logprob = lp[static_cast<size_t>(chosen)];
    const size_t k = std::min(static_cast<size_t>(params_.logprobs), lp.size());
    std::vector<int32_t> idx(lp.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(),
                      [&](int32_t a, int32_t b) {
                        const float la = lp[static_cast<size_t>(a)],
                                    lb = lp[static_cast<size_t>(b)];
                        return la != lb ? la > lb : a < b;
                      });
    for (size_t i = 0; i < k; ++i)
      out.top_logprobs.emplace_back(idx[i], lp[static_cast<size_t>(idx[i])]);
  }
  return out;
}

}  // namespace headwise::engine
