#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <unordered_map>

#include "eval/haystack.h"
#include "eval/kv_footprint.h"
#include "eval/log_likelihood.h"
#include "eval/report.h"
#include "eval/scoring.h"
#include "eval/tasks.h"
#include "kernels/cpu/cpu_backend.h"
#include "tokenizer/chat_renderer.h"

namespace headwise::eval {
namespace {

// A word-level tokenizer: one token per run of non-space characters with the spaces before it,
// ids handed out as pieces are first seen. BOS is id 0.
class WordTokenizer final : public tokenizer::Tokenizer {
 public:
  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int32_t> ids;
    if (add_special_tokens) ids.push_back(0);
    size_t i = 0;
    while (i < text.size()) {
      size_t j = i;
      while (j < text.size() && std::isspace(static_cast<unsigned char>(text[j]))) ++j;
      while (j < text.size() && !std::isspace(static_cast<unsigned char>(text[j]))) ++j;
      ids.push_back(Id(text.substr(i, j - i)));
      i = j;
    }
    return ids;
  }
  std::string Decode(std::span<const int32_t> ids, bool) const override {
    std::lock_guard<std::mutex> lock(mu_);
    std::string out;
    for (int32_t id : ids)
      if (id > 0) out += pieces_[static_cast<size_t>(id)];
    return out;
  }
  std::string_view IdToPiece(int32_t) const override { return {}; }
  std::optional<int32_t> PieceToId(std::string_view) const override { return std::nullopt; }
  int32_t vocab_size() const override { return 1 << 30; }
  std::optional<int32_t> bos_id() const override { return 0; }
  std::optional<int32_t> eos_id() const override { return std::nullopt; }
  const std::vector<int32_t>& stop_ids() const override { return stop_; }
  bool IsSpecial(int32_t id) const override { return id == 0; }

 private:
  int32_t Id(std::string_view piece) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, added] = ids_.emplace(std::string(piece), static_cast<int32_t>(pieces_.size()));
    if (added) pieces_.emplace_back(piece);
    return it->second;
  }
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, int32_t> ids_;
  mutable std::vector<std::string> pieces_{"<bos>"};
  std::vector<int32_t> stop_;
};

// Numbered sentences, so a position in the filler is readable from the text.
std::string NumberedText(int n) {
  std::string text;
  for (int i = 0; i < n; ++i) {
    text += "Sentence number " + std::to_string(i) + " says little of note.";
    text += i % 7 == 6 ? "\n\n" : " ";
  }
  return text;
}

struct Fixture {
  Haystack haystack = Haystack::FromText(NumberedText(500)).value();
  WordTokenizer tok;
  TaskBuilder builder{haystack, tok, nullptr};

  Sample Build(std::string_view task, int length, double depth, int index, uint64_t seed = 7) {
    const TaskInfo info = FindTask(task).value();
    return builder.Build(info, length, info.max_new_tokens, depth, seed, index).value();
  }
  std::string Text(const Sample& s) { return tok.Decode(s.prompt_ids, true); }
};

}  // namespace

TEST_CASE("sentences end at . ! ? and blank lines, not after titles", "[eval]") {
  const auto s = SplitSentences(
      "Mr. Darcy bowed.  \"Indeed!\" she said.\nWhy?  No\n\nreason at all. Mrs. Bennet (who "
      "knew) smiled.");
  REQUIRE(s == std::vector<std::string>{"Mr. Darcy bowed.", "\"Indeed!\"", "she said.", "Why?",
                                        "No", "reason at all.", "Mrs. Bennet (who knew) smiled."});
  CHECK_FALSE(Haystack::FromText("   \n\n  ").ok());
}

TEST_CASE("the generator is SplitMix64, the same everywhere", "[eval]") {
  Rng rng(0);
  CHECK(rng.Next() == 0xe220a8397b1dcdafull);
  Rng a(42), b(42);
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.Below(7);
    CHECK(x < 7);
    CHECK(x == b.Below(7));
  }
  CHECK(SampleSeed(1, "niah_single", 4096, 3) != SampleSeed(1, "niah_single", 4096, 4));
  CHECK(SampleSeed(1, "niah_single", 4096, 3) != SampleSeed(2, "niah_single", 4096, 3));
  CHECK(FindTask("niah_multikey").ok());
  CHECK_FALSE(FindTask("nope").ok());
}

