// The Scheduler on its own: a tiny real KV cache on the CPU backend (one layer, two KV heads,
// pages of 4 tokens), no model, no engine thread. A fake step stands in for EngineCore: it checks
// each plan against the sequences' state, compacts where a chunk completes a prompt (as
// EngineCore does), and samples "tokens" that are a function of all tokens before them, so a
// sequence recomputed after a preemption must go on with the tokens it would have had alone.
#include "engine/scheduler.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <map>
#include <memory>
#include <numeric>
#include <vector>

#include "engine/attention/policy.h"
#include "engine/attention_setup.h"
#include "engine/kv_compaction.h"
#include "kernels/cpu/cpu_backend.h"

namespace headwise::engine {
namespace {

using attention::Policy;
using attention::StorageKind;

constexpr int kPageSize = 4;

Policy Full() {
  return Policy{};
}
Policy Ring(int sink, int window) {
  Policy p;
  p.storage = StorageKind::kRing;
  p.sink = sink;
  p.window = window;
  return p;
}
Policy CompressOnce(int sink, int window) {
  Policy p;
  p.storage = StorageKind::kCompressOnce;
  p.sink = sink;
  p.window = window;
  p.compensation = true;
  return p;
}

std::unique_ptr<kvcache::KvCache> MakeCache(kernels::Backend& backend,
                                            const std::vector<Policy>& heads, int num_pages,
                                            int chunk_tokens = 0) {
  attention::PolicySet set;
  set.name = "test";
  set.page_size = kPageSize;
  set.policies = heads;
  set.head_policy.emplace_back(heads.size());
  std::iota(set.head_policy[0].begin(), set.head_policy[0].end(), 0);
  kvcache::KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = static_cast<int>(heads.size());
  config.head_dim = 4;
  config.page_size = kPageSize;
  config.num_pages = num_pages;
  config.chunk_tokens = chunk_tokens;
  auto layout = KvLayoutFor(set);
  REQUIRE(layout.ok());
  auto cache = CreateKvCache({*layout}, config, backend);
  INFO(cache.status().ToString());
  REQUIRE(cache.ok());
  return std::move(cache).value();
}

// The consumer side: a flag to abort with.
struct FlagSink : SequenceSink {
  std::atomic<bool> abort{false};
  bool abort_requested() const override { return abort; }
  void Deliver(RequestOutput) override {}
};

// The fake model's next token: a function of every token before it.
int32_t NextToken(std::span<const int32_t> tokens) {
  uint32_t h = 2166136261u;
  for (int32_t t : tokens) h = (h ^ static_cast<uint32_t>(t)) * 16777619u;
  return static_cast<int32_t>(h % 1000u) + 1;
}

std::vector<int32_t> Prompt(int n, int32_t first = 1) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), first);
  return p;
}

// A chunk as the tests write it: {sequence, start, count, samples}.
struct Want {
  const Sequence* seq;
  int start, count;
  bool samples;
};

struct Step {
  SchedulerOutput plan;
  SchedulerUpdate update;
};

// A scheduler over a cache of one layer whose KV head h keeps its tokens as heads[h] says, with
// the engine's settings: rings for sequences writing up to a step's budget, and the cache's
// prefix caching as the scheduler's.
struct Harness {
  Harness(const std::vector<Policy>& heads, int num_pages, SchedulerConfig config)
      : cache(MakeCache(*backend, heads, num_pages, config.max_num_batched_tokens)),
        scheduler(*cache, config) {
    cache->set_prefix_caching(config.enable_prefix_caching);
  }

  Sequence* Add(std::vector<int32_t> prompt, int max_tokens) {
    SamplingParams params;
    params.max_tokens = max_tokens;
    params.seed = 1;
    auto seq = std::make_unique<Sequence>(std::move(prompt), params, nullptr,
                                          std::vector<int32_t>{}, *cache);
    seq->id = std::to_string(next_id++);
    auto sink = std::make_shared<FlagSink>();
    sinks[seq.get()] = sink;
    seq->sink = sink;
    Sequence* raw = seq.get();
    scheduler.Add(std::move(seq));
    return raw;
  }

