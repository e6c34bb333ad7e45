// RetrievalAttention's offload heads through the engine on the TinyStories model (2 layers, 8 query
// / 4 KV heads): the prompt is prefilled densely, the span beyond the static set (4 sinks and the
// last 16 tokens) goes to the host tier when the prompt is in, and each decode step merges the
// device's keys with the keys the host retrieved. Retrieving every offloaded key decodes as dense;
// a few keys change the text, and a request decodes the same in a batch of other policies as
// alone; a preempted sequence starts its host state afresh (a new slot), recomputes its decoded
// tokens one per step with retrieval, and goes on with the same text.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/attention/policy.h"
#include "engine/attention_setup.h"
#include "kernels/cpu/cpu_backend.h"
#include "kvcache/offload_tier.h"
#include "tests/engine/policy_arms_util.h"

namespace headwise::engine {
namespace {

using testing_arms::LongPrompt;
using testing_arms::RunTogether;
using testing_arms::StartWith;

// KV heads 0 and 2 of every layer offload; the others keep every key on the device.
std::string Offload(const std::string& index, int top_k, const std::string& granularity,
                    const std::string& search) {
  return fmt::format(R"({{
    "schema": "attn-policy/v1", "name": "ra-{0}-{1}-{2}-{3}",
    "policies": {{
      "ra": {{"storage": {{"kind": "offload",
                          "offload": {{"gpu_static": {{"sink": 4, "recent": 16}},
                                      "index": {{"type": "{0}", "search_L": 64,
                                                "train_stride": 2, "search": "{3}"}}}}}},
              "decode": {{"mode": "select",
                         "selection": {{"method": "ann", "budget": {1},
                                       "granularity": "{2}"}}}}}},
      "full": {{"storage": {{"kind": "full"}}}}}},
    "assignment": {{"default": "full", "head_matrix": {{"format": "duo_tsv", "path": "heads.tsv",
                   "binarize": {{"by": "global_quantile", "sparsity": 0.5}},
                   "map": {{"1": "ra", "0": "full"}}}}}}}})",
                     index, top_k, granularity, search);
}

// The policy files, written to a fresh directory; arm 0 is dense.
std::vector<Arm> Arms(int top_k) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / fmt::format("hw-offload-{}-{}", ::getpid(), top_k);
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "heads.tsv") << "1\t0\t1\t0\n1\t0\t1\t0\n";
  std::vector<Arm> arms = {{"dense", "", 1.0}};
  for (const auto& [name, index, granularity, search] :
       {std::tuple{"exact", "exact", "q_head", "per_query"},
        std::tuple{"roargraph", "roargraph", "q_head", "per_query"},
        std::tuple{"mean", "exact", "kv_head", "per_query"},
        std::tuple{"group", "roargraph", "q_head", "group"}}) {
    const auto path = dir / (std::string(name) + ".json");
    std::ofstream(path) << Offload(index, top_k, granularity, search);
    arms.push_back({name, path.string(), 1.0});
  }
  return arms;
}

std::unique_ptr<kernels::Backend> Cpu() {
  return kernels::CreateCpuBackend(2);
}

TEST_CASE("Offload retrieving every offloaded key decodes as dense", "[engine]") {
  EngineConfig config;
  config.arms = Arms(4096);
  auto engine = StartWith(Cpu, config);
  const std::vector<std::vector<int32_t>> prompts(5, LongPrompt(*engine->tokenizer(), 1));
  REQUIRE(prompts[0].size() > 60);  // beyond the static set: a span is offloaded
  const auto out = RunTogether(*engine, {0, 1, 2, 3, 4}, prompts, 40);
  for (size_t a = 1; a < out.size(); ++a) {
    INFO("arm " << config.arms[a].name);
    CHECK(out[a] == out[0]);
  }
  // What an operator sees of it: four prompts compacted, two indexes built (exact search builds
  // none), each taking time.
  MetricsRegistry& m = engine->metrics();
  CHECK(m.Value("headwise_kv_compaction_seconds_total") > 0);
  CHECK(m.Value("headwise_offload_index_builds_total") == 2);
  CHECK(m.Value("headwise_offload_index_build_seconds_total") > 0);
}

TEST_CASE("Offload with a few keys changes the text; a request decodes the same alone",
          "[engine]") {
  const std::vector<Arm> arms = Arms(2);
  testing_arms::AloneChecks checks;
  checks.min_differ_from_dense = 1;
  testing_arms::CheckArmsMatchAlone(Cpu, EngineConfig{}, arms, checks);
}

TEST_CASE("Offload sequences preempted and recomputed go on with the same text", "[engine]") {
  // top_k 2 retrieves a few keys, so attention without them (a multi-token recompute chunk after
  // the prompt's compaction, which does not retrieve) would change the text.
  for (const int top_k : {4096, 2}) {
    const std::vector<Arm> arms = Arms(top_k);
    for (const size_t arm : {size_t{1}, size_t{2}, size_t{4}}) {  // exact, RoarGraph, group
      INFO("top_k " << top_k << ", " << arms[arm].name);
      const auto [expected, preempted] =
          testing_arms::RunWithPreemption(Cpu, arms[arm].policy_path);
      CHECK(preempted == expected);
    }
  }
}

}  // namespace
}  // namespace headwise::engine

namespace headwise::engine {
namespace {

// A host budget that holds one prompt's offloaded share at a time: the others wait, and each
// request decodes as it does with room for all. A prompt that cannot fit the budget alone is
// refused when submitted.
TEST_CASE("Offload sequences wait for host memory; a prompt beyond it is refused", "[engine]") {
  const std::vector<Arm> arms = Arms(2);
  EngineConfig roomy;
  roomy.attention_policy = arms[1].policy_path;
  auto engine = StartWith(Cpu, roomy);
  const tokenizer::Tokenizer& tok = *engine->tokenizer();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 3; ++i) prompts.push_back(LongPrompt(tok, i));
  const auto expected = RunTogether(*engine, {0, 0, 0}, prompts, 30);
  engine.reset();
  // The host share of the longest prompt, as the engine reserves it (TinyStories: 2 layers,
  // 8 query / 4 KV heads of 16 dims).
  auto policy = attention::LoadPolicyFile(arms[1].policy_path, {2, 8, 4});
  REQUIRE(policy.ok());
  auto layout = KvLayoutFor(*policy);
  REQUIRE(layout.ok());
  kvcache::OffloadTierConfig tier{2, 4, 8, 16, 0.25f, 1, 1};
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  const auto share = static_cast<int64_t>(
      kvcache::OffloadTier::BytesFor(tier, *layout, static_cast<int>(longest)));
  REQUIRE(share > 0);
  EngineConfig tight = roomy;
  tight.cpu_kv_bytes = share + share / 2;  // one prompt at a time
  auto small = StartWith(Cpu, tight);
  CHECK(RunTogether(*small, {0, 0, 0}, prompts, 30) == expected);
  // Alone beyond the budget: refused at once.
  tight.cpu_kv_bytes = share / 4;
  auto tiny = StartWith(Cpu, tight);
  EngineRequest request;
  request.prompt_ids = prompts[0];
  request.params.max_tokens = 8;
  auto refused = tiny->Submit(std::move(request));
  REQUIRE_FALSE(refused.ok());
  CHECK_THAT(refused.status().message(), Catch::Contains("KV cache"));
}

}  // namespace
}  // namespace headwise::engine
