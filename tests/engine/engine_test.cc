// The serving engine on the real TinyStories model: continuous batching must not change what a
// request produces (greedy or seeded), whatever the batch, chunking, preemption or prefix
// caching around it; aborts return pages; impossible requests are refused at submission.
#include "engine/engine.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "engine/model_loader.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/engine/policy_arms_util.h"
#include "tests/test_util.h"

namespace headwise::engine {
namespace {

using namespace std::chrono_literals;

StatusOr<std::unique_ptr<Engine>> TryStartEngine(
    EngineConfig config, std::shared_ptr<MetricsRegistry> metrics = nullptr) {
  auto backend = kernels::CreateCpuBackend(2);
  auto loaded =
      LoadModel(testing::SharedDir() + "/models/tinystories-656k", LoadOptions{}, *backend);
  REQUIRE(loaded.ok());
  return Engine::Start(std::move(loaded).value(), std::move(backend), config, std::move(metrics));
}

std::unique_ptr<Engine> StartEngine(EngineConfig config,
                                    std::shared_ptr<MetricsRegistry> metrics = nullptr) {
  auto engine = TryStartEngine(config, std::move(metrics));
  INFO(engine.status().ToString());
  REQUIRE(engine.ok());
  return std::move(engine).value();
}

struct Result {
  std::vector<int32_t> ids;
  std::string text;
  std::optional<FinishReason> finish_reason;  // when finished
  int cached_tokens = 0;
};

// Reads a stream to its end (bounded: 60 s).
Result Drain(RequestStream& stream) {
  Result r;
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto ev = stream.Next(100ms);
    if (!ev) continue;
    r.ids.insert(r.ids.end(), ev->token_ids.begin(), ev->token_ids.end());
    r.text += ev->text;
    if (ev->finished) {
      r.finish_reason = ev->finish_reason;
      r.cached_tokens = ev->cached_tokens;
      return r;
    }
  }
  FAIL("request did not finish within 60 s");
  return r;
}

std::vector<std::string> Prompts() {
  return {"Once upon a time",           "Tom had a red ball",
          "The cat sat on the mat and", "Lily went to the park with her mom. She saw",
          "One day, a little bird",     "Ben and Sue were friends. They liked to",
          "There was a big tree",       "The sun was hot and"};
}

EngineRequest Request(const Engine& engine, const std::string& prompt, int max_tokens,
                      float temperature = 0.0f, std::optional<uint64_t> seed = std::nullopt) {
  EngineRequest r;
  r.prompt_ids = engine.tokenizer()->Encode(prompt, true);
  r.params.temperature = temperature;
  r.params.seed = seed;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

// Each prompt alone, one after the other, in a fresh engine with default settings.
std::vector<Result> Alone(const std::vector<std::string>& prompts, int max_tokens,
                          float temperature = 0.0f) {
  auto engine = StartEngine(EngineConfig{});
  std::vector<Result> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto s = engine->Submit(Request(*engine, prompts[i], max_tokens, temperature, 100 + i));
    REQUIRE(s.ok());
    out.push_back(Drain(**s));
  }
  return out;
}

std::vector<Result> Together(Engine& engine, const std::vector<std::string>& prompts,
                             int max_tokens, float temperature = 0.0f) {
  std::vector<std::unique_ptr<RequestStream>> streams;
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto s = engine.Submit(Request(engine, prompts[i], max_tokens, temperature, 100 + i));
    REQUIRE(s.ok());
    streams.push_back(std::move(s).value());
  }
  std::vector<Result> out;
  for (auto& s : streams) out.push_back(Drain(*s));
  return out;
}

void CheckSame(const std::vector<Result>& a, const std::vector<Result>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("request " << i);
    CHECK(a[i].ids == b[i].ids);
    CHECK(a[i].text == b[i].text);
  }
}

TEST_CASE("Batched greedy and seeded requests produce what they produce alone", "[engine]") {
  const auto prompts = Prompts();
  const auto greedy_alone = Alone(prompts, 40);
  const auto seeded_alone = Alone(prompts, 40, 0.9f);
  auto engine = StartEngine(EngineConfig{});
  CheckSame(greedy_alone, Together(*engine, prompts, 40));
  CheckSame(seeded_alone, Together(*engine, prompts, 40, 0.9f));
  CHECK(engine->Stats().kv_pages_used == 0);
}

