// Backend::Sample: the CPU reference against the sampling rules (empirical distributions,
// ties, penalties, bias, logprobs, batch independence), and [cuda] the GPU against the CPU on
// fresh random logits over many parameter combinations.
#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#ifdef HEADWISE_TEST_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace headwise::kernels {
namespace {

struct RowSpec {
  int logits_row = 0;
  float temperature = 1.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
  std::vector<std::pair<int32_t, float>> bias;
  std::vector<std::array<int32_t, 3>> penalties;  // token, count in output, in prompt
  uint64_t seed = 0;
  uint32_t draw = 0;
  int num_logprobs = -1;
};

struct Result {
  std::vector<int32_t> token;
  std::vector<float> logprob;
  std::vector<int32_t> top_ids;  // [R, k]
  std::vector<float> top_logprobs;
  int k = 0;
};

// Runs Sample on `be` with logits [n, vocab] and one row per spec.
Result Run(Backend& be, const std::vector<float>& logits, int64_t vocab,
           const std::vector<RowSpec>& rows) {
  std::vector<Buffer> keep;
  auto upload = [&](DType dtype, const void* data, int64_t n) {
    keep.push_back(be.Allocate(dtype, {std::max<int64_t>(n, 1)}));
    Tensor t = keep.back().view();
    t.dims[0] = n;
    if (n > 0) be.CopyFromHost(t, data, static_cast<size_t>(n) * 4);
    return t;
  };
  const int64_t r = static_cast<int64_t>(rows.size());
  std::vector<int32_t> lrow, top_k, bias_indptr{0}, pen_indptr{0}, seed, draw, nlp, bias_ids,
      pen_ids, pen_counts, pen_prompt;
  std::vector<float> temp, top_p, min_p, rep, pres, freq, bias_values;
  int k = 0;
  for (const RowSpec& s : rows) {
    lrow.push_back(s.logits_row);
    temp.push_back(s.temperature);
    top_k.push_back(s.top_k);
    top_p.push_back(s.top_p);
    min_p.push_back(s.min_p);
    rep.push_back(s.repetition);
    pres.push_back(s.presence);
    freq.push_back(s.frequency);
    for (const auto& [id, v] : s.bias) {
      bias_ids.push_back(id);
      bias_values.push_back(v);
    }
    bias_indptr.push_back(static_cast<int32_t>(bias_ids.size()));
    for (const auto& e : s.penalties) {
      pen_ids.push_back(e[0]);
      pen_counts.push_back(e[1]);
      pen_prompt.push_back(e[2]);
    }
    pen_indptr.push_back(static_cast<int32_t>(pen_ids.size()));
    seed.push_back(static_cast<int32_t>(static_cast<uint32_t>(s.seed)));
    seed.push_back(static_cast<int32_t>(static_cast<uint32_t>(s.seed >> 32)));
    draw.push_back(static_cast<int32_t>(s.draw));
    nlp.push_back(s.num_logprobs);
    k = std::max(k, s.num_logprobs);
  }
  SamplingBatch b;
  b.logits_row = upload(DType::kI32, lrow.data(), r);
  b.temperature = upload(DType::kF32, temp.data(), r);
  b.top_k = upload(DType::kI32, top_k.data(), r);
  b.top_p = upload(DType::kF32, top_p.data(), r);
  b.min_p = upload(DType::kF32, min_p.data(), r);
  b.repetition_penalty = upload(DType::kF32, rep.data(), r);
  b.presence_penalty = upload(DType::kF32, pres.data(), r);
  b.frequency_penalty = upload(DType::kF32, freq.data(), r);
  b.bias_indptr = upload(DType::kI32, bias_indptr.data(), r + 1);
  b.bias_ids = upload(DType::kI32, bias_ids.data(), static_cast<int64_t>(bias_ids.size()));
  b.bias_values = upload(DType::kF32, bias_values.data(), static_cast<int64_t>(bias_ids.size()));
  b.penalty_indptr = upload(DType::kI32, pen_indptr.data(), r + 1);
  b.penalty_ids = upload(DType::kI32, pen_ids.data(), static_cast<int64_t>(pen_ids.size()));
  b.penalty_counts = upload(DType::kI32, pen_counts.data(), static_cast<int64_t>(pen_ids.size()));
  b.penalty_in_prompt =
      upload(DType::kI32, pen_prompt.data(), static_cast<int64_t>(pen_ids.size()));
  b.seed = upload(DType::kI32, seed.data(), 2 * r).Reshape({r, 2});
  b.draw = upload(DType::kI32, draw.data(), r);
  b.num_logprobs = upload(DType::kI32, nlp.data(), r);

  const int64_t n = static_cast<int64_t>(logits.size()) / vocab;
  Buffer lg = be.Allocate(DType::kF32, {n, vocab});
  be.CopyFromHost(lg.view(), logits.data(), logits.size() * 4);
  // Outputs start as garbage: an entry the backend does not write fails the comparisons.
  const std::vector<int32_t> poison(static_cast<size_t>(r * std::max(k, 1)), 0x7fc00000);
  SampleOutputs out;
  out.token = upload(DType::kI32, poison.data(), r);
  out.logprob = upload(DType::kF32, poison.data(), r);
  keep.push_back(be.Allocate(DType::kI32, {std::max<int64_t>(r * k, 1)}));
  out.top_ids = Tensor(keep.back().view().data, DType::kI32, be.device(), {r, k});
  keep.push_back(be.Allocate(DType::kF32, {std::max<int64_t>(r * k, 1)}));
  out.top_logprobs = Tensor(keep.back().view().data, DType::kF32, be.device(), {r, k});
  if (k > 0) {
    be.CopyFromHost(out.top_ids, poison.data(), static_cast<size_t>(r * k) * 4);
    be.CopyFromHost(out.top_logprobs, poison.data(), static_cast<size_t>(r * k) * 4);
  }

  be.Sample(lg.view(), b, out);
  be.Synchronize();
  Result res;
  res.k = k;
  res.token.resize(static_cast<size_t>(r));
  res.logprob.resize(static_cast<size_t>(r));
  res.top_ids.resize(static_cast<size_t>(r * k));
  res.top_logprobs.resize(static_cast<size_t>(r * k));
  be.CopyToHost(res.token.data(), out.token, static_cast<size_t>(r) * 4);
  be.CopyToHost(res.logprob.data(), out.logprob, static_cast<size_t>(r) * 4);
  if (k > 0) {
    be.CopyToHost(res.top_ids.data(), out.top_ids, static_cast<size_t>(r * k) * 4);
    be.CopyToHost(res.top_logprobs.data(), out.top_logprobs, static_cast<size_t>(r * k) * 4);
  }
  return res;
}

// An independent statement of the rules (sort based): the processed values y, each token's
// race score y + g, and which tokens are kept with the given top-p / min-p.
struct Reference {
  std::vector<float> y;
  std::vector<float> score;
  std::vector<char> kept;
  bool greedy = false;
};

Reference Rules(const float* raw, int vocab, const RowSpec& s, float top_p, float min_p) {
  SamplingRow p;
  p.repetition_penalty = s.repetition;
  p.presence_penalty = s.presence;
  p.frequency_penalty = s.frequency;
  Reference ref;
  ref.y.assign(raw, raw + vocab);
  for (const auto& [id, v] : s.bias) ref.y[static_cast<size_t>(id)] += v;
  for (const auto& e : s.penalties) {
    float& x = ref.y[static_cast<size_t>(e[0])];
    x = ApplyPenalty(x, p, e[1], e[2] != 0);
  }
  ref.greedy = s.temperature <= 0.0f;
  const float inv_t = InverseTemperature(s.temperature);
  if (!ref.greedy) {
    for (float& v : ref.y) v = v * inv_t;
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return ref.y[static_cast<size_t>(a)] > ref.y[static_cast<size_t>(b)];
  });
  const float ymax = ref.y[static_cast<size_t>(order[0])];
  size_t n = order.size();
  if (!ref.greedy && s.top_k > 0) n = std::min(n, static_cast<size_t>(s.top_k));
  if (!ref.greedy && top_p < 1.0f) {
    double z = 0.0, mass = 0.0;
    for (size_t i = 0; i < n; ++i) z += std::exp(ref.y[static_cast<size_t>(order[i])] - ymax);
    size_t m = 0;
    while (m < n) {
      mass += std::exp(ref.y[static_cast<size_t>(order[m++])] - ymax);
      if (mass >= top_p * z) break;
    }
    n = m;
  }
  if (ref.greedy) n = 1;
  ref.kept.assign(static_cast<size_t>(vocab), 0);
  const NoiseKey key = MakeNoiseKey(s.seed, s.draw);
  ref.score.assign(static_cast<size_t>(vocab), -INFINITY);
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = order[i];
    const float y = ref.y[static_cast<size_t>(id)];
    if (!ref.greedy && min_p > 0.0f && !(std::exp(y - ymax) >= min_p)) continue;
    ref.kept[static_cast<size_t>(id)] = 1;
    ref.score[static_cast<size_t>(id)] = ref.greedy ? y : y + GumbelNoise(key, id);
  }
  return ref;
}

