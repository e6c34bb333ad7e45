// Attention-policy files: parsing, validation errors, and the head assignment from the
// published DuoAttention and Retrieval-Head artefacts in ../shared/patterns.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/attention/policy.h"
#include "engine/attention_setup.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace headwise::engine::attention {
namespace {

const ModelShape kLlama3{32, 32, 8};   // Llama-3(.1)-8B
const ModelShape kMistral{32, 32, 8};  // Mistral-7B-v0.2
const ModelShape kLlama2{32, 32, 32};  // Llama-2-7B (MHA)

std::string Patterns(const std::string& rel) {
  return testing::SharedDir() + "/patterns/" + rel;
}

std::vector<std::vector<double>> ReadTsv(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::vector<double>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<double> row;
    double v;
    while (ls >> v) row.push_back(v);
    if (!row.empty()) rows.push_back(row);
  }
  return rows;
}

const char* kStreaming = R"({
  "schema": "attn-policy/v1",
  "kv_cache": {"page_size": 16, "rope_storage": "auto"},
  "policies": {
    "streaming": {
      "storage": {"kind": "ring", "sink": 4, "window": 2044},
      "positions": "reindex",
      "decode": {"mode": "retained"},
      "prefill": {"mode": "retained", "first_chunk_dense": true}
    }
  },
  "assignment": {"default": "streaming"}
})";

std::string DuoPolicy(const std::string& tsv, double sparsity) {
  return fmt::format(R"({{
  "schema": "attn-policy/v1",
  "kv_cache": {{"page_size": 16, "rope_storage": "post_rope"}},
  "policies": {{
    "retrieval": {{"storage": {{"kind": "full"}}, "positions": "original",
                  "decode": {{"mode": "dense"}}, "prefill": {{"mode": "dense"}}}},
    "streaming": {{"storage": {{"kind": "ring", "sink": 64, "window": 256}}, "positions": "original",
                  "decode": {{"mode": "retained"}},
                  "prefill": {{"mode": "retained", "first_chunk_dense": true}}}}
  }},
  "assignment": {{
    "default": "streaming",
    "head_matrix": {{"format": "duo_tsv", "path": "{}", "clip": [0.0, 1.0],
                    "binarize": {{"by": "global_quantile", "sparsity": {}}},
                    "map": {{"1": "retrieval", "0": "streaming"}}}}
  }},
  "reorder_heads_by_class": true
}})",
                     tsv, sparsity);
}

Status ErrorOf(const std::string& text, const ModelShape& shape = kLlama3) {
  auto set = ParsePolicy(text, shape, "", "test");
  return set.ok() ? Status::Ok() : set.status();
}

TEST_CASE("StreamingLLM policy: every head a reindexed sink + window ring", "[policy]") {
  auto set = ParsePolicy(kStreaming, kLlama3, "", "streaming-llm");
  REQUIRE(set.ok());
  CHECK(set->name == "streaming-llm");
  CHECK(set->policies.size() == 1);
  CHECK(set->HeadCounts() == std::vector<int>{32 * 8});
  const Policy& p = set->At(31, 7);
  CHECK(p.storage == StorageKind::kRing);
  CHECK(p.positions == Positions::kReindex);
  CHECK(p.first_chunk_dense);
  CHECK(p.MaxRetainedTokens() == 2048);
  CHECK_FALSE(set->IsDense());
  CHECK(DensePolicySet(kLlama3).IsDense());
}

TEST_CASE("DuoAttention TSV: global-quantile binarisation of the published Llama-3.1-8B gates",
          "[policy]") {
  const std::string tsv =
      Patterns("duo-attention/Meta-Llama-3.1-8B-Instruct/full_attention_heads.tsv");
  const auto gates = ReadTsv(tsv);
  REQUIRE(gates.size() == 32);
  for (double sparsity : {0.5, 0.75, 0.25}) {
    auto set = ParsePolicy(DuoPolicy(tsv, sparsity), kLlama3, "", "duo");
    REQUIRE(set.ok());
    const int n = 32 * 8;
    const int streaming = static_cast<int>(std::ceil(sparsity * (n - 1)));
    INFO("sparsity " << sparsity);
    CHECK(set->HeadCounts() == std::vector<int>{n - streaming, streaming});
    // Every retrieval head's gate is at least every streaming head's, and among equal gates the
    // earlier (layer, head) is the streaming one.
    double max_stream = -1.0, min_full = 2.0;
    int last_stream_flat = -1, first_full_at_tie = n;
    for (int l = 0; l < 32; ++l) {
      for (int h = 0; h < 8; ++h) {
        const double g = std::clamp(gates[l][h], 0.0, 1.0);
        if (set->At(l, h).name == "streaming") max_stream = std::max(max_stream, g);
        if (set->At(l, h).name == "retrieval") min_full = std::min(min_full, g);
      }
    }
    CHECK(max_stream <= min_full);
    for (int l = 0; l < 32; ++l) {
      for (int h = 0; h < 8; ++h) {
        if (std::clamp(gates[l][h], 0.0, 1.0) != max_stream) continue;
        if (set->At(l, h).name == "streaming") last_stream_flat = l * 8 + h;
        if (set->At(l, h).name == "retrieval")
          first_full_at_tie = std::min(first_full_at_tie, l * 8 + h);
      }
    }
    CHECK(last_stream_flat < first_full_at_tie);
  }
  // Relative to the policy file's directory.
  const std::filesystem::path dir = std::filesystem::path(tsv).parent_path();
  auto rel = ParsePolicy(DuoPolicy("full_attention_heads.tsv", 0.5), kLlama3, dir.string(), "duo");
  REQUIRE(rel.ok());
  CHECK(rel->HeadCounts() == std::vector<int>{128, 128});
}

TEST_CASE("BinarizeGates: edge sparsities and clipping", "[policy]") {
  const std::vector<std::vector<double>> gates = {{0.5, -0.001, 0.5}, {1.2, 0.5, 0.0}};
  auto count_full = [](const std::vector<std::vector<bool>>& f) {
    int c = 0;
    for (const auto& r : f) c += static_cast<int>(std::count(r.begin(), r.end(), true));
    return c;
  };
  CHECK(count_full(BinarizeGates(gates, 0.0)) == 6);
  CHECK(count_full(BinarizeGates(gates, 1.0)) == 0);
  const auto half = BinarizeGates(gates, 0.5);  // ceil(0.5 * 5) = 3 streaming
  CHECK(count_full(half) == 3);
  // -0.001 clips to 0 and ties with 0.0: both streaming, then the first 0.5 (layer 0, head 0).
  CHECK_FALSE(half[0][1]);
  CHECK_FALSE(half[1][2]);
  CHECK_FALSE(half[0][0]);
  CHECK(half[0][2]);
  CHECK(half[1][0]);
  CHECK(half[1][1]);
}

TEST_CASE("Retrieval-Head scores: query heads averaged, max over the GQA group, threshold",
          "[policy]") {
  const std::string path = Patterns("retrieval-head/Mistral-7B-v0.2-hf.json");
  const std::string text = fmt::format(R"({{
  "schema": "attn-policy/v1",
  "policies": {{
    "full": {{"storage": {{"kind": "full"}}, "decode": {{"mode": "dense"}}}},
    "streaming": {{"storage": {{"kind": "ring", "sink": 64, "window": 256}}, "decode": {{"mode": "retained"}}}}
  }},
  "assignment": {{
    "default": "streaming",
    "head_scores": {{"format": "retrieval_head_json", "path": "{}",
                    "score": "mean", "q_to_kv": "max", "threshold": 0.1, "above": "full"}}
  }}
}})",
                                       path);
  auto set = ParsePolicy(text, kMistral, "", "rh");
  REQUIRE(set.ok());
  // ALGORITHMS.md §4.2, computed from the same file: 43 query heads score above 0.1.
  std::ifstream in(path);
  const nlohmann::json scores = nlohmann::json::parse(in);
  int query_heads_above = 0;
  std::vector<std::vector<bool>> expect(32, std::vector<bool>(8, false));
  for (auto it = scores.begin(); it != scores.end(); ++it) {
    double sum = 0;
    for (double s : *it) sum += s;
    const double mean = it->empty() ? 0.0 : sum / static_cast<double>(it->size());
    const auto dash = it.key().find('-');
    const int l = std::stoi(it.key().substr(0, dash)), h = std::stoi(it.key().substr(dash + 1));
    if (mean > 0.1) {
      ++query_heads_above;
      expect[l][h / 4] = true;
    }
  }
  CHECK(query_heads_above == 43);
  int full = 0;
  for (int l = 0; l < 32; ++l) {
    for (int h = 0; h < 8; ++h) {
      CHECK((set->At(l, h).name == "full") == expect[l][h]);
      full += expect[l][h] ? 1 : 0;
    }
  }
  CHECK(set->HeadCounts() == std::vector<int>{full, 32 * 8 - full});
  CHECK(full > 0);
  CHECK(full <= 43);
}