TEST_CASE("a single-needle prompt: the needle at its depth, the length just under the target",
          "[eval]") {
  Fixture f;
  for (const double depth : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    const Sample s = f.Build("niah_single", 2000, depth, 3);
    const std::string text = f.Text(s);
    REQUIRE(s.expected.size() == 1);
    REQUIRE(s.expected[0].size() == 7);
    const std::string needle =
        "One of the special magic numbers for " + s.query + " is: " + s.expected[0] + ".";
    const size_t at = text.find(needle);
    REQUIRE(at != std::string::npos);
    CHECK(text.find(needle, at + 1) == std::string::npos);
    // prompt + answer within the length, and no more than one sentence (~8 words) under it.
    const int budget = 2000 - s.max_new_tokens;
    CHECK(static_cast<int>(s.prompt_ids.size()) <= budget);
    CHECK(static_cast<int>(s.prompt_ids.size()) > budget - 10);
    // Where the needle sits among the filler's characters.
    const size_t begin = text.find("afterwards.\n") + 12;
    const size_t end = text.rfind("\nWhat is the special magic number for " + s.query);
    REQUIRE(end != std::string::npos);
    const double at_chars = static_cast<double>(at - begin) / static_cast<double>(end - begin);
    CHECK(std::abs(at_chars - depth) < 0.03);
    CHECK(std::abs(s.needle_depth - depth) < 0.03);
    const std::string prefix =
        "\nThe special magic number for " + s.query + " mentioned in the provided text is";
    CHECK(text.substr(text.size() - prefix.size()) == prefix);
  }
}

TEST_CASE("prompts are deterministic in (seed, task, length, index) and differ otherwise",
          "[eval]") {
  Fixture f, g;
  const Sample a = f.Build("niah_single_uuid", 1200, 0.5, 1);
  const Sample b = g.Build("niah_single_uuid", 1200, 0.5, 1);  // another builder, same words
  CHECK(f.Text(a) == g.Text(b));
  CHECK(a.expected == b.expected);
  CHECK(PromptsHash({a}) == PromptsHash({a}));
  const Sample c = f.Build("niah_single_uuid", 1200, 0.5, 2);
  const Sample d = f.Build("niah_single_uuid", 1200, 0.5, 1, 8);
  CHECK(a.expected != c.expected);
  CHECK(a.expected != d.expected);
  CHECK(PromptsHash({a}) != PromptsHash({c}));
  CHECK(PromptsHash({a, c}) != PromptsHash({c, a}));
  // A version-4 UUID.
  const std::string& u = a.expected[0];
  REQUIRE(u.size() == 36);
  CHECK(u[8] == '-');
  CHECK(u[14] == '4');
  CHECK(std::string("89ab").find(u[19]) != std::string::npos);
}

TEST_CASE("multi-key: four keys, the asked one's value expected", "[eval]") {
  Fixture f;
  const Sample s = f.Build("niah_multikey", 1500, 0.5, 0);
  const std::string text = f.Text(s);
  size_t needles = 0;
  for (size_t at = 0;
       (at = text.find("One of the special magic numbers for ", at)) != std::string::npos; ++at) {
    ++needles;
  }
  CHECK(needles == 4);
  CHECK(text.find("numbers for " + s.query + " is: " + s.expected[0] + ".") != std::string::npos);
  CHECK(text.find("What is the special magic number for " + s.query) != std::string::npos);
}

TEST_CASE("multi-value: four values of one key, all expected", "[eval]") {
  Fixture f;
  const Sample s = f.Build("niah_multivalue", 1500, 0.25, 0);
  const std::string text = f.Text(s);
  REQUIRE(s.expected.size() == 4);
  for (const std::string& v : s.expected) {
    CHECK(text.find("numbers for " + s.query + " is: " + v + ".") != std::string::npos);
  }
  CHECK(text.find("What are all the special magic numbers for " + s.query) != std::string::npos);
  CHECK(text.substr(text.size() - 4) == " are");
}

TEST_CASE("variable tracking: a chain in order after a one-shot example", "[eval]") {
  Fixture f;
  const Sample s = f.Build("vt", 1500, 0.0, 0);
  const std::string text = f.Text(s);
  REQUIRE(s.expected.size() == 5);
  const size_t task = text.rfind("Memorize and track");
  REQUIRE(task != std::string::npos);
  CHECK(task > 0);  // the example comes first
  size_t at = text.find("VAR " + s.expected[0] + " = " + s.query, task);
  REQUIRE(at != std::string::npos);
  for (size_t i = 1; i < 5; ++i) {
    const size_t next = text.find("VAR " + s.expected[i] + " = VAR " + s.expected[i - 1], task);
    REQUIRE(next != std::string::npos);
    CHECK(next > at);
    at = next;
  }
  CHECK(text.find("assigned the value " + s.query + " in the text above.") != std::string::npos);
}