  // One step: plan, check the plan, compact, sample, update.
  Step Run() {
    Step s;
    s.plan = scheduler.Schedule();
    int tokens = 0;
    std::vector<SampledToken> sampled;
    for (const ScheduledChunk& c : s.plan.chunks) {
      Sequence& seq = *c.seq;
      CHECK(c.start == seq.num_computed);
      CHECK(c.count > 0);
      CHECK(c.start + c.count <= static_cast<int>(seq.tokens.size()));
      CHECK(c.samples == (c.start + c.count == static_cast<int>(seq.tokens.size())));
      // The pages are there: the cache can place every token of the chunk.
      CHECK(seq.kv->capacity_tokens() >= c.start + c.count);
      tokens += c.count;
      if (c.completes_prompt) {
        CompactAfterPrompt(*backend, *cache, *seq.kv, c.start + c.count);
      }
      if (c.samples) sampled.push_back(SampledToken{NextToken(seq.tokens), 0.0f, {}});
    }
    CHECK(tokens <= scheduler.config().max_num_batched_tokens);
    CHECK(scheduler.num_running() <= scheduler.config().max_num_seqs);
    s.update = scheduler.Update(s.plan, std::move(sampled));
    CheckPages();
    return s;
  }

  // Waiting sequences hold no pages; the running ones hold what the cache counts as used.
  void CheckPages() const {
    int held = 0;
    for (const auto& s : scheduler.running()) held += s->kv->num_pages_held();
    for (const auto& s : scheduler.waiting()) CHECK(s->kv->num_pages_held() == 0);
    if (!cache->prefix_caching(0)) CHECK(held == cache->num_pages_used());
  }

  // Steps until nothing is left (bounded), collecting each finished sequence's generated tokens.
  std::map<std::string, std::vector<int32_t>> RunToEnd(int max_steps = 200) {
    std::map<std::string, std::vector<int32_t>> done;
    for (int i = 0; i < max_steps && scheduler.has_unfinished(); ++i) {
      Step s = Run();
      for (const auto& f : s.update.finished) {
        done[f->id] = std::vector<int32_t>(f->generated().begin(), f->generated().end());
      }
    }
    CHECK_FALSE(scheduler.has_unfinished());
    return done;
  }

  std::unique_ptr<kernels::Backend> backend = kernels::CreateCpuBackend(1);
  std::unique_ptr<kvcache::KvCache> cache;
  Scheduler scheduler;
  std::map<const Sequence*, std::shared_ptr<FlagSink>> sinks;
  int next_id = 0;
};

void CheckChunks(const SchedulerOutput& plan, const std::vector<Want>& want) {
  REQUIRE(plan.chunks.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("chunk " << i);
    CHECK(plan.chunks[i].seq == want[i].seq);
    CHECK(plan.chunks[i].start == want[i].start);
    CHECK(plan.chunks[i].count == want[i].count);
    CHECK(plan.chunks[i].samples == want[i].samples);
  }
}

std::vector<const Sequence*> Order(const std::deque<std::unique_ptr<Sequence>>& q) {
  std::vector<const Sequence*> out;
  for (const auto& s : q) out.push_back(s.get());
  return out;
}

// Generated tokens of each prompt run alone in a roomy cache: what any schedule must produce.
std::vector<int32_t> Alone(const std::vector<Policy>& heads, std::vector<int32_t> prompt,
                           int max_tokens) {
  Harness h(heads, 64, SchedulerConfig{4, 64, false});
  h.Add(std::move(prompt), max_tokens);
  auto done = h.RunToEnd();
  REQUIRE(done.size() == 1);
  return done.begin()->second;
}

TEST_CASE("Chunked prefill within the token budget; the last chunk samples", "[scheduler]") {
  Harness h({Full(), Full()}, 64, SchedulerConfig{4, 8, true});
  Sequence* a = h.Add(Prompt(20), 3);
  Sequence* b = h.Add(Prompt(5, 100), 2);
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{a, 0, 8, false}});  // the budget is spent: b waits
  CHECK(s1.update.outputs.empty());
  CHECK(h.scheduler.num_waiting() == 1);
  Step s2 = h.Run();
  CheckChunks(s2.plan, {{a, 8, 8, false}});
  Step s3 = h.Run();
  CheckChunks(s3.plan, {{a, 16, 4, true}, {b, 0, 4, false}});  // b starts in what is left
  REQUIRE(s3.update.outputs.size() == 1);
  CHECK(s3.update.outputs[0].seq == a);
  CHECK(s3.update.outputs[0].token.id == a->tokens.back());
  Step s4 = h.Run();
  CheckChunks(s4.plan, {{a, 20, 1, true}, {b, 4, 1, true}});
  CHECK(s4.update.outputs.size() == 2);
  CHECK(s4.plan.first_scheduled.empty());  // b's first scheduling was in step 3
  CHECK(s3.plan.first_scheduled == std::vector<Sequence*>{b});
  CHECK(s1.plan.first_scheduled == std::vector<Sequence*>{a});
  Step s5 = h.Run();  // both finish: a after 3 tokens, b after 2
  CHECK(s5.update.finished.size() == 2);
  CHECK(s5.update.outputs[0].finished);
  CHECK(s5.update.outputs[0].finish_reason == FinishReason::kLength);
  CHECK_FALSE(h.scheduler.has_unfinished());
  CHECK(h.cache->num_pages_used() == 0);
}

