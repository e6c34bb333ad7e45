// One engine serving dense, DuoAttention-, StreamingLLM- and RazorAttention-style policies at
// once (A/B arms) on the TinyStories model, against each policy run alone: the check shared by
// the CPU engine test and the CUDA one (engine_test.cc, cuda_golden_test.cc), and used with the
// decode-time selection policies too (sparse_decode_test.cc).
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/model_loader.h"
#include "kernels/backend.h"
#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine::testing_arms {

// TinyStories has 2 layers; heads.json keeps KV heads 1, 2 of layer 0 and 0 of layer 1 full.
constexpr const char* kDuo = R"({
  "schema": "attn-policy/v1", "name": "duo-test",
  "policies": {
    "retrieval": {"storage": {"kind": "full"}},
    "streaming": {"storage": {"kind": "ring", "sink": 4, "window": 24},
                  "decode": {"mode": "retained"},
                  "prefill": {"mode": "retained", "first_chunk_dense": true}}},
  "assignment": {"default": "streaming",
                 "head_list": {"format": "razor_json", "path": "heads.json",
                               "policy": "retrieval"}}})";
constexpr const char* kStreaming = R"({
  "schema": "attn-policy/v1", "name": "streaming-test",
  "policies": {"s": {"storage": {"kind": "ring", "sink": 4, "window": 20},
                     "positions": "reindex", "decode": {"mode": "retained"}}},
  "assignment": {"default": "s"}})";
constexpr const char* kRazor = R"({
  "schema": "attn-policy/v1", "name": "razor-test",
  "policies": {
    "retrieval": {"storage": {"kind": "full"}},
    "compressed": {"storage": {"kind": "compress_once", "sink": 4, "window": 24,
                               "compress": {"compensation": {"enabled": true,
                                                             "weighting": "count"}}},
                   "decode": {"mode": "retained"}, "prefill": {"mode": "dense"}}},
  "assignment": {"default": "compressed",
                 "head_list": {"format": "razor_json", "path": "heads.json",
                               "policy": "retrieval"}}})";

// The four arms, their policy files written to a fresh directory: dense (no file), duo,
// streaming, razor.
inline std::vector<Arm> FourArms() {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("hw-arms-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "heads.json") << R"({"0": [1, 2], "1": [0]})";
  std::vector<Arm> arms = {{"dense", "", 1.0}};
  for (const auto& [name, json] :
       {std::pair{"duo", kDuo}, std::pair{"streaming", kStreaming}, std::pair{"razor", kRazor}}) {
    const auto path = dir / (std::string(name) + ".json");
    std::ofstream(path) << json;
    arms.push_back({name, path.string(), 1.0});
  }
  return arms;
}

// A prompt long enough that rings drop tokens and compaction drops a span: four sentences.
inline std::vector<int32_t> LongPrompt(const tokenizer::Tokenizer& tok, int variant) {
  const std::string sentences[] = {
      "Once upon a time, there was a little girl named Lily. She liked to play in the park. ",
      "Tom had a red ball. He threw it to his dog, and the dog ran after it very fast. ",
      "The sun was hot and the sky was blue. A little bird sang a song in the big tree. ",
      "Ben and Sue were friends. They liked to build a big castle out of sand by the sea. "};
  std::string text;
  for (int i = 0; i < 4; ++i) text += sentences[(variant + i) % 4];
  return tok.Encode(text, true);
}

using BackendFactory = std::function<std::unique_ptr<kernels::Backend>()>;

inline std::unique_ptr<Engine> StartWith(const BackendFactory& make_backend, EngineConfig config) {
  auto backend = make_backend();
  auto loaded =
      LoadModel(testing::SharedDir() + "/models/tinystories-656k", LoadOptions{}, *backend);
  REQUIRE(loaded.ok());
  auto engine = Engine::Start(std::move(loaded).value(), std::move(backend), config);
  INFO(engine.status().ToString());
  REQUIRE(engine.ok());
  return std::move(engine).value();
}

// Greedy generation of each (arm, prompt) request, all submitted at once to `engine`.
inline std::vector<std::vector<int32_t>> RunTogether(
    Engine& engine, const std::vector<int>& arms, const std::vector<std::vector<int32_t>>& prompts,
    int max_tokens) {
  using namespace std::chrono_literals;
  std::vector<std::unique_ptr<RequestStream>> streams;
  for (size_t i = 0; i < arms.size(); ++i) {
    EngineRequest r;
    r.arm = arms[i];
    r.prompt_ids = prompts[i];
    r.params.temperature = 0.0f;
    r.params.max_tokens = max_tokens;
    r.params.ignore_eos = true;
    r.detokenize = false;
    auto s = engine.Submit(std::move(r));
    INFO(s.status().ToString());
    REQUIRE(s.ok());
    streams.push_back(std::move(s).value());
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& s : streams) {
    std::vector<int32_t> ids;
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    bool finished = false;
    while (!finished && std::chrono::steady_clock::now() < deadline) {
      auto ev = s->Next(100ms);
      if (!ev) continue;
      ids.insert(ids.end(), ev->token_ids.begin(), ev->token_ids.end());
      finished = ev->finished;
    }
    REQUIRE(finished);
    out.push_back(std::move(ids));
  }
  return out;
}

// Four long prompts under the policy file `policy_path`, 60 greedy tokens each: first in a pool
// with room for all (`roomy`), then in one that holds about two of them at full length
// (`tight`; TinyStories: 2 layers x 4 KV heads = 8 pages a block of 16 tokens), where sequences
// are preempted and recomputed (checked).
struct PreemptionRuns {
  std::vector<std::vector<int32_t>> roomy, tight;
};
inline PreemptionRuns RunWithPreemption(const BackendFactory& make_backend,
                                        const std::string& policy_path) {
  EngineConfig roomy;
  roomy.attention_policy = policy_path;
  auto engine = StartWith(make_backend, roomy);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 4; ++i) prompts.push_back(LongPrompt(*engine->tokenizer(), i));
  PreemptionRuns runs;
  runs.roomy = RunTogether(*engine, {0, 0, 0, 0}, prompts, 60);
  engine.reset();
  EngineConfig tight = roomy;
  tight.max_model_len = 256;
  tight.num_kv_pages = 2 * 8 * ((static_cast<int>(prompts[0].size()) + 60) / 16 + 2);
  auto small = StartWith(make_backend, tight);
  runs.tight = RunTogether(*small, {0, 0, 0, 0}, prompts, 60);
  CHECK(small->metrics().Value("headwise_preemptions_total") > 0);
  return runs;
}

