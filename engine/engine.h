// The serving engine: one engine thread owns the model, the KV cache and the scheduler, and
// runs iteration-level continuous batching (decode first, then chunked prefill within a token
// budget), prefix caching and preemption by recompute. Front ends talk to it through this
// small API only: Submit() a request from any thread, read its events from the returned
// stream, Abort() it (or drop the stream), read Stats(), limits() and the metrics registry.
// Nothing of models/, kvcache/ or kernels/ is included here: a front end sees this contract only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/metrics.h"
#include "core/status.h"
#include "engine/engine_config.h"
#include "engine/request_output.h"
#include "engine/sampling_params.h"

namespace headwise::kernels {
class Backend;
}  // namespace headwise::kernels
namespace headwise::tokenizer {
class Tokenizer;
}  // namespace headwise::tokenizer

namespace headwise::engine {

struct LoadedModel;  // engine/model_loader.h: what Start takes ownership of
struct RankGroup;    // engine/model_loader.h: the devices of a tensor-parallel group

struct EngineRequest {
  int arm = 0;  // which arm (attention policy) runs it: an index into Engine::arms()
  std::vector<int32_t> prompt_ids;
  SamplingParams params;
  bool detokenize = true;  // produce text deltas (needs the model's tokenizer)
  // Called on the engine thread after each event is queued (keep it short and non-blocking): a
  // front end that serves many streams from one thread waits for it instead of polling each.
  std::function<void()> on_output;
};

// The consumer side of one request. Dropping it aborts the request if it has not finished.
class RequestStream {
 public:
  ~RequestStream();
  RequestStream(const RequestStream&) = delete;
  RequestStream& operator=(const RequestStream&) = delete;

  const std::string& id() const { return id_; }
  // The next event, waiting at most `timeout`; nullopt on timeout. After the finished event,
  // always nullopt.
  std::optional<RequestOutput> Next(std::chrono::milliseconds timeout);
  // Asks the engine to stop the request; it finishes with FinishReason::kAbort within one step
  // and its pages return to the pool.
  void Abort();

  struct Shared;  // the engine's side of the channel; opaque to front ends

 private:
  friend class Engine;
  explicit RequestStream(std::string id, std::shared_ptr<Shared> shared)
      : id_(std::move(id)), shared_(std::move(shared)) {}
  std::string id_;
  std::shared_ptr<Shared> shared_;
};

struct EngineStats {
  int running = 0;
  int waiting = 0;
  int kv_pages_used = 0;
  int kv_pages_total = 0;
  bool alive = true;  // false once the engine thread has stopped
};

// What the engine accepts, fixed at Start: what a front end checks requests against and
// reports, without reading the model or the cache.
struct EngineLimits {
  int vocab_size = 0;     // token ids are in [0, vocab_size)
  int max_model_len = 0;  // the context length served
  // The longest request (prompt + max_tokens) Submit accepts: max_model_len, or more (up to
  // 2^30) where every head is a re-indexed ring (MaxSequenceTokens).
  int max_sequence_tokens = 0;
  // The longest request (prompt + max_tokens) the pool can hold, and with offload heads the host
  // tier's budget alone (EngineConfig::cpu_kv_bytes): host_limited when that is the bound.
  int max_tokens_in_pool = 0;
  bool host_limited = false;
  // What a request without max_tokens may fill: max_model_len, or less where the pool holds less.
  int default_context = 0;
};

// One arm as it runs: its name, the attention policy's name and file, and a hash of the file's
// bytes (engine/arms.h), which front ends report with every response.
struct ArmInfo {
  std::string name;
  std::string policy;       // the policy set's name (its file's "name", else the file's stem)
  std::string policy_path;  // "" for dense attention without a file
  std::string policy_hash;
};

class Engine {
 public:
  // Takes ownership of the loaded model and starts the engine thread. Refuses impossible
  // configurations (a pool that cannot hold one max_model_len request, zero limits), naming the
  // EngineConfig field at fault in Status::field. The engine reports on `metrics`, the process's
  // registry (null: a registry of its own).
  static StatusOr<std::unique_ptr<Engine>> Start(
      LoadedModel model, std::unique_ptr<kernels::Backend> backend, const EngineConfig& config,
      std::shared_ptr<MetricsRegistry> metrics = nullptr);
  // Tensor parallelism: the model loaded over `ranks` (LoadModel with ranks.devices()); every
  // rank holds its KV heads' pages, sized by rank 0's device memory.
  static StatusOr<std::unique_ptr<Engine>> Start(
      LoadedModel model, RankGroup ranks, const EngineConfig& config,
      std::shared_ptr<MetricsRegistry> metrics = nullptr);
  ~Engine();  // stops the thread; unfinished requests end with FinishReason::kAbort

  // Validates and queues a request. InvalidArgument: bad parameters (SamplingParams::Validate)
  // or prompt ids, with the field named in Status::field ("prompt" for the ids), or a request
  // that can never fit (prompt + max_tokens over max_model_len or over the whole KV pool).
  // ResourceExhausted: the waiting queue is full.
  StatusOr<std::unique_ptr<RequestStream>> Submit(EngineRequest request);

  EngineStats Stats() const;
  // Limits differ by arm: an arm whose every head is a re-indexed ring runs past the context.
  const EngineLimits& limits(int arm = 0) const;
  const std::vector<ArmInfo>& arms() const;
  MetricsRegistry& metrics() { return *metrics_; }
  // The model's tokenizer (null when it has none): text in and out for front ends.
  const tokenizer::Tokenizer* tokenizer() const;
  // The name of the attention policy an arm runs: reported with each response.
  const std::string& attention_policy(int arm = 0) const {
    return arms()[static_cast<size_t>(arm)].policy;
  }

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::shared_ptr<MetricsRegistry> metrics_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace headwise::engine