int32_t Winner(const Reference& ref) {
  int32_t best = -1;
  for (int32_t i = 0; i < static_cast<int32_t>(ref.kept.size()); ++i) {
    if (ref.kept[static_cast<size_t>(i)] &&
        (best < 0 || ref.score[static_cast<size_t>(i)] > ref.score[static_cast<size_t>(best)])) {
      best = i;
    }
  }
  return best;
}

std::vector<float> Normal(size_t n, float sigma, std::mt19937& rng) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Draws `n` tokens of one row over consecutive draw indices and returns the frequencies.
std::vector<double> Histogram(Backend& be, const std::vector<float>& logits, RowSpec spec, int n) {
  std::vector<RowSpec> rows(static_cast<size_t>(n), spec);
  for (int i = 0; i < n; ++i) rows[static_cast<size_t>(i)].draw = static_cast<uint32_t>(i);
  const Result res = Run(be, logits, static_cast<int64_t>(logits.size()), rows);
  std::vector<double> f(logits.size(), 0.0);
  for (int32_t t : res.token) f[static_cast<size_t>(t)] += 1.0;
  return f;
}

// Pearson's chi-square of counts against probabilities (tokens with p = 0 must have count 0).
double ChiSquare(const std::vector<double>& counts, const std::vector<double>& p, int n) {
  double chi = 0.0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      CHECK(counts[i] == 0.0);
      continue;
    }
    const double e = p[i] * n;
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