TEST_CASE("RazorAttention head list and layer lists", "[policy]") {
  const auto dir = std::filesystem::temp_directory_path() / "hw_policy_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "heads.json") << R"({"0": [1, 3], "5": [0]})";
  const std::string text = R"({
  "schema": "attn-policy/v1",
  "policies": {
    "retrieval": {"storage": {"kind": "full"}, "positions": "original", "decode": {"mode": "dense"}},
    "local": {
      "storage": {"kind": "compress_once", "sink": 4, "window": 251,
                  "compress": {"selector": "sink_recent",
                               "compensation": {"enabled": true, "weighting": "count"}}},
      "positions": "original", "decode": {"mode": "retained"}, "prefill": {"mode": "dense"},
      "dense_if_len_le": 256
    }
  },
  "assignment": {
    "default": "local",
    "layers": [{"layers": [30, 31], "policy": "retrieval"}],
    "head_list": {"format": "razor_json", "path": "heads.json", "policy": "retrieval"}
  },
  "calibration": {"type": "razor_echo_induction", "random_len": 2500}
})";
  auto set = ParsePolicy(text, kLlama3, dir.string(), "razor");
  REQUIRE(set.ok());
  CHECK(set->At(0, 1).name == "retrieval");
  CHECK(set->At(0, 3).name == "retrieval");
  CHECK(set->At(5, 0).name == "retrieval");
  CHECK(set->At(0, 0).name == "local");
  CHECK(set->At(31, 5).name == "retrieval");
  CHECK(set->HeadCounts() == std::vector<int>{256 - 19, 3 + 16});  // policies in name order
  const Policy& local = set->At(1, 1);
  CHECK(local.compensation);
  CHECK(local.compensation_by_count);
  CHECK(local.MaxRetainedTokens() == 256);
  CHECK(local.dense_if_len_le == 256);

  std::ofstream(dir / "bad_heads.json") << R"({"0": [8]})";
  auto bad = ParsePolicy(std::string(text).replace(text.find("heads.json"), 10, "bad_heads.json"),
                         kLlama3, dir.string(), "razor");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("8 is not a KV head of this model (0..7)"));
}

// The example files in configs/policies, against Llama-3.1-8B's shape. Their pattern paths
// assume ../shared beside the checkout; here they point at wherever the shared data is.
TEST_CASE("Shipped policy files parse and assign as documented", "[policy]") {
  auto load = [](const std::string& file) {
    const std::string path = testing::SourcePath("configs/policies/" + file);
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    std::string s = text.str();
    REQUIRE_FALSE(s.empty());
    for (size_t at; (at = s.find("../../../shared/")) != std::string::npos;) {
      s.replace(at, 16, testing::SharedDir() + "/");
    }
    auto set = ParsePolicy(s, kLlama3, std::filesystem::path(path).parent_path().string(), "x");
    INFO(file << ": " << (set.ok() ? "" : set.status().message()));
    REQUIRE(set.ok());
    return std::move(set).value();
  };
  const PolicySet dense = load("dense.json");
  CHECK(dense.name == "dense");
  CHECK(dense.IsDense());
  const PolicySet streaming = load("streaming-llm.json");
  CHECK(streaming.HeadCounts() == std::vector<int>{256});
  CHECK(streaming.At(0, 0).MaxRetainedTokens() == 2048);
  const PolicySet duo = load("duo-llama-3.1-8b.json");
  CHECK(duo.name == "duo-llama-3.1-8b-s50");
  CHECK(duo.HeadCounts() == std::vector<int>{128, 128});
}

TEST_CASE("Policy sets become KV layouts in the policy's own words", "[policy]") {
  const std::string tsv =
      Patterns("duo-attention/Meta-Llama-3.1-8B-Instruct/full_attention_heads.tsv");
  auto duo = ParsePolicy(DuoPolicy(tsv, 0.5), kLlama3, "", "duo");
  REQUIRE(duo.ok());
  auto layout = KvLayoutFor(*duo);
  REQUIRE(layout.ok());
  CHECK(layout->name == duo->name);
  int ring_heads = 0;
  for (int l = 0; l < 32; ++l) {
    for (int h = 0; h < 8; ++h) {
      const kernels::KvRetention& r = layout->At(l, h);
      CHECK(r.ring() == (duo->At(l, h).name == "streaming"));
      if (r.ring()) {
        ++ring_heads;
        CHECK(r.sink == 64);
        CHECK(r.window == 256);
        CHECK_FALSE(r.reindex());  // DuoAttention keeps original positions
      } else {
        CHECK(r == kernels::KvRetention{});
      }
    }
  }
  CHECK(ring_heads == 128);
  CHECK(layout->CountStorage(kernels::kStorageRing) == 128);
  auto streaming = ParsePolicy(kStreaming, kLlama3, "", "streaming-llm");
  REQUIRE(streaming.ok());
  auto rings = KvLayoutFor(*streaming);
  REQUIRE(rings.ok());
  CHECK(rings->all_reindexed_rings());
  for (const kernels::KvRetention& r : rings->heads) {
    CHECK((r.ring() && r.reindex() && r.sink == 4 && r.window == 2044));
  }
  auto dense = KvLayoutFor(DensePolicySet(kLlama3));
  REQUIRE(dense.ok());
  CHECK(dense->all_full());
  PolicySet razor = DensePolicySet(kLlama3);
  razor.policies[0].storage = StorageKind::kCompressOnce;
  razor.policies[0].sink = 4;
  razor.policies[0].window = 251;
  razor.policies[0].compensation = true;
  auto compressed = KvLayoutFor(razor);
  REQUIRE(compressed.ok());
  const kernels::KvRetention& r = compressed->At(5, 0);
  CHECK((r.compress_once() && r.sink == 4 && r.window == 251 && r.compensation == 1 &&
         r.compensation_by_count == 1));
  // Ring heads of two sizes in one layout share no ring pages: refused, naming the policy.
  PolicySet two_rings = *duo;
  const auto streaming_policy =
      std::find_if(two_rings.policies.begin(), two_rings.policies.end(),
                   [](const attention::Policy& p) { return p.name == "streaming"; });
  REQUIRE(streaming_policy != two_rings.policies.end());
  attention::Policy narrow = *streaming_policy;
  narrow.name = "narrow";
  narrow.window = 128;
  two_rings.policies.push_back(narrow);
  two_rings.head_policy[3][0] = static_cast<int>(two_rings.policies.size()) - 1;
  const auto refused = KvLayoutFor(two_rings);
  CHECK_THAT(refused.status().message(), Catch::Contains("different sizes"));
  CHECK_THAT(refused.status().message(), Catch::Contains(duo->name));
}

TEST_CASE("Policy files: precise errors", "[policy]") {
  using Catch::Contains;
  const std::string ok = kStreaming;
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = ok;
    const auto at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  CHECK(ErrorOf(ok).ok());
  CHECK_THAT(ErrorOf(with("attn-policy/v1", "attn-policy/v2")).message(),
             Contains("schema \"attn-policy/v2\" is not attn-policy/v1"));
  CHECK_THAT(ErrorOf(with("\"sink\": 4", "\"sinks\": 4")).message(),
             Contains("policies.streaming.storage.sink: required"));
  CHECK_THAT(ErrorOf(with("\"sink\": 4", "\"sink\": 4, \"sinks\": 4")).message(),
             Contains("policies.streaming.storage.sinks: unknown field"));
  CHECK_THAT(ErrorOf(with("\"sink\": 4", "\"sink\": -1")).message(),
             Contains("storage.sink: -1 is out of range"));
  CHECK_THAT(ErrorOf(with("\"window\": 2044", "\"window\": 0")).message(),
             Contains("storage.window: 0 is out of range"));
  CHECK_THAT(ErrorOf(with("\"kind\": \"ring\"", "\"kind\": \"rung\"")).message(),
             Contains("\"rung\" is not one of full, ring, compress_once, offload"));
  const Status evict = ErrorOf(with("\"kind\": \"ring\"", "\"kind\": \"evict\""));
  CHECK(evict.code() == StatusCode::kUnimplemented);
  CHECK_THAT(evict.message(), Contains("not supported by this build"));
  CHECK_THAT(ErrorOf(with("{\"default\": \"streaming\"}", "{\"default\": \"dense\"}")).message(),
             Contains("assignment.default: no policy named \"dense\""));
  CHECK_THAT(ErrorOf(with("\"mode\": \"retained\"}", "\"mode\": \"dense\"}")).message(),
             Contains("decode mode dense needs full storage"));
  CHECK_THAT(
      ErrorOf(with("\"kind\": \"ring\", \"sink\": 4, \"window\": 2044", "\"kind\": \"full\""))
          .message(),
      Contains("decode mode retained needs a storage that drops tokens"));
  CHECK_THAT(
      ErrorOf(with("\"rope_storage\": \"auto\"", "\"rope_storage\": \"post_rope\"")).message(),
      Contains("positions reindex needs pre-RoPE keys"));
  CHECK_THAT(ErrorOf(with("{\"default\": \"streaming\"}",
                          "{\"default\": \"streaming\", \"layers\": [{\"layers\": [32], "
                          "\"policy\": \"streaming\"}]}"))
                 .message(),
             Contains("32 is not a layer of this model (0..31)"));
  CHECK_THAT(ErrorOf("{\"schema\": \"attn-policy/v1\"").message(), Contains("test"));
  CHECK_THAT(ErrorOf("[1, 2]").message(), Contains("expected a JSON object"));

  // A pattern file for another model shape.
  const std::string llama2 =
      Patterns("duo-attention/Llama-2-7B-32K-Instruct/full_attention_heads.tsv");
  CHECK_THAT(ErrorOf(DuoPolicy(llama2, 0.5)).message(),
             Contains("row 1 has 32 gates, the model has 8 KV heads per layer"));
  CHECK(ErrorOf(DuoPolicy(llama2, 0.75), kLlama2).ok());
  CHECK_THAT(ErrorOf(DuoPolicy(llama2, 1.5), kLlama2).message(),
             Contains("1.5 is not a fraction of heads in [0, 1]"));
  CHECK(ErrorOf(DuoPolicy("/nonexistent/heads.tsv", 0.5)).code() == StatusCode::kNotFound);

  // Through a file: the message names it.
  const auto path = std::filesystem::temp_directory_path() / "hw_policy_bad.json";
  std::ofstream(path) << with("\"window\": 2044", "\"window\": \"big\"");
  auto loaded = LoadPolicyFile(path.string(), kLlama3);
  REQUIRE_FALSE(loaded.ok());
  CHECK_THAT(loaded.status().message(), Contains(path.string()));
  CHECK_THAT(loaded.status().message(), Contains("storage.window: expected an integer"));
}

