#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "engine/attention_setup.h"
#include "engine/kv_compaction.h"
#include "engine/memory_budget.h"
#include "engine/model_loader.h"
#include "engine/output_processor.h"
#include "engine/sampler.h"
#include "kvcache/kv_cache.h"

namespace headwise::engine {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
                                             0.1,   0.25,   0.5,   0.75, 1.0,   2.5,  5.0,
                                             7.5,   10.0,   20.0,  40.0, 80.0,  160.0};

}  // namespace

// The channel between the engine thread (producer) and a front end (consumer).
struct RequestStream::Shared {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<RequestOutput> events;
  bool done = false;  // the finished event was delivered to the consumer
  std::atomic<bool> abort_requested{false};
  std::function<void()> wake_engine;  // set by the engine: an abort should not wait for a step
  std::function<void()> on_output;    // EngineRequest::on_output

  void Push(RequestOutput out) {
    {
      std::lock_guard<std::mutex> lock(mu);
      events.push_back(std::move(out));
    }
    cv.notify_all();
    if (on_output) on_output();
  }
};

RequestStream::~RequestStream() {
  if (!shared_->done) Abort();
}

std::optional<RequestOutput> RequestStream::Next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(shared_->mu);
  if (shared_->done) return std::nullopt;
  if (!shared_->cv.wait_for(lock, timeout, [&] { return !shared_->events.empty(); })) {
    return std::nullopt;
  }
  RequestOutput out = std::move(shared_->events.front());
  shared_->events.pop_front();
  if (out.finished) shared_->done = true;
  return out;
}

void RequestStream::Abort() {
  shared_->abort_requested = true;
  if (shared_->wake_engine) shared_->wake_engine();
}

namespace {

// A request inside the engine: its tokens, sampler, cache pages and progress.
struct Sequence {
  std::string id;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  size_t prompt_len = 0;
  SamplingParams params;
  Sampler sampler;
  std::unique_ptr<OutputProcessor> output;
  std::unique_ptr<kvcache::SequenceKv> kv;
  std::shared_ptr<RequestStream::Shared> shared;
  int num_computed = 0;  // tokens whose K/V are in the cache
  int cached_tokens = 0;
  Clock::time_point arrival, first_scheduled, last_token;
  bool scheduled_once = false;
  RequestOutput pending;  // what this step produced, sent after the step

  Sequence(SamplingParams p) : params(std::move(p)), sampler(params) {}
  std::span<const int32_t> prompt() const {
    return std::span<const int32_t>(tokens).first(prompt_len);
  }
  std::span<const int32_t> generated() const {
    return std::span<const int32_t>(tokens).subspan(prompt_len);
  }
  int remaining() const { return static_cast<int>(tokens.size()) - num_computed; }
};

}  // namespace

struct Engine::Impl {
  LoadedModel model;
  std::unique_ptr<kernels::Backend> backend;
  EngineConfig config;
  attention::PolicySet policy;
  std::shared_ptr<MetricsRegistry> metrics;
  std::unique_ptr<kvcache::KvCache> cache;
  std::unique_ptr<BatchSampler> sampler;  // engine thread only
  LengthLimit length_limit;  // prompt + max_tokens of a request: the context, or more (streaming)
  EngineLimits limits;

  std::mutex mu;  // guards incoming, stop, counters read by Stats()
  std::condition_variable cv;
  std::deque<std::unique_ptr<Sequence>> incoming;
  bool stop = false;
  uint64_t next_id = 0;
  std::atomic<int> num_running{0}, num_waiting{0}, pages_used{0};
  std::atomic<bool> alive{true};

  // Engine thread only.
  std::deque<std::unique_ptr<Sequence>> waiting;
  std::vector<std::unique_ptr<Sequence>> running;
  std::thread thread;

