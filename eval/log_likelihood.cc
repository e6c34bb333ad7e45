#include "eval/log_likelihood.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "engine/attention_setup.h"

namespace headwise::eval {

double LogSoftmaxAt(std::span<const float> logits, int32_t id, int64_t& nonfinite) {
  double max_logit = -INFINITY;
  for (const float x : logits) {
    if (!std::isfinite(x)) {
      ++nonfinite;
    } else {
      max_logit = std::max(max_logit, static_cast<double>(x));
    }
  }
  double denom = 0.0;
  for (const float x : logits) {
    if (std::isfinite(x)) denom += std::exp(static_cast<double>(x) - max_logit);
  }
  return static_cast<double>(logits[static_cast<size_t>(id)]) - max_logit - std::log(denom);
}

void TeacherForce(
    engine::ModelRunner& runner, const kvcache::SequenceKv& seq, std::span<const int32_t> ids,
    int chunk, int threads,
    const std::function<void(size_t i, double logprob, int64_t nonfinite)>& on_token) {
  const auto vocab = static_cast<size_t>(runner.model().config().vocab_size);
  if (threads <= 0)
    threads = static_cast<int>(std::min(16u, std::max(1u, std::thread::hardware_concurrency())));
  const size_t step = static_cast<size_t>(std::max(chunk, 1));
  std::vector<double> lp;
  std::vector<int64_t> bad;
  for (size_t start = 0; start + 1 < ids.size(); start += step) {
    // The chunk's last row predicts the first token of the next chunk; the text's last token
    // predicts nothing and is not fed.
    const size_t n = std::min(step, ids.size() - 1 - start);
    engine::BatchEntry e{&seq, ids.subspan(start, n), static_cast<int>(start), true};
    const std::vector<float> logits =
        runner.ForwardToHost(std::span<const engine::BatchEntry>(&e, 1));
    HW_CHECK_EQ(logits.size(), n * vocab);
    lp.assign(n, 0.0);
    bad.assign(n, 0);
    // Each row's log-softmax is a pass over the vocabulary (152K for Qwen): spread the rows.
    const size_t workers = std::min(n, static_cast<size_t>(threads));
    std::vector<std::thread> pool;
    for (size_t w = 0; w < workers; ++w) {
      pool.emplace_back([&, w] {
        for (size_t i = w; i < n; i += workers) {
          const auto row = std::span<const float>(logits).subspan(i * vocab, vocab);
          lp[i] = LogSoftmaxAt(row, ids[start + i + 1], bad[i]);
        }
      });
    }
    for (std::thread& t : pool) t.join();
    for (size_t i = 0; i < n; ++i) on_token(start + i + 1, lp[i], bad[i]);
  }
}

StatusOr<std::vector<double>> ScoreTokens(models::LlamaModel& model, kernels::Backend& backend,
                                          const engine::attention::PolicySet& policy,
                                          std::span<const int32_t> ids, int chunk, int threads) {
  if (ids.size() < 2)
    return InvalidArgument("a text of {} tokens has nothing to score", ids.size());
  chunk = std::min<int>(std::max(chunk, 1), static_cast<int>(ids.size()));
  // The cache as `headwise generate` builds it: full heads sized for the text, rings for one
  // sequence writing up to `chunk` tokens a step.
  HW_ASSIGN_OR_RETURN(kvcache::KvLayout layout, engine::KvLayoutFor(policy));
  kvcache::KvCacheConfig kv = engine::KvConfigFor(model.config(), 0, policy.page_size, chunk);
  const int total = static_cast<int>(ids.size());
  kv.num_pages = kvcache::KvCache::PagesForSequence(kv, layout, total);
  const engine::LengthLimit limit =
      engine::MaxSequenceTokens(layout, model.config().max_position_embeddings, chunk);
  if (total > limit.tokens) {
    return InvalidArgument("a text of {} tokens under policy {}: {}", total, policy.name,
                           limit.Explain());
  }
  std::vector<kvcache::KvLayout> layouts;
  layouts.push_back(std::move(layout));
  HW_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvCache> cache,
                      engine::CreateKvCache(std::move(layouts), kv, backend));
  engine::ModelRunner runner(model, *cache);
  kvcache::SequenceKv seq(*cache);
  HW_RETURN_IF_ERROR(seq.Reserve(total));
  std::vector<double> out(ids.size() - 1);
  int64_t nonfinite = 0;
  TeacherForce(runner, seq, ids, chunk, threads, [&](size_t i, double logprob, int64_t bad) {
    out[i - 1] = logprob;
    nonfinite += bad;
  });
  if (nonfinite > 0) {
    return Internal("policy {}: {} non-finite logits while scoring {} tokens", policy.name,
                    nonfinite, ids.size());
  }
  return out;
}

std::vector<LogLikelihoodBucket> Buckets(const std::vector<double>& logprobs, int first) {
  std::vector<LogLikelihoodBucket> out;
  const int end = static_cast<int>(logprobs.size()) + 1;  // positions 1 .. size
  first = std::max(first, 1);
  for (int begin = 0, width = first; begin < end; begin += width, width = begin) {
    LogLikelihoodBucket b;
    b.begin = begin;
    b.end = std::min(end, begin + width);
    for (int pos = std::max(begin, 1); pos < b.end; ++pos) {
      b.sum_logprob += logprobs[static_cast<size_t>(pos - 1)];
      ++b.tokens;
    }
    out.push_back(b);
  }
  return out;
}

}  // namespace headwise::eval
