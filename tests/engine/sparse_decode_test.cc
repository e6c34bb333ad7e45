// Decode-time selection (TidalDecode, Quest, Recycled Attention) through the engine on the
// TinyStories model (2 layers, 8 query / 4 KV heads): with budgets beyond the context every
// method decodes exactly as dense; with small budgets each changes the text, and a request
// produces the same tokens in a batch of other policies, alone, and after preemption (its
// selection state is recomputed, never reused).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "tests/engine/policy_arms_util.h"

namespace headwise::engine {
namespace {

using testing_arms::LongPrompt;
using testing_arms::RunTogether;
using testing_arms::StartWith;

// Layer 0 chooses a set per KV head from its logits and attends densely; layer 1 attends it.
std::string Tidal(int budget, int dense_if_len_le) {
  return fmt::format(R"({{
    "schema": "attn-policy/v1", "name": "tidal-{0}",
    "policies": {{
      "select": {{"storage": {{"kind": "full"}},
                  "decode": {{"mode": "select",
                             "selection": {{"method": "exact_logits", "budget": {0},
                                           "unit": "token", "granularity": "kv_head",
                                           "group_reduce": "sum_softmax",
                                           "always_include": {{"sink": 2, "recent": 4,
                                                              "current": true}},
                                           "refresh": {{"every_steps": 1}},
                                           "publish": "tidal"}}}},
                  "dense_if_len_le": {1}}},
      "sparse": {{"storage": {{"kind": "full"}},
                  "decode": {{"mode": "consume", "consume": "tidal"}},
                  "dense_if_len_le": {1}}}}},
    "assignment": {{"default": "sparse", "layers": [{{"layers": [0], "policy": "select"}}]}}}})",
                     budget, dense_if_len_le);
}

std::string Quest(int budget, int dense_if_len_le) {
  return fmt::format(R"({{
    "schema": "attn-policy/v1", "name": "quest-{0}",
    "kv_cache": {{"page_size": 16, "page_metadata": ["kmin", "kmax"]}},
    "policies": {{
      "quest": {{"storage": {{"kind": "full"}},
                 "decode": {{"mode": "select",
                            "selection": {{"method": "page_minmax", "budget": {0},
                                          "unit": "page", "granularity": "kv_head",
                                          "group_reduce": "sum_logits",
                                          "always_include": {{"current": true,
                                                             "last_page": true}},
                                          "refresh": {{"every_steps": 1}}}}}},
                 "dense_if_len_le": {1}}}}},
    "assignment": {{"default": "quest"}}}})",
                     budget, dense_if_len_le);
}

std::string Recycled(int budget, int dense_if_len_le) {
  return fmt::format(R"({{
    "schema": "attn-policy/v1", "name": "recycled-{0}",
    "policies": {{
      "recycled": {{"storage": {{"kind": "full"}},
                    "decode": {{"mode": "select",
                               "selection": {{"method": "recycle", "budget": {0},
                                             "unit": "token", "granularity": "kv_head",
                                             "group_reduce": "sum_softmax",
                                             "always_include": {{"sink": 2, "recent": 2,
                                                                "current": true,
                                                                "since_last_refresh": true}},
                                             "refresh": {{"every_steps": 4}}}}}},
                    "dense_if_len_le": {1}}}}},
    "assignment": {{"default": "recycled"}}}})",
                     budget, dense_if_len_le);
}

// The policy files, written to a fresh directory; arm 0 is dense.
std::vector<Arm> Arms(int budget, int dense_if_len_le) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / fmt::format("hw-select-{}-{}", ::getpid(), budget);
  std::filesystem::create_directories(dir);
  std::vector<Arm> arms = {{"dense", "", 1.0}};
  for (const auto& [name, json] : {std::pair{"tidal", Tidal(budget, dense_if_len_le)},
                                   std::pair{"quest", Quest(budget, dense_if_len_le)},
                                   std::pair{"recycled", Recycled(budget, dense_if_len_le)}}) {
    const auto path = dir / (std::string(name) + ".json");
    std::ofstream(path) << json;
    arms.push_back({name, path.string(), 1.0});
  }
  return arms;
}