  void Wake() {
    { std::lock_guard<std::mutex> lock(mu); }
    cv.notify_all();
  }
  void Loop();
  void Run();
  // A cache of rings only holds a sequence of any length. Compaction does not lengthen it: a
  // request must fit whole, as its prompt (or its recompute after a preemption) is held whole.
  int MaxTokensInPool() const { return cache->max_tokens_per_sequence(); }
  // Tokens of `seq` to compute this step, within `budget`. With compress-once heads a chunk stops
  // at the prompt's end, where the sequence is compacted: a preempted sequence recomputing prompt
  // and generated tokens compacts where it did the first time, so it goes on as it would have.
  int ChunkOf(const Sequence& seq, int budget) const {
    int count = std::min(seq.remaining(), budget);
    const int to_prompt_end = static_cast<int>(seq.prompt_len) - seq.num_computed;
    if (cache->has_compressed_heads() && to_prompt_end > 0) count = std::min(count, to_prompt_end);
    return count;
  }
  bool Step();
  void Finish(Sequence& seq, const std::string& reason, const std::string& error = "");
  void Preempt(std::unique_ptr<Sequence> seq);
  void UpdateGauges();
};

void Engine::Impl::Finish(Sequence& seq, const std::string& reason, const std::string& error) {
  RequestOutput out = std::move(seq.pending);
  seq.pending = RequestOutput();
  out.finished = true;
  out.finish_reason = reason;
  out.error = error;
  out.prompt_tokens = static_cast<int>(seq.prompt_len);
  out.completion_tokens = static_cast<int>(seq.tokens.size() - seq.prompt_len);
  out.cached_tokens = seq.cached_tokens;
  seq.kv->Release();
  // Visible before the consumer hears of the finish: its pages are back in the pool.
  pages_used = cache->num_pages_used();
  metrics->Set("headwise_kv_pages_used", pages_used);
  metrics->Increment("headwise_request_finished_total", 1, {{"finish_reason", reason}});
  metrics->Increment("headwise_prompt_tokens_total", static_cast<double>(seq.prompt_len));
  metrics->Increment("headwise_generation_tokens_total", out.completion_tokens);
  metrics->Observe("headwise_e2e_request_latency_seconds", Seconds(seq.arrival, Clock::now()));
  seq.shared->Push(std::move(out));
}

void Engine::Impl::Preempt(std::unique_ptr<Sequence> seq) {
  // Recompute later: the K/V goes, the tokens stay; prefix caching may bring pages back.
  seq->kv->Release();
  seq->num_computed = 0;
  metrics->Increment("headwise_preemptions_total");
  spdlog::debug("preempted {} at {} tokens", seq->id, seq->tokens.size());
  waiting.push_front(std::move(seq));
}

void Engine::Impl::UpdateGauges() {
  num_running = static_cast<int>(running.size());
  num_waiting = static_cast<int>(waiting.size());
  pages_used = cache->num_pages_used();
  metrics->Set("headwise_num_requests_running", num_running);
  metrics->Set("headwise_num_requests_waiting", num_waiting);
  metrics->Set("headwise_kv_pages_used", pages_used);
  metrics->Set("headwise_kv_pages_total", cache->num_pages());
}

void Engine::Impl::Run() {
  try {
    Loop();
  } catch (const std::exception& e) {
    // A bug, not bad input: stop serving rather than answer wrongly; /health reports it.
    spdlog::error("engine thread stopped: {}", e.what());
    for (auto& s : running) Finish(*s, "error", e.what());
    for (auto& s : waiting) Finish(*s, "error", e.what());
    running.clear();
    waiting.clear();
  }
  alive = false;
}

void Engine::Impl::Loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(100), [&] {
        return stop || !incoming.empty() || !running.empty() || !waiting.empty();
      });
      if (stop) break;
      while (!incoming.empty()) {
        waiting.push_back(std::move(incoming.front()));
        incoming.pop_front();
      }
    }
    if (!Step()) {
      // Nothing could run (e.g. the queue head waits for pages): wait for an event rather
      // than spin.
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(10), [&] { return stop || !incoming.empty(); });
    }
  }
  // Shutdown: every unfinished request ends as aborted.
  std::deque<std::unique_ptr<Sequence>> rest;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& s : incoming) rest.push_back(std::move(s));
    incoming.clear();
  }
  for (auto& s : running) Finish(*s, "abort");
  for (auto& s : waiting) Finish(*s, "abort");
  for (auto& s : rest) Finish(*s, "abort");
  running.clear();
  waiting.clear();
  UpdateGauges();
}