TEST_CASE("chat form: the task as a user message, the answer prefix after the template", "[eval]") {
  Fixture f;
  auto chat = tokenizer::ChatRenderer::Create(
      "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n", "",
      "");
  REQUIRE(chat.ok());
  TaskBuilder builder(f.haystack, f.tok, chat->get());
  const TaskInfo info = FindTask("niah_single").value();
  const Sample s = builder.Build(info, 800, 24, 0.5, 1, 0).value();
  CHECK(s.prompt_ids.front() != 0);  // no BOS added to a chat rendering
  const std::string text = f.tok.Decode(s.prompt_ids, true);
  CHECK(text.rfind("<|user|>\nA special magic number is hidden", 0) == 0);
  const size_t assistant = text.find("<|assistant|>");
  REQUIRE(assistant != std::string::npos);
  CHECK(text.find("The special magic number for " + s.query + " mentioned", assistant) !=
        std::string::npos);
  CHECK(static_cast<int>(s.prompt_ids.size()) <= 800 - 24);
  // Too short a length for the prompt without filler is an error, not a truncated prompt.
  CHECK_FALSE(builder.Build(info, 40, 24, 0.5, 1, 0).ok());
}

TEST_CASE("scoring: RULER's cleaning and case-insensitive string match", "[eval]") {
  CHECK(CleanAnswer("  \t 1234567.\x01 ok \n") == "1234567.\n ok");
  const Match m = MatchExpected("the numbers are 11, 22 and ABC", {"11", "33", "abc"});
  CHECK(m.found == 2);
  CHECK(m.expected == 3);
  CHECK_FALSE(m.all());
  CHECK(m.fraction() == Approx(2.0 / 3));
  CHECK(MatchExpected("5d1796F2-3121", {"5d1796f2-3121"}).all());
}

TEST_CASE("Wilson intervals match published values", "[eval]") {
  Interval w = WilsonInterval(5, 10);
  CHECK(w.low == Approx(0.2366).margin(1e-4));
  CHECK(w.high == Approx(0.7634).margin(1e-4));
  w = WilsonInterval(0, 10);
  CHECK(w.low == 0.0);
  CHECK(w.high == Approx(0.2775).margin(1e-4));
  w = WilsonInterval(10, 10);
  CHECK(w.low == Approx(0.7225).margin(1e-4));
  CHECK(w.high == Approx(1.0));
  w = WilsonInterval(10, 20);
  CHECK(w.low == Approx(0.2993).margin(1e-4));
  CHECK(w.high == Approx(0.7007).margin(1e-4));
}

TEST_CASE("paired difference intervals (Newcombe method 10)", "[eval]") {
  // Uncorrelated outcomes (phi = 0): the square-and-add of the two Wilson half-widths.
  Interval d = PairedDifferenceInterval({5, 5, 5, 5});
  const double half = std::sqrt(2.0) * (0.5 - WilsonInterval(10, 20).low);
  CHECK(d.low == Approx(-half).margin(1e-9));
  CHECK(d.high == Approx(half).margin(1e-9));
  // The second policy loses 10 of 40 the first gets right: the interval lies below 0.
  d = PairedDifferenceInterval({30, 10, 0, 10});
  CHECK(d.high < 0.0);
  CHECK(d.low > -0.45);
  CHECK(d.low < -0.25);
  // Mirrored counts give the mirrored interval.
  const Interval m = PairedDifferenceInterval({30, 0, 10, 10});
  CHECK(m.low == Approx(-d.high));
  CHECK(m.high == Approx(-d.low));
}

