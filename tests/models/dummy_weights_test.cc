// --load-format dummy: seeded random weights at real shapes from a config alone.
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <string>

#include "models/weight_source.h"
#include "tests/test_util.h"

namespace headwise::models {
namespace {

std::string Llama3Config() {
  return headwise::testing::SourcePath("configs/models/llama-3-8b");
}

std::vector<float> LoadVector(WeightSource& w, const std::string& name,
                              const std::vector<int64_t>& shape) {
  auto t = w.Load(name, shape);
  REQUIRE(t.ok());
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return std::vector<float>(t->data, t->data + n);
}

TEST_CASE("dummy: Llama-3-8B shapes from config.json alone", "[models][dummy]") {
  auto files = OpenModel(Llama3Config(), LoadFormat::kDummy, 7);
  REQUIRE(files.ok());
  CHECK(files->format == "dummy");
  const ModelConfig& c = files->config;
  CHECK(c.num_layers == 32);
  const auto expected = ExpectedWeights(c);
  CHECK(expected.size() == 1 + 32 * 9 + 1 + 1);
  for (const WeightSpec& w : expected) CHECK(files->weights->Has(w.name));
  CHECK_FALSE(files->weights->Has("model.layers.32.mlp.up_proj.weight"));

  // The config.json path itself works too.
  CHECK(OpenModel(Llama3Config() + "/config.json", LoadFormat::kDummy).ok());
}

TEST_CASE("dummy: values are deterministic per (seed, tensor) and look like N(0, 0.02)",
          "[models][dummy]") {
  auto a = OpenModel(Llama3Config(), LoadFormat::kDummy, 7);
  auto b = OpenModel(Llama3Config(), LoadFormat::kDummy, 7);
  auto other = OpenModel(Llama3Config(), LoadFormat::kDummy, 8);
  REQUIRE((a.ok() && b.ok() && other.ok()));
  const std::string k = "model.layers.3.self_attn.k_proj.weight";
  const std::vector<int64_t> shape = {1024, 4096};
  const std::vector<float> va = LoadVector(*a->weights, k, shape);
  CHECK(va == LoadVector(*b->weights, k, shape));
  CHECK(va != LoadVector(*other->weights, k, shape));
  CHECK(va != LoadVector(*a->weights, "model.layers.4.self_attn.k_proj.weight", shape));
  double sum = 0, sq = 0;
  for (float x : va) {
    sum += x;
    sq += static_cast<double>(x) * x;
  }
  const double mean = sum / va.size();
  const double std = std::sqrt(sq / va.size() - mean * mean);
  CHECK(std::fabs(mean) < 1e-3);
  CHECK(std == Approx(0.02).epsilon(0.01));

  const std::vector<float> norm =
      LoadVector(*a->weights, "model.layers.0.input_layernorm.weight", {4096});
  CHECK(norm == std::vector<float>(4096, 1.0f));
}

TEST_CASE("dummy: tied embeddings serve lm_head.weight as the embedding", "[models][dummy]") {
  auto files = OpenModel(headwise::testing::SourcePath("tests/golden/models/llama-sharded"),
                         LoadFormat::kDummy, 3);
  REQUIRE(files.ok());
  REQUIRE(files->config.tie_word_embeddings);
  const std::vector<int64_t> shape = {files->config.vocab_size, files->config.hidden_size};
  REQUIRE(files->weights->Has("lm_head.weight"));
  CHECK(LoadVector(*files->weights, "lm_head.weight", shape) ==
        LoadVector(*files->weights, "model.embed_tokens.weight", shape));
}

TEST_CASE("dummy: the largest Llama-3-8B tensor is drawn quickly", "[models][dummy]") {
  auto files = OpenModel(Llama3Config(), LoadFormat::kDummy, 1);
  REQUIRE(files.ok());
  const auto start = std::chrono::steady_clock::now();
  auto t = files->weights->Load("lm_head.weight", {128256, 4096});  // 525M values, 2 GiB
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  REQUIRE(t.ok());
  WARN("lm_head.weight [128256, 4096] drawn in " << seconds << " s");
  CHECK(seconds < 20);
}

TEST_CASE("dummy bad: a shape other than the config's is refused", "[models][dummy][bad]") {
  auto files = OpenModel(Llama3Config(), LoadFormat::kDummy);
  REQUIRE(files.ok());
  auto t = files->weights->Load("model.layers.0.mlp.down_proj.weight", {14336, 4096});
  REQUIRE_FALSE(t.ok());
  CHECK(t.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(t.status().message(), Catch::Contains("'model.layers.0.mlp.down_proj.weight'") &&
                                       Catch::Contains("[4096, 14336]") &&
                                       Catch::Contains("[14336, 4096]"));
}

TEST_CASE("dummy bad: a directory without config.json", "[models][dummy][bad]") {
  auto files =
      OpenModel(headwise::testing::SharedDir() + "/models/stories260k-gguf", LoadFormat::kDummy);
  REQUIRE_FALSE(files.ok());
  CHECK(files.status().code() == StatusCode::kNotFound);
  CHECK_THAT(files.status().message(), Catch::Contains("no config.json"));
}

}  // namespace
}  // namespace headwise::models
