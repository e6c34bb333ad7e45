#include "engine/sampler.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <span>

namespace headwise::engine {
namespace {

std::vector<float> RandomLogits(int n, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}
int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}
int32_t SecondBest(const std::vector<float>& v) {
  auto copy = v;
  copy[static_cast<size_t>(Argmax(v))] = -INFINITY;
  return Argmax(copy);
}

TEST_CASE("Greedy takes the argmax after bias and penalties", "[sampler]") {
  std::mt19937 rng(std::random_device{}());
  const auto logits = RandomLogits(50, rng);
  const int32_t best = Argmax(logits), second = SecondBest(logits);
  SamplingParams p;
  p.temperature = 0.0f;
  CHECK(Sampler(p).Sample(logits, {}, {}).id == best);

  SamplingParams biased = p;
  biased.logit_bias[best] = -100.0f;
  CHECK(Sampler(biased).Sample(logits, {}, {}).id == second);

  // A strong presence penalty on the best token, seen in the output, hands the win on.
  SamplingParams presence = p;
  presence.presence_penalty = 2.0f;
  std::vector<float> close = logits;
  close[static_cast<size_t>(best)] = close[static_cast<size_t>(second)] + 1.0f;
  const std::vector<int32_t> out = {best};
  CHECK(Sampler(presence).Sample(close, {}, out).id == second);
  SamplingParams freq = p;
  freq.frequency_penalty = 0.6f;
  const std::vector<int32_t> twice = {best, best};
  CHECK(Sampler(freq).Sample(close, {}, twice).id == second);
  CHECK(Sampler(freq).Sample(close, {}, out).id == best);

  // Repetition penalty counts the prompt too: divides a positive logit.
  std::vector<float> rep(4, 0.0f);
  rep[0] = 3.0f;
  rep[1] = 2.0f;
  SamplingParams r = p;
  r.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {0};
  CHECK(Sampler(r).Sample(rep, prompt, {}).id == 1);
}

TEST_CASE("Same seed, same tokens; another seed, other tokens", "[sampler]") {
  std::mt19937 rng(std::random_device{}());
  const auto logits = std::vector<float>(200, 0.0f);  // uniform: every draw is informative
  SamplingParams p;
  p.seed = rng();
  auto draw = [&](SamplingParams params) {
    Sampler s(params);
    std::vector<int32_t> ids;
    for (int i = 0; i < 32; ++i) ids.push_back(s.Sample(logits, {}, ids).id);
    return ids;
  };
  const auto first = draw(p);
  CHECK(first == draw(p));
  // Successive draws of one seed differ (the draw index is the output length).
  CHECK(std::set<int32_t>(first.begin(), first.end()).size() > 16);
  SamplingParams q = p;
  q.seed = *p.seed + 1;
  CHECK(first != draw(q));
  // Unseeded samplers get seeds of their own.
  CHECK(draw(SamplingParams()) != draw(SamplingParams()));
}

TEST_CASE("A draw depends on the seed and the output length, not on the output", "[sampler]") {
  const auto logits = std::vector<float>(1000, 0.0f);
  SamplingParams p;
  p.seed = 42;
  const Sampler s(p);
  const std::vector<int32_t> a = {1, 2, 3}, b = {7, 7, 9};
  CHECK(s.Sample(logits, {}, a).id == s.Sample(logits, {}, b).id);
  CHECK(s.Sample(logits, {}, a).id != s.Sample(logits, {}, std::span(a).first(2)).id);
}

TEST_CASE("Sampling follows the softmax; top-k, top-p and min-p cut the tail", "[sampler]") {
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.15f),
                                     std::log(0.05f)};
  auto histogram = [&](SamplingParams p) {
    p.seed = std::random_device{}();
    Sampler s(p);
    std::vector<double> freq(4, 0.0);
    const int n = 20000;
    // Draw i of the seed's stream: the output so far is i tokens long (no penalties here).
    const std::vector<int32_t> output(n, 0);
    for (int i = 0; i < n; ++i) {
      const auto so_far = std::span(output).first(static_cast<size_t>(i));
      freq[static_cast<size_t>(s.Sample(logits, {}, so_far).id)] += 1.0 / n;
    }
    return freq;
  };
  SamplingParams p;
  auto f = histogram(p);
  CHECK(f[0] == Approx(0.5).margin(0.02));
  CHECK(f[1] == Approx(0.3).margin(0.02));
  CHECK(f[3] == Approx(0.05).margin(0.01));

  SamplingParams hot = p;
  hot.temperature = 2.0f;  // p^(1/2), renormalised
  f = histogram(hot);
  const double z = std::sqrt(0.5) + std::sqrt(0.3) + std::sqrt(0.15) + std::sqrt(0.05);
  CHECK(f[3] == Approx(std::sqrt(0.05) / z).margin(0.015));

  SamplingParams k = p;
  k.top_k = 2;
  f = histogram(k);
  CHECK(f[2] == 0.0);
  CHECK(f[3] == 0.0);
  CHECK(f[0] == Approx(0.5 / 0.8).margin(0.02));

  SamplingParams top_p = p;
  top_p.top_p = 0.85f;  // 0.5 + 0.3 + 0.15 reaches it: token 3 is cut
  f = histogram(top_p);
  CHECK(f[3] == 0.0);
  CHECK(f[2] > 0.1);

  SamplingParams min_p = p;
  min_p.min_p = 0.5f;  // keeps p >= 0.25
  f = histogram(min_p);
  CHECK(f[2] == 0.0);
  CHECK(f[1] == Approx(0.3 / 0.8).margin(0.02));
}