TEST_CASE("KV footprints equal what a real cache holds", "[eval]") {
  auto be = kernels::CreateCpuBackend(1);
  kvcache::KvCacheConfig cfg;
  cfg.num_layers = 2;
  cfg.num_kv_heads = 3;
  cfg.head_dim = 8;
  cfg.page_size = 4;
  cfg.num_pages = 4000;
  cfg.chunk_tokens = 8;
  kvcache::KvLayout dense = kvcache::KvLayout::Dense(2, 3);
  kvcache::KvLayout ring = kvcache::KvLayout::Dense(2, 3, "duo");
  ring.At(0, 1) = kernels::KvRetention::Ring(4, 12);
  ring.At(1, 2) = kernels::KvRetention::Ring(4, 12);
  kvcache::KvLayout razor = kvcache::KvLayout::Dense(2, 3, "razor");
  razor.At(0, 0) = kernels::KvRetention::CompressOnce(4, 8);
  razor.At(1, 0) = kernels::KvRetention::CompressOnce(4, 8);
  // RetrievalAttention: the device keeps 4 sink + 8 recent tokens of the offload heads.
  kvcache::KvLayout offload = kvcache::KvLayout::Dense(2, 3, "ra");
  offload.At(0, 2) = kernels::KvRetention::Offload(4, 8);
  offload.At(1, 1) = kernels::KvRetention::Offload(4, 8);
  offload.offload = kvcache::OffloadRule{};
  offload.offload->index = kvcache::OffloadRule::Index::kExact;
  cfg.select_slots = 2;
  kvcache::KvCache cache(cfg, {dense, ring, razor, offload}, *be);
  for (int layout = 0; layout < 4; ++layout) {
    for (const int tokens : {1, 7, 16, 40, 103}) {
      kvcache::SequenceKv seq(cache, layout);
      REQUIRE(seq.Reserve(tokens).ok());
      const kvcache::KvRetention c = cache.layout(layout).compress();
      const int kept_head = c.sink + (c.compensation ? 1 : 0);
      if (layout >= 2 && tokens > kept_head + c.window) seq.MarkCompacted(tokens - c.window);
      INFO("layout " << layout << ", " << tokens << " tokens");
      CHECK(KvPagesHeld(cache.layout(layout), cfg, tokens) == seq.num_pages_held());
    }
  }
  const size_t page = kvcache::KvCache::PageBytes(cfg, DType::kF32);
  CHECK(KvBytesHeld(dense, cfg, DType::kF32, 40) == 10 * 6 * static_cast<int64_t>(page));
  // Retained: a ring keeps its sink and window (4 + 12 tokens: 4 pages), not the chunk's room.
  CHECK(KvBytesRetained(ring, cfg, DType::kF32, 100) ==
        (25 * 4 + 4 * 2) * static_cast<int64_t>(page));
  CHECK(KvBytesRetained(ring, cfg, DType::kF32, 8) == 2 * 6 * static_cast<int64_t>(page));
}

TEST_CASE("log-likelihood buckets double after the first", "[eval]") {
  std::vector<double> lp(20);
  for (size_t i = 0; i < lp.size(); ++i) lp[i] = -static_cast<double>(i + 1);  // predicts i + 1
  const auto b = Buckets(lp, 4);
  REQUIRE(b.size() == 4);  // [0,4) [4,8) [8,16) [16,21)
  CHECK(b[0].begin == 0);
  CHECK(b[0].end == 4);
  CHECK(b[0].tokens == 3);
  CHECK(b[0].mean() == Approx(-2.0));
  CHECK(b[2].begin == 8);
  CHECK(b[2].end == 16);
  CHECK(b[3].end == 21);
  CHECK(b[3].tokens == 5);
  CHECK(b[3].mean() == Approx(-18.0));
  int64_t bad = 0;
  const std::vector<float> logits = {0.0f, std::log(3.0f), NAN};
  CHECK(LogSoftmaxAt(logits, 1, bad) == Approx(std::log(0.75)));
  CHECK(bad == 1);
}

namespace {

EvalResults SmallResults() {
  EvalResults r;
  r.header.model = "m.gguf";
  r.header.weights_hash = "abc";
  r.header.seed = 3;
  r.header.prompt_form = "chat";
  r.header.tasks = {"niah_single"};
  r.header.lengths = {100};
  r.header.depths = {0.0, 1.0};
  r.header.samples = 4;
  r.policies.resize(2);
  r.policies[0].name = "dense";
  r.policies[1].name = "ring";
  r.policies[1].hash = "fnv1a64:1";
  for (auto& p : r.policies) {
    p.kv_bytes = {{100, 1000}};
    p.kv_retained = {{100, p.name == "dense" ? 800 : 200}};
    p.wall_s = 2;
    p.prompt_tokens = 400;
    p.compaction_s = p.name == "dense" ? 0.0 : 0.25;
    p.loglik = {{0, 64, 63, -63.0}};
    p.loglik_chunk = 32;
  }
  r.outcomes.resize(2);
  for (int i = 0; i < 4; ++i) {
    r.samples.push_back({"niah_single", 100, i, i % 2 ? 1.0 : 0.0, 0.5, 90, "key", {"1234567"}});
    r.outcomes[0].push_back({"1234567.", 1, 1, 8, "stop"});
    // The ring policy misses the needle at depth 0.
    const bool ok = i % 2 == 1;
    r.outcomes[1].push_back({ok ? "1234567" : "7654321 | x", ok ? 1 : 0, 1, 8, "stop"});
  }
  return r;
}

}  // namespace