TEST_CASE("A small token budget chunks prefills without changing outputs", "[engine]") {
  const auto prompts = Prompts();
  const auto alone = Alone(prompts, 24);
  EngineConfig config;
  config.max_num_batched_tokens = 5;
  config.enable_prefix_caching = false;
  auto engine = StartEngine(config);
  CheckSame(alone, Together(*engine, prompts, 24));
}

TEST_CASE("Preemption by recompute when pages run out; outputs unchanged", "[engine]") {
  const auto prompts = Prompts();
  const auto alone = Alone(prompts, 60);
  EngineConfig config;
  // TinyStories: 2 layers x 4 KV heads = 8 pages a block of 16 tokens. 14 blocks cannot hold
  // eight requests of ~70 tokens (5 blocks each).
  config.num_kv_pages = 14 * 8;
  config.max_model_len = 128;
  auto engine = StartEngine(config);
  CheckSame(alone, Together(*engine, prompts, 60));
  CHECK(engine->metrics().Value("headwise_preemptions_total") > 0);
  CHECK(engine->Stats().kv_pages_used == 0);
}

TEST_CASE("A repeated prompt hits the prefix cache and gives the same output", "[engine]") {
  const std::string prompt =
      "Once upon a time, there was a little girl named Lily. She loved to play outside with her "
      "friends in the big green park near her house.";
  for (bool caching : {true, false}) {
    EngineConfig config;
    config.enable_prefix_caching = caching;
    auto engine = StartEngine(config);
    auto first = engine->Submit(Request(*engine, prompt, 20));
    REQUIRE(first.ok());
    const Result a = Drain(**first);
    auto second = engine->Submit(Request(*engine, prompt, 20));
    REQUIRE(second.ok());
    const Result b = Drain(**second);
    CHECK(a.ids == b.ids);
    CHECK(a.cached_tokens == 0);
    if (caching) {
      CHECK(b.cached_tokens >= 16);
      CHECK(engine->metrics().Value("headwise_prefix_cache_hits_total") == 1);
    } else {
      CHECK(b.cached_tokens == 0);
    }
  }
}

TEST_CASE("Abort, by call or by dropping the stream, returns the pages", "[engine]") {
  auto engine = StartEngine(EngineConfig{});
  for (bool drop : {false, true}) {
    auto s = engine->Submit(Request(*engine, "Once upon a time", 400));
    REQUIRE(s.ok());
    std::optional<RequestOutput> ev;
    for (int i = 0; i < 100 && !ev; ++i) ev = (*s)->Next(100ms);
    REQUIRE(ev);
    CHECK(engine->Stats().kv_pages_used > 0);
    if (drop) {
      s->reset();
    } else {
      (*s)->Abort();
      Result rest = Drain(**s);
      CHECK(rest.finish_reason == FinishReason::kAbort);
    }
    int used = -1;
    for (int i = 0; i < 100 && used != 0; ++i) {
      std::this_thread::sleep_for(10ms);
      used = engine->Stats().kv_pages_used;
    }
    CHECK(used == 0);
  }
  CHECK(engine->metrics().Value("headwise_request_finished_total", {{"finish_reason", "abort"}}) ==
        2);
}

