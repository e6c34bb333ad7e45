// Hugging Face config.json parsing and rotary frequencies.
#include "models/model_config.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "core/json_file.h"
#include "tests/test_util.h"

namespace headwise::models {
namespace {

using nlohmann::json;

json LlamaBase() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "vocab_size": 1000, "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8,
    "num_key_value_heads": 2, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "bos_token_id": 1, "eos_token_id": 2})");
}

TEST_CASE("config: TinyStories config.json as written", "[models][config]") {
  auto j = ReadJsonFile(headwise::testing::SharedDir() + "/models/tinystories-656k/config.json");
  REQUIRE(j.ok());
  auto c = ParseHfConfig(*j);
  REQUIRE(c.ok());
  CHECK(c->architecture == Architecture::kLlama);
  CHECK(c->architecture_name == "LlamaForCausalLM");
  CHECK(c->vocab_size == 2048);
  CHECK(c->hidden_size == 128);
  CHECK(c->intermediate_size == 384);
  CHECK(c->num_layers == 2);
  CHECK(c->num_heads == 8);
  CHECK(c->num_kv_heads == 4);
  CHECK(c->head_dim == 16);
  CHECK(c->max_position_embeddings == 512);
  CHECK(c->rms_norm_eps == 1e-6);
  CHECK(c->rope_theta == 10000.0);
  CHECK(c->rope_scaling.type == RopeScaling::Type::kNone);
  CHECK(c->tie_word_embeddings);
  CHECK_FALSE(c->attention_bias);
  CHECK(c->bos_token_id == 1);
  CHECK(c->eos_token_ids == std::vector<int>{2});
}

TEST_CASE("config: Llama-3-8B config in configs/models", "[models][config]") {
  auto j = ReadJsonFile(headwise::testing::SourcePath("configs/models/llama-3-8b/config.json"));
  REQUIRE(j.ok());
  auto c = ParseHfConfig(*j);
  REQUIRE(c.ok());
  CHECK(c->hidden_size == 4096);
  CHECK(c->num_layers == 32);
  CHECK(c->num_heads == 32);
  CHECK(c->num_kv_heads == 8);
  CHECK(c->head_dim == 128);
  CHECK(c->intermediate_size == 14336);
  CHECK(c->vocab_size == 128256);
  CHECK(c->rope_theta == 500000.0);
  CHECK(c->max_position_embeddings == 8192);
  CHECK_FALSE(c->tie_word_embeddings);
  CHECK(c->eos_token_ids == std::vector<int>{128001});
}

TEST_CASE("config: defaults and derived fields", "[models][config]") {
  json j = LlamaBase();
  j.erase("num_key_value_heads");
  j["eos_token_id"] = {128001, 128009};
  auto c = ParseHfConfig(j);
  REQUIRE(c.ok());
  CHECK(c->num_kv_heads == 8);  // defaults to the query heads
  CHECK(c->head_dim == 32);
  CHECK_FALSE(c->tie_word_embeddings);  // transformers' default for Llama
  CHECK(c->eos_token_ids == std::vector<int>{128001, 128009});

  j["head_dim"] = 64;  // explicit head_dim wins over hidden / heads
  c = ParseHfConfig(j);
  REQUIRE(c.ok());
  CHECK(c->head_dim == 64);

  j = LlamaBase();
  j.erase("architectures");
  j["model_type"] = "llama";
  c = ParseHfConfig(j);
  REQUIRE(c.ok());
  CHECK(c->architecture == Architecture::kLlama);
}

TEST_CASE("config: rope_scaling llama3, linear, null", "[models][config]") {
  json j = LlamaBase();
  j["rope_scaling"] = nullptr;
  REQUIRE(ParseHfConfig(j).ok());
  CHECK(ParseHfConfig(j)->rope_scaling.type == RopeScaling::Type::kNone);

  j["rope_scaling"] = json::parse(R"({"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  auto c = ParseHfConfig(j);
  REQUIRE(c.ok());
  CHECK(c->rope_scaling.type == RopeScaling::Type::kLlama3);
  CHECK(c->rope_scaling.factor == 8.0);
  CHECK(c->rope_scaling.original_max_position_embeddings == 8192);

  j["rope_scaling"] = json::parse(R"({"type": "linear", "factor": 2.0})");
  c = ParseHfConfig(j);
  REQUIRE(c.ok());
  CHECK(c->rope_scaling.type == RopeScaling::Type::kLinear);
  CHECK(c->rope_scaling.factor == 2.0);

  j["rope_scaling"] = json::parse(R"({"rope_type": "yarn", "factor": 4.0})");
  auto bad = ParseHfConfig(j);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(bad.status().message(), Catch::Contains("yarn"));

  j["rope_scaling"] = json::parse(R"({"rope_type": "llama3", "factor": 8.0})");
  bad = ParseHfConfig(j);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("low_freq_factor"));
}