bool Engine::Impl::Step() {
  const auto now = Clock::now();
  // Aborts first: their pages return before anything is scheduled.
  auto aborted = [&](std::unique_ptr<Sequence>& s) {
    if (!s->shared->abort_requested) return false;
    Finish(*s, "abort");
    return true;
  };
  std::erase_if(running, aborted);
  std::erase_if(waiting, aborted);
  if (running.empty() && waiting.empty()) {
    UpdateGauges();
    return false;
  }

  struct Work {
    Sequence* seq;
    int count;
  };
  std::vector<Work> work;
  int budget = config.max_num_batched_tokens;

  // Makes room for `seq` to hold `tokens` tokens, preempting the latest-admitted running
  // sequences that are not in this step's batch; false if even that is not enough.
  auto reserve = [&](Sequence& seq, int tokens) -> bool {
    for (;;) {
      if (seq.kv->Reserve(tokens).ok()) return true;
      auto victim = std::find_if(running.rbegin(), running.rend(), [&](const auto& s) {
        return s.get() != &seq && std::none_of(work.begin(), work.end(),
                                               [&](const Work& w) { return w.seq == s.get(); });
      });
      if (victim == running.rend()) return false;
      auto it = std::next(victim).base();
      std::unique_ptr<Sequence> taken = std::move(*it);
      running.erase(it);
      Preempt(std::move(taken));
    }
  };

  // Running sequences: decode steps first, then the continuation of chunked prefills.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < running.size() && budget > 0; ++i) {
      Sequence& seq = *running[i];
      const bool decode = seq.remaining() == 1;
      if (decode != (pass == 0)) continue;
      const int count = ChunkOf(seq, budget);
      if (!reserve(seq, seq.num_computed + count)) {
        // Not even alone: give its own pages back and wait.
        auto it = running.begin() + static_cast<std::ptrdiff_t>(i);
        std::unique_ptr<Sequence> self = std::move(*it);
        running.erase(it);
        Preempt(std::move(self));
        --i;
        continue;
      }
      work.push_back({&seq, count});
      budget -= count;
    }
  }

  // Admission, first come first served: the queue head blocks those behind it.
  while (!waiting.empty() && budget > 0 && static_cast<int>(running.size()) < config.max_num_seqs) {
    Sequence& seq = *waiting.front();
    if (seq.num_computed == 0 && seq.kv->capacity_tokens() == 0) {
      const int hit = seq.kv->AttachCachedPrefix(seq.tokens);
      // The last token is always computed: its logits are what we sample from.
      seq.num_computed = std::min(hit, static_cast<int>(seq.tokens.size()) - 1);
    }
    const int count = ChunkOf(seq, budget);
    if (!seq.kv->Reserve(seq.num_computed + count).ok()) {
      seq.kv->Release();  // keep nothing while waiting
      seq.num_computed = 0;
      break;
    }
    if (!seq.scheduled_once) {
      seq.scheduled_once = true;
      seq.first_scheduled = now;
      seq.cached_tokens = seq.num_computed;
      metrics->Observe("headwise_request_queue_time_seconds", Seconds(seq.arrival, now));
      metrics->Increment("headwise_prefix_cache_queried_tokens_total",
                         static_cast<double>(seq.prompt_len));
      metrics->Increment("headwise_prefix_cache_hit_tokens_total", seq.num_computed);
      if (seq.num_computed > 0) metrics->Increment("headwise_prefix_cache_hits_total");
    }
    work.push_back({&seq, count});
    budget -= count;
    running.push_back(std::move(waiting.front()));
    waiting.pop_front();
  }
  UpdateGauges();
  if (work.empty()) return false;

  std::vector<models::BatchEntry> batch;
  batch.reserve(work.size());
  for (const Work& w : work) {
    batch.push_back(models::BatchEntry{
        w.seq->kv.get(),
        std::span<const int32_t>(w.seq->tokens)
            .subspan(static_cast<size_t>(w.seq->num_computed), static_cast<size_t>(w.count)),
        w.seq->num_computed, false});
  }
  const Tensor logits = model.model->Forward(batch, *cache);

  // Sequences whose tokens are all computed sample from their logits row on the device; a
  // prefill chunk with more to come samples nothing.
  std::vector<BatchSampler::Row> rows;
  std::vector<Sequence*> sampled;
  for (size_t i = 0; i < work.size(); ++i) {
    Sequence& seq = *work[i].seq;
    const int before = seq.num_computed;
    seq.num_computed += work[i].count;
    seq.kv->CommitComputed(seq.tokens, seq.num_computed);
    // The prompt is in (ChunkOf ends a chunk there): compress-once heads compact now, also when
    // a preempted sequence recomputes its generated tokens after it.
    if (before < static_cast<int>(seq.prompt_len) &&
        seq.num_computed >= static_cast<int>(seq.prompt_len)) {
      CompactAfterPrompt(*backend, *cache, *seq.kv, seq.num_computed);
    }
    if (seq.remaining() > 0) continue;
    rows.push_back({&seq.sampler, static_cast<int>(i), seq.prompt(), seq.generated()});
    sampled.push_back(&seq);
  }
  std::vector<SampledToken> tokens = sampler->Sample(logits, rows);
  if (rows.empty()) backend->Synchronize();  // the step's timing covers the forward pass

  const auto after = Clock::now();
  for (size_t j = 0; j < sampled.size(); ++j) {
    Sequence& seq = *sampled[j];
    SampledToken tok = std::move(tokens[j]);
    const int32_t id = tok.id;
    seq.tokens.push_back(id);
    const bool first = seq.output->num_tokens() == 0;
    seq.pending.text += seq.output->Append(id);
    seq.pending.token_ids.push_back(id);
    seq.pending.tokens.push_back(std::move(tok));
    metrics->Observe(
        first ? "headwise_time_to_first_token_seconds" : "headwise_inter_token_latency_seconds",
        Seconds(first ? seq.arrival : seq.last_token, after));
    seq.last_token = after;
  }

  // Deliver events; finished sequences leave the batch and free their pages.
  std::erase_if(running, [&](std::unique_ptr<Sequence>& s) {
    Sequence& seq = *s;
    if (seq.pending.token_ids.empty()) return false;
    if (seq.output->finished()) {
      Finish(seq, seq.output->finish_reason());
      return true;
    }
    RequestOutput out = std::move(seq.pending);
    seq.pending = RequestOutput();
    out.prompt_tokens = static_cast<int>(seq.prompt_len);
    out.completion_tokens = seq.output->num_tokens();
    out.cached_tokens = seq.cached_tokens;
    seq.shared->Push(std::move(out));
    return false;
  });
  UpdateGauges();
  return true;
}

