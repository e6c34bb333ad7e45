#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "engine/attention_setup.h"
#include "engine/engine_core.h"
#include "engine/memory_budget.h"
#include "engine/model_loader.h"
#include "engine/sequence.h"
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

// The channel between the engine thread (producer) and a front end (consumer): the sink of the
// request's sequence.
struct RequestStream::Shared : SequenceSink {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<RequestOutput> events;
  bool done = false;                    // the finished event was delivered to the consumer
  std::atomic<bool> abort_flag{false};  // RequestStream::Abort
  std::function<void()> wake_engine;    // set by the engine: an abort should not wait for a step
  std::function<void()> on_output;      // EngineRequest::on_output

  bool abort_requested() const override { return abort_flag; }

  void Deliver(RequestOutput out) override {
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
  shared_->abort_flag = true;
  if (shared_->wake_engine) shared_->wake_engine();
}

struct Engine::Impl {
  LoadedModel model;
  std::unique_ptr<kernels::Backend> backend;
  EngineConfig config;
  attention::PolicySet policy;
  std::shared_ptr<MetricsRegistry> metrics;
  std::unique_ptr<kvcache::KvCache> cache;
  std::unique_ptr<EngineCore> core;  // the scheduler and the step; engine thread only
  LengthLimit length_limit;  // prompt + max_tokens of a request: the context, or more (streaming)
  EngineLimits limits;

  std::mutex mu;  // guards incoming, stop, counters read by Stats()
  std::condition_variable cv;
  std::deque<std::unique_ptr<Sequence>> incoming;
  bool stop = false;
  uint64_t next_id = 0;
  std::atomic<int> num_running{0}, num_waiting{0}, pages_used{0};
  std::atomic<bool> alive{true};

  std::thread thread;

  void Wake() {
    { std::lock_guard<std::mutex> lock(mu); }
    cv.notify_all();
  }
  void Loop();
  void Run();
  // A cache of rings only holds a sequence of any length. Compaction does not lengthen it: a
  // request must fit whole, as its prompt (or its recompute after a preemption) is held whole.
  int MaxTokensInPool() const { return cache->max_tokens_per_sequence(0); }
  bool Step();
  // Tells the consumer `seq` has finished; `out` holds what it produced in its last step. Its
  // pages are back in the pool already.
  void Finish(const Sequence& seq, RequestOutput out, FinishReason reason,
              const std::string& error = "");
  void UpdateGauges();
};

void Engine::Impl::Finish(const Sequence& seq, RequestOutput out, FinishReason reason,
                          const std::string& error) {
  out.finished = true;
  out.finish_reason = reason;
  out.error = error;
  out.prompt_tokens = static_cast<int>(seq.prompt_len);
  out.completion_tokens = static_cast<int>(seq.tokens.size() - seq.prompt_len);
  out.cached_tokens = seq.cached_tokens;
  // Visible before the consumer hears of the finish: its pages are back in the pool.
  pages_used = cache->num_pages_used();
  metrics->Set("headwise_kv_pages_used", pages_used);
  metrics->Increment("headwise_request_finished_total", 1,
                     {{"finish_reason", std::string(FinishReasonName(reason))}});
  metrics->Increment("headwise_prompt_tokens_total", static_cast<double>(seq.prompt_len));
  metrics->Increment("headwise_generation_tokens_total", out.completion_tokens);
  metrics->Observe("headwise_e2e_request_latency_seconds", Seconds(seq.arrival, Clock::now()));
  seq.sink->Deliver(std::move(out));
}

void Engine::Impl::UpdateGauges() {
  num_running = core->scheduler().num_running();
  num_waiting = core->scheduler().num_waiting();
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
    for (auto& s : core->scheduler().TakeAll()) Finish(*s, {}, FinishReason::kError, e.what());
  }
  alive = false;
}

void Engine::Impl::Loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait_for(lock, std::chrono::milliseconds(100),
                  [&] { return stop || !incoming.empty() || core->scheduler().has_unfinished(); });
      if (stop) break;
      while (!incoming.empty()) {
        core->scheduler().Add(std::move(incoming.front()));
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
  for (auto& s : core->scheduler().TakeAll()) Finish(*s, {}, FinishReason::kAbort);
  for (auto& s : rest) Finish(*s, {}, FinishReason::kAbort);
  UpdateGauges();
}