TEST_CASE("Requests that can never fit are refused at submission", "[engine]") {
  EngineConfig config;
  config.max_model_len = 64;
  config.num_kv_pages = 3 * 8;  // 48 tokens
  auto engine = StartEngine(config);
  auto too_long = engine->Submit(Request(*engine, "Once upon a time", 61));
  CHECK(too_long.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(too_long.status().message(), Catch::Contains("maximum context length is 64"));
  auto over_pool = engine->Submit(Request(*engine, "Once upon a time", 50));
  CHECK(over_pool.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(over_pool.status().message(), Catch::Contains("whole cache holds 48"));
  // Bad parameters and prompt ids name their field, for the front end's error (OpenAI `param`).
  EngineRequest bad = Request(*engine, "Once upon a time", 4);
  bad.params.top_p = 0;
  CHECK(engine->Submit(bad).status().code() == StatusCode::kInvalidArgument);
  CHECK(engine->Submit(bad).status().field() == "top_p");
  EngineRequest outside = Request(*engine, "Once upon a time", 4);
  outside.prompt_ids.back() = engine->limits().vocab_size;
  CHECK(engine->Submit(outside).status().field() == "prompt");
  EngineRequest empty = Request(*engine, "Once upon a time", 4);
  empty.prompt_ids.clear();
  CHECK(engine->Submit(empty).status().field() == "prompt");
  // A request too long for the context or the pool is about no one field.
  CHECK(too_long.status().field().empty());
  CHECK(over_pool.status().field().empty());

  // The limits a front end checks requests against.
  const EngineLimits& limits = engine->limits();
  CHECK(limits.vocab_size == engine->tokenizer()->vocab_size());
  CHECK(limits.max_model_len == 64);
  CHECK(limits.max_sequence_tokens == 64);
  CHECK(limits.max_tokens_in_pool == 48);
  CHECK(limits.default_context == 48);  // a request without max_tokens stays inside the pool
}

TEST_CASE("Impossible configurations are refused at start, naming the field", "[engine]") {
  struct Case {
    void (*mutate)(EngineConfig&);
    const char* field;
  };
  const Case cases[] = {
      {[](EngineConfig& c) { c.max_num_seqs = 0; }, "max_num_seqs"},
      {[](EngineConfig& c) { c.max_num_batched_tokens = 0; }, "max_num_batched_tokens"},
      {[](EngineConfig& c) { c.max_model_len = -1; }, "max_model_len"},
      {[](EngineConfig& c) { c.max_model_len = 1 << 20; }, "max_model_len"},  // past the model's
      {[](EngineConfig& c) { c.max_waiting = -1; }, "max_waiting"},
      {[](EngineConfig& c) { c.num_kv_pages = -1; }, "num_kv_pages"},
      {[](EngineConfig& c) { c.kv_cache_bytes = 1; }, "kv_cache_bytes"},  // not one page
      {[](EngineConfig& c) { c.gpu_memory_utilization = 1.5; }, "gpu_memory_utilization"},
  };
  for (const Case& c : cases) {
    EngineConfig config;
    c.mutate(config);
    auto engine = TryStartEngine(config);
    INFO(c.field);
    REQUIRE_FALSE(engine.ok());
    CHECK(engine.status().code() == StatusCode::kInvalidArgument);
    CHECK(engine.status().field() == c.field);
    CHECK_THAT(engine.status().message(), Catch::StartsWith(c.field));
  }
}

TEST_CASE("The engine reports on the registry it is given, and sizes a byte budget", "[engine]") {
  auto metrics = std::make_shared<MetricsRegistry>();
  EngineConfig config;
  config.kv_cache_bytes = int64_t{1} << 20;
  auto engine = StartEngine(config, metrics);
  CHECK(&engine->metrics() == metrics.get());
  // A page of TinyStories on the CPU: K and V of 16 tokens x 16 dims in f32, 2 KiB.
  CHECK(engine->Stats().kv_pages_total == 512);
  CHECK(metrics->Value("headwise_kv_pages_total") == engine->Stats().kv_pages_total);
}

// StreamingLLM (every head a re-indexed ring) never grows its cache nor its rotary positions:
// requests may run past max_model_len when sink + window + a step's tokens fit it. Rings with
// original positions, or a step budget that would rank keys past the context, keep the limit.
TEST_CASE("A re-indexed all-ring policy runs past max_model_len", "[engine]") {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("hw-streaming-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& positions) {
    const std::string path = dir + "/" + name + ".json";
    std::ofstream(path) << R"({"schema": "attn-policy/v1", "policies": {"s": {"storage": )"
                        << R"({"kind": "ring", "sink": 4, "window": 40}, "positions": ")"
                        << positions << R"(", "decode": {"mode": "retained"}}},)"
                        << R"( "assignment": {"default": "s"}})";
    return path;
  };
  EngineConfig config;
  config.max_model_len = 128;
  config.max_num_batched_tokens = 32;
  config.max_num_seqs = 2;
  config.attention_policy = write("reindex", "reindex");
  {
    auto engine = StartEngine(config);
    std::vector<std::unique_ptr<RequestStream>> streams;
    for (int i = 0; i < 2; ++i) {
      auto s = engine->Submit(Request(*engine, "Once upon a time", 300, 0.8f, 7 + i));
      INFO(s.status().ToString());
      REQUIRE(s.ok());
      streams.push_back(std::move(s).value());
    }
    for (auto& s : streams) {
      const Result r = Drain(*s);
      CHECK(r.ids.size() == 300);
      CHECK(r.finish_reason == FinishReason::kLength);
    }
  }
  config.attention_policy = write("original", "original");
  {
    auto engine = StartEngine(config);
    auto s = engine->Submit(Request(*engine, "Once upon a time", 300));
    CHECK_THAT(s.status().message(), Catch::Contains("maximum context length is 128"));
  }
  config.attention_policy = write("reindex", "reindex");
  config.max_num_batched_tokens = 100;  // 4 + 40 + 100 > 128
  {
    auto engine = StartEngine(config);
    auto s = engine->Submit(Request(*engine, "Once upon a time", 300));
    CHECK_THAT(s.status().message(), Catch::Contains("maximum context length is 128"));
    CHECK_THAT(s.status().message(), Catch::Contains("sink + window + chunk = 144"));
  }
  std::filesystem::remove_all(dir);
}