std::vector<double> Softmax(const std::vector<float>& x, float t, const std::vector<int>& keep) {
  std::vector<double> p(x.size(), 0.0);
  double z = 0.0;
  for (int i : keep)
    z += p[static_cast<size_t>(i)] = std::exp(double(x[static_cast<size_t>(i)]) / t);
  for (double& v : p) v /= z;
  return p;
}

TEST_CASE("CPU sampling follows the softmax, cut by top-k, top-p and min-p", "[sampling]") {
  auto be = CreateCpuBackend(1);
  // Probabilities 0.4, 0.25, 0.15, 0.1, 0.06, 0.04 (shuffled ids).
  const std::vector<float> logits = {std::log(0.1f),  std::log(0.4f),  std::log(0.04f),
                                     std::log(0.25f), std::log(0.06f), std::log(0.15f)};
  const int n = 40000;
  // 99.9% quantiles of chi-square with 1..5 degrees of freedom.
  const double q999[] = {0, 10.83, 13.82, 16.27, 18.47, 20.52};
  auto check = [&](RowSpec s, const std::vector<int>& keep, float t) {
    INFO("top_k " << s.top_k << " top_p " << s.top_p << " min_p " << s.min_p << " T " << t);
    s.temperature = t;
    for (uint64_t seed : {1ull, 0xdeadbeefcafeull}) {
      s.seed = seed;
      const auto f = Histogram(*be, logits, s, n);
      CHECK(ChiSquare(f, Softmax(logits, t, keep), n) <= q999[keep.size() - 1]);
    }
  };
  RowSpec s;
  check(s, {0, 1, 2, 3, 4, 5}, 1.0f);
  check(s, {0, 1, 2, 3, 4, 5}, 0.7f);
  check(s, {0, 1, 2, 3, 4, 5}, 1.8f);
  RowSpec k = s;
  k.top_k = 3;
  check(k, {1, 3, 5}, 1.0f);
  RowSpec p = s;
  p.top_p = 0.72f;  // 0.4 + 0.25 < 0.72 <= 0.4 + 0.25 + 0.15
  check(p, {1, 3, 5}, 1.0f);
  p.top_p = 0.3f;  // the best token alone
  check(p, {1}, 1.0f);
  RowSpec m = s;
  m.min_p = 0.3f;  // p >= 0.12
  check(m, {1, 3, 5}, 1.0f);
  RowSpec all = s;  // top-k 4 then top-p over the renormalised 0.4, 0.25, 0.15, 0.1 (sum 0.9)
  all.top_k = 4;
  all.top_p = 0.8f;  // 0.8 * 0.9 = 0.72: again three tokens
  all.min_p = 0.5f;  // p >= 0.2: two tokens
  check(all, {1, 3}, 1.0f);
}