Engine::Engine(std::unique_ptr<Impl> impl) : metrics_(impl->metrics), impl_(std::move(impl)) {}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

StatusOr<std::unique_ptr<Engine>> Engine::Start(LoadedModel model,
                                                std::unique_ptr<kernels::Backend> backend,
                                                const EngineConfig& config,
                                                std::shared_ptr<MetricsRegistry> metrics) {
  const auto& mc = model.model->config();
  EngineConfig c = config;
  // Each refusal names its field, which a front end reports in its own words (a CLI flag).
  auto refuse = [](const char* field, int value, const char* rule) {
    return InvalidArgument("{} must be {}, got {}", field, rule, value).WithField(field);
  };
  if (c.max_model_len < 0) return refuse("max_model_len", c.max_model_len, ">= 0");
  if (c.max_model_len == 0) c.max_model_len = mc.max_position_embeddings;
  if (c.max_model_len > mc.max_position_embeddings) {
    return InvalidArgument("max_model_len {} exceeds the model's context of {} tokens",
                           c.max_model_len, mc.max_position_embeddings)
        .WithField("max_model_len");
  }
  if (c.max_num_seqs < 1) return refuse("max_num_seqs", c.max_num_seqs, ">= 1");
  if (c.max_num_batched_tokens < 1) {
    return refuse("max_num_batched_tokens", c.max_num_batched_tokens, ">= 1");
  }
  if (c.max_waiting < 0) return refuse("max_waiting", c.max_waiting, ">= 0");
  if (c.page_size < 1) return refuse("page_size", c.page_size, ">= 1");
  HW_ASSIGN_OR_RETURN(
      attention::PolicySet policy,
      LoadAttentionPolicy(c.attention_policy, mc, model.path, model.model->weights_hash()));
  if (policy.page_size != c.page_size) {
    return InvalidArgument(
        "attention policy \"{}\": kv_cache.page_size {} differs from the "
        "engine's page size {}",
        policy.name, policy.page_size, c.page_size);
  }
  HW_ASSIGN_OR_RETURN(const kvcache::HeadClassLayout layout, CacheLayoutFor(policy));
  // Pages of a full block (the full-storage heads), and of the sink/window rings of
  // max_num_seqs sequences, which are set aside whole.
  const int pages_per_block = kvcache::KvCache::FullPagesPerBlock(layout);
  kvcache::KvCacheConfig ring_config = model.model->KvConfig(0, c.page_size);
  ring_config.max_ring_sequences = c.max_num_seqs;
  ring_config.ring_chunk_tokens = c.max_num_batched_tokens;
  const int ring_pages = kvcache::KvCache::RingRegionPages(ring_config, layout);
  const int blocks_per_request = (c.max_model_len + c.page_size - 1) / c.page_size;
  const size_t page_bytes =
      kvcache::KvCache::PageBytes(model.model->KvConfig(1, c.page_size), backend->kv_dtype());
  HW_ASSIGN_OR_RETURN(c.num_kv_pages, KvPagesForConfig(mc, c, *backend, page_bytes));
  if (c.num_kv_pages == 0) c.num_kv_pages = blocks_per_request * pages_per_block * 4 + ring_pages;
  // A request is admitted only if it fits the whole pool, so the longest one decides. (A pool
  // too small for even one token is refused by CreateKvCache below.)
  const int max_tokens_in_pool =
      pages_per_block > 0 ? std::max(0, c.num_kv_pages - ring_pages) / pages_per_block * c.page_size
                          : c.max_model_len;
  if (max_tokens_in_pool < c.max_model_len && c.num_kv_pages >= pages_per_block + ring_pages) {
    spdlog::warn(
        "the KV cache holds {} tokens, less than max_model_len {}: longer requests are "
        "refused",
        max_tokens_in_pool, c.max_model_len);
  }

  auto impl = std::make_unique<Impl>();
  impl->model = std::move(model);
  impl->backend = std::move(backend);
  impl->config = c;
  impl->policy = std::move(policy);
  impl->metrics = metrics ? std::move(metrics) : std::make_shared<MetricsRegistry>();
  const auto& m = impl->metrics;
  m->DeclareCounter("headwise_prompt_tokens_total", "Prompt tokens of finished requests.");
  m->DeclareCounter("headwise_generation_tokens_total", "Generated tokens of finished requests.");
  m->DeclareCounter("headwise_preemptions_total",
                    "Sequences preempted (recomputed later) for lack of KV pages.");
  m->DeclareCounter("headwise_prefix_cache_hits_total",
                    "Requests that reused cached prefix pages.");
  m->DeclareCounter("headwise_prefix_cache_hit_tokens_total",
                    "Prompt tokens served from the prefix cache.");
  m->DeclareCounter("headwise_prefix_cache_queried_tokens_total",
                    "Prompt tokens looked up in the prefix cache.");
  m->DeclareCounter("headwise_request_finished_total", "Finished requests by finish reason.");
  m->DeclareGauge("headwise_num_requests_running", "Sequences in the running batch.");
  m->DeclareGauge("headwise_num_requests_waiting", "Requests waiting for admission.");
  m->DeclareGauge("headwise_kv_pages_used", "KV pages held by sequences.");
  m->DeclareGauge("headwise_kv_pages_total", "KV pages in the pool.");
  m->DeclareHistogram("headwise_time_to_first_token_seconds", "Arrival to first token.",
                      kLatencyBuckets);
  m->DeclareHistogram("headwise_inter_token_latency_seconds",
                      "Between consecutive tokens of a request.", kLatencyBuckets);
  m->DeclareHistogram("headwise_request_queue_time_seconds", "Arrival to first scheduling.",
                      kLatencyBuckets);
  m->DeclareHistogram("headwise_e2e_request_latency_seconds", "Arrival to finish.",
                      kLatencyBuckets);

  HW_ASSIGN_OR_RETURN(
      impl->cache,
      CreateKvCache(impl->policy, impl->model.model->KvConfig(c.num_kv_pages, c.page_size),
                    c.max_num_seqs, c.max_num_batched_tokens, *impl->backend));
  impl->cache->set_prefix_caching(c.enable_prefix_caching);
  impl->length_limit = MaxSequenceTokens(*impl->cache, c.max_model_len, c.max_num_batched_tokens);
  if (impl->length_limit.bounded) {
    spdlog::info("attention policy \"{}\": {}", impl->policy.name, impl->length_limit.Explain());
  } else if (impl->length_limit.max_rank_span > 0) {
    spdlog::warn("attention policy \"{}\": {}", impl->policy.name, impl->length_limit.Explain());
  }
  const int sequence_tokens =
      static_cast<int>(impl->length_limit.bounded ? impl->length_limit.tokens : c.max_model_len);
  const int pool_tokens = impl->MaxTokensInPool();
  impl->limits =
      EngineLimits{mc.vocab_size, c.max_model_len, sequence_tokens, pool_tokens,
                   pool_tokens > 0 ? std::min(c.max_model_len, pool_tokens) : c.max_model_len};
  impl->sampler = std::make_unique<BatchSampler>(*impl->backend);
  impl->UpdateGauges();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

StatusOr<std::unique_ptr<RequestStream>> Engine::Submit(EngineRequest request) {
  Impl& im = *impl_;
  const int vocab_size = im.limits.vocab_size;
  HW_RETURN_IF_ERROR(request.params.Validate(vocab_size));
  if (request.prompt_ids.empty()) return InvalidArgument("the prompt is empty").WithField("prompt");
  for (int32_t id : request.prompt_ids) {
    if (id < 0 || id >= vocab_size) {
      return InvalidArgument("prompt token id {} outside vocabulary of {}", id, vocab_size)
          .WithField("prompt");
    }
  }
  const int64_t total = static_cast<int64_t>(request.prompt_ids.size()) + request.params.max_tokens;
  if (im.length_limit.bounded && total > im.length_limit.tokens) {
    return InvalidArgument("the request has {} prompt tokens and max_tokens {} ({} in all): {}",
                           request.prompt_ids.size(), request.params.max_tokens, total,
                           im.length_limit.Explain());
  }
  if (!im.length_limit.bounded && total > im.config.max_model_len) {
    return InvalidArgument(
        "this model's maximum context length is {} tokens; the request has {} prompt tokens and "
        "max_tokens {} ({} in all){}",
        im.config.max_model_len, request.prompt_ids.size(), request.params.max_tokens, total,
        im.length_limit.max_rank_span > 0 ? "; " + im.length_limit.Explain() : std::string());
  }
  const int64_t pool_tokens = im.limits.max_tokens_in_pool;
  if (total > pool_tokens) {
    return InvalidArgument("the request needs {} tokens of KV cache, the whole cache holds {}",
                           total, pool_tokens);
  }
  if (request.detokenize && !im.model.tokenizer) {
    return InvalidArgument("the model has no tokenizer, so text output is unavailable");
  }

  auto seq = std::make_unique<Sequence>(request.params);
  seq->tokens = std::move(request.prompt_ids);
  seq->prompt_len = seq->tokens.size();
  seq->output = std::make_unique<OutputProcessor>(
      seq->params, request.detokenize ? im.model.tokenizer.get() : nullptr, seq->prompt(),
      im.model.eos_token_ids);
  seq->kv = std::make_unique<kvcache::SequenceKv>(*im.cache);
  seq->arrival = Clock::now();
  seq->shared = std::make_shared<RequestStream::Shared>();
  seq->shared->wake_engine = [&im] { im.Wake(); };
  seq->shared->on_output = std::move(request.on_output);
  std::string id;
  {
    std::lock_guard<std::mutex> lock(im.mu);
    if (im.stop || !im.alive) return ResourceExhausted("the engine is not running");
    // Bounded queue: at most max_waiting requests beyond the free running slots.
    const int queued = static_cast<int>(im.incoming.size()) + im.num_waiting;
    if (queued >= im.config.max_waiting + im.config.max_num_seqs - im.num_running) {
      return ResourceExhausted("the request queue is full ({} waiting)", im.num_waiting.load());
    }
    id = std::to_string(im.next_id++);
    seq->id = id;
    auto shared = seq->shared;
    im.incoming.push_back(std::move(seq));
    im.cv.notify_all();
    return std::unique_ptr<RequestStream>(new RequestStream(id, std::move(shared)));
  }
}

EngineStats Engine::Stats() const {
  EngineStats s;
  s.running = impl_->num_running;
  s.waiting = impl_->num_waiting;
  s.kv_pages_used = impl_->pages_used;
  s.kv_pages_total = impl_->cache->num_pages();
  s.alive = impl_->alive;
  return s;
}

const EngineLimits& Engine::limits() const {
  return impl_->limits;
}

const tokenizer::Tokenizer* Engine::tokenizer() const {
  return impl_->model.tokenizer.get();
}

const std::string& Engine::attention_policy() const {
  return impl_->policy.name;
}

}  // namespace headwise::engine