TEST_CASE("Logprobs are the raw log-softmax, alternatives best first", "[sampler]") {
  std::mt19937 rng(std::random_device{}());
  const auto logits = RandomLogits(30, rng);
  SamplingParams p;
  p.temperature = 0.0f;
  p.logprobs = 5;
  const auto tok = Sampler(p).Sample(logits, {}, {});
  double z = 0;
  for (float x : logits) z += std::exp(double(x));
  CHECK(tok.logprob == Approx(logits[static_cast<size_t>(tok.id)] - std::log(z)).epsilon(1e-5));
  REQUIRE(tok.top_logprobs.size() == 5);
  CHECK(tok.top_logprobs[0].first == tok.id);
  for (size_t i = 1; i < 5; ++i)
    CHECK(tok.top_logprobs[i - 1].second >= tok.top_logprobs[i].second);
}

TEST_CASE("Out-of-range sampling parameters are refused by name", "[sampler]") {
  // The field is named in the message and in Status::field, which front ends report (the OpenAI
  // error's `param`).
  auto check = [](auto mutate, const std::string& field) {
    SamplingParams p;
    mutate(p);
    const Status s = p.Validate(100);
    INFO(s.ToString());
    CHECK(s.code() == StatusCode::kInvalidArgument);
    CHECK(s.field() == field);
    CHECK_THAT(s.message(), Catch::Contains(field));
  };
  check([](SamplingParams& p) { p.temperature = -1; }, "temperature");
  check([](SamplingParams& p) { p.temperature = 2.5f; }, "temperature");
  check([](SamplingParams& p) { p.top_p = 0; }, "top_p");
  check([](SamplingParams& p) { p.min_p = 2; }, "min_p");
  check([](SamplingParams& p) { p.top_k = -5; }, "top_k");
  check([](SamplingParams& p) { p.repetition_penalty = 0; }, "repetition_penalty");
  check([](SamplingParams& p) { p.repetition_penalty = 101; }, "repetition_penalty");
  check([](SamplingParams& p) { p.presence_penalty = 3; }, "presence_penalty");
  check([](SamplingParams& p) { p.frequency_penalty = -3; }, "frequency_penalty");
  check([](SamplingParams& p) { p.logit_bias[100] = 1; }, "logit_bias");
  check([](SamplingParams& p) { p.logit_bias[5] = 101; }, "logit_bias");
  check([](SamplingParams& p) { p.max_tokens = 0; }, "max_tokens");
  check([](SamplingParams& p) { p.stop_token_ids = {-1}; }, "stop_token_ids");
  check([](SamplingParams& p) { p.stop = {""}; }, "stop");
  check([](SamplingParams& p) { p.logprobs = 21; }, "logprobs");
  SamplingParams ok;
  CHECK(ok.Validate(100).ok());
  ok.temperature = 2.0f;
  ok.top_k = -1;
  ok.logprobs = 20;
  CHECK(ok.Validate(100).ok());
}

}  // namespace
}  // namespace headwise::engine
