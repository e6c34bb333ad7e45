// Attention-policy files (engine/attention/policy.h): the input is the policy JSON, parsed
// and validated against two fixed model shapes, a small one that the artefacts in
// tests/fuzz/attention_policy_files/ (a DuoAttention gate matrix, a RazorAttention head list,
// Retrieval-Head scores, a head-profile file) match, and Llama-3-8B's, which they do not. A
// set that validates is then read the way the engine reads it.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/attention/policy.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using namespace headwise::engine::attention;

void Use(const PolicySet& set, const ModelShape& shape) {
  if (set.head_policy.size() != static_cast<size_t>(shape.num_layers)) __builtin_trap();
  for (int layer = 0; layer < shape.num_layers; ++layer) {
    if (set.head_policy[layer].size() != static_cast<size_t>(shape.num_kv_heads)) __builtin_trap();
    for (int head = 0; head < shape.num_kv_heads; ++head) {
      const int index = set.head_policy[layer][head];
      if (index < 0 || static_cast<size_t>(index) >= set.policies.size()) __builtin_trap();
      (void)set.At(layer, head).MaxRetainedTokens();
    }
  }
  (void)set.HeadCounts();
  (void)set.IsDense();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string artefacts =
      std::string(HEADWISE_SOURCE_DIR) + "/tests/fuzz/attention_policy_files";
  const std::string text(headwise::fuzz::AsText(data, size));
  for (const ModelShape shape : {ModelShape{4, 8, 2, 0}, ModelShape{32, 32, 8, 0}}) {
    auto set = ParsePolicy(text, shape, artefacts, "fuzz");
    if (set.ok()) {
      Use(*set, shape);
    } else {
      (void)set.status().ToString();
    }
  }
  return 0;
}