TEST_CASE("CPU sampling: greedy, ties by lower id, draws depend on seed and draw index",
          "[sampling]") {
  auto be = CreateCpuBackend(1);
  const std::vector<float> tied = {0.0f, 1.0f, 3.0f, 2.0f, 3.0f, 3.0f, -1.0f};
  RowSpec g;
  g.temperature = 0.0f;
  CHECK(Run(*be, tied, 7, {g}).token[0] == 2);
  // top_k 2 on a three-way tie keeps ids 2 and 4, never 5.
  RowSpec k;
  k.top_k = 2;
  auto f = Histogram(*be, tied, k, 4000);
  CHECK(f[5] == 0.0);
  CHECK(f[2] > 1700);
  CHECK(f[4] > 1700);
  k.top_k = 1;
  f = Histogram(*be, tied, k, 200);
  CHECK(f[2] == 200.0);

  std::mt19937 rng(7);
  const auto logits = Normal(5000, 1.0f, rng);
  RowSpec s;
  s.seed = 99;
  const auto a = Run(*be, logits, 5000, {s, s}).token;
  CHECK(a[0] == a[1]);
  RowSpec other = s;
  other.seed = 100;
  RowSpec later = s;
  later.draw = 1;
  int same_seed = 0, same_draw = 0;
  for (uint32_t d = 0; d < 20; ++d) {
    s.draw = other.draw = d;
    later.draw = d + 1;
    const auto t = Run(*be, logits, 5000, {s, other, later}).token;
    same_seed += t[0] == t[1];
    same_draw += t[0] == t[2];
  }
  CHECK(same_seed < 4);
  CHECK(same_draw < 4);
}

TEST_CASE("CPU sampling: bias, repetition, presence and frequency penalties", "[sampling]") {
  auto be = CreateCpuBackend(1);
  const std::vector<float> x = {3.0f, 2.5f, -1.0f, -1.5f, 0.5f};
  RowSpec g;
  g.temperature = 0.0f;
  auto top = [&](const RowSpec& s) { return Run(*be, x, 5, {s}).token[0]; };
  CHECK(top(g) == 0);
  RowSpec b = g;
  b.bias = {{0, -100.0f}};
  CHECK(top(b) == 1);
  b.bias = {{2, 4.5f}};  // -1 + 4.5 = 3.5 beats 3
  CHECK(top(b) == 2);
  // Repetition 2 on token 0 seen in the prompt: 3 / 2 = 1.5 < 2.5.
  RowSpec r = g;
  r.repetition = 2.0f;
  r.penalties = {{0, 0, 1}};
  CHECK(top(r) == 1);
  // A negative logit is multiplied by the penalty.
  const std::vector<float> negative = {-2.0f, -3.0f};
  RowSpec m = g;
  m.repetition = 2.0f;
  m.penalties = {{0, 1, 0}};
  CHECK(Run(*be, negative, 2, {m}).token[0] == 1);
  RowSpec neg = g;
  neg.bias = {{0, -10.0f}, {1, -10.0f}, {3, 2.2f}};  // token 3: 0.7 > token 4: 0.5
  CHECK(top(neg) == 3);
  neg.repetition = 1.5f;
  neg.penalties = {{3, 1, 0}};  // 0.7 / 1.5 = 0.467 < 0.5
  CHECK(top(neg) == 4);
  neg.penalties = {{4, 0, 1}};  // 0.5 / 1.5: token 3 wins again
  CHECK(top(neg) == 3);
  // Presence and frequency use the output count only; prompt-only tokens are untouched.
  RowSpec pf = g;
  pf.presence = 0.3f;
  pf.frequency = 0.15f;
  pf.penalties = {{0, 1, 0}};  // 3 - 0.45 = 2.55 > 2.5
  CHECK(top(pf) == 0);
  pf.penalties = {{0, 2, 0}};  // 3 - 0.6 = 2.4 < 2.5
  CHECK(top(pf) == 1);
  pf.penalties = {{0, 0, 1}};  // in the prompt only
  CHECK(top(pf) == 0);
  // Penalties and bias change the draw, never the logprobs.
  RowSpec lp = pf;
  lp.penalties = {{0, 2, 0}};
  lp.bias = {{4, 50.0f}};
  lp.num_logprobs = 2;
  const Result res = Run(*be, x, 5, {lp});
  CHECK(res.token[0] == 4);
  double z = 0;
  for (float v : x) z += std::exp(double(v));
  CHECK(res.logprob[0] == Approx(0.5 - std::log(z)).margin(1e-5));
  CHECK(res.top_ids[0] == 0);
  CHECK(res.top_ids[1] == 1);
}