// Files named by a policy, or given as the policy: regular files of bounded size only, refused
// at once by name otherwise (/dev/zero used to be read for 2.2 GiB before failing).
TEST_CASE("Policy files and head matrices: devices, FIFOs, directories, big files",
          "[policy][limits]") {
  using Catch::Matchers::Contains;
  const auto tmp = std::filesystem::temp_directory_path();
  const std::string fifo = (tmp / ("hw_policy_fifo_" + std::to_string(::getpid()))).string();
  std::remove(fifo.c_str());
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const std::string big = (tmp / ("hw_policy_big_" + std::to_string(::getpid()))).string();
  {
    std::ofstream out(big, std::ios::binary);
    out << std::string((size_t{16} << 20) + 1, ' ');
  }
  struct Case {
    std::string path;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"/dev/zero", "/dev/zero: is a character device, not a regular file"},
      {fifo, fifo + ": is a FIFO, not a regular file"},
      {tmp.string(), tmp.string() + ": is a directory, not a regular file"},
      {big, big + ": 16777217 bytes is over the limit of 16777216 for "}};
  for (const Case& c : cases) {
    INFO(c.path);
    const auto t0 = std::chrono::steady_clock::now();
    const Status matrix = ErrorOf(DuoPolicy(c.path, 0.5));
    auto policy = LoadPolicyFile(c.path, kLlama3);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
    CHECK(matrix.code() == StatusCode::kInvalidArgument);
    CHECK_THAT(matrix.message(), Contains(c.expect));
    REQUIRE_FALSE(policy.ok());
    CHECK(policy.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(policy.status().message(), Contains(c.expect));
  }
  CHECK_THAT(ErrorOf(DuoPolicy(big, 0.5)).message(), Contains("for a head matrix"));
  CHECK_THAT(LoadPolicyFile(big, kLlama3).status().message(), Contains("for an attention policy"));
  std::remove(fifo.c_str());
  std::remove(big.c_str());

  // A policy nested 100,000 deep is refused before it is parsed.
  std::string deep = R"({"schema": "attn-policy/v1", "x": )";
  deep += std::string(100000, '[') + std::string(100000, ']') + "}";
  CHECK_THAT(ErrorOf(deep).message(), Contains("nested deeper than the limit of 128"));
}

// ---- Decode-time selection (decode mode select / consume) ----

const ModelShape kQwen05{24, 14, 2};  // Qwen2.5-Coder-0.5B-Instruct
const ModelShape kQwen15{28, 12, 2};  // Qwen2.5-Coder-1.5B-Instruct

// ALGORITHMS.md §10.3's examples, verbatim (Llama-3-8B: 32 layers).
const char* kTidalExample = R"({
  "schema": "attn-policy/v1",
  "policies": {
    "dense": {"storage": {"kind": "full"}, "decode": {"mode": "dense"}},
    "tidal_select": {"storage": {"kind": "full"},
                     "decode": {"mode": "select",
                                "selection": {"method": "exact_logits", "budget": 128, "unit": "token",
                                              "granularity": "q_head", "group_reduce": "none",
                                              "always_include": {"sink": 0, "recent": 0, "current": true},
                                              "refresh": {"every_steps": 1}, "publish": "tidal"},
                                "attend_selected_in_this_layer": false}},
    "tidal_sparse": {"storage": {"kind": "full"}, "decode": {"mode": "consume", "consume": "tidal"}}
  },
  "assignment": {
    "default": "tidal_sparse",
    "layers": [
      {"layers": [0, 1], "policy": "dense"},
      {"layers": [2], "policy": "tidal_select"},
      {"layers": [13], "policy": "tidal_select"}
    ]
  }
})";

const char* kRecycledExample = R"({
  "schema": "attn-policy/v1",
  "policies": {
    "recycled": {"storage": {"kind": "full"},
                 "decode": {"mode": "select",
                            "selection": {"method": "recycle", "budget": 4096, "unit": "token",
                                          "granularity": "kv_head", "group_reduce": "sum_softmax",
                                          "always_include": {"sink": 0, "recent": 0, "current": true,
                                                             "since_last_refresh": true},
                                          "refresh": {"every_steps": 10,
                                                      "similarity": {"metric": "cos", "threshold": 0.9}}}},
                 "prefill": {"mode": "dense", "seed_selection_from_last_prompt_token": true}}
  },
  "assignment": {"default": "recycled"}
})";

const char* kQuestExample = R"({
  "schema": "attn-policy/v1",
  "kv_cache": {"page_size": 16, "page_metadata": ["kmin", "kmax"]},
  "policies": {
    "dense": {"storage": {"kind": "full"}, "decode": {"mode": "dense"}},
    "quest": {"storage": {"kind": "full"},
              "decode": {"mode": "select",
                         "selection": {"method": "page_minmax", "budget": 2048, "unit": "page",
                                       "granularity": "kv_head", "group_reduce": "sum_logits",
                                       "always_include": {"current": true, "last_page": true},
                                       "refresh": {"every_steps": 1}}},
              "dense_if_len_le": 2048}
  },
  "assignment": {"default": "quest", "layers": [{"layers": [0, 1], "policy": "dense"}]}
})";

// `text` with the first `from` replaced by `to` (which must be there).
std::string With(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  INFO("replacing " << from);
  REQUIRE(at != std::string::npos);
  return text.replace(at, from.size(), to);
}

PolicySet LoadShipped(const std::string& file, const ModelShape& shape) {
  auto set = LoadPolicyFile(testing::SourcePath("configs/policies/" + file), shape);
  INFO(file << ": " << (set.ok() ? "" : set.status().message()));
  REQUIRE(set.ok());
  return std::move(set).value();
}

kvcache::KvLayout LayoutOf(const PolicySet& set) {
  auto layout = KvLayoutFor(set);
  INFO(set.name << ": " << (layout.ok() ? "" : layout.status().message()));
  REQUIRE(layout.ok());
  return std::move(layout).value();
}

TEST_CASE("Decode-time selection: the ALGORITHMS.md examples load", "[policy][select]") {
  for (const ModelShape& shape : {kLlama3, kQwen05, kQwen15}) {
    INFO(shape.num_layers << " layers");
    auto tidal = ParsePolicy(kTidalExample, shape, "", "tidal");
    REQUIRE(tidal.ok());
    const Policy& select = tidal->At(2, 0);
    CHECK(select.decode == DecodeMode::kSelect);
    CHECK(select.selection.method == SelectionMethod::kExactLogits);
    CHECK(select.selection.budget == 128);
    CHECK_FALSE(select.selection.page_unit);
    CHECK(select.selection.granularity == SelectionGranularity::kQHead);
    CHECK(select.selection.group_reduce == GroupReduce::kNone);
    CHECK(select.selection.publish == "tidal");
    CHECK(select.dense_if_len_le == 128);  // its budget
    const Policy& consume = tidal->At(shape.num_layers - 1, 1);
    CHECK(consume.decode == DecodeMode::kConsume);
    CHECK(consume.consume == "tidal");
    CHECK(consume.dense_if_len_le == 128);  // inherited from the publisher
    CHECK(tidal->At(1, 0).decode == DecodeMode::kDense);
    CHECK(tidal->At(1, 0).dense_if_len_le == 0);
    CHECK(tidal->At(13, 0).name == "tidal_select");

    auto recycled = ParsePolicy(kRecycledExample, shape, "", "recycled");
    REQUIRE(recycled.ok());
    const Selection& r = recycled->At(0, 0).selection;
    CHECK(r.method == SelectionMethod::kRecycle);
    CHECK(r.budget == 4096);
    CHECK(r.since_last_refresh);
    CHECK(r.refresh_every_steps == 10);
    CHECK(r.refresh_by_similarity);
    CHECK(r.similarity_threshold == 0.9);
    CHECK(r.group_reduce == GroupReduce::kSumSoftmax);
    CHECK(r.publish.empty());

    auto quest = ParsePolicy(kQuestExample, shape, "", "quest");
    REQUIRE(quest.ok());
    const Selection& q = quest->At(2, 1).selection;
    CHECK(q.method == SelectionMethod::kPageMinmax);
    CHECK(q.page_unit);
    CHECK(q.last_page);
    CHECK(q.sink == 0);
    CHECK(q.group_reduce == GroupReduce::kSumLogits);
    CHECK(quest->At(2, 1).dense_if_len_le == 2048);
    CHECK(quest->At(0, 1).decode == DecodeMode::kDense);
  }
  // Defaults: storage full, unit from the method, group_reduce from the granularity and the
  // method, the current token and the last page attended, every_steps 1, dense_if_len_le the
  // budget.
  const char* minimal_quest = R"({"schema": "attn-policy/v1",
    "kv_cache": {"page_metadata": ["kmax", "kmin"]},
    "policies": {"quest": {"decode": {"mode": "select",
                                      "selection": {"method": "page_minmax", "budget": 64}}}},
    "assignment": {"default": "quest"}})";
  auto bare = ParsePolicy(minimal_quest, kLlama3, "", "quest");
  REQUIRE(bare.ok());
  const Policy& minimal = bare->At(5, 0);
  CHECK(minimal.storage == StorageKind::kFull);
  CHECK(minimal.prefill == PrefillMode::kDense);
  CHECK(minimal.selection.page_unit);
  CHECK(minimal.selection.granularity == SelectionGranularity::kKvHead);
  CHECK(minimal.selection.group_reduce == GroupReduce::kSumLogits);
  CHECK(minimal.selection.last_page);
  CHECK(minimal.selection.current);
  CHECK(minimal.selection.refresh_every_steps == 1);
  CHECK(minimal.dense_if_len_le == 64);
  auto q_head =
      ParsePolicy(With(kTidalExample, R"("group_reduce": "none",)", ""), kLlama3, "", "t");
  REQUIRE(q_head.ok());
  CHECK(q_head->At(2, 0).selection.group_reduce == GroupReduce::kNone);
  auto kv_head =
      ParsePolicy(With(kTidalExample, R"("granularity": "q_head", "group_reduce": "none",)", ""),
                  kLlama3, "", "t");
  REQUIRE(kv_head.ok());
  CHECK(kv_head->At(2, 0).selection.granularity == SelectionGranularity::kKvHead);
  CHECK(kv_head->At(2, 0).selection.group_reduce == GroupReduce::kSumSoftmax);
  // Seeding from the prompt may be false too; the page metadata in any order.
  CHECK(ErrorOf(With(kRecycledExample, "token\": true", "token\": false")).ok());
  CHECK(ErrorOf(With(kQuestExample, R"(["kmin", "kmax"])", R"(["kmax", "kmin"])")).ok());
  // The similarity rule may be given and switched off.
  auto off = ParsePolicy(
      With(kRecycledExample, "\"threshold\": 0.9", "\"threshold\": 0.9, \"enabled\": false"),
      kLlama3, "", "r");
  REQUIRE(off.ok());
  CHECK_FALSE(off->At(0, 0).selection.refresh_by_similarity);
}

