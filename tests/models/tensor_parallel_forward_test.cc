// Tensor parallelism on the CPU communicator (kernels/cpu/thread_communicator.h): a model sharded
// over N ranks (models::ModelShard), its KV heads' pages split with them
// (kvcache::KvCacheConfig::num_ranks), gives the logits of one rank within fp32 rounding (the
// ranks' partial sums add in another order) and the same greedy tokens, under dense attention and
// under a per-head layout of full, ring and compress-once heads.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>

#include "engine/attention_setup.h"
#include "engine/kv_compaction.h"
#include "engine/model_loader.h"
#include "engine/model_runner.h"
#include "kernels/backend_factory.h"
#include "kernels/communicator.h"
#include "kernels/cpu/cpu_backend.h"
#include "models/llama_model.h"
#include "tests/models/seeded_weights.h"
#include "tests/test_util.h"

namespace headwise::models {
namespace {

using engine::BatchEntry;
using kvcache::KvLayout;
using kvcache::KvRetention;

using testing::SeededWeights;

ModelConfig RandomConfig(int heads, int kv_heads, bool qwen) {
  ModelConfig c;
  c.architecture = qwen ? Architecture::kQwen2 : Architecture::kLlama;
  c.architecture_name = qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
  c.vocab_size = 97;  // not divisible by 2 or 4: the last rank's vocabulary share is padded
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = 16;
  c.max_position_embeddings = 512;
  c.attention_bias = qwen;
  c.tie_word_embeddings = !qwen;
  return c;
}

// A per-head layout: in each layer, KV head 0 a ring (4 sinks + 16 recent), the last KV head
// compress-once (4 + 16 and a compensation token), the others full. With N ranks the kinds fall
// unevenly on them (rank 0 holds the ring heads, the last rank the compress-once ones).
KvLayout MixedLayout(int layers, int kv_heads) {
  KvLayout layout = KvLayout::Dense(layers, kv_heads, "mixed");
  for (int l = 0; l < layers; ++l) {
    layout.At(l, 0) = KvRetention::Ring(4, 16);
    layout.At(l, kv_heads - 1) = KvRetention::CompressOnce(4, 16);
  }
  return layout;
}

// N ranks of one model with their KV cache and runner.
struct Ranks {
  std::vector<std::unique_ptr<kernels::Backend>> backends;
  std::vector<std::unique_ptr<kernels::Communicator>> comms;
  std::vector<std::unique_ptr<LlamaModel>> models;
  std::unique_ptr<kvcache::KvCache> cache;
  std::unique_ptr<engine::ModelRunner> runner;