TEST_CASE("config: Qwen2 implies attention bias", "[models][config]") {
  json j = LlamaBase();
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["tie_word_embeddings"] = true;
  j["use_sliding_window"] = false;
  j["sliding_window"] = 4096;
  auto c = ParseHfConfig(j);
  REQUIRE(c.ok());
  CHECK(c->architecture == Architecture::kQwen2);
  CHECK(c->attention_bias);
  CHECK(c->tie_word_embeddings);
}

TEST_CASE("config: active sliding window is refused", "[models][config]") {
  json j = LlamaBase();
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = nullptr;
  REQUIRE(ParseHfConfig(j).ok());  // Mistral v0.2+: no window

  j["sliding_window"] = 4096;  // == max_position_embeddings: never active
  REQUIRE(ParseHfConfig(j).ok());

  j["max_position_embeddings"] = 32768;  // Mistral v0.1
  auto bad = ParseHfConfig(j);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(bad.status().message(), Catch::Contains("sliding_window 4096"));

  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = true;
  bad = ParseHfConfig(j);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("sliding-window"));
}

TEST_CASE("config: unknown architecture is Unimplemented and named", "[models][config][bad]") {
  json j = LlamaBase();
  j["architectures"] = {"GemmaForCausalLM"};
  auto c = ParseHfConfig(j);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(c.status().message(), Catch::Contains("GemmaForCausalLM"));
}

TEST_CASE("config: wrong types and impossible values name the key", "[models][config][bad]") {
  json j = LlamaBase();
  j["hidden_size"] = "big";
  auto c = ParseHfConfig(j);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.status().message(), Catch::Contains("hidden_size"));

  j = LlamaBase();
  j.erase("vocab_size");
  c = ParseHfConfig(j);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.status().message(), Catch::Contains("vocab_size"));

  j = LlamaBase();
  j["num_key_value_heads"] = 3;  // 8 % 3 != 0
  c = ParseHfConfig(j);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.status().message(), Catch::Contains("num_key_value_heads 3"));

  j = LlamaBase();
  j["hidden_size"] = 250;  // not a multiple of 8 heads, and no head_dim
  c = ParseHfConfig(j);
  REQUIRE_FALSE(c.ok());
  CHECK_THAT(c.status().message(), Catch::Contains("hidden_size 250 is not a multiple"));

  j = LlamaBase();
  j["num_attention_heads"] = 0;
  CHECK_FALSE(ParseHfConfig(j).ok());

  CHECK_FALSE(ParseHfConfig(json::array()).ok());
}

TEST_CASE("config: garbled config.json text is a status", "[models][config][bad]") {
  auto j = ParseJson(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": )", "config.json");
  REQUIRE_FALSE(j.ok());
  CHECK(j.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(j.status().message(), Catch::Contains("config.json: invalid JSON"));
  auto missing = ReadJsonFile("/nonexistent/config.json");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
}

TEST_CASE("rope: plain inverse frequencies are theta^(-2i/d)", "[models][rope]") {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 10000.0;
  const std::vector<float> f = RopeInverseFrequencies(c);
  REQUIRE(f.size() == 32);
  for (int i = 0; i < 32; ++i) {
    CHECK(f[i] == Approx(std::pow(10000.0, -2.0 * i / 64)).epsilon(1e-6));
  }
  c.rope_scaling.type = RopeScaling::Type::kLinear;
  c.rope_scaling.factor = 4.0;
  const std::vector<float> lin = RopeInverseFrequencies(c);
  for (int i = 0; i < 32; ++i) CHECK(lin[i] == Approx(f[i] / 4.0).epsilon(1e-6));
}

TEST_CASE("rope: llama3 scaling matches transformers", "[models][rope]") {
  // Llama-3.1-8B; reference values from transformers' _compute_llama3_parameters (float64).
  ModelConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling = {RopeScaling::Type::kLlama3, 8.0, 1.0, 4.0, 8192};
  const std::vector<float> f = RopeInverseFrequencies(c);
  REQUIRE(f.size() == 64);
  const std::pair<int, double> expected[] = {
      {0, 1.0},
      {1, 0.8146172338565447},
      {20, 0.016560440080994446},
      {28, 0.0032114459947525913},  // last unscaled (high frequency)
      {29, 0.002166570763503359},   // first smoothed
      {30, 0.0013718935677611381},
      {34, 0.00017850781276799638},  // last smoothed
      {35, 9.556212353964683e-05},   // first divided by the factor
      {63, 3.068925988914511e-07},
  };
  for (const auto& [i, want] : expected) {
    INFO("index " << i);
    CHECK(f[i] == Approx(want).epsilon(1e-6));
  }
}

}  // namespace
}  // namespace headwise::models