TEST_CASE("Decode-time selection: contradictions and unsupported options are refused",
          "[policy][select]") {
  using Catch::Contains;
  struct Case {
    const char* base;
    std::string from, to;
    std::string expect;
    StatusCode code = StatusCode::kInvalidArgument;
  };
  const std::string sel = "policies.tidal_select.decode.selection";
  const std::string rsel = "policies.recycled.decode.selection";
  const std::string qsel = "policies.quest.decode.selection";
  const StatusCode kUnimpl = StatusCode::kUnimplemented;
  const std::vector<Case> cases = {
      // method
      {kTidalExample, "\"exact_logits\"", "\"token_vote\"",
       sel + ".method: \"token_vote\" is part of attn-policy/v1 but not supported", kUnimpl},
      {kTidalExample, "\"exact_logits\"", "\"ann\"", sel + ".group_reduce: not for method ann"},
      {kTidalExample, "\"exact_logits\"", "\"cluster\"", sel + ".method: \"cluster\" is part",
       kUnimpl},
      {kTidalExample, "\"exact_logits\"", "\"exact\"",
       sel + ".method: \"exact\" is not one of exact_logits, recycle, page_minmax, ann"},
      {kTidalExample, "\"method\": \"exact_logits\", ", "", sel + ".method: required"},
      // budget and unit
      {kTidalExample, "\"budget\": 128", "\"budget\": 0", sel + ".budget: 0 is out of range"},
      {kTidalExample, "\"budget\": 128, ", "", sel + ".budget: required"},
      {kTidalExample, "\"unit\": \"token\"", "\"unit\": \"page\"",
       sel + ".unit: page with method exact_logits"},
      {kQuestExample, "\"unit\": \"page\"", "\"unit\": \"token\"",
       qsel + ".unit: token with method page_minmax"},
      // granularity and group_reduce
      {kTidalExample, "\"granularity\": \"q_head\"", "\"granularity\": \"layer\"",
       sel + ".granularity: \"layer\" is part of attn-policy/v1 but not supported", kUnimpl},
      {kTidalExample, "\"group_reduce\": \"none\"", "\"group_reduce\": \"sum_softmax\"",
       sel + ".group_reduce: sum_softmax with granularity q_head"},
      {kRecycledExample, "\"group_reduce\": \"sum_softmax\"", "\"group_reduce\": \"none\"",
       rsel + ".group_reduce: none with granularity kv_head"},
      {kQuestExample, "\"group_reduce\": \"sum_logits\"", "\"group_reduce\": \"sum_softmax\"",
       qsel + ".group_reduce: sum_softmax with page_minmax"},
      {kRecycledExample, "\"group_reduce\": \"sum_softmax\"", "\"group_reduce\": \"mean\"",
       rsel + ".group_reduce: \"mean\" is not one of"},
      // always_include
      {kTidalExample, "\"current\": true", "\"current\": false",
       sel + ".always_include.current: false: the current token is always attended"},
      {kTidalExample, "\"current\": true", "\"current\": true, \"last_page\": true",
       sel + ".always_include.last_page: only for method page_minmax"},
      {kQuestExample, "\"last_page\": true", "\"last_page\": false",
       qsel + ".always_include.last_page: false: page_minmax always attends the page holding"},
      {kQuestExample, "\"last_page\": true", "\"last_page\": true, \"recent\": 4",
       qsel + ".always_include.recent: 4 with page_minmax"},
      {kTidalExample, "\"current\": true", "\"current\": true, \"since_last_refresh\": true",
       sel + ".always_include.since_last_refresh: only for method recycle"},
      {kTidalExample, "\"current\": true", "\"current\": true, \"sinks\": 4",
       sel + ".always_include.sinks: unknown field"},
      {kTidalExample, "\"sink\": 0", "\"sink\": -1",
       sel + ".always_include.sink: -1 is out of range"},
      // refresh
      {kTidalExample, "\"every_steps\": 1", "\"every_steps\": 2",
       sel + ".refresh.every_steps: 2 with method exact_logits: it chooses its set every step"},
      {kQuestExample, "\"every_steps\": 1", "\"every_steps\": 4",
       qsel + ".refresh.every_steps: 4 with method page_minmax"},
      {kRecycledExample, "\"every_steps\": 10", "\"every_steps\": 0",
       rsel + ".refresh.every_steps: 0 is out of range"},
      {kTidalExample, "\"every_steps\": 1",
       "\"every_steps\": 1, \"similarity\": {\"threshold\": 0.9}",
       sel + ".refresh.similarity: only for method recycle"},
      {kRecycledExample, "\"threshold\": 0.9", "\"threshold\": 1.0",
       rsel + ".refresh.similarity.threshold: 1 is not in (-1, 1)"},
      {kRecycledExample, "\"threshold\": 0.9", "\"threshold\": -1",
       rsel + ".refresh.similarity.threshold: -1 is not in (-1, 1)"},
      {kRecycledExample, ", \"threshold\": 0.9", "",
       rsel + ".refresh.similarity.threshold: required"},
      {kRecycledExample, "\"metric\": \"cos\"", "\"metric\": \"dot\"",
       rsel + ".refresh.similarity.metric: \"dot\" is not one of cos"},
      {kRecycledExample, "\"threshold\": 0.9", "\"threshold\": 0.9, \"enabled\": 1",
       rsel + ".refresh.similarity.enabled: expected true or false"},
      // publish, pool, query_rope_position
      {kTidalExample, ", \"publish\": \"tidal\"", "",
       sel + ".publish: required with method exact_logits"},
      {kTidalExample, "\"publish\": \"tidal\"", "\"publish\": \"\"",
       sel + ".publish: expected a channel name"},
      {kRecycledExample, "\"unit\": \"token\",", "\"unit\": \"token\", \"publish\": \"r\",",
       rsel + ".publish: only method exact_logits publishes"},
      {kTidalExample, "\"publish\": \"tidal\"",
       "\"publish\": \"tidal\", \"pool\": {\"type\": \"max\", \"k\": 0}",
       sel + ".pool: pooling scores before top-k is not supported by this build", kUnimpl},
      {kTidalExample, "\"publish\": \"tidal\"",
       "\"publish\": \"tidal\", \"query_rope_position\": \"recent\"",
       sel + ".query_rope_position: \"recent\" is part of attn-policy/v1 but not supported",
       kUnimpl},
      {kTidalExample, "\"publish\": \"tidal\"", "\"publish\": \"tidal\", \"topk\": 3",
       sel + ".topk: unknown field"},
      // decode fields
      {kTidalExample, "\"attend_selected_in_this_layer\": false",
       "\"attend_selected_in_this_layer\": true",
       "policies.tidal_select.decode.attend_selected_in_this_layer: true (attending only the "
       "fresh selection",
       kUnimpl},
      {kQuestExample, "\"refresh\": {\"every_steps\": 1}}}",
       "\"refresh\": {\"every_steps\": 1}}, \"attend_selected_in_this_layer\": false}",
       "policies.quest.decode.attend_selected_in_this_layer: only for methods exact_logits and "
       "recycle: page_minmax and ann attend what they select"},
      {kTidalExample, "\"consume\", \"consume\": \"tidal\"}",
       "\"consume\", \"consume\": \"tidal\", \"attend_selected_in_this_layer\": false}",
       "policies.tidal_sparse.decode.attend_selected_in_this_layer: only for decode mode select "
       "(this policy's mode is consume)"},
      {kTidalExample, "\"attend_selected_in_this_layer\": false", "\"emit\": \"logits\"",
       "policies.tidal_select.decode.emit: side outputs", kUnimpl},
      {kTidalExample, "{\"mode\": \"dense\"}", "{\"mode\": \"dense\", \"consume\": \"tidal\"}",
       "policies.dense.decode.consume: only for decode mode consume (this policy's mode is dense)"},
      {kTidalExample, "\"consume\", \"consume\": \"tidal\"}",
       "\"consume\", \"consume\": \"tidal\", \"selection\": {}}",
       "policies.tidal_sparse.decode.selection: only for decode mode select"},
      {kTidalExample, "\"consume\", \"consume\": \"tidal\"}", "\"consume\"}",
       "policies.tidal_sparse.decode.consume: required with decode mode consume"},
      {kTidalExample, "{\"mode\": \"dense\"}", "{\"mode\": \"select\"}",
       "policies.dense.decode.selection: required with decode mode select"},
      {kTidalExample, "\"consume\": \"tidal\"", "\"consume\": \"tide\"",
       "policies.tidal_sparse.decode.consume: no exact_logits policy publishes \"tide\""},
      // storage, positions, prefill
      {kTidalExample, "\"tidal_select\": {\"storage\": {\"kind\": \"full\"}",
       "\"tidal_select\": {\"storage\": {\"kind\": \"ring\", \"sink\": 4, \"window\": 64}",
       "policies.tidal_select.storage.kind: decode mode select needs storage full"},
      {kTidalExample, "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}",
       "\"tidal_sparse\": {\"storage\": {\"kind\": \"compress_once\", \"sink\": 4, \"window\": 64}",
       "policies.tidal_sparse.storage.kind: decode mode consume needs storage full"},
      {kTidalExample, "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}",
       "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}, \"positions\": \"reindex\"",
       "policies.tidal_sparse.positions: decode mode consume needs positions original"},
      {kTidalExample, "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}",
       "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}, \"prefill\": {\"mode\": "
       "\"retained\"}",
       "policies.tidal_sparse.prefill.mode: decode mode consume needs prefill mode dense ("},
      {kRecycledExample, "\"mode\": \"dense\", \"seed", "\"mode\": \"select_chunks\", \"seed",
       "policies.recycled.prefill.mode: \"select_chunks\" is part of attn-policy/v1", kUnimpl},
      {kTidalExample, "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}",
       "\"tidal_sparse\": {\"storage\": {\"kind\": \"full\"}, \"prefill\": "
       "{\"seed_selection_from_last_prompt_token\": true}",
       "policies.tidal_sparse.prefill.seed_selection_from_last_prompt_token: only for decode "
       "selection method recycle"},
      // budgets: the token unit counts sink and recent (the current token at least)
      {kTidalExample, "\"budget\": 128", "\"budget\": 1",
       sel + ".budget: budget 1 leaves nothing to select: always_include sink 0 + recent 1"},
      {kTidalExample, "\"sink\": 0, \"recent\": 0", "\"sink\": 64, \"recent\": 64",
       sel + ".budget: budget 128 leaves nothing to select: always_include sink 64 + recent 64"},
      {kQuestExample, "\"budget\": 2048", "\"budget\": 2040",
       qsel +
           ".budget: budget 2040 and always_include.sink 0 must be multiples of the page size 16"},
      {kQuestExample, "\"current\": true,", "\"current\": true, \"sink\": 4,",
       qsel + ".budget: budget 2048 and always_include.sink 4 must be multiples"},
      {kQuestExample, "\"budget\": 2048", "\"budget\": 16",
       qsel + ".budget: budget 16 leaves no page to select: sink 0 + the last page + one page need "
              "32"},
      {kQuestExample, "\"page_size\": 16", "\"page_size\": 48",
       qsel +
           ".budget: budget 2048 and always_include.sink 0 must be multiples of the page size 48"},
      // page summaries
      {kQuestExample, ", \"page_metadata\": [\"kmin\", \"kmax\"]", "",
       "kv_cache.page_metadata: required: policy \"quest\" selects pages"},
      {kTidalExample, "\"policies\"",
       "\"kv_cache\": {\"page_metadata\": [\"kmin\", \"kmax\"]}, \"policies\"",
       "kv_cache.page_metadata: no policy selects pages"},
      {kQuestExample, "[\"kmin\", \"kmax\"]", "[\"kmin\"]",
       "kv_cache.page_metadata: page_minmax's bounds need both kmin and kmax"},
      {kQuestExample, "[\"kmin\", \"kmax\"]", "[\"kmin\", \"kmin\", \"kmax\"]",
       "kv_cache.page_metadata: \"kmin\" twice"},
      {kQuestExample, "[\"kmin\", \"kmax\"]", "[\"kmin\", \"kmax\", \"kmean\"]",
       "kv_cache.page_metadata: \"kmean\" is part of attn-policy/v1 but not supported", kUnimpl},
      {kQuestExample, "[\"kmin\", \"kmax\"]", "[\"count\", \"kmin\", \"kmax\"]",
       "kv_cache.page_metadata: \"count\" is part", kUnimpl},
      {kQuestExample, "[\"kmin\", \"kmax\"]", "[\"kmin\", \"kmax\", \"kmid\"]",
       "kv_cache.page_metadata: \"kmid\" is not one of kmin, kmax, kmean, count"},
      {kQuestExample, "[\"kmin\", \"kmax\"]", "\"kmin\"",
       "kv_cache.page_metadata: expected a list"},
      // dense_if_len_le: one value for every selecting policy of a file
      {kTidalExample, "\"consume\", \"consume\": \"tidal\"}}",
       "\"consume\", \"consume\": \"tidal\"}, \"dense_if_len_le\": 64}",
       "policies.tidal_sparse.dense_if_len_le: 64 differs from policy \"tidal_select\"'s 128: a "
       "consume policy attends densely up to its publisher's length"},
      {kTidalExample, "\"tidal_sparse\": {",
       "\"reselect\": {\"storage\": {\"kind\": \"full\"}, \"decode\": {\"mode\": \"select\", "
       "\"selection\": {\"method\": \"exact_logits\", \"budget\": 256, \"publish\": \"tidal\"}}}, "
       "\"tidal_sparse\": {",
       "policies.tidal_select.dense_if_len_le: 128 (its budget) differs from policy \"reselect\"'s "
       "256 (its budget)"},
      // the assignment: consumers after a publisher of the same KV head
      {kTidalExample, "{\"layers\": [2], \"policy\": \"tidal_select\"},", "",
       "assignment: layer 2 KV head 0 (policy \"tidal_sparse\") consumes channel \"tidal\", which "
       "no exact_logits policy publishes for KV head 0 at an earlier layer"},
      {kTidalExample, "{\"layers\": [0, 1], \"policy\": \"dense\"},", "",
       "assignment: layer 0 KV head 0 (policy \"tidal_sparse\") consumes channel \"tidal\""},
  };
  for (const Case& c : cases) {
    const std::string text = With(c.base, c.from, c.to);
    INFO(c.from << " -> " << c.to);
    const Status status = ErrorOf(text);
    CHECK(status.code() == c.code);
    CHECK_THAT(status.message(), Contains(c.expect));
  }
  // Giving the inherited or the same value is fine.
  CHECK(ErrorOf(With(kTidalExample, "\"consume\", \"consume\": \"tidal\"}}",
                     "\"consume\", \"consume\": \"tidal\"}, \"dense_if_len_le\": 128}"))
            .ok());
  CHECK(ErrorOf(With(kTidalExample, "\"attend_selected_in_this_layer\": false}}",
                     "\"attend_selected_in_this_layer\": false}, \"dense_if_len_le\": 0}"))
            .ok());
}