  engine::RankDevices Devices() const {
    engine::RankDevices d;
    for (size_t r = 0; r < backends.size(); ++r) {
      d.backends.push_back(backends[r].get());
      d.comms.push_back(comms[r].get());
    }
    return d;
  }
};

Ranks MakeRanks(
    int n,
    const std::function<std::vector<std::unique_ptr<LlamaModel>>(const engine::RankDevices&)>& load,
    const KvLayout& layout, int chunk) {
  Ranks out;
  std::vector<kernels::Backend*> raw;
  for (int r = 0; r < n; ++r) {
    out.backends.push_back(kernels::CreateCpuBackend(1));
    raw.push_back(out.backends.back().get());
  }
  auto comms = kernels::CreateCommunicators(raw);
  REQUIRE(comms.ok());
  out.comms = std::move(comms).value();
  out.models = load(out.Devices());
  REQUIRE(static_cast<int>(out.models.size()) == n);
  kvcache::KvCacheConfig kv = engine::KvConfigFor(out.models.front()->config(), 4096, 16, chunk);
  kv.num_ranks = n;
  out.cache = std::make_unique<kvcache::KvCache>(kv, std::vector<KvLayout>{layout}, raw);
  std::vector<LlamaModel*> ranks;
  for (auto& m : out.models) ranks.push_back(m.get());
  out.runner = std::make_unique<engine::ModelRunner>(ranks, *out.cache);
  return out;
}

// The prompt in chunks (compacting after it as the engine does), then `steps` greedy tokens;
// every step's last-token logits, in order.
struct Run {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> tokens;
};

int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

Run Generate(Ranks& ranks, std::vector<int32_t> tokens, int chunk, int steps) {
  kvcache::SequenceKv kv(*ranks.cache);
  REQUIRE(kv.Reserve(static_cast<int>(tokens.size()) + steps).ok());
  Run out;
  const int prompt = static_cast<int>(tokens.size());
  for (int start = 0; start < prompt; start += chunk) {
    const int n = std::min(chunk, prompt - start);
    const BatchEntry e{&kv, std::span<const int32_t>(tokens).subspan(start, n), start, false};
    out.logits.push_back(ranks.runner->ForwardToHost(std::span<const BatchEntry>(&e, 1)));
  }
  engine::CompactAfterPrompt(*ranks.backends.front(), *ranks.cache, kv, prompt);
  for (int s = 0; s < steps; ++s) {
    tokens.push_back(Argmax(out.logits.back()));
    out.tokens.push_back(tokens.back());
    const int pos = static_cast<int>(tokens.size()) - 1;
    const BatchEntry e{&kv, std::span<const int32_t>(tokens).subspan(pos, 1), pos, false};
    out.logits.push_back(ranks.runner->ForwardToHost(std::span<const BatchEntry>(&e, 1)));
  }
  return out;
}

// Runs `tokens` through 1 rank and through each of `sizes`, and compares: greedy tokens equal,
// every logit within `tol` of one rank's (relative to the largest logit).
void ExpectShardedEqual(
    const std::function<std::vector<std::unique_ptr<LlamaModel>>(const engine::RankDevices&)>& load,
    const KvLayout& layout, const std::vector<int32_t>& tokens, std::initializer_list<int> sizes,
    double tol) {
  const int chunk = 13, steps = 12;
  Ranks one = MakeRanks(1, load, layout, chunk);
  const Run ref = Generate(one, tokens, chunk, steps);
  for (int n : sizes) {
    INFO("ranks " << n << ", layout " << layout.name);
    Ranks sharded = MakeRanks(n, load, layout, chunk);
    const Run got = Generate(sharded, tokens, chunk, steps);
    CHECK(got.tokens == ref.tokens);
    REQUIRE(got.logits.size() == ref.logits.size());
    double max_diff = 0, scale = 0;
    for (size_t i = 0; i < ref.logits.size(); ++i) {
      REQUIRE(got.logits[i].size() == ref.logits[i].size());
      for (size_t j = 0; j < ref.logits[i].size(); ++j) {
        max_diff = std::max(max_diff, double(std::abs(got.logits[i][j] - ref.logits[i][j])));
        scale = std::max(scale, double(std::abs(ref.logits[i][j])));
      }
    }
    INFO("max |logit diff| " << max_diff << " of max |logit| " << scale);
    CHECK(max_diff <= tol * scale);
    CHECK(sharded.cache->num_pages_used() == 0);
  }
}

std::vector<int32_t> RandomTokens(int n, int vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

std::function<std::vector<std::unique_ptr<LlamaModel>>(const engine::RankDevices&)> FromSeed(
    const ModelConfig& config, uint32_t seed) {
  return [config, seed](const engine::RankDevices& d) {
    SeededWeights weights(seed);
    std::vector<std::unique_ptr<LlamaModel>> models;
    const int n = static_cast<int>(d.backends.size());
    for (int r = 0; r < n; ++r) {
      auto m = LlamaModel::Load(config, weights, *d.backends[static_cast<size_t>(r)],
                                {r, n, d.comms[static_cast<size_t>(r)]});
      REQUIRE(m.ok());
      models.push_back(std::move(m).value());
    }
    return models;
  };
}

std::function<std::vector<std::unique_ptr<LlamaModel>>(const engine::RankDevices&)> FromPath(
    const std::string& path) {
  return [path](const engine::RankDevices& d) {
    auto loaded = engine::LoadModel(path, {}, d);
    REQUIRE(loaded.ok());
    std::vector<std::unique_ptr<LlamaModel>> models;
    models.push_back(std::move(loaded->model));
    for (auto& m : loaded->other_ranks) models.push_back(std::move(m));
    return models;
  };
}

TEST_CASE("Tensor parallel: seeded random models at 2 and 4 ranks equal one", "[models]") {
  std::mt19937 rng(std::random_device{}());
  const uint32_t seed = rng();
  INFO("weights seed " << seed);
  const auto tokens = RandomTokens(40, 97, rng);
  for (bool qwen : {false, true}) {
    const ModelConfig c = RandomConfig(8, 4, qwen);
    for (const KvLayout& layout : {KvLayout::Dense(2, 4), MixedLayout(2, 4)}) {
      ExpectShardedEqual(FromSeed(c, seed), layout, tokens, {2, 4}, 1e-5);
    }
  }
}

TEST_CASE("Tensor parallel: TinyStories at 2 and 4 ranks, SmolLM2 at 3, equal one", "[models]") {
  std::mt19937 rng(std::random_device{}());
  const std::string tiny = testing::SharedDir() + "/models/tinystories-656k";
  const auto tiny_tokens = RandomTokens(40, 2048, rng);
  for (const KvLayout& layout : {KvLayout::Dense(2, 4), MixedLayout(2, 4)}) {
    ExpectShardedEqual(FromPath(tiny), layout, tiny_tokens, {2, 4}, 1e-5);
  }
  // SmolLM2-135M has 3 KV heads (9 query heads): 3 ranks is the only split.
  const char* smol = std::getenv("HEADWISE_SMOLLM2_GGUF");  // scripts/test.sh sets it
  INFO("HEADWISE_SMOLLM2_GGUF must name SmolLM2-135M-Instruct's GGUF");
  REQUIRE(smol != nullptr);
  const auto smol_tokens = RandomTokens(30, 49152, rng);
  ExpectShardedEqual(FromPath(smol), MixedLayout(30, 3), smol_tokens, {3}, 1e-4);
}

TEST_CASE("Tensor parallel: a model that does not split is refused with the numbers", "[models]") {
  const Status s = LlamaModel::CheckShardable(RandomConfig(8, 4, false), 3);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_THAT(s.message(), Catch::Contains("tensor-parallel size 3") && Catch::Contains("8"));
  CHECK(LlamaModel::CheckShardable(RandomConfig(8, 4, false), 4).ok());
  CHECK(LlamaModel::CheckShardable(RandomConfig(8, 2, false), 4).code() ==
        StatusCode::kInvalidArgument);  // 2 KV heads over 4 ranks
}

}  // namespace
}  // namespace headwise::models
