// Properties of the forward pass on a seeded random model: a sequence's logits do not depend on
// what else is in the batch, nor on how its prompt is chunked.
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <random>
#include <string>

#include "engine/attention_setup.h"
#include "engine/model_runner.h"
#include "kernels/cpu/cpu_backend.h"
#include "models/llama_model.h"
#include "tests/models/seeded_weights.h"

namespace headwise::models {
namespace {

using engine::BatchEntry;

using testing::SeededWeights;

ModelConfig SmallConfig(bool bias) {
  ModelConfig c;
  c.architecture = bias ? Architecture::kQwen2 : Architecture::kLlama;
  c.architecture_name = bias ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.attention_bias = bias;
  c.tie_word_embeddings = !bias;
  return c;
}

std::vector<int32_t> RandomTokens(int n, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, 96);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, double(std::abs(a[i] - b[i])));
  return m;
}

struct Fixture {
  explicit Fixture(bool bias)
      : backend(kernels::CreateCpuBackend(2)), weights(std::random_device{}()) {
    auto loaded = LlamaModel::Load(SmallConfig(bias), weights, *backend);
    REQUIRE(loaded.ok());
    model = std::move(loaded).value();
    cache = std::make_unique<kvcache::KvCache>(engine::KvConfigFor(model->config(), 512),
                                               kvcache::KvLayout::Dense(2, 2), *backend);
  }
  // All-token logits of `tokens` run alone, in chunks of `chunk`.
  std::vector<float> Alone(const std::vector<int32_t>& tokens, size_t chunk) {
    kvcache::SequenceKv kv(*cache);
    REQUIRE(kv.Reserve(static_cast<int>(tokens.size())).ok());
    std::vector<float> all;
    for (size_t start = 0; start < tokens.size(); start += chunk) {
      const size_t n = std::min(chunk, tokens.size() - start);
      BatchEntry e{&kv, std::span<const int32_t>(tokens).subspan(start, n), static_cast<int>(start),
                   true};
      auto logits =
          engine::ModelRunner(*model, *cache).ForwardToHost(std::span<const BatchEntry>(&e, 1));
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  }
  std::unique_ptr<kernels::Backend> backend;
  SeededWeights weights;
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<kvcache::KvCache> cache;
};

TEST_CASE("Chunked prefill gives the logits of a single pass", "[models]") {
  for (bool bias : {false, true}) {
    Fixture f(bias);
    std::mt19937 rng(std::random_device{}());
    const auto tokens = RandomTokens(45, rng);
    const auto whole = f.Alone(tokens, tokens.size());
    const auto chunked = f.Alone(tokens, 7);
    CHECK(MaxDiff(whole, chunked) < 1e-5);
    CHECK(f.cache->num_pages_used() == 0);
  }
}

TEST_CASE("A batch of sequences of different lengths equals each run alone", "[models]") {
  Fixture f(false);
  std::mt19937 rng(std::random_device{}());
  const std::vector<int> lengths = {5, 17, 33, 1};
  std::vector<std::vector<int32_t>> prompts;
  for (int n : lengths) prompts.push_back(RandomTokens(n, rng));

  // Prefill all four in one batch, then two decode steps in one batch.
  std::vector<std::unique_ptr<kvcache::SequenceKv>> kvs;
  std::vector<BatchEntry> batch;
  for (auto& p : prompts) {
    kvs.push_back(std::make_unique<kvcache::SequenceKv>(*f.cache));
    REQUIRE(kvs.back()->Reserve(static_cast<int>(p.size()) + 2).ok());
    batch.push_back(BatchEntry{kvs.back().get(), p, 0, true});
  }
  engine::ModelRunner runner(*f.model, *f.cache);
  const auto batched = runner.ForwardToHost(batch);
  std::vector<std::vector<int32_t>> next(prompts.size());
  std::vector<float> batched_decode;
  for (int step = 0; step < 2; ++step) {
    std::vector<BatchEntry> decode;
    for (size_t s = 0; s < prompts.size(); ++s) {
      next[s].push_back(static_cast<int32_t>((s * 31 + step * 7) % 97));
      decode.push_back(BatchEntry{kvs[s].get(),
                                  std::span<const int32_t>(&next[s][static_cast<size_t>(step)], 1),
                                  static_cast<int>(prompts[s].size()) + step, false});
    }
    const auto l = runner.ForwardToHost(decode);
    batched_decode.insert(batched_decode.end(), l.begin(), l.end());
  }

  size_t offset = 0;
  const size_t vocab = 97;
  for (size_t s = 0; s < prompts.size(); ++s) {
    std::vector<int32_t> full = prompts[s];
    full.insert(full.end(), next[s].begin(), next[s].end());
    const auto alone = f.Alone(full, full.size());
    const std::vector<float> alone_prompt(
        alone.begin(), alone.begin() + static_cast<long>(prompts[s].size() * vocab));
    const std::vector<float> got(
        batched.begin() + static_cast<long>(offset),
        batched.begin() + static_cast<long>(offset + prompts[s].size() * vocab));
    INFO("sequence " << s << " of length " << prompts[s].size());
    CHECK(MaxDiff(alone_prompt, got) < 1e-5);
    offset += prompts[s].size() * vocab;
    for (int step = 0; step < 2; ++step) {
      const size_t row = prompts[s].size() + static_cast<size_t>(step);
      const std::vector<float> a(alone.begin() + static_cast<long>(row * vocab),
                                 alone.begin() + static_cast<long>((row + 1) * vocab));
      const size_t b0 = (static_cast<size_t>(step) * prompts.size() + s) * vocab;
      const std::vector<float> b(batched_decode.begin() + static_cast<long>(b0),
                                 batched_decode.begin() + static_cast<long>(b0 + vocab));
      CHECK(MaxDiff(a, b) < 1e-5);
    }
  }
}

}  // namespace
}  // namespace headwise::models