TEST_CASE("max_num_seqs bounds the running batch", "[scheduler]") {
  Harness h({Full(), Full()}, 64, SchedulerConfig{2, 64, true});
  Sequence* a = h.Add(Prompt(3), 2);
  Sequence* b = h.Add(Prompt(3, 10), 2);
  Sequence* c = h.Add(Prompt(3, 20), 2);
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{a, 0, 3, true}, {b, 0, 3, true}});
  CHECK(Order(h.scheduler.waiting()) == std::vector<const Sequence*>{c});
  Step s2 = h.Run();  // a and b finish in this step; c is admitted in the next
  CheckChunks(s2.plan, {{a, 3, 1, true}, {b, 3, 1, true}});
  Step s3 = h.Run();
  CheckChunks(s3.plan, {{c, 0, 3, true}});
}

TEST_CASE("Admission waits for pages, first come first served", "[scheduler]") {
  // 8 pages: 4 logical pages of 4 tokens (a page per KV head).
  Harness h({Full(), Full()}, 8, SchedulerConfig{8, 64, true});
  Sequence* a = h.Add(Prompt(10), 2);      // 3 logical pages
  Sequence* b = h.Add(Prompt(8, 50), 1);   // 2: does not fit beside a
  Sequence* c = h.Add(Prompt(2, 100), 1);  // 1 would fit, but waits behind b
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{a, 0, 10, true}});
  CHECK(Order(h.scheduler.waiting()) == std::vector<const Sequence*>{b, c});
  CHECK(b->kv->capacity_tokens() == 0);  // a failed admission keeps nothing
  Step s2 = h.Run();                     // a's last token; its pages return
  CheckChunks(s2.plan, {{a, 10, 1, true}});
  CHECK(s2.update.finished.size() == 1);
  CHECK(h.cache->num_pages_used() == 0);
  Step s3 = h.Run();
  CheckChunks(s3.plan, {{b, 0, 8, true}, {c, 0, 2, true}});
}

TEST_CASE("Preemption takes the latest-admitted sequences not in the step; recompute goes on",
          "[scheduler]") {
  const std::vector<Policy> dense = {Full(), Full()};
  // 6 pages: 3 logical pages. Three prompts of one page each; the first decode step needs a
  // second page for each.
  Harness h(dense, 6, SchedulerConfig{8, 64, false});
  Sequence* a = h.Add(Prompt(4), 3);
  Sequence* b = h.Add(Prompt(4, 10), 3);
  Sequence* c = h.Add(Prompt(4, 20), 3);
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{a, 0, 4, true}, {b, 0, 4, true}, {c, 0, 4, true}});
  Step s2 = h.Run();
  // a grows by taking c's pages (c: the latest admitted, not in the step yet); b then finds no
  // victim (a is in the step) and gives its own back. Both wait, b ahead of c.
  CheckChunks(s2.plan, {{a, 4, 1, true}});
  CHECK(s2.plan.preempted == std::vector<Sequence*>{c, b});
  CHECK(Order(h.scheduler.waiting()) == std::vector<const Sequence*>{b, c});
  CHECK(b->num_computed == 0);
  CHECK(b->tokens.size() == 5);  // the tokens stay: prompt and the one generated
  // b comes back first and recomputes prompt and generated token in one chunk, then samples.
  const auto done = h.RunToEnd();
  REQUIRE(done.size() == 3);
  CHECK(done.at("0") == Alone(dense, Prompt(4), 3));  // ids are in order of Add
  CHECK(done.at("1") == Alone(dense, Prompt(4, 10), 3));
  CHECK(done.at("2") == Alone(dense, Prompt(4, 20), 3));
  CHECK(h.cache->num_pages_used() == 0);
}