TEST_CASE("report cells: accuracy, intervals, the difference to the first policy", "[eval]") {
  const EvalResults r = SmallResults();
  const std::vector<Cell> cells = Cells(r, false);
  REQUIRE(cells.size() == 2);
  CHECK(cells[0].accuracy() == 1.0);
  CHECK(cells[1].accuracy() == 0.5);
  CHECK(cells[1].diff == -0.5);
  CHECK(cells[1].diff_ci.high < 0.2);
  CHECK_FALSE(cells[1].first_below_half);
  const std::vector<Cell> by_depth = Cells(r, true);
  REQUIRE(by_depth.size() == 4);
  CHECK(*by_depth[1].depth == 0.0);
  CHECK(by_depth[1].accuracy() == 0.0);
  CHECK(by_depth[3].accuracy() == 1.0);
}

TEST_CASE("reports: JSON round trip, Markdown tables, files, merging", "[eval]") {
  const EvalResults r = SmallResults();
  const auto j = ToJson(r);
  auto back = FromJson(nlohmann::json::parse(j.dump()));
  REQUIRE(back.ok());
  CHECK(ToJson(*back).dump() == j.dump());
  CHECK(j["cells"].size() == 2);
  CHECK(j["policies"][1]["kv_bytes"][0]["retained_vs_first"] == 0.25);

  const std::string md = ToMarkdown(r);
  CHECK(md.find("| niah_single | 100 | 4 | 100.0 [51.0, 100.0] | 50.0 [15.0, 85.0] Δ -50.0") !=
        std::string::npos);
  CHECK(md.find("| niah_single | 100 | 0 | 100.0 (2/2) | 0.0 (0/2) |") != std::string::npos);
  CHECK(md.find("| 0-64 | -1.0000 | -1.0000 (Δ +0.0000) |") != std::string::npos);
  CHECK(md.find("| decode tok/s/seq | compaction s |") != std::string::npos);
  CHECK(md.find("| ring | (none: dense) | fnv1a64:1 | 2.0 | 200 | 0.0 | 0.0 | 0.2 | 0.0 (25%)") !=
        std::string::npos);  // its 0.25 s of compaction
  // Results written before compaction_s read as 0.
  nlohmann::json old = j;
  old["policies"][1].erase("compaction_s");
  auto older = FromJson(old);
  REQUIRE(older.ok());
  CHECK(older->policies[1].compaction_s == 0.0);

  const auto dir = std::filesystem::temp_directory_path() / "hw_eval_report_test";
  std::filesystem::create_directories(dir);
  const std::string prefix = (dir / "out").string();
  REQUIRE(WriteReport(r, prefix).ok());
  CHECK(std::filesystem::file_size(prefix + ".json") > 100);
  std::ifstream in(prefix + ".md");
  const std::string written((std::istreambuf_iterator<char>(in)), {});
  CHECK(written == md);
  std::filesystem::remove_all(dir);

  // Merging a run over another length; the same samples twice are refused.
  EvalResults other = SmallResults();
  other.header.lengths = {200};
  for (auto& s : other.samples) s.length = 200;
  for (auto& p : other.policies) {
    p.kv_bytes = {{200, 2000}};
    p.kv_retained = {{200, 1600}};
    p.loglik = {{0, 64, 63, -63.0}, {64, 128, 64, -70.0}};
  }
  auto merged = Merge({r, other});
  REQUIRE(merged.ok());
  CHECK(merged->samples.size() == 8);
  CHECK(merged->header.lengths == std::vector<int>{100, 200});
  CHECK(merged->policies[0].wall_s == 4);
  CHECK(merged->policies[1].compaction_s == 0.5);
  CHECK(merged->policies[0].kv_bytes.size() == 2);
  CHECK(merged->policies[0].loglik.size() == 2);  // the longer document's
  CHECK(Cells(*merged, false).size() == 4);
  CHECK_FALSE(Merge({r, r}).ok());
  EvalResults renamed = other;
  renamed.policies[1].hash = "fnv1a64:2";
  CHECK_FALSE(Merge({r, renamed}).ok());
}

}  // namespace headwise::eval