// Head-level assignments: consume heads whose own KV head publishes nothing earlier, and a
// layer whose heads choose sets by different rules.
TEST_CASE("Decode-time selection: the assignment is checked per (layer, KV head)",
          "[policy][select]") {
  using Catch::Contains;
  const auto dir = std::filesystem::temp_directory_path() / "hw_policy_select_test";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "layer2_head1.json") << R"({"2": [1]})";
  const std::string head_list = R"(, "head_list": {"format": "razor_json", "path": ")" +
                                (dir / "layer2_head1.json").string() + R"(", "policy": "POLICY"}})";
  auto with_head = [&](const std::string& policy, const std::string& extra_policy) {
    std::string text =
        With(kTidalExample, "]\n  }\n}", "]" + With(head_list, "POLICY", policy) + "\n}");
    if (!extra_policy.empty())
      text = With(text, "\"tidal_sparse\": {", extra_policy + "\"tidal_sparse\": {");
    return text;
  };
  // Layer 2 KV head 1 dense: layer 3's KV head 1 has nothing to consume (KV head 0 does).
  const Status dense_head = ErrorOf(with_head("dense", ""));
  CHECK_THAT(dense_head.message(),
             Contains("assignment: layer 3 KV head 1 (policy \"tidal_sparse\") consumes channel "
                      "\"tidal\", which no exact_logits policy publishes for KV head 1"));
  // Layer 2 KV head 1 recycles while KV head 0 selects: one set per layer, one rule.
  const std::string recycle_policy =
      R"("recycle": {"storage": {"kind": "full"}, "decode": {"mode": "select", "selection":
         {"method": "recycle", "budget": 128, "granularity": "q_head",
          "refresh": {"every_steps": 4}}}}, )";
  const Status mixed = ErrorOf(with_head("recycle", recycle_policy));
  CHECK_THAT(mixed.message(),
             Contains("assignment: layer 2: KV head 0 (policy \"tidal_select\", exact_logits) and "
                      "KV head 1 (policy \"recycle\", recycle) choose sets by different rules"));
  // Granularity too: a kv_head exact_logits head beside the q_head one.
  const std::string kv_select =
      R"("kv_select": {"storage": {"kind": "full"}, "decode": {"mode": "select", "selection":
         {"method": "exact_logits", "budget": 128, "publish": "tidal"}}}, )";
  CHECK_THAT(ErrorOf(with_head("kv_select", kv_select)).message(),
             Contains("layer 2: KV head 0 (policy \"tidal_select\", exact_logits) and KV head 1 "
                      "(policy \"kv_select\", exact_logits) choose sets by different rules"));
  // Another channel on KV head 1 at layer 2: its layer-3 consumer of "tidal" has none below.
  const std::string other_channel = With(kv_select, "\"kv_select\"", "\"other\"");
  CHECK_THAT(ErrorOf(with_head("other", With(With(other_channel, "\"publish\": \"tidal\"",
                                                  "\"publish\": \"other\""),
                                             "\"budget\": 128",
                                             "\"budget\": 128, "
                                             "\"granularity\": \"q_head\"")))
                 .message(),
             Contains("layer 3 KV head 1 (policy \"tidal_sparse\") consumes channel \"tidal\""));
}

