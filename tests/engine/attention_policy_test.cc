// Attention-policy files: parsing, validation errors, and the head assignment from the
// published DuoAttention and Retrieval-Head artefacts in ../shared/patterns.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/attention/policy.h"
#include "engine/attention_setup.h"
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
             Contains("\"rung\" is not one of full, ring, compress_once"));
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

}  // namespace
}  // namespace headwise::engine::attention