// What CheckArmsMatchAlone checks besides each arm's tokens together against alone.
struct AloneChecks {
  // At least this many of the arms after arm 0 (dense) must change the text of one prompt
  // against dense (or their policy was not applied).
  int min_differ_from_dense = 0;
  // false (CUDA, whose GEMMs of a different row count may round differently): only report how
  // far a truly alone run agrees, and check exactness against an engine running the same
  // prompts all under that policy instead: the same shapes, so the one difference is the other
  // rows' policies.
  bool alone_exact = true;
  // Checks on the engine running every arm, before any request (e.g. its arms' policy names).
  std::function<void(const Engine&)> check_engine;
};

// One request per arm of `arms` (arm 0 dense; each its own prompt), run together in one engine,
// then each alone in an engine running only its policy: the tokens must be the same. The same
// prompt under every arm at once too (the policies must matter).
inline void CheckArmsMatchAlone(const BackendFactory& make_backend, EngineConfig config,
                                const std::vector<Arm>& arms, const AloneChecks& checks) {
  config.arms = arms;
  auto engine = StartWith(make_backend, config);
  REQUIRE(engine->arms().size() == arms.size());
  if (checks.check_engine) checks.check_engine(*engine);
  const tokenizer::Tokenizer& tok = *engine->tokenizer();
  const int n = static_cast<int>(arms.size());
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> all(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    prompts.push_back(LongPrompt(tok, i));
    all[static_cast<size_t>(i)] = i;
  }
  REQUIRE(prompts[0].size() > 60);
  const int max_tokens = 40;
  const auto together = RunTogether(*engine, all, prompts, max_tokens);
  const std::vector<std::vector<int32_t>> same(static_cast<size_t>(n), prompts[0]);
  const auto same_prompt = RunTogether(*engine, all, same, max_tokens);
  engine.reset();
  int differs_from_dense = 0;
  std::string same_as_dense;
  for (int a = 0; a < n; ++a) {
    const auto at = static_cast<size_t>(a);
    EngineConfig one = config;
    one.arms.clear();
    one.attention_policy = arms[at].policy_path;
    auto alone_engine = StartWith(make_backend, one);
    const auto alone = RunTogether(*alone_engine, {0}, {prompts[at]}, max_tokens);
    const auto alone_same = RunTogether(*alone_engine, {0}, {prompts[0]}, max_tokens);
    INFO("arm " << arms[at].name);
    if (checks.alone_exact) {
      CHECK(together[at] == alone[0]);
      CHECK(same_prompt[at] == alone_same[0]);
    } else {
      const std::vector<int> one_arm(static_cast<size_t>(n), 0);
      const auto shaped = RunTogether(*alone_engine, one_arm, prompts, max_tokens);
      CHECK(together[at] == shaped[at]);
      const auto shaped_same = RunTogether(*alone_engine, one_arm, same, max_tokens);
      CHECK(same_prompt[at] == shaped_same[at]);
      int agree = 0;
      while (agree < max_tokens &&
             together[at][static_cast<size_t>(agree)] == alone[0][static_cast<size_t>(agree)]) {
        ++agree;
      }
      WARN("arm " << arms[at].name << ": together and truly alone agree on the first " << agree
                  << " of " << max_tokens << " tokens");
    }
    if (a == 0) continue;
    if (same_prompt[at] != same_prompt[0]) {
      ++differs_from_dense;
    } else {
      same_as_dense += " " + arms[at].name;
    }
  }
  INFO("arms with dense's text:" << same_as_dense);
  CHECK(differs_from_dense >= checks.min_differ_from_dense);
}

// The four arms of FourArms (dense, Duo, Streaming, Razor), as above; at least two sparse arms
// change the text.
inline void CheckArmsMatchAlone(const BackendFactory& make_backend, const EngineConfig& config,
                                bool alone_exact = true) {
  CheckArmsMatchAlone(
      make_backend, config, FourArms(),
      {.min_differ_from_dense = 2,
       .alone_exact = alone_exact,
       .check_engine = [](const Engine& engine) { CHECK(engine.arms()[1].policy == "duo-test"); }});
}

}  // namespace headwise::engine::testing_arms
