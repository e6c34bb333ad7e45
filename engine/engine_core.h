// One engine step, without a thread: schedule → forward → compaction → sample → update, as
// vLLM v1's EngineCore.step(). The server's engine thread (engine.cc) and `headwise generate`
// (generator.h) both drive it, so they admit, chunk, preempt, sample and stop alike. EngineCore
// owns the model runner, the scheduler (and through it the sequences) and the batch sampler; the
// model, its backend and the KV cache are its caller's and must outlive it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "engine/model_runner.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/selection_stats.h"
#include "kernels/backend.h"
#include "kvcache/kv_cache.h"
#include "models/llama_model.h"

namespace headwise::engine {

struct StepOutput {
  bool ran = false;  // false: nothing could be scheduled (no sequences, or no pages)
  std::chrono::steady_clock::time_point sampled_at;  // when the step's tokens were on the host
  SchedulerUpdate update;  // what each sequence produced; the sequences that finished
  // Each sequence whose decode step selected (decode-time selection), with what it read. The
  // pointers are valid until the next Step (a finished sequence is still in update).
  std::vector<std::pair<const Sequence*, SelectionRead>> selected;
  // Wall time this step spent compacting prompts that completed (kv_compaction.h: RazorAttention's
  // compensation, offload heads' copy to the host and their index build's device work).
  double compaction_seconds = 0;
};

class EngineCore {
 public:
  EngineCore(models::LlamaModel& model, kvcache::KvCache& cache, const SchedulerConfig& config);
  // Tensor parallelism: every rank's share of the model (ModelRunner); rank 0 samples.
  EngineCore(std::vector<models::LlamaModel*> ranks, kvcache::KvCache& cache,
             const SchedulerConfig& config);

  Scheduler& scheduler() { return scheduler_; }
  ModelRunner& runner() { return runner_; }
  const Scheduler& scheduler() const { return scheduler_; }

  // Runs one step. `on_scheduled` sees the plan before the forward pass: the preempted and the
  // first-scheduled sequences, and the aborted ones, which leave with the plan when Step returns
  // (their consumer should hear it there).
  StepOutput Step(const std::function<void(const SchedulerOutput&)>& on_scheduled = {});

 private:
  // StepOutput::selected, after the forward pass and sampling.
  void ReportSelection(const SchedulerOutput& plan, StepOutput& result);
  kernels::Backend& backend_;
  kvcache::KvCache& cache_;
  ModelRunner runner_;
  Scheduler scheduler_;
  BatchSampler sampler_;
  std::vector<int32_t> refresh_, chosen_len_;  // SelectState read back, with recycle heads
};

}  // namespace headwise::engine