std::unique_ptr<kernels::Backend> Cpu() {
  return kernels::CreateCpuBackend(2);
}

TEST_CASE("Selection with budgets beyond the context decodes exactly as dense", "[engine]") {
  // Every selecting step picks every key (budget 4096 > the 512-token context), from the first
  // decode step on (dense_if_len_le 0): the same keys in the same order as dense attention.
  EngineConfig config;
  config.arms = Arms(4096, 0);
  auto engine = StartWith(Cpu, config);
  const tokenizer::Tokenizer& tok = *engine->tokenizer();
  const std::vector<std::vector<int32_t>> prompts(4, LongPrompt(tok, 1));
  const auto out = RunTogether(*engine, {0, 1, 2, 3}, prompts, 40);
  for (size_t a = 1; a < out.size(); ++a) {
    INFO("arm " << config.arms[a].name);
    CHECK(out[a] == out[0]);
  }
}

// The serving metrics say what selection read: as much as dense when the budget covers the
// context, less with a small one; one selecting step per generated token after the first.
TEST_CASE("Selection metrics count selecting steps and the keys they read", "[engine]") {
  for (const int budget : {4096, 32}) {
    EngineConfig config;
    config.arms = Arms(budget, 0);
    auto engine = StartWith(Cpu, config);
    const std::vector<std::vector<int32_t>> prompts(4, LongPrompt(*engine->tokenizer(), 2));
    RunTogether(*engine, {0, 1, 2, 3}, prompts, 20);
    const MetricsRegistry& m = engine->metrics();
    for (size_t a = 0; a < config.arms.size(); ++a) {
      const Labels arm = {{"arm", config.arms[a].name}};
      INFO("arm " << config.arms[a].name << " budget " << budget);
      const double steps = m.Value("headwise_arm_selecting_steps_total", arm);
      const double keys = m.Value("headwise_arm_selected_keys_total", arm);
      const double dense = m.Value("headwise_arm_selecting_dense_keys_total", arm);
      if (a == 0) {
        CHECK(steps == 0);
        continue;
      }
      CHECK(steps == 19);  // the first token comes from the prefill
      CHECK(dense > 0);
      if (budget > 512) {
        CHECK(keys == dense);
      } else {
        CHECK(keys < dense);
        CHECK(keys > 0);
      }
    }
  }
}

TEST_CASE("Small budgets change the text; a request decodes the same in a batch and alone",
          "[engine]") {
  const std::vector<Arm> arms = Arms(32, 0);
  testing_arms::AloneChecks checks;
  // The policy was applied: every sparse arm (32 of 60+ keys) changes the text.
  checks.min_differ_from_dense = static_cast<int>(arms.size()) - 1;
  testing_arms::CheckArmsMatchAlone(Cpu, EngineConfig{}, arms, checks);
}

// A preempted sequence recomputes its prompt and what it generated as a dense prefill, and its
// selection state starts afresh (a new slot, no set yet: never stale). With budgets beyond the
// context selection is dense, so the text must not change, whatever slots and pages the
// sequences get back. With small budgets the recomputed keys of generated tokens (dense now,
// sparse then, in every layer after the first selecting one) and Recycled Attention's set (from
// an earlier step) differ from the first run, so the text may change from the resumption on:
// the sequences must still finish (configs/README.md, compatibility table).
TEST_CASE("Selecting sequences preempted and recomputed start their selection afresh", "[engine]") {
  for (const int budget : {4096, 32}) {
    for (int arm = 1; arm <= 3; ++arm) {
      const std::vector<Arm> arms = Arms(budget, 0);
      INFO("policy " << arms[static_cast<size_t>(arm)].name << " budget " << budget);
      const auto [expected, preempted] =
          testing_arms::RunWithPreemption(Cpu, arms[static_cast<size_t>(arm)].policy_path);
      if (budget > 512) {
        CHECK(preempted == expected);
      } else {
        for (const auto& ids : preempted) CHECK(ids.size() == 60);
      }
    }
  }
}

}  // namespace
}  // namespace headwise::engine
