#include "engine/engine.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
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

// The offload tier's default budget (EngineConfig::cpu_kv_bytes).
int64_t HalfOfHostMemory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? int64_t{pages} * page / 2 : 0;
}

// The longest prompt of `layout` whose offloaded share fits the tier's budget alone (BytesFor
// grows linearly with the tokens); every length without a budget or an offloading layout.
int OffloadTokens(const kvcache::OffloadTier& tier, const kvcache::KvLayout& layout) {
  const int64_t budget = tier.config().host_budget_bytes;
  if (budget <= 0 || !layout.offload) return std::numeric_limits<int>::max();
  constexpr int kProbe = 1 << 20;
  const auto per_token =
      static_cast<double>(kvcache::OffloadTier::BytesFor(tier.config(), layout, kProbe)) / kProbe;
  return static_cast<int>(std::min<double>(std::numeric_limits<int>::max() / 2.0,
                                           std::floor(static_cast<double>(budget) / per_token)) *
                          0.99);
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
  RankGroup ranks;  // one rank without tensor parallelism
  EngineConfig config;
  std::shared_ptr<MetricsRegistry> metrics;
  std::unique_ptr<kvcache::KvCache> cache;  // one KV layout per arm, numbered as the arms
  std::unique_ptr<EngineCore> core;         // the scheduler and the step; engine thread only
  // Per arm: the arm, the longest request (the context, or more for streaming), front-end limits.
  std::vector<ArmInfo> arms;
  std::vector<LengthLimit> length_limits;
  std::vector<EngineLimits> limits;

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
  int MaxTokensInPool(int arm) const { return cache->max_tokens_per_sequence(arm); }
  Labels ArmLabel(const Sequence& seq) const {
    return {{"arm", arms[static_cast<size_t>(seq.kv->layout())].name}};
  }
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
  const std::string reason_name(FinishReasonName(reason));
  const Labels arm = ArmLabel(seq);
  Labels arm_reason = arm;
  arm_reason.emplace_back("finish_reason", reason_name);
  const double e2e = Seconds(seq.arrival, Clock::now());
  metrics->Increment("headwise_request_finished_total", 1, {{"finish_reason", reason_name}});
  metrics->Increment("headwise_arm_request_finished_total", 1, arm_reason);
  metrics->Increment("headwise_prompt_tokens_total", static_cast<double>(seq.prompt_len));
  metrics->Increment("headwise_arm_prompt_tokens_total", static_cast<double>(seq.prompt_len), arm);
  metrics->Increment("headwise_generation_tokens_total", out.completion_tokens);
  metrics->Increment("headwise_arm_generation_tokens_total", out.completion_tokens, arm);
  metrics->Observe("headwise_e2e_request_latency_seconds", e2e);
  metrics->Observe("headwise_arm_e2e_request_latency_seconds", e2e, arm);
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
  // Pages each arm's sequences hold (a prefix-cached page shared by two counts for both).
  std::vector<int> held(arms.size(), 0);
  for (const auto& s : core->scheduler().running()) {
    held[static_cast<size_t>(s->kv->layout())] += s->kv->num_pages_held();
  }
  for (size_t a = 0; a < arms.size(); ++a) {
    metrics->Set("headwise_arm_kv_pages_used", held[a], {{"arm", arms[a].name}});
  }
  if (kvcache::OffloadTier* tier = cache->offload_tier()) {
    metrics->Set("headwise_offload_host_bytes", static_cast<double>(tier->bytes_held()));
    for (const double seconds : tier->TakeFinishedBuilds()) {
      metrics->Increment("headwise_offload_index_builds_total");
      metrics->Increment("headwise_offload_index_build_seconds_total", seconds);
    }
    const kvcache::OffloadTier::RetrieveStats retrieved = tier->TakeRetrieveStats();
    metrics->Increment("headwise_offload_retrieve_calls_total", retrieved.calls);
    metrics->Increment("headwise_offload_retrieve_seconds_total", retrieved.seconds);
    metrics->Increment("headwise_offload_searches_total", retrieved.searches);
    metrics->Increment("headwise_offload_keys_scanned_total", retrieved.keys_scanned);
    metrics->Increment("headwise_offload_keys_searched_over_total", retrieved.keys_over);
  }
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
    for (const Sequence* seq : plan.preempted) {
      metrics->Increment("headwise_arm_preemptions_total", 1, ArmLabel(*seq));
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
  if (step.compaction_seconds > 0) {
    metrics->Increment("headwise_kv_compaction_seconds_total", step.compaction_seconds);
  }
  for (const auto& [seq, read] : step.selected) {
    const auto arm = ArmLabel(*seq);
    metrics->Increment("headwise_arm_selecting_steps_total", 1, arm);
    metrics->Increment("headwise_arm_selected_keys_total", static_cast<double>(read.keys), arm);
    metrics->Increment("headwise_arm_selecting_dense_keys_total",
                       static_cast<double>(read.dense_keys), arm);
  }

  // Deliver events; finished sequences have left the batch and freed their pages.
  for (SequenceOutput& o : step.update.outputs) {
    Sequence& seq = *o.seq;
    const bool first = seq.output.num_tokens() == 1;
    const double latency = Seconds(first ? seq.arrival : seq.last_token, step.sampled_at);
    metrics->Observe(
        first ? "headwise_time_to_first_token_seconds" : "headwise_inter_token_latency_seconds",
        latency);
    metrics->Observe(first ? "headwise_arm_time_to_first_token_seconds"
                           : "headwise_arm_inter_token_latency_seconds",
                     latency, ArmLabel(seq));
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
  RankGroup ranks;
  ranks.backends.push_back(std::move(backend));
  return Start(std::move(model), std::move(ranks), config, std::move(metrics));
}

StatusOr<std::unique_ptr<Engine>> Engine::Start(LoadedModel model, RankGroup ranks,
                                                const EngineConfig& config,
                                                std::shared_ptr<MetricsRegistry> metrics) {
  HW_CHECK(ranks.size() == static_cast<int>(model.ranks().size()),
           "a model of {} ranks on {} devices", model.ranks().size(), ranks.size());
  kernels::Backend* backend = ranks.backends.front().get();
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
  // Every arm's policy becomes one KV layout of the one cache. Arms must share the engine's page
  // size; everything else (rings, compression, re-indexing) may differ per sequence.
  if (!c.arms.empty() && !c.attention_policy.empty()) {
    return InvalidArgument("give either one attention policy or A/B arms, not both")
        .WithField("arms");
  }
  const std::vector<Arm> arm_specs = c.arms.empty() ? SingleArm(c.attention_policy).arms : c.arms;
  std::vector<ArmInfo> arms;
  std::vector<kvcache::KvLayout> layouts;
  for (const Arm& spec : arm_specs) {
    const std::string path =
        spec.policy_path.empty() ? ModelPolicyFile(model.path) : spec.policy_path;
    auto loaded = LoadAttentionPolicy(path, mc, model.path, model.model->weights_hash());
    const auto where = [&] {
      return spec.name.empty() ? std::string() : fmt::format("arm \"{}\": ", spec.name);
    };
    // Errors keep their own words with one arm; with several they name the arm.
    const auto in_arm = [&](const Status& status) {
      return spec.name.empty()
                 ? status
                 : status.WithContext(fmt::format("arm \"{}\"", spec.name)).WithField("arms");
    };
    if (!loaded.ok()) return in_arm(loaded.status());
    const attention::PolicySet& policy = *loaded;
    if (policy.page_size != c.page_size) {
      return InvalidArgument(
                 "{}attention policy \"{}\": kv_cache.page_size {} differs from the engine's page "
                 "size {}, and arms of one engine share its pages",
                 where(), policy.name, policy.page_size, c.page_size)
          .WithField(c.arms.empty() ? "attention_policy" : "arms");
    }
    auto layout = KvLayoutFor(policy);
    if (!layout.ok()) return in_arm(layout.status());
    HW_ASSIGN_OR_RETURN(std::string hash, PolicyFileHash(path));
    arms.push_back(ArmInfo{spec.name.empty() ? policy.name : spec.name, policy.name, path, hash});
    layouts.push_back(std::move(layout).value());
  }
  kvcache::KvCacheConfig kv_shape = KvConfigFor(mc, 0, c.page_size, c.max_num_batched_tokens);
  kv_shape.num_ranks = ranks.size();  // a page count is per rank: each holds its heads' pages
  // Quest's key bounds take two rows of head_dim values per page.
  const bool page_bounds =
      std::any_of(layouts.begin(), layouts.end(),
                  [](const kvcache::KvLayout& layout) { return layout.selects_pages(); });
  const size_t page_bytes = kvcache::KvCache::PageBytes(kv_shape, backend->kv_dtype(), page_bounds);
  // Decode-time selection holds state per running sequence and, at its largest step, one f32
  // logit per (sequence, query head, key) of max_model_len keys; buffers grow by doubling.
  size_t selection_bytes = 0;
  if (std::any_of(layouts.begin(), layouts.end(),
                  [](const kvcache::KvLayout& layout) { return layout.selects_any(); })) {
    kvcache::KvCacheConfig slots = kv_shape;
    slots.select_slots = c.max_num_seqs;
    const size_t keys = (static_cast<size_t>(c.max_model_len) + c.page_size - 1) /
                        static_cast<size_t>(c.page_size) * static_cast<size_t>(c.page_size);
    selection_bytes = kvcache::KvCache::SelectStateBytes(slots, layouts) +
                      2 * static_cast<size_t>(c.max_num_seqs) * static_cast<size_t>(mc.num_heads) *
                          keys * sizeof(float);
  }
  HW_ASSIGN_OR_RETURN(c.num_kv_pages,
                      KvPagesForConfig(mc, c, *backend, page_bytes, selection_bytes));
  if (c.num_kv_pages == 0) {
    // Without a budget: four requests of max_model_len, and the rings of max_num_seqs sequences,
    // of the arm that needs most.
    for (const kvcache::KvLayout& layout : layouts) {
      const int rings = kvcache::KvCache::PagesForSequence(kv_shape, layout, 0);
      const int growing =
          kvcache::KvCache::PagesForSequence(kv_shape, layout, c.max_model_len) - rings;
      c.num_kv_pages = std::max(c.num_kv_pages, 4 * growing + c.max_num_seqs * rings);
    }
  }

  auto impl = std::make_unique<Impl>();
  impl->model = std::move(model);
  impl->ranks = std::move(ranks);
  impl->config = c;
  impl->arms = std::move(arms);
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
  m->DeclareGauge("headwise_offload_host_bytes",
                  "Host memory held by offload heads' keys, values and indexes.");
  m->DeclareCounter("headwise_offload_index_builds_total",
                    "Offload index builds finished (one per prompt, every head).");
  m->DeclareCounter("headwise_offload_index_build_seconds_total",
                    "Wall time of the finished offload index builds (on the tier's threads).");
  m->DeclareCounter("headwise_offload_retrieve_calls_total",
                    "Host retrievals of offload heads (one per offload layer and decode step).");
  m->DeclareCounter("headwise_offload_retrieve_seconds_total",
                    "Wall time of those retrievals (search and attention on the tier's threads; "
                    "the device waits for them).");
  m->DeclareCounter("headwise_offload_searches_total",
                    "Index searches of offload heads (a group search counts once for its group).");
  m->DeclareCounter("headwise_offload_keys_scanned_total", "Keys those searches read and scored.");
  m->DeclareCounter("headwise_offload_keys_searched_over_total",
                    "Keys the searched heads held (scanned / this: the share a search reads).");
  m->DeclareCounter("headwise_kv_compaction_seconds_total",
                    "Engine-thread time compacting completed prompts (compress_once, offload) and "
                    "moving tokens out of offload heads' windows.");
  m->DeclareHistogram("headwise_time_to_first_token_seconds", "Arrival to first token.",
                      kLatencyBuckets);
  m->DeclareHistogram("headwise_inter_token_latency_seconds",
                      "Between consecutive tokens of a request.", kLatencyBuckets);
  m->DeclareHistogram("headwise_request_queue_time_seconds", "Arrival to first scheduling.",
                      kLatencyBuckets);
  m->DeclareHistogram("headwise_e2e_request_latency_seconds", "Arrival to finish.",
                      kLatencyBuckets);
  // The same per A/B arm (label arm): each arm's series sum to the totals above.
  m->DeclareCounter("headwise_arm_requests_total", "Requests accepted, by arm.");
  m->DeclareCounter("headwise_arm_prompt_tokens_total", "Prompt tokens of finished requests.");
  m->DeclareCounter("headwise_arm_generation_tokens_total",
                    "Generated tokens of finished requests.");
  m->DeclareCounter("headwise_arm_preemptions_total", "Sequences preempted for lack of KV pages.");
  m->DeclareCounter("headwise_arm_request_finished_total", "Finished requests by finish reason.");
  m->DeclareGauge("headwise_arm_kv_pages_used", "KV pages held by the arm's running sequences.");
  // Decode-time selection (TidalDecode, Recycled Attention, Quest): what it saved.
  m->DeclareCounter("headwise_arm_selecting_steps_total",
                    "Decode steps of the arm's sequences that selected keys.");
  m->DeclareCounter("headwise_arm_selected_keys_total",
                    "Keys the selecting heads attended in those steps, per query head, summed "
                    "over layers and KV heads.");
  m->DeclareCounter("headwise_arm_selecting_dense_keys_total",
                    "Keys the same heads attend under dense attention in those steps.");
  m->DeclareHistogram("headwise_arm_time_to_first_token_seconds", "Arrival to first token.",
                      kLatencyBuckets);
  m->DeclareHistogram("headwise_arm_inter_token_latency_seconds",
                      "Between consecutive tokens of a request.", kLatencyBuckets);
  m->DeclareHistogram("headwise_arm_e2e_request_latency_seconds", "Arrival to finish.",
                      kLatencyBuckets);

  kvcache::KvCacheConfig kv_config =
      KvConfigFor(mc, c.num_kv_pages, c.page_size, c.max_num_batched_tokens);
  kv_config.select_slots = c.max_num_seqs;  // every running sequence may select
  kv_config.offload_host_bytes = c.cpu_kv_bytes > 0 ? c.cpu_kv_bytes : HalfOfHostMemory();
  kv_config.num_ranks = impl->ranks.size();
  HW_ASSIGN_OR_RETURN(impl->cache,
                      CreateKvCache(std::move(layouts), kv_config, impl->ranks.devices().backends));
  impl->cache->set_prefix_caching(c.enable_prefix_caching);
  for (size_t a = 0; a < impl->arms.size(); ++a) {
    const int arm = static_cast<int>(a);
    const ArmInfo& info = impl->arms[a];
    // A request is admitted only if it fits the whole pool (and, offloading, the host budget
    // alone), so the longest one decides.
    int pool_tokens = impl->MaxTokensInPool(arm);
    bool host_limited = false;
    if (const kvcache::OffloadTier* tier = impl->cache->offload_tier()) {
      const int host_tokens = OffloadTokens(*tier, impl->cache->layout(arm));
      host_limited = host_tokens < pool_tokens;
      pool_tokens = std::min(pool_tokens, host_tokens);
    }
    if (pool_tokens < c.max_model_len) {
      spdlog::warn(
          "arm \"{}\": the KV cache holds {} tokens, less than max_model_len {}: longer "
          "requests are refused",
          info.name, pool_tokens, c.max_model_len);
    }
    const LengthLimit limit =
        MaxSequenceTokens(impl->cache->layout(arm), c.max_model_len, c.max_num_batched_tokens);
    if (limit.bounded) {
      spdlog::info("attention policy \"{}\": {}", info.policy, limit.Explain());
    } else if (limit.max_rank_span > 0) {
      spdlog::warn("attention policy \"{}\": {}", info.policy, limit.Explain());
    }
    const int sequence_tokens = static_cast<int>(limit.bounded ? limit.tokens : c.max_model_len);
    impl->length_limits.push_back(limit);
    impl->limits.push_back(
        EngineLimits{mc.vocab_size, c.max_model_len, sequence_tokens, pool_tokens, host_limited,
                     pool_tokens > 0 ? std::min(c.max_model_len, pool_tokens) : c.max_model_len});
    if (impl->arms.size() > 1) {
      spdlog::info("arm \"{}\": attention policy \"{}\" ({}, {})", info.name, info.policy,
                   info.policy_path.empty() ? "dense, no file" : info.policy_path,
                   info.policy_hash);
    }
  }
  impl->core = std::make_unique<EngineCore>(
      impl->model.ranks(), *impl->cache,
      SchedulerConfig{c.max_num_seqs, c.max_num_batched_tokens, c.enable_prefix_caching});
  impl->core->runner().set_use_graphs(!c.enforce_eager);
  impl->UpdateGauges();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->Run(); });
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

StatusOr<std::unique_ptr<RequestStream>> Engine::Submit(EngineRequest request) {
  Impl& im = *impl_;
  if (request.arm < 0 || request.arm >= static_cast<int>(im.arms.size())) {
    return InvalidArgument("arm {} of {}", request.arm, im.arms.size()).WithField("arm");
  }
  const LengthLimit& length_limit = im.length_limits[static_cast<size_t>(request.arm)];
  const EngineLimits& limits = im.limits[static_cast<size_t>(request.arm)];
  const int vocab_size = limits.vocab_size;
  HW_RETURN_IF_ERROR(request.params.Validate(vocab_size));
  if (request.prompt_ids.empty()) return InvalidArgument("the prompt is empty").WithField("prompt");
  for (int32_t id : request.prompt_ids) {
    if (id < 0 || id >= vocab_size) {
      return InvalidArgument("prompt token id {} outside vocabulary of {}", id, vocab_size)
          .WithField("prompt");
    }
  }
  const int64_t total = static_cast<int64_t>(request.prompt_ids.size()) + request.params.max_tokens;
  if (length_limit.bounded && total > length_limit.tokens) {
    return InvalidArgument("the request has {} prompt tokens and max_tokens {} ({} in all): {}",
                           request.prompt_ids.size(), request.params.max_tokens, total,
                           length_limit.Explain());
  }
  if (!length_limit.bounded && total > im.config.max_model_len) {
    return InvalidArgument(
        "this model's maximum context length is {} tokens; the request has {} prompt tokens and "
        "max_tokens {} ({} in all){}",
        im.config.max_model_len, request.prompt_ids.size(), request.params.max_tokens, total,
        length_limit.max_rank_span > 0 ? "; " + length_limit.Explain() : std::string());
  }
  const int64_t pool_tokens = limits.max_tokens_in_pool;
  if (total > pool_tokens) {
    return InvalidArgument(
        "the request needs {} tokens of KV cache, the whole cache holds {}{}", total, pool_tokens,
        limits.host_limited ? " (bounded by the host memory for offloaded KV, --cpu-kv-memory)"
                            : "");
  }
  if (request.detokenize && !im.model.tokenizer) {
    return InvalidArgument("the model has no tokenizer, so text output is unavailable");
  }

  auto seq = std::make_unique<Sequence>(std::move(request.prompt_ids), request.params,
                                        request.detokenize ? im.model.tokenizer.get() : nullptr,
                                        im.model.eos_token_ids, *im.cache, request.arm);
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
    im.metrics->Increment("headwise_arm_requests_total", 1, im.ArmLabel(*seq));
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

const EngineLimits& Engine::limits(int arm) const {
  return impl_->limits.at(static_cast<size_t>(arm));
}

const std::vector<ArmInfo>& Engine::arms() const {
  return impl_->arms;
}

const tokenizer::Tokenizer* Engine::tokenizer() const {
  return impl_->model.tokenizer.get();
}

}  // namespace headwise::engine