// The 1.5B's head profiles are committed beside its policies: DuoAttention keeps the 37 KV heads
// with any retrieval score in retrieval-profile.json (made on the H100, bench/results/
// quality-qwen2.5-coder-1.5b-2026-12-07-h100.md), RazorAttention the 29 of razor-profile.json.
TEST_CASE(
    "The shipped Qwen2.5-Coder-1.5B DuoAttention and RazorAttention policies read their profiles",
    "[policy]") {
  for (const auto& [file, full_heads] : {std::pair{"qwen2.5-coder-1.5b-instruct/duo.json", 37},
                                         std::pair{"qwen2.5-coder-1.5b-instruct/razor.json", 29}}) {
    INFO(file);
    const PolicySet set = LoadShipped(file, kQwen15);
    int full = 0;
    for (int l = 0; l < kQwen15.num_layers; ++l) {
      for (int h = 0; h < kQwen15.num_kv_heads; ++h)
        full += set.At(l, h).storage == StorageKind::kFull;
    }
    CHECK(full == full_heads);
  }
}

TEST_CASE("Decode-time selection: the shipped Qwen2.5-Coder policies load", "[policy][select]") {
  for (const auto& [dir, shape] :
       {std::pair{std::string("qwen2.5-coder-0.5b-instruct/"), kQwen05},
        std::pair{std::string("qwen2.5-coder-1.5b-instruct/"), kQwen15}}) {
    INFO(dir);
    const int mid = shape.num_layers / 2;
    const PolicySet tidal = LoadShipped(dir + "tidal.json", shape);
    for (int l = 0; l < shape.num_layers; ++l) {
      const DecodeMode expect = l < 2                ? DecodeMode::kDense
                                : l == 2 || l == mid ? DecodeMode::kSelect
                                                     : DecodeMode::kConsume;
      CHECK(tidal.At(l, 1).decode == expect);
    }
    const Selection& s = tidal.At(mid, 0).selection;
    CHECK(s.budget == 2048);
    CHECK(s.granularity == SelectionGranularity::kKvHead);
    CHECK(s.group_reduce == GroupReduce::kSumSoftmax);
    const PolicySet quest = LoadShipped(dir + "quest.json", shape);
    CHECK(quest.At(1, 0).decode == DecodeMode::kDense);
    CHECK(quest.At(2, 0).selection.method == SelectionMethod::kPageMinmax);
    CHECK(quest.At(2, 0).selection.budget == 2048);
    const PolicySet recycled = LoadShipped(dir + "recycled.json", shape);
    const Selection& r = recycled.At(0, 0).selection;
    CHECK(r.method == SelectionMethod::kRecycle);
    CHECK(r.refresh_every_steps == 10);
    CHECK(r.since_last_refresh);
    CHECK_FALSE(r.refresh_by_similarity);
  }
}