// RazorAttention (compress_once): the compaction after each prompt frees the dropped span's
// pages, so under the same page budget a razor policy runs more sequences at once than dense,
// and what each produces does not depend on whose freed pages it got.
TEST_CASE("A razor policy frees pages after the prompt and fits more sequences", "[engine]") {
  const std::string dir =
      std::filesystem::temp_directory_path() / ("hw-razor-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  // TinyStories: 2 layers x 4 KV heads; KV heads 1, 3 of layer 0 and 0 of layer 1 keep
  // everything, the other 5 compress once: sinks [0, 4), the compensation token, the last 16.
  std::ofstream(dir + "/heads.json") << R"({"0": [1, 3], "1": [0]})";
  const std::string policy = dir + "/razor.json";
  std::ofstream(policy) << R"({"schema": "attn-policy/v1", "name": "razor", "policies": {)"
                        << R"("full": {"storage": {"kind": "full"}},)"
                        << R"("razor": {"storage": {"kind": "compress_once", "sink": 4, )"
                        << R"("window": 16, "compress": {"compensation": {"enabled": true, )"
                        << R"("weighting": "count"}}}, "decode": {"mode": "retained"}, )"
                        << R"("prefill": {"mode": "dense"}}}, "assignment": {"default": "razor", )"
                        << R"("head_list": {"format": "razor_json", "path": ")" << dir
                        << R"(/heads.json", "policy": "full"}}})";

  EngineConfig config;
  config.max_model_len = 256;
  config.max_num_seqs = 4;
  config.enable_prefix_caching = false;
  // Four requests of 160 prompt + 32 generated tokens: 12 logical pages of 8 pages each, 96
  // pages dense. Razor: a logical page is a full block of 3 pages and a comp block of 5, and
  // compaction frees the comp blocks of logical pages 1..8 (positions [16, 144)), so a request
  // ends at 12 x 3 + 4 x 5 = 56 pages. 260 pages hold all four under razor (and a fourth
  // prompt before compaction beside three compacted requests), fewer than three dense.
  config.num_kv_pages = 260;
  const int prompt_len = 160, max_tokens = 32;
  std::vector<EngineRequest> requests;
  {
    auto engine = StartEngine(config);
    std::string text;
    for (int i = 0; i < 20; ++i) {
      text +=
          "Once upon a time, there was a little girl named Lily. She liked to play in the "
          "park with her dog Max. ";
    }
    const std::vector<int32_t> ids = engine->tokenizer()->Encode(text, true);
    REQUIRE(static_cast<int>(ids.size()) >= prompt_len + 4 * 7);
    for (int i = 0; i < 4; ++i) {
      EngineRequest r = Request(*engine, "", max_tokens);
      r.prompt_ids.assign(ids.begin() + 7 * i, ids.begin() + 7 * i + prompt_len);
      requests.push_back(std::move(r));
    }
  }
  const auto run_all = [&](Engine& engine) {
    std::vector<std::unique_ptr<RequestStream>> streams;
    for (const EngineRequest& r : requests) {
      auto s = engine.Submit(r);
      INFO(s.status().ToString());
      REQUIRE(s.ok());
      streams.push_back(std::move(s).value());
    }
    std::vector<Result> out;
    for (auto& s : streams) out.push_back(Drain(*s));
    return out;
  };

  auto dense = StartEngine(config);
  run_all(*dense);
  CHECK(dense->metrics().Value("headwise_preemptions_total") > 0);

  config.attention_policy = policy;
  std::vector<Result> alone;
  for (const EngineRequest& r : requests) {
    auto engine = StartEngine(config);
    auto s = engine->Submit(r);
    REQUIRE(s.ok());
    alone.push_back(Drain(**s));
  }
  auto razor = StartEngine(config);
  CHECK(razor->attention_policy() == "razor");
  const std::vector<Result> together = run_all(*razor);
  CHECK(razor->metrics().Value("headwise_preemptions_total") == 0);
  CheckSame(alone, together);
  for (const Result& r : together) CHECK(r.ids.size() == static_cast<size_t>(max_tokens));
  CHECK(razor->Stats().kv_pages_used == 0);

  // A pool that fits one request whole and little more: razor preempts too, and a preempted
  // request, recomputing its prompt and what it had generated, compacts where it did the first
  // time (after the prompt), so it goes on exactly as run alone.
  // Requests of 100 prompt + 100 generated tokens in chunks of 32, so that compacted sequences
  // grow into each other while decoding and the latest one is preempted.
  config.num_kv_pages = 120;
  config.max_num_batched_tokens = 32;
  for (EngineRequest& r : requests) {
    r.prompt_ids.resize(100);
    r.params.max_tokens = 100;
  }
  alone.clear();
  for (const EngineRequest& r : requests) {
    auto engine = StartEngine(config);
    auto s = engine->Submit(r);
    REQUIRE(s.ok());
    alone.push_back(Drain(**s));
  }
  auto tight = StartEngine(config);
  CheckSame(alone, run_all(*tight));
  CHECK(tight->metrics().Value("headwise_preemptions_total") > 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("A full queue refuses with ResourceExhausted", "[engine]") {
  EngineConfig config;
  config.max_num_seqs = 1;
  config.max_waiting = 1;
  auto engine = StartEngine(config);
  std::vector<std::unique_ptr<RequestStream>> held;
  Status last;
  for (int i = 0; i < 6 && last.ok(); ++i) {
    auto s = engine->Submit(Request(*engine, "Once upon a time", 200));
    if (s.ok()) {
      held.push_back(std::move(s).value());
    } else {
      last = s.status();
    }
  }
  CHECK(last.code() == StatusCode::kResourceExhausted);
  CHECK(held.size() >= 1);
  CHECK(held.size() <= 3);
}

TEST_CASE("One engine runs dense, Duo, Streaming and Razor requests together, each as alone",
          "[engine]") {
  // Ring heads attend what the ring held when their chunk began (kernels/backend.h), so a request
  // gives the same tokens only under the same chunking: the budget takes every prompt whole, alone
  // and together; rings then move and compaction drops its span during decode.
  EngineConfig config;
  config.max_num_batched_tokens = 512;
  testing_arms::CheckArmsMatchAlone([] { return kernels::CreateCpuBackend(2); }, config);
}

TEST_CASE("Arms that cannot share one engine are refused at start, naming the arm", "[engine]") {
  auto arms = testing_arms::FourArms();
  const std::string path = arms[1].policy_path + ".page32.json";
  std::string json = testing_arms::kDuo;
  json.insert(json.find("\"policies\""), R"("kv_cache": {"page_size": 32}, )");
  std::ofstream(path) << json;
  arms[1].policy_path = path;
  EngineConfig config;
  config.arms = arms;
  auto refused = TryStartEngine(config);
  CHECK(refused.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(refused.status().message(), Catch::Contains("arm \"duo\""));
  CHECK_THAT(refused.status().message(), Catch::Contains("page size"));
  CHECK(refused.status().field() == "arms");
  config.attention_policy = arms[2].policy_path;
  config.arms = testing_arms::FourArms();
  CHECK(TryStartEngine(config).status().field() == "arms");
}

// An engine whose model and KV heads are split over `ranks` CPU ranks (tensor parallelism on the
// thread communicator), serving `config`.
StatusOr<std::unique_ptr<Engine>> StartRanks(int ranks, const EngineConfig& config) {
  auto group = CreateRankGroup("cpu", ranks, 2);
  REQUIRE(group.ok());
  auto loaded =
      LoadModel(testing::SharedDir() + "/models/tinystories-656k", LoadOptions{}, group->devices());
  REQUIRE(loaded.ok());
  return Engine::Start(std::move(loaded).value(), std::move(group).value(), config);
}

TEST_CASE("Tensor parallel: an engine over 2 and 4 CPU ranks serves every arm as one rank does",
          "[engine]") {
  EngineConfig config;
  config.max_num_batched_tokens = 512;  // every prompt whole: rings see the same chunks
  config.arms = testing_arms::FourArms();
  std::vector<int> arms;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> reference;
  for (int ranks : {1, 2, 4}) {
    INFO("ranks " << ranks);
    auto engine = StartRanks(ranks, config);
    INFO(engine.status().ToString());
    REQUIRE(engine.ok());
    if (prompts.empty()) {
      for (int a = 0; a < 4; ++a) {
        for (int v = 0; v < 2; ++v) {
          arms.push_back(a);
          prompts.push_back(testing_arms::LongPrompt(*(*engine)->tokenizer(), v));
        }
      }
    }
    const auto got = testing_arms::RunTogether(**engine, arms, prompts, 30);
    if (ranks == 1) {
      reference = got;
    } else {
      CHECK(got == reference);
    }
    CHECK((*engine)->Stats().kv_pages_used == 0);
  }
}

TEST_CASE("Tensor parallel: what cannot be split is refused at start, naming the flag's field",
          "[engine]") {
  // TinyStories has 4 KV heads and 8 query heads: 3 ranks do not divide them.
  auto group = CreateRankGroup("cpu", 3, 3);
  REQUIRE(group.ok());
  auto loaded =
      LoadModel(testing::SharedDir() + "/models/tinystories-656k", LoadOptions{}, group->devices());
  REQUIRE_FALSE(loaded.ok());
  CHECK_THAT(loaded.status().message(), Catch::Contains("tensor-parallel size 3"));
  CHECK(CreateRankGroup("cpu", 0, 1).status().field() == "tensor_parallel_size");
  // Decode-time selection keeps its state on one rank: refused over two.
  const auto dir = std::filesystem::temp_directory_path() / ("hw-tp-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tidal.json") << R"({"schema": "attn-policy/v1", "name": "tidal-tp",
    "policies": {"select": {"storage": {"kind": "full"},
      "decode": {"mode": "select", "selection": {"method": "exact_logits", "budget": 64,
        "unit": "token", "granularity": "kv_head", "group_reduce": "sum_softmax",
        "always_include": {"sink": 2, "recent": 4, "current": true},
        "refresh": {"every_steps": 1}, "publish": "tidal"}}},
      "sparse": {"storage": {"kind": "full"}, "decode": {"mode": "consume", "consume": "tidal"}}},
    "assignment": {"default": "sparse", "layers": [{"layers": [0], "policy": "select"}]}})";
  EngineConfig config;
  config.attention_policy = (dir / "tidal.json").string();
  auto engine = StartRanks(2, config);
  REQUIRE_FALSE(engine.ok());
  CHECK(engine.status().field() == "tensor_parallel_size");
  CHECK_THAT(engine.status().message(), Catch::Contains("decode-time selection"));
  REQUIRE(StartRanks(1, config).ok());  // the same policy on one rank runs
}

}  // namespace
}  // namespace headwise::engine
