// The pieces of `headwise profile-heads` on constructed inputs whose answers are known by hand:
// attention rows read back through a scattered block table, RazorAttention's masks and
// selection, Retrieval-Head's copy-paste accounting, the weights hash, and the policy loader
// checking a profile's identity. (The whole tool is checked against a numpy forward pass in
// tests/python/profile_heads.py.)
#include "engine/attention/head_profile.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "engine/attention/policy.h"
#include "engine/attention/profile_file.h"
#include "models/weight_hash.h"

namespace headwise::engine::attention {
namespace {

Tensor HostF32(std::vector<float>& v, std::initializer_list<int64_t> shape) {
  return Tensor(v.data(), DType::kF32, Device::kCpu, shape);
}
Tensor HostI32(std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  return Tensor(v.data(), DType::kI32, Device::kCpu, shape);
}

TEST_CASE("Attention rows are recomputed through a scattered block table", "[head_profile]") {
  // One sequence, 2 KV heads, 4 query heads (group 2), D = 2, pages of 2 tokens, 2 pages per
  // block (the heads' pages in a block {1, 0}), logical pages 0, 1, 2 in the blocks starting at
  // pages 4, 0, 2.
  const int hq = 4, hkv = 2, d = 2, page_size = 2, tokens = 5;
  std::vector<int32_t> blocks{4, 0, 2}, head_page{1, 0}, seq_layout{0};
  std::vector<int32_t> heads(static_cast<size_t>(hkv * kernels::kKvHeadInts), 0);
  for (int h = 0; h < hkv; ++h) {
    kernels::KvHead head;
    head.page = head_page[static_cast<size_t>(h)];
    std::memcpy(&heads[static_cast<size_t>(h * kernels::kKvHeadInts)], &head, sizeof(head));
  }
  // Key j of KV head h: (j + 1, h), so q = (1, 0) scores keys by position.
  std::vector<float> k(static_cast<size_t>(6 * page_size * d), 0.0f);
  for (int h = 0; h < hkv; ++h) {
    for (int j = 0; j < tokens; ++j) {
      const int page =
          blocks[static_cast<size_t>(j / page_size)] + head_page[static_cast<size_t>(h)];
      const size_t slot =
          static_cast<size_t>(page) * page_size + static_cast<size_t>(j % page_size);
      float* key = &k[slot * d];
      key[0] = static_cast<float>(j + 1);
      key[1] = static_cast<float>(h);
    }
  }
  std::vector<float> v = k;
  // Two query tokens at positions 2 and 4 (a chunk), heads 0..3 with q = (a, b).
  std::vector<float> q{1, 0, 0, 1, 0, 0, 2, 0, /*pos 2*/
                       0, 0, 0, 0, 0, 3, 1, 1 /*pos 4*/};
  std::vector<int32_t> seq{0, 0}, pos{2, 4}, query_start{0, 2};
  kernels::KvPoolView pool{HostF32(k, {6, page_size, d}), HostF32(v, {6, page_size, d}), page_size};
  kernels::PagedAttentionBatch batch{
      HostI32(seq, {2}), HostI32(pos, {2}),
      kernels::BlockTable{HostI32(heads, {1, hkv, kernels::kKvHeadInts}), HostI32(seq_layout, {1}),
                          HostI32(blocks, {1, 3})},
      HostI32(query_start, {2}), 2};
  const float scale = 0.5f;
  int rows = 0;
  for (int threads : {1, 3}) {
    rows = 0;
    REQUIRE(ForEachAttentionRow(HostF32(q, {2, hq, d}), pool, batch, scale, threads,
                                [&](int64_t t, int h, int32_t p, std::span<const float> probs) {
                                  ++rows;
                                  REQUIRE(p == pos[static_cast<size_t>(t)]);
                                  REQUIRE(probs.size() == static_cast<size_t>(p) + 1);
                                  const float* qv = &q[static_cast<size_t>((t * hq + h) * d)];
                                  const int kv_head = h / 2;
                                  std::vector<double> e;
                                  double sum = 0.0;
                                  for (int j = 0; j <= p; ++j) {
                                    e.push_back(
                                        std::exp(scale * (qv[0] * (j + 1) + qv[1] * kv_head)));
                                    sum += e.back();
                                  }
                                  for (int j = 0; j <= p; ++j) {
                                    CHECK(probs[static_cast<size_t>(j)] ==
                                          Approx(e[static_cast<size_t>(j)] / sum).margin(1e-6));
                                  }
                                })
                .ok());
  }
  CHECK(rows == 2 * hq);
}

TEST_CASE("RazorScorer: echo and induction masks from token identity", "[head_profile]") {
  // tokens: BOS, then R = [5, 6, 5] twice. Scored queries: positions 4..6 (second copy).
  const std::vector<int32_t> tokens{1, 5, 6, 5, 5, 6, 5};
  RazorScorer scorer(tokens, 4, 1, 2);
  // Position 3 (first copy) has an echo at 1 but is not scored.
  scorer.AddRow(0, 0, 3, std::vector<float>{0.1f, 0.2f, 0.3f, 0.4f});
  // Position 4 (token 5): echo {1, 3}, induction {2, 4}.
  scorer.AddRow(0, 0, 4, std::vector<float>{0.0f, 0.1f, 0.2f, 0.3f, 0.4f});
  // Position 6 (token 5): echo {1, 3, 4}, induction {2, 4, 5}.
  scorer.AddRow(0, 1, 6, std::vector<float>{0.0f, 0.05f, 0.1f, 0.15f, 0.2f, 0.25f, 0.25f});
  const double cells = 7.0 * 7.0;
  const HeadMatrix echo = scorer.Echo(), induction = scorer.Induction();
  CHECK(echo[0][0] == Approx((0.1 + 0.3) / cells));
  CHECK(induction[0][0] == Approx((0.2 + 0.4) / cells));
  CHECK(echo[0][1] == Approx((0.05 + 0.15 + 0.2) / cells));
  CHECK(induction[0][1] == Approx((0.1 + 0.2 + 0.25) / cells));
}

TEST_CASE("Razor input: [BOS] + R x n from a seeded range", "[head_profile]") {
  const auto a = RazorTokens(1, 50, 4, 100, 110, 7);
  CHECK(a == RazorTokens(1, 50, 4, 100, 110, 7));
  CHECK(a != RazorTokens(1, 50, 4, 100, 110, 8));
  REQUIRE(a.size() == 201);
  CHECK(a[0] == 1);
  for (size_t i = 1; i < a.size(); ++i) {
    CHECK(a[i] >= 100);
    CHECK(a[i] < 110);
    if (i > 50) CHECK(a[i] == a[i - 50]);
  }
  CHECK(RazorTokens(std::nullopt, 3, 2, 0, 5, 1).size() == 6);
  CHECK(DefaultRazorRange(32000) == std::pair<int32_t, int32_t>{10000, 12500});
  CHECK(DefaultRazorRange(2048) == std::pair<int32_t, int32_t>{1638, 2048});
}

TEST_CASE("RazorAttention selection: global top shares, union, ties by (layer, head)",
          "[head_profile]") {
  // 2 layers x 4 KV heads = 8 heads: 14% -> ceil(1.12) = 2 by induction, 1% -> 1 by echo.
  const HeadMatrix induction{{0.1, 0.9, 0.3, 0.3}, {0.2, 0.8, 0.0, 0.0}};
  const HeadMatrix echo{{0.0, 0.0, 0.0, 0.0}, {0.0, 0.0, 0.0, 0.7}};
  CHECK(SelectRazorHeads(induction, echo, 0.14, 0.01) ==
        std::vector<std::vector<int>>{{1}, {1, 3}});
  // Ties: 3 by induction takes 0-2 before 0-3 (equal 0.3).
  CHECK(SelectRazorHeads(induction, echo, 0.375, 0.0) ==
        std::vector<std::vector<int>>{{1, 2}, {1}});
  // The max over a GQA group of 2.
  CHECK(MaxOverGroups({{0.1, 0.4, 0.3, 0.2}}, 2) == HeadMatrix{{0.4, 0.3}});
}

TEST_CASE("Retrieval score: copy-paste events on constructed attention", "[head_profile]") {
  // prompt: needle span [3, 7) holds tokens 40 41 42 43; token 42 also sits outside it at 9.
  const std::vector<int32_t> prompt{1, 10, 11, 40, 41, 42, 43, 12, 13, 42};
  HeadMatrix score{{0, 0, 0}, {0, 0, 0}};
  // Step 1 generates 42. Head 0-0 attends its copy in the span (event), 0-1 the copy outside
  // the span (none), 0-2 another needle token (none), 1-0 the span's first token 40 (none),
  // 1-1 position 5 again (event), 1-2 the span's end, 7 (outside: none).
  CountCopyPaste({{5, 9, 4}, {3, 5, 7}}, prompt, 3, 7, 42, score);
  // Step 2 generates 43: 0-0 attends 6 (event), the rest do not.
  CountCopyPaste({{6, 0, 0}, {0, 0, 0}}, prompt, 3, 7, 43, score);
  CHECK(score == HeadMatrix{{0.5, 0, 0}, {0, 0.25, 0}});
  // No needle located: nothing counts.
  CountCopyPaste({{5, 5, 5}, {5, 5, 5}}, prompt, -1, -1, 42, score);
  CHECK(score == HeadMatrix{{0.5, 0, 0}, {0, 0.25, 0}});

  CHECK(TopKey(std::vector<float>{0.1f, 0.4f, 0.4f, 0.1f}) == 1);
}

TEST_CASE("Needle span and answer recall", "[head_profile]") {
  // 9 distinct needle tokens: the window one to the left holds 8 (89%, not > 90%).
  const std::vector<int32_t> prompt{7, 8, 9, 20, 21, 22, 23, 24, 25, 26, 27, 28, 9};
  const std::vector<int32_t> needle{20, 21, 22, 23, 24, 25, 26, 27, 28};
  CHECK(FindNeedleSpan(prompt, needle) == std::pair<int32_t, int32_t>{3, 12});
  // Paper rule: the first window above 90% (10 of 11 here), even one token early.
  const std::vector<int32_t> eleven{20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
  const std::vector<int32_t> early{7, 9, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30};
  CHECK(FindNeedleSpan(early, eleven) == std::pair<int32_t, int32_t>{1, 12});
  // Edges merged with their neighbours (99, 98): 7 of 9 at best; the run of needle tokens.
  const std::vector<int32_t> merged{7, 8, 99, 21, 22, 23, 24, 25, 26, 27, 98, 9};
  CHECK(FindNeedleSpan(merged, needle) == std::pair<int32_t, int32_t>{3, 10});
  CHECK(FindNeedleSpan(std::vector<int32_t>{1, 2, 3}, needle) ==
        std::pair<int32_t, int32_t>{-1, -1});

  CHECK(UnigramRecall("73914", " 73914.") == 1.0);
  CHECK(UnigramRecall("73914", "7391") == 0.0);
  CHECK(UnigramRecall("eat a sandwich", "I EAT. a pie") == Approx(2.0 / 3.0));
  CHECK(UnigramRecall("a a b", "a b") == Approx(2.0 / 3.0));
}

TEST_CASE("Weights hash: names, shapes and values all count", "[head_profile]") {
  std::vector<float> w{1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const int64_t d23[] = {2, 3}, d32[] = {3, 2};
  auto digest = [&](const char* name, const int64_t* dims, const std::vector<float>& values) {
    models::WeightsHasher h;
    h.Add(name, dims, 2, values.data(), values.size());
    return h.Digest();
  };
  const uint64_t base = digest("a.weight", d23, w);
  CHECK(base == digest("a.weight", d23, w));
  CHECK(base != digest("b.weight", d23, w));
  CHECK(base != digest("a.weight", d32, w));
  std::vector<float> w2 = w;
  w2[5] = 6.0001f;
  CHECK(base != digest("a.weight", d23, w2));
  // Long inputs: the four lanes and the tail.
  std::vector<float> big(1000, 0.5f);
  const uint64_t h1 = models::HashBytes(big.data(), big.size() * 4, 0);
  big[999] = 0.25f;
  CHECK(h1 != models::HashBytes(big.data(), big.size() * 4, 0));
  big[999] = 0.5f;
  big[1] = 0.25f;
  CHECK(h1 != models::HashBytes(big.data(), big.size() * 4, 0));
  CHECK(models::HashHex(0xabcULL) == "0000000000000abc");
}

TEST_CASE("Policy loader checks a head profile's identity", "[head_profile]") {
  const auto dir = std::filesystem::temp_directory_path() / "hw_head_profile_test";
  std::filesystem::create_directories(dir);
  const ModelShape model{2, 8, 4, 0x1234abcdULL};
  auto write_profile = [&](const ModelShape& made_for) {
    nlohmann::ordered_json doc;
    doc["schema"] = kProfileSchema;
    doc["identity"] = IdentityJson(made_for);
    doc["method"] = "razor";
    doc["heads"] = {{"1", {2}}};
    std::ofstream(dir / "razor.json") << doc.dump();
  };
  const std::string policy = R"({"schema": "attn-policy/v1", "policies": {"a": {}, "b": {}},
      "assignment": {"default": "a",
                     "head_list": {"format": "razor_json", "path": "razor.json", "policy": "b"}}})";

  write_profile(model);
  auto ok = ParsePolicy(policy, model, dir.string(), "p");
  REQUIRE(ok.ok());
  CHECK(ok->At(1, 2).name == "b");
  CHECK(ok->At(0, 2).name == "a");

  ModelShape other = model;
  other.weights_hash = 0x1234abceULL;
  write_profile(other);
  auto bad = ParsePolicy(policy, model, dir.string(), "p");
  REQUIRE(!bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("weights 000000001234abce") &&
                                         Catch::Contains("weights 000000001234abcd") &&
                                         Catch::Contains("another model"));
  // Without the loaded model's hash only the counts are compared.
  ModelShape unknown = model;
  unknown.weights_hash = 0;
  CHECK(ParsePolicy(policy, unknown, dir.string(), "p").ok());
  ModelShape fewer_heads = unknown;
  fewer_heads.num_kv_heads = 2;
  fewer_heads.num_heads = 4;
  CHECK(!ParsePolicy(policy, fewer_heads, dir.string(), "p").ok());

  // A published head list (no schema) loads as it is; a profile without the body it needs
  // (retrieval scores asked of a razor profile) is refused.
  std::ofstream(dir / "razor.json") << R"({"1": [2]})";
  CHECK(ParsePolicy(policy, model, dir.string(), "p").ok());
  write_profile(model);
  const std::string scores = R"({"schema": "attn-policy/v1", "policies": {"a": {}, "b": {}},
      "assignment": {"default": "a", "head_scores": {"format": "retrieval_head_json",
                     "path": "razor.json", "threshold": 0.1, "above": "b"}}})";
  auto missing = ParsePolicy(scores, model, dir.string(), "p");
  REQUIRE(!missing.ok());
  CHECK_THAT(missing.status().message(), Catch::Contains("no \"scores\""));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace headwise::engine::attention