// The decode speed benchmark's files (scripts/device/run-sparse-decode-bench.sh): every file in
// configs/policies/llama-3-8b loads against Llama-3-8B's shape, becomes a KV layout, and is what
// its name says (method, budget, layers, sets per KV or query head); each selects at 32K keys.
TEST_CASE("Decode-time selection: the shipped Llama-3-8B benchmark policies load",
          "[policy][select]") {
  const std::string dir = "llama-3-8b/";
  std::vector<std::string> files;
  for (const auto& entry :
       std::filesystem::directory_iterator(testing::SourcePath("configs/policies/" + dir))) {
    if (entry.path().extension() == ".json") files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  CHECK(files == std::vector<std::string>{"quest-1024.json", "quest-256.json", "quest-4096.json",
                                          "recycled-1024.json", "recycled-4096.json",
                                          "tidal-1024.json", "tidal-256.json", "tidal-4096.json",
                                          "tidal-qhead-4096.json"});
  for (const std::string& file : files) {
    INFO(file);
    const PolicySet set = LoadShipped(dir + file, kLlama3);
    const kvcache::KvLayout layout = LayoutOf(set);
    const std::string stem = file.substr(0, file.size() - 5);
    const int budget = std::stoi(stem.substr(stem.rfind('-') + 1));
    CHECK(layout.all_full());
    CHECK(layout.max_select_budget() == budget);
    CHECK(layout.select_min_len == budget);  // sequences longer than the budget select
    CHECK(layout.select_min_len < 32768);
    for (int l = 0; l < 32; ++l) {
      for (int h = 0; h < 8; ++h) {
        INFO("layer " << l << " KV head " << h);
        const kernels::KvSelect& k = layout.SelectAt(l, h);
        if (stem.rfind("tidal", 0) == 0) {
          const bool q_head = stem.rfind("tidal-qhead", 0) == 0;
          CHECK(k.decode == (l < 2               ? kernels::kDecodeDense
                             : l == 2 || l == 13 ? kernels::kDecodeSelect
                                                 : kernels::kDecodeConsume));
          if (l < 2) continue;
          CHECK(k.set == (l < 13 ? 0 : 1));
          CHECK(k.per_q_head == (q_head ? 1 : 0));
          if (!q_head) CHECK(k.reduce == kernels::kReduceSumSoftmax);
          CHECK(k.recent == 1);
          CHECK(k.sink == 0);
        } else if (stem.rfind("quest", 0) == 0) {
          CHECK(k.decode == (l < 2 ? kernels::kDecodeDense : kernels::kDecodePages));
          if (l < 2) continue;
          CHECK(k.reduce == kernels::kReduceSumLogits);
          CHECK(k.per_q_head == 0);
        } else {
          REQUIRE(stem.rfind("recycled", 0) == 0);
          CHECK(k.decode == kernels::kDecodeRecycle);
          CHECK(k.set == l);
          CHECK(k.refresh_every == 10);
          CHECK(k.since_refresh == 1);
          CHECK(k.refresh_below_cos == 0);
          CHECK(k.reduce == kernels::kReduceSumSoftmax);
        }
        CHECK(k.budget == budget);
      }
    }
    if (stem.rfind("quest", 0) == 0) CHECK(layout.selects_pages());
  }
}

// The KvSelect of a TidalDecode file: layers 0-1 dense, 2 and the middle layer choose (sets 0
// and 1), the others read the set of the latest selection layer below them.
TEST_CASE("KvLayoutFor: TidalDecode selects and consumes", "[policy][select]") {
  const PolicySet set = LoadShipped("qwen2.5-coder-0.5b-instruct/tidal.json", kQwen05);
  const kvcache::KvLayout layout = LayoutOf(set);
  REQUIRE(layout.selects_any());
  CHECK(layout.num_select_sets() == 2);
  CHECK(layout.max_select_budget() == 2048);
  CHECK(layout.select_min_len == 2048);
  CHECK(layout.all_full());
  for (int l = 0; l < 24; ++l) {
    for (int h = 0; h < 2; ++h) {
      INFO("layer " << l << " KV head " << h);
      const kernels::KvSelect& k = layout.SelectAt(l, h);
      if (l < 2) {
        CHECK(k.decode == kernels::kDecodeDense);
        CHECK(k.set == -1);
        continue;
      }
      CHECK(k.decode == (l == 2 || l == 12 ? kernels::kDecodeSelect : kernels::kDecodeConsume));
      CHECK(k.set == (l < 12 ? 0 : 1));
      CHECK(k.budget == 2048);
      CHECK(k.sink == 0);
      CHECK(k.recent == 1);  // recent 0, the current token counts
      CHECK(k.per_q_head == 0);
      CHECK(k.reduce == kernels::kReduceSumSoftmax);
      CHECK(k.since_refresh == 0);
      CHECK(k.refresh_every == 1);
      CHECK(k.refresh_below_cos == 0);
    }
  }
  // The ALGORITHMS.md example: sets per query head, layers 2 and 13 on Llama-3-8B.
  auto example = ParsePolicy(kTidalExample, kLlama3, "", "tidal");
  REQUIRE(example.ok());
  const kvcache::KvLayout q_head = LayoutOf(*example);
  CHECK(q_head.num_select_sets() == 2);
  CHECK(q_head.select_min_len == 128);
  CHECK(q_head.SelectAt(12, 7).set == 0);
  CHECK(q_head.SelectAt(13, 7).set == 1);
  CHECK(q_head.SelectAt(13, 7).decode == kernels::kDecodeSelect);
  CHECK(q_head.SelectAt(31, 7).set == 1);
  CHECK(q_head.SelectAt(31, 7).per_q_head == 1);
  CHECK(q_head.SelectAt(31, 7).budget == 128);
  // sink and recent reach the consumers: they attend what the set was chosen around.
  auto sinks =
      ParsePolicy(With(kTidalExample, "\"sink\": 0, \"recent\": 0", "\"sink\": 4, \"recent\": 8"),
                  kLlama3, "", "tidal");
  REQUIRE(sinks.ok());
  const kvcache::KvLayout sunk = LayoutOf(*sinks);
  CHECK(sunk.SelectAt(20, 3).sink == 4);
  CHECK(sunk.SelectAt(20, 3).recent == 8);
  CHECK(sunk.SelectAt(2, 3).recent == 8);
}

TEST_CASE("KvLayoutFor: Quest pages and Recycled sets", "[policy][select]") {
  const PolicySet quest = LoadShipped("qwen2.5-coder-1.5b-instruct/quest.json", kQwen15);
  const kvcache::KvLayout pages = LayoutOf(quest);
  CHECK(pages.num_select_sets() == 26);  // layers 2..27, one set each
  CHECK(pages.select_min_len == 2048);
  for (int l = 0; l < 28; ++l) {
    for (int h = 0; h < 2; ++h) {
      INFO("layer " << l << " KV head " << h);
      const kernels::KvSelect& k = pages.SelectAt(l, h);
      if (l < 2) {
        CHECK(k.decode == kernels::kDecodeDense);
        CHECK(k.set == -1);
        continue;
      }
      CHECK(k.decode == kernels::kDecodePages);
      CHECK(k.set == l - 2);
      CHECK(k.budget == 2048);
      CHECK(k.sink == 0);
      CHECK(k.recent == 1);
      CHECK(k.per_q_head == 0);
      CHECK(k.reduce == kernels::kReduceSumLogits);
    }
  }
  auto max_reduce = ParsePolicy(With(With(kQuestExample, "\"sum_logits\"", "\"max\""),
                                     "\"current\": true,", "\"current\": true, \"sink\": 32,"),
                                kLlama3, "", "quest");
  REQUIRE(max_reduce.ok());
  const kvcache::KvLayout maxed = LayoutOf(*max_reduce);
  CHECK(maxed.SelectAt(31, 0).reduce == kernels::kReduceMax);
  CHECK(maxed.SelectAt(31, 0).sink == 32);

  const PolicySet recycled = LoadShipped("qwen2.5-coder-0.5b-instruct/recycled.json", kQwen05);
  const kvcache::KvLayout sets = LayoutOf(recycled);
  CHECK(sets.num_select_sets() == 24);
  CHECK(sets.select_min_len == 2048);
  for (int l = 0; l < 24; ++l) {
    for (int h = 0; h < 2; ++h) {
      const kernels::KvSelect& k = sets.SelectAt(l, h);
      CHECK(k.decode == kernels::kDecodeRecycle);
      CHECK(k.set == l);
      CHECK(k.budget == 2048);
      CHECK(k.recent == 1);
      CHECK(k.reduce == kernels::kReduceSumSoftmax);
      CHECK(k.since_refresh == 1);
      CHECK(k.refresh_every == 10);
      CHECK(k.refresh_below_cos == 0);
    }
  }
  auto example = ParsePolicy(kRecycledExample, kLlama3, "", "recycled");
  REQUIRE(example.ok());
  const kvcache::KvLayout cos = LayoutOf(*example);
  CHECK(cos.SelectAt(7, 5).refresh_below_cos == 1);
  CHECK(cos.SelectAt(7, 5).refresh_cos == 0.9f);
  CHECK(cos.select_min_len == 4096);
  // No selecting head: no selects.
  CHECK_FALSE(LayoutOf(DensePolicySet(kLlama3)).selects_any());
}

TEST_CASE("KvLayoutFor and KvLayout::Validate: refusals past the parser", "[policy][select]") {
  using Catch::Contains;
  auto parsed = ParsePolicy(kTidalExample, kLlama3, "", "tidal");
  REQUIRE(parsed.ok());
  // A set made by hand whose consumer has no publisher below it.
  PolicySet orphan = *parsed;
  orphan.head_policy[2][3] = orphan.head_policy[3][3];
  CHECK_THAT(KvLayoutFor(orphan).status().message(),
             Contains("layer 2 KV head 3 (policy \"tidal_sparse\") consumes channel \"tidal\", "
                      "which no exact_logits policy publishes for KV head 3"));
  // Two selecting policies with different dense_if_len_le.
  PolicySet lengths = *parsed;
  for (Policy& p : lengths.policies) {
    if (p.name == "tidal_sparse") p.dense_if_len_le = 7;
  }
  CHECK_THAT(KvLayoutFor(lengths).status().message(),
             Contains("policies \"tidal_select\" (dense_if_len_le 128) and \"tidal_sparse\" (7)"));

  const kvcache::KvLayout good = LayoutOf(*parsed);
  REQUIRE(good.Validate(32, 8).ok());
  // A consumer must attend the sink and tail its set was chosen around.
  kvcache::KvLayout tail = good;
  tail.selects[static_cast<size_t>(20 * 8 + 1)].recent = 2;
  CHECK_THAT(tail.Validate(32, 8).message(),
             Contains("layer 20 KV head 1: consumes set 1 with budget 128 sink 0 recent 2, chosen "
                      "under budget 128 sink 0 recent 1 (layer 13)"));
  // One set holds sets per query head or per KV head, not both.
  kvcache::KvLayout mixed = good;
  mixed.selects[static_cast<size_t>(13 * 8 + 5)].per_q_head = 0;
  CHECK_THAT(mixed.Validate(32, 8).message(),
             Contains("layer 13 KV head 5: set 1 holds sets per query head and per KV head"));
}

}  // namespace
}  // namespace headwise::engine::attention

namespace headwise::engine::attention {
namespace {

// ALGORITHMS.md §10.3's RetrievalAttention example, with every index field spelled out.
const char* kOffloadExample = R"({
  "schema": "attn-policy/v1",
  "policies": {
    "retrieval_attention": {
      "storage": {"kind": "offload",
                  "offload": {"gpu_static": {"sink": 128, "recent": 512},
                              "index": {"type": "roargraph", "train_queries": "prefill",
                                        "knn_per_query": 100, "max_degree": 35, "build_L": 500,
                                        "search_L": 128},
                              "cpu_attention": true}},
      "positions": "original",
      "decode": {"mode": "select",
                 "selection": {"method": "ann", "budget": 100, "unit": "token",
                               "granularity": "kv_head", "refresh": {"every_steps": 1}}},
      "merge": "lse"
    },
    "full": {"storage": {"kind": "full"}}
  },
  "assignment": {"default": "retrieval_attention"}
})";

TEST_CASE("Offload (RetrievalAttention): the ALGORITHMS.md example loads", "[policy][offload]") {
  auto set = ParsePolicy(kOffloadExample, kLlama3, "", "ra");
  REQUIRE(set.ok());
  const Policy& p = set->At(5, 3);
  CHECK(p.storage == StorageKind::kOffload);
  CHECK(p.sink == 128);
  CHECK(p.window == 512);
  CHECK(p.MaxRetainedTokens() == 640);
  CHECK(p.prefill == PrefillMode::kDense);
  CHECK(p.decode == DecodeMode::kSelect);
  CHECK(p.selection.method == SelectionMethod::kAnn);
  CHECK(p.selection.budget == 100);
  CHECK(p.selection.granularity == SelectionGranularity::kKvHead);
  CHECK(p.dense_if_len_le == 0);
  CHECK(p.offload.type == AnnIndexType::kRoarGraph);
  CHECK(p.offload.knn_per_query == 100);
  CHECK(p.offload.max_degree == 35);
  CHECK(p.offload.build_list == 500);
  CHECK(p.offload.search_list == 128);
  CHECK(p.offload.train_stride == 1);

  // Defaults: the index is RoarGraph with the paper's parameters, a search per query head.
  const char* minimal = R"({
    "schema": "attn-policy/v1",
    "policies": {"ra": {"storage": {"kind": "offload", "offload": {"gpu_static": {"sink": 4, "recent": 64}}},
                        "decode": {"mode": "select", "selection": {"method": "ann", "budget": 32}}}},
    "assignment": {"default": "ra"}
  })";
  auto defaults = ParsePolicy(minimal, kLlama3, "", "ra");
  REQUIRE(defaults.ok());
  const Policy& d = defaults->At(0, 0);
  CHECK(d.offload.type == AnnIndexType::kRoarGraph);
  CHECK(d.offload.knn_per_query == 100);
  CHECK(d.offload.max_degree == 35);
  CHECK(d.offload.build_list == 500);
  CHECK(d.offload.search_list == 128);
  CHECK(d.selection.granularity == SelectionGranularity::kQHead);
  CHECK(d.prefill == PrefillMode::kDense);

  // The KV layout: offload heads with the static set, retrieving on the host by the file's rule.
  auto layout = KvLayoutFor(*set);
  REQUIRE(layout.ok());
  CHECK(layout->At(5, 3) == kernels::KvRetention::Offload(128, 512));
  CHECK(layout->CountStorage(kernels::kStorageOffload) == 32 * 8);
  CHECK(layout->SelectAt(5, 3).decode == kernels::kDecodeRetrieve);
  CHECK(layout->SelectAt(5, 3).set == -1);
  CHECK(layout->SelectAt(5, 3).budget == 100);
  CHECK(layout->num_select_sets() == 0);
  CHECK(layout->select_min_len == 0);
  REQUIRE(layout->offload.has_value());
  CHECK(layout->offload->index == kvcache::OffloadRule::Index::kRoarGraph);
  CHECK(layout->offload->top_k == 100);
  CHECK_FALSE(layout->offload->per_q_head);
  CHECK(layout->offload->search_list == 128);
  auto per_head = KvLayoutFor(*defaults);
  REQUIRE(per_head.ok());
  CHECK(per_head->offload->per_q_head);
  CHECK(per_head->offload->top_k == 32);
  CHECK(per_head->At(0, 0) == kernels::KvRetention::Offload(4, 64));
}

