// A request inside the engine: its tokens, sampler, stop logic, KV pages and progress, and the
// handle its events go to. The scheduler (engine/scheduler.h) moves sequences between its
// waiting queue and its running batch; EngineCore runs them; the engine thread (engine.cc) or
// the generator (generator.h) receives what they produce.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/output_processor.h"
#include "engine/request_output.h"
#include "engine/sampler.h"
#include "engine/sampling_params.h"
#include "kvcache/kv_cache.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine {

// Where a sequence's events go, and whether their consumer has asked to stop it: a request
// stream for the server (RequestStream's engine side, engine.cc), something of the caller's in
// tests. Called on the engine thread; Deliver must not block.
class SequenceSink {
 public:
  virtual ~SequenceSink() = default;
  // Read once a step, by the scheduler's abort sweep; may be set from any thread.
  virtual bool abort_requested() const = 0;
  virtual void Deliver(RequestOutput out) = 0;
};

struct Sequence {
  using Clock = std::chrono::steady_clock;

  // `prompt` must not be empty. `tok` (may be null: no text) and `eos_ids` feed the stop logic;
  // the KV pages come from `cache`, none reserved yet, under its KV layout `layout` (in the
  // engine, the request's A/B arm; kv->layout() says it from then on).
  Sequence(std::vector<int32_t> prompt, const SamplingParams& params,
           const tokenizer::Tokenizer* tok, std::vector<int32_t> eos_ids, kvcache::KvCache& cache,
           int layout = 0)
      : tokens(std::move(prompt)),
        prompt_len(tokens.size()),
        params(params),
        sampler(this->params),
        output(this->params, tok, this->prompt(), std::move(eos_ids)),
        kv(std::make_unique<kvcache::SequenceKv>(cache, layout)) {}
  Sequence(const Sequence&) = delete;
  Sequence& operator=(const Sequence&) = delete;

  std::string id;
  std::vector<int32_t> tokens;  // prompt, then generated tokens
  size_t prompt_len = 0;
  SamplingParams params;
  Sampler sampler;                          // draws a seed here when params.seed is unset
  OutputProcessor output;                   // text and stop decisions; refers to `params`
  std::unique_ptr<kvcache::SequenceKv> kv;  // also holds its KV layout (kv->layout())
  std::shared_ptr<SequenceSink> sink;       // null: nobody to tell, nobody can abort it

  // Scheduler state.
  int num_computed = 0;         // tokens whose K/V are in the cache
  int cached_tokens = 0;        // prompt tokens the prefix cache served at first scheduling
  bool scheduled_once = false;  // admitted at least once (a preempted sequence comes back)

  // The engine's latency metrics.
  Clock::time_point arrival, last_token;

  std::span<const int32_t> prompt() const {
    return std::span<const int32_t>(tokens).first(prompt_len);
  }
  std::span<const int32_t> generated() const {
    return std::span<const int32_t>(tokens).subspan(prompt_len);
  }
  // Tokens still to compute: the prompt's rest, or (after a preemption) the tokens to recompute.
  int remaining() const { return static_cast<int>(tokens.size()) - num_computed; }
  bool abort_requested() const { return sink && sink->abort_requested(); }
};

}  // namespace headwise::engine