TEST_CASE("Compress-once: a recompute stops at the prompt's end; decode steps go first",
          "[scheduler]") {
  // Head 0 full, head 1 compress-once: a logical page takes a page of each. 10 pages: 5 logical
  // pages.
  const std::vector<Policy> razor = {Full(), CompressOnce(1, 2)};
  Harness h(razor, 10, SchedulerConfig{8, 64, false});
  Sequence* w = h.Add(Prompt(4), 6);
  Sequence* x = h.Add(Prompt(4, 10), 8);
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{w, 0, 4, true}, {x, 0, 4, true}});
  CHECK(s1.plan.chunks[0].completes_prompt);
  for (int i = 0; i < 4; ++i) h.Run();  // w and x decode to 9 tokens each (2 pages each)
  REQUIRE(x->tokens.size() == 9);
  Sequence* y = h.Add(Prompt(2, 30), 3);
  Step s6 = h.Run();
  // w takes the last free pages; x finds no victim and gives its own back; it comes back at
  // once, but its chunk stops at the prompt's end (where it compacts again) and samples nothing;
  // y gets the pages left. w finishes in this step.
  CHECK(s6.plan.preempted == std::vector<Sequence*>{x});
  CheckChunks(s6.plan, {{w, 8, 1, true}, {x, 0, 4, false}, {y, 0, 2, true}});
  CHECK(s6.plan.chunks[1].completes_prompt);
  REQUIRE(s6.update.finished.size() == 1);
  CHECK(s6.update.finished[0].get() == w);
  // Now x (admitted before y) still recomputes its generated tokens while y decodes: y first.
  Step s7 = h.Run();
  CheckChunks(s7.plan, {{y, 2, 1, true}, {x, 4, 5, true}});
  const auto done = h.RunToEnd();
  CHECK(done.at("1") == Alone(razor, Prompt(4, 10), 8));
  CHECK(done.at("2") == Alone(razor, Prompt(2, 30), 3));
  CHECK(h.cache->num_pages_used() == 0);
}

TEST_CASE("Compress-once: pages freed by compaction admit the next request", "[scheduler]") {
  // 12 pages: 6 logical pages. a's prompt of 15 tokens takes 4 (8 pages); compaction (sink 1,
  // window 3) drops positions [1, 12), which frees the compress-once pages of logical pages 1
  // and 2. b needs 3 logical pages (6 pages): only after a is compacted.
  Harness h({Full(), CompressOnce(1, 3)}, 12, SchedulerConfig{8, 64, false});
  Sequence* a = h.Add(Prompt(15), 2);
  Sequence* b = h.Add(Prompt(9, 50), 1);
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{a, 0, 15, true}});
  CHECK(h.scheduler.num_waiting() == 1);
  CHECK(a->kv->num_pages_held() == 6);
  Step s2 = h.Run();
  CheckChunks(s2.plan, {{a, 15, 1, true}, {b, 0, 9, true}});
}

TEST_CASE("Rings: admission waits for a sequence's ring pages", "[scheduler]") {
  // Head 0 full, head 1 a ring; 3 may run, but the pool holds 2 sequences: each takes 4 ring
  // pages (1 sink + (4 + 8) / 4 window) and a full page.
  Harness h({Full(), Ring(4, 4)}, 12, SchedulerConfig{3, 8, false});
  Sequence* a = h.Add(Prompt(3), 2);
  Sequence* b = h.Add(Prompt(3, 10), 2);
  Sequence* c = h.Add(Prompt(2, 20), 2);
  Step s1 = h.Run();
  CheckChunks(s1.plan, {{a, 0, 3, true}, {b, 0, 3, true}});
  CHECK(Order(h.scheduler.waiting()) == std::vector<const Sequence*>{c});
  Step s2 = h.Run();  // a and b finish and give their rings back
  CHECK(s2.update.finished.size() == 2);
  Step s3 = h.Run();
  CheckChunks(s3.plan, {{c, 0, 2, true}});
}