TEST_CASE("CPU sampling: logprobs, and a row's token does not depend on its batch", "[sampling]") {
  auto be = CreateCpuBackend(1);
  std::mt19937 rng(3);
  const int vocab = 3000;
  auto logits = Normal(5 * vocab, 2.0f, rng);
  // Ties in row 1's top logits: alternatives order them by id.
  logits[vocab + 10] = logits[vocab + 20] = logits[vocab + 5] = 20.0f;
  std::vector<RowSpec> rows(5);
  for (int i = 0; i < 5; ++i) {
    RowSpec& s = rows[static_cast<size_t>(i)];
    s.logits_row = i;
    s.seed = 1000 + static_cast<uint64_t>(i);
    s.draw = static_cast<uint32_t>(3 * i);
    s.temperature = 0.5f + 0.3f * static_cast<float>(i);
    s.top_k = i == 2 ? 50 : 0;
    s.top_p = i == 3 ? 0.9f : 1.0f;
    s.min_p = i == 4 ? 0.05f : 0.0f;
    s.presence = i == 1 ? 0.5f : 0.0f;
    s.penalties = {{7, 2, 1}};
    s.bias = {{11, 1.5f}};
    s.num_logprobs = i == 0 ? -1 : 4 * i;
  }
  const Result all = Run(*be, logits, vocab, rows);
  REQUIRE(all.k == 16);
  for (int i = 0; i < 5; ++i) {
    const size_t u = static_cast<size_t>(i);
    const Result alone = Run(*be, logits, vocab, {rows[u]});
    CHECK(alone.token[0] == all.token[u]);
    // The reference rules pick the same token.
    const Reference ref =
        Rules(logits.data() + i * vocab, vocab, rows[u], rows[u].top_p, rows[u].min_p);
    CHECK(Winner(ref) == all.token[u]);
    if (rows[u].num_logprobs < 0) {
      CHECK(all.logprob[u] == 0.0f);
      CHECK(all.top_ids[u * 16] == -1);
      continue;
    }
    const float* raw = logits.data() + i * vocab;
    double z = 0;
    for (int t = 0; t < vocab; ++t) z += std::exp(double(raw[t]));
    const double lse = std::log(z);
    CHECK(all.logprob[u] == Approx(raw[all.token[u]] - lse).margin(1e-5));
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return raw[a] > raw[b]; });
    for (int j = 0; j < 16; ++j) {
      const size_t at = u * 16 + static_cast<size_t>(j);
      if (j < rows[u].num_logprobs) {
        CHECK(all.top_ids[at] == order[static_cast<size_t>(j)]);
        CHECK(all.top_logprobs[at] ==
              Approx(raw[order[static_cast<size_t>(j)]] - lse).margin(1e-5));
      } else {
        CHECK(all.top_ids[at] == -1);
      }
    }
  }
  CHECK(all.top_ids[16] == 5);
  CHECK(all.top_ids[17] == 10);
  CHECK(all.top_ids[18] == 20);
}

#ifdef HEADWISE_TEST_CUDA
// The GPU may differ from the CPU only through float rounding: the two tokens' race scores
// within rounding of each other, or a token at a top-p / min-p boundary that rounding moves.
bool RoundingExplains(const float* raw, int vocab, const RowSpec& s, int32_t cpu, int32_t gpu) {
  const Reference loose =
      Rules(raw, vocab, s, std::min(1.0f, s.top_p * 1.0001f), s.min_p * 0.9999f);
  const Reference tight = Rules(raw, vocab, s, s.top_p * 0.9999f, s.min_p * 1.0001f);
  if (!loose.kept[static_cast<size_t>(gpu)]) return false;
  if (!tight.kept[static_cast<size_t>(cpu)] || !tight.kept[static_cast<size_t>(gpu)]) return true;
  const float a = loose.score[static_cast<size_t>(cpu)], b = loose.score[static_cast<size_t>(gpu)];
  return std::abs(a - b) <= 1e-5f * std::max(1.0f, std::abs(a));
}