// The 128K speed benchmark's policy (bench/offload_bench.cc): every head of Llama-3-8B offloads
// with the paper's static set and RoarGraph parameters, trained at stride 16.
TEST_CASE("Offload: the shipped Llama-3-8B benchmark policy loads", "[policy][offload]") {
  const kvcache::KvLayout layout =
      LayoutOf(LoadShipped("llama-3-8b-offload/roargraph.json", kLlama3));
  CHECK(layout.CountStorage(kernels::kStorageOffload) == 32 * 8);
  CHECK(layout.At(31, 7) == kernels::KvRetention::Offload(128, 512));
  REQUIRE(layout.offload.has_value());
  CHECK(layout.offload->index == kvcache::OffloadRule::Index::kRoarGraph);
  CHECK(layout.offload->top_k == 100);
  CHECK(layout.offload->per_q_head);
  CHECK(layout.offload->knn_per_query == 100);
  CHECK(layout.offload->max_degree == 35);
  CHECK(layout.offload->build_list == 500);
  CHECK(layout.offload->search_list == 128);
  CHECK(layout.offload->train_stride == 16);
  CHECK_FALSE(layout.offload->group_search);
  // Its twin with one graph traversal for each GQA group's four queries.
  const kvcache::KvLayout group =
      LayoutOf(LoadShipped("llama-3-8b-offload/roargraph-group.json", kLlama3));
  REQUIRE(group.offload.has_value());
  kvcache::OffloadRule want = *layout.offload;
  want.group_search = true;
  CHECK(*group.offload == want);
  CHECK(group.heads == layout.heads);
}

TEST_CASE("Offload (RetrievalAttention): contradictions and unsupported options are refused",
          "[policy][offload]") {
  using Catch::Contains;
  const std::string at = "policies.retrieval_attention.";
  const std::string ok = kOffloadExample;
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = ok;
    const auto pos = s.find(from);
    REQUIRE(pos != std::string::npos);
    return s.replace(pos, from.size(), to);
  };
  struct Case {
    std::string from, to, expect;
    StatusCode code = StatusCode::kInvalidArgument;
  };
  const std::vector<Case> cases = {
      {"\"kind\": \"offload\",", "\"kind\": \"offload\", \"sink\": 4,",
       at + "storage.sink: offload keeps its static set in offload.gpu_static"},
      {"\"gpu_static\": {\"sink\": 128, \"recent\": 512},", "",
       at + "storage.offload.gpu_static: required"},
      {"\"recent\": 512", "\"recent\": 0", at + "storage.offload.gpu_static.recent: 0 is out"},
      {"\"type\": \"roargraph\"", "\"type\": \"kmeans\"",
       at + "storage.offload.index.type: \"kmeans\" is part of attn-policy/v1 but not supported",
       StatusCode::kUnimplemented},
      {"\"type\": \"roargraph\"", "\"type\": \"ivf\"",
       at + "storage.offload.index.type: \"ivf\" is not one of roargraph, hnsw, exact"},
      {"\"train_queries\": \"prefill\"", "\"train_queries\": \"decode\"",
       at + "storage.offload.index.train_queries: \"decode\" is not one of prefill"},
      {"\"build_L\": 500", "\"build_L\": 20",
       at + "storage.offload.index.build_L: 20 is below max_degree 35"},
      {"\"knn_per_query\": 100", "\"knn_per_query\": 1025",
       at + "storage.offload.index.knn_per_query: 1025 is above 1024"},
      {"\"search_L\": 128", "\"search_l\": 128", at + "storage.offload.index.search_l: unknown"},
      {"\"search_L\": 128", "\"search_L\": 128, \"search\": \"union\"",
       at + "storage.offload.index.search: \"union\" is not one of per_query, group"},
      {"\"type\": \"roargraph\"", "\"type\": \"hnsw\", \"search\": \"group\"",
       at + "storage.offload.index.search: group is for type roargraph"},
      {"\"search_L\": 128", "\"search_L\": 128, \"search\": \"group\"",
       at + "storage.offload.index.search: search group (one traversal for the group's queries, "
            "a set per query head) needs granularity q_head"},
      {"\"cpu_attention\": true", "\"cpu_attention\": false",
       at + "storage.offload.cpu_attention: false", StatusCode::kUnimplemented},
      {"\"storage\": {\"kind\": \"full\"}", "\"storage\": {\"kind\": \"full\", \"offload\": {}}",
       "policies.full.storage.offload: only for storage kind offload"},
      {"\"mode\": \"select\",", "\"mode\": \"retained\",",
       at + "decode.selection: only for decode mode select"},
      {"\"granularity\": \"kv_head\"", "\"granularity\": \"layer\"",
       at + "decode.selection.granularity: \"layer\" is part", StatusCode::kUnimplemented},
      {"\"unit\": \"token\"", "\"unit\": \"page\"",
       at + "decode.selection.unit: \"page\" is not one of token"},
      {"\"unit\": \"token\"", "\"unit\": \"token\", \"group_reduce\": \"max\"",
       at + "decode.selection.group_reduce: not for method ann"},
      {"\"unit\": \"token\"", "\"unit\": \"token\", \"always_include\": {\"sink\": 4}",
       at + "decode.selection.always_include: not for method ann"},
      {"\"every_steps\": 1", "\"every_steps\": 4",
       at + "decode.selection.refresh.every_steps: 4 with method ann"},
      {"\"merge\": \"lse\"", "\"merge\": \"lse\", \"dense_if_len_le\": 64",
       at + "dense_if_len_le: not for method ann"},
      {"\"merge\": \"lse\"", "\"merge\": \"sum\"", at + "merge: \"sum\" is not one of lse"},
      {"\"storage\": {\"kind\": \"full\"}", "\"storage\": {\"kind\": \"full\"}, \"merge\": \"lse\"",
       "policies.full.merge: only for storage offload"},
      {"\"positions\": \"original\"", "\"positions\": \"reindex\"",
       at + "positions: offload keeps original positions"},
      {"\"merge\": \"lse\"", "\"merge\": \"lse\", \"prefill\": {\"mode\": \"retained\"}",
       at + "prefill.mode: offload prefills densely"},
  };
  for (const Case& c : cases) {
    INFO(c.from << " -> " << c.to);
    const Status st = ErrorOf(with(c.from, c.to));
    CHECK(st.code() == c.code);
    CHECK_THAT(st.message(), Contains(c.expect));
  }
  // Offload without its retrieval, and the retrieval without offload.
  const std::string no_select =
      "\"decode\": {\"mode\": \"select\",\n                 \"selection\": {\"method\": \"ann\", "
      "\"budget\": 100, \"unit\": \"token\",\n                               \"granularity\": "
      "\"kv_head\", \"refresh\": {\"every_steps\": 1}}},";
  REQUIRE(ok.find(no_select) != std::string::npos);
  CHECK_THAT(ErrorOf(with(no_select, "")).message(),
             Contains(at + "decode.mode: storage offload needs decode mode select with "
                           "selection method ann"));
  CHECK_THAT(ErrorOf(with("\"storage\": {\"kind\": \"full\"}",
                          "\"storage\": {\"kind\": \"full\"}, " +
                              no_select.substr(0, no_select.size() - 1)))
                 .message(),
             Contains("policies.full.storage.kind: selection method ann needs storage offload"));
  // Offload beside compress_once or a selecting head in one file's assignment.
  const std::string razor =
      "\"storage\": {\"kind\": \"compress_once\", \"sink\": 4, \"window\": 64}, "
      "\"prefill\": {\"mode\": \"dense\"}";
  const std::string mixed = with("\"storage\": {\"kind\": \"full\"}", razor);
  CHECK(ErrorOf(mixed).ok());  // defined but not assigned: fine
  std::string assigned = mixed;
  const std::string dflt = "{\"default\": \"retrieval_attention\"}";
  assigned.replace(assigned.find(dflt), dflt.size(),
                   "{\"default\": \"retrieval_attention\", \"layers\": [{\"layers\": [0], "
                   "\"policy\": \"full\"}]}");
  CHECK_THAT(ErrorOf(assigned).message(),
             Contains("assignment: policy \"retrieval_attention\" offloads and policy \"full\" "
                      "compresses once"));
}

}  // namespace
}  // namespace headwise::engine::attention