TEST_CASE("Rings only: a sequence longer than the pool runs without preemption", "[scheduler]") {
  // Every head a ring: a sequence holds a fixed set of pages however long it grows.
  // One sequence's rings fill the pool: (1 sink page + (4 + 8) / 4 window pages) x 2 heads.
  Harness h({Ring(4, 4), Ring(4, 4)}, 8, SchedulerConfig{1, 8, false});
  CHECK(h.cache->num_pages() < 20);
  Sequence* a = h.Add(Prompt(30), 40);
  const int pages = [&] {
    h.Run();
    return a->kv->num_pages_held();
  }();
  for (int i = 0; i < 100 && h.scheduler.has_unfinished(); ++i) {
    Step s = h.Run();
    CHECK(s.plan.preempted.empty());
    if (h.scheduler.has_unfinished()) CHECK(a->kv->num_pages_held() == pages);
  }
  CHECK_FALSE(h.scheduler.has_unfinished());
  CHECK(h.cache->num_pages_used() == 0);
}

TEST_CASE("Abort: running and waiting sequences leave and their pages return", "[scheduler]") {
  Harness h({Full(), Full()}, 8, SchedulerConfig{8, 64, true});
  Sequence* a = h.Add(Prompt(6), 10);
  Sequence* b = h.Add(Prompt(6, 20), 10);
  Sequence* c = h.Add(Prompt(12, 40), 10);  // 3 logical pages: waits for a and b
  h.Run();
  CHECK(h.scheduler.num_running() == 2);
  CHECK(Order(h.scheduler.waiting()) == std::vector<const Sequence*>{c});
  CHECK(h.cache->num_pages_used() == 8);
  h.sinks[a]->abort = true;
  h.sinks[c]->abort = true;
  SchedulerOutput plan = h.scheduler.Schedule();
  REQUIRE(plan.aborted.size() == 2);
  CHECK(plan.aborted[0].get() == a);  // running ones first, then the waiting queue
  CHECK(plan.aborted[1].get() == c);
  CHECK(a->kv->num_pages_held() == 0);
  CheckChunks(plan, {{b, 6, 1, true}});
  CHECK(h.cache->num_pages_used() == b->kv->num_pages_held());
  h.scheduler.Update(plan, {SampledToken{NextToken(b->tokens), 0.0f, {}}});
  CHECK_FALSE(h.scheduler.waiting().size());
}

TEST_CASE("Prefix caching: admission attaches cached pages; the last token is computed",
          "[scheduler]") {
  Harness h({Full(), Full()}, 64, SchedulerConfig{8, 64, true});
  REQUIRE(h.cache->prefix_caching(0));
  std::vector<int32_t> prompt = Prompt(10);
  h.Add(prompt, 1);
  h.RunToEnd();  // its two full pages stay cached after it finishes
  CHECK(h.cache->num_pages_used() == 0);

  std::vector<int32_t> longer = prompt;
  longer.push_back(77);
  Sequence* b = h.Add(longer, 1);
  Step s = h.Run();
  CheckChunks(s.plan, {{b, 8, 3, true}});
  CHECK(b->cached_tokens == 8);
  CHECK(s.plan.first_scheduled == std::vector<Sequence*>{b});

  // A prompt of exactly the cached pages: its last token is computed anyway, for its logits.
  Sequence* c = h.Add(Prompt(8), 1);
  Step t = h.Run();
  CheckChunks(t.plan, {{c, 7, 1, true}});
  CHECK(c->cached_tokens == 7);

  // With the scheduler's prefix caching off (the generator's setting) nothing is attached, even
  // where the cache has the pages.
  Harness off({Full(), Full()}, 64, SchedulerConfig{8, 64, false});
  off.cache->set_prefix_caching(true);
  off.Add(prompt, 1);
  off.RunToEnd();
  Sequence* d = off.Add(longer, 1);
  CheckChunks(off.Run().plan, {{d, 0, 11, true}});
}

TEST_CASE("TakeAll hands back every unfinished sequence with no pages held", "[scheduler]") {
  Harness h({Full(), Full()}, 8, SchedulerConfig{8, 4, true});
  Sequence* a = h.Add(Prompt(6), 4);
  Sequence* b = h.Add(Prompt(6, 10), 4);
  h.Run();  // a: a first chunk; b waits for budget
  auto all = h.scheduler.TakeAll();
  REQUIRE(all.size() == 2);
  CHECK(all[0].get() == a);
  CHECK(all[1].get() == b);
  CHECK(h.cache->num_pages_used() == 0);
  CHECK_FALSE(h.scheduler.has_unfinished());
}

}  // namespace
}  // namespace headwise::engine