TEST_CASE("CUDA sampling matches the CPU over parameter combinations", "[cuda]") {
  auto cpu = CreateCpuBackend(2);
  auto gpu = std::move(CreateCudaBackend(0)).value();
  std::mt19937 rng(std::random_device{}());
  for (int vocab : {7, 1000, 32000, 128256}) {
    const int n = 6;
    std::vector<float> logits = Normal(static_cast<size_t>(n * vocab), 2.5f, rng);
    // Row 5 has coarse values, so cuts fall inside groups of ties.
    for (int i = 0; i < vocab; ++i) {
      float& v = logits[static_cast<size_t>(5 * vocab + i)];
      v = std::round(v * 2.0f) / 2.0f;
    }
    std::vector<RowSpec> rows;
    std::uniform_int_distribution<int> pick(0, 1 << 30);
    for (float t : {0.0f, 0.3f, 1.0f, 1.7f}) {
      for (int top_k : {0, 1, 5, 64, 5000}) {
        for (float top_p : {1.0f, 0.95f, 0.5f, 0.05f}) {
          for (float min_p : {0.0f, 0.1f}) {
            RowSpec s;
            s.logits_row = static_cast<int>(rows.size() % n);
            s.temperature = t;
            s.top_k = top_k;
            s.top_p = top_p;
            s.min_p = min_p;
            s.seed = (uint64_t(pick(rng)) << 32) | uint64_t(pick(rng));
            s.draw = static_cast<uint32_t>(pick(rng));
            s.num_logprobs = rows.size() % 3 == 0 ? -1 : static_cast<int>(rows.size() % 21);
            if (rows.size() % 4 == 1) {
              s.repetition = 1.3f;
              s.presence = 0.4f;
              s.frequency = 0.2f;
              for (int j = 0; j < 40; ++j) {
                s.penalties.push_back({(j * 7919 + 13) % vocab, j % 3, j % 2});
              }
              std::sort(s.penalties.begin(), s.penalties.end());
              s.penalties.erase(std::unique(s.penalties.begin(), s.penalties.end(),
                                            [](auto& a, auto& b) { return a[0] == b[0]; }),
                                s.penalties.end());
              s.bias = {{vocab / 2, 5.0f}, {vocab - 1, -3.0f}};
            }
            rows.push_back(s);
          }
        }
      }
    }
    const Result c = Run(*cpu, logits, vocab, rows);
    const Result g = Run(*gpu, logits, vocab, rows);
    const Result again = Run(*gpu, logits, vocab, rows);
    CHECK(g.token == again.token);
    int differ = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      const RowSpec& s = rows[r];
      INFO("vocab " << vocab << " row " << r << " T " << s.temperature << " top_k " << s.top_k
                    << " top_p " << s.top_p << " min_p " << s.min_p);
      const float* raw = logits.data() + static_cast<size_t>(s.logits_row) * vocab;
      if (g.token[r] != c.token[r]) {
        ++differ;
        CHECK(RoundingExplains(raw, vocab, s, c.token[r], g.token[r]));
      }
      if (s.num_logprobs >= 0) {
        CHECK(g.logprob[r] ==
              Approx(raw[g.token[r]] - (raw[c.token[r]] - c.logprob[r])).margin(1e-5));
      }
      for (int j = 0; j < c.k; ++j) {
        const size_t at = r * static_cast<size_t>(c.k) + static_cast<size_t>(j);
        CHECK(g.top_ids[at] == c.top_ids[at]);
        if (c.top_ids[at] >= 0)
          CHECK(g.top_logprobs[at] == Approx(c.top_logprobs[at]).margin(1e-5));
      }
    }
    CHECK(differ <= static_cast<int>(rows.size()) / 50);
  }
}

TEST_CASE("CUDA sampling: a row's token does not depend on its batch", "[cuda]") {
  auto gpu = std::move(CreateCudaBackend(0)).value();
  std::mt19937 rng(11);
  const int vocab = 50000;
  const auto logits = Normal(3 * vocab, 2.0f, rng);
  std::vector<RowSpec> rows(5);
  for (int i = 0; i < 5; ++i) {
    rows[static_cast<size_t>(i)].logits_row = i % 3;
    rows[static_cast<size_t>(i)].seed = 77 + static_cast<uint64_t>(i);
    rows[static_cast<size_t>(i)].top_p = 0.9f;
    rows[static_cast<size_t>(i)].top_k = i == 3 ? 40 : 0;
  }
  const Result all = Run(*gpu, logits, vocab, rows);
  for (size_t i = 0; i < rows.size(); ++i)
    CHECK(Run(*gpu, logits, vocab, {rows[i]}).token[0] == all.token[i]);
}
#endif

}  // namespace
}  // namespace headwise::kernels