bool Engine::Impl::Step() {
  const auto now = Clock::now();
  StepOutput step = core->Step([&](const SchedulerOutput& plan) {
    for (const auto& s : plan.aborted) Finish(*s, {}, FinishReason::kAbort);
    if (!plan.preempted.empty()) {
      metrics->Increment("headwise_preemptions_total", static_cast<double>(plan.preempted.size()));
    }
    for (const Sequence* seq : plan.first_scheduled) {
      metrics->Observe("headwise_request_queue_time_seconds", Seconds(seq->arrival, now));
      metrics->Increment("headwise_prefix_cache_queried_tokens_total",
                         static_cast<double>(seq->prompt_len));
      metrics->Increment("headwise_prefix_cache_hit_tokens_total", seq->cached_tokens);
      if (seq->cached_tokens > 0) metrics->Increment("headwise_prefix_cache_hits_total");
    }
    UpdateGauges();
  });
  if (!step.ran) return false;

  // Deliver events; finished sequences have left the batch and freed their pages.
  for (SequenceOutput& o : step.update.outputs) {
    Sequence& seq = *o.seq;
    const bool first = seq.output.num_tokens() == 1;
    metrics->Observe(
        first ? "headwise_time_to_first_token_seconds" : "headwise_inter_token_latency_seconds",
        Seconds(first ? seq.arrival : seq.last_token, step.sampled_at));
    seq.last_token = step.sampled_at;
    RequestOutput out;
    out.token_ids.push_back(o.token.id);
    out.text = std::move(o.text);
    out.tokens.push_back(std::move(o.token));
    if (o.finished) {
      Finish(seq, std::move(out), o.finish_reason);
      continue;
    }
    out.prompt_tokens = static_cast<int>(seq.prompt_len);
    out.completion_tokens = seq.output.num_tokens();
    out.cached_tokens = seq.cached_tokens;
    seq.sink->Deliver(std::move(out));
  }
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
  HW_ASSIGN_OR_RETURN(kvcache::KvLayout layout, KvLayoutFor(policy));
  const kvcache::KvCacheConfig kv_shape =
      KvConfigFor(mc, 0, c.page_size, c.max_num_batched_tokens);
  const size_t page_bytes = kvcache::KvCache::PageBytes(kv_shape, backend->kv_dtype());
  HW_ASSIGN_OR_RETURN(c.num_kv_pages, KvPagesForConfig(mc, c, *backend, page_bytes));
  if (c.num_kv_pages == 0) {
    // Without a budget: four requests of max_model_len, and the rings of max_num_seqs sequences.
    const int rings = kvcache::KvCache::PagesForSequence(kv_shape, layout, 0);
    const int growing =
        kvcache::KvCache::PagesForSequence(kv_shape, layout, c.max_model_len) - rings;
    c.num_kv_pages = 4 * growing + c.max_num_seqs * rings;
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

  std::vector<kvcache::KvLayout> layouts;
  layouts.push_back(std::move(layout));
  HW_ASSIGN_OR_RETURN(
      impl->cache,
      CreateKvCache(std::move(layouts),
                    KvConfigFor(mc, c.num_kv_pages, c.page_size, c.max_num_batched_tokens),
                    *impl->backend));
  impl->cache->set_prefix_caching(c.enable_prefix_caching);
  // A request is admitted only if it fits the whole pool, so the longest one decides.
  if (impl->MaxTokensInPool() < c.max_model_len) {
    spdlog::warn(
        "the KV cache holds {} tokens, less than max_model_len {}: longer requests are refused",
        impl->MaxTokensInPool(), c.max_model_len);
  }
  impl->length_limit =
      MaxSequenceTokens(impl->cache->layout(0), c.max_model_len, c.max_num_batched_tokens);
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
  impl->core = std::make_unique<EngineCore>(
      *impl->model.model, *impl->cache,
      SchedulerConfig{c.max_num_seqs, c.max_num_batched_tokens, c.enable_prefix_caching});
  impl->core->runner().set_use_graphs(!c.enforce_eager);
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

  auto seq = std::make_unique<Sequence>(std::move(request.prompt_ids), request.params,
                                        request.detokenize ? im.model.tokenizer.get() : nullptr,
                                        im.model.eos_token_ids, *im.cache);
  seq->arrival = Clock::now();
  auto shared = std::make_shared<RequestStream::Shared>();
  shared->wake_engine = [&im] { im.Wake(); };
  shared->on_output = std::move(request.on_output);
  seq->sink = shared;
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
