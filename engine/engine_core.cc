#include "engine/engine_core.h"

#include <span>
#include <vector>

#include "engine/kv_compaction.h"

namespace headwise::engine {

EngineCore::EngineCore(models::LlamaModel& model, kvcache::KvCache& cache,
                       const SchedulerConfig& config)
    : backend_(model.backend()),
      cache_(cache),
      runner_(model, cache),
      scheduler_(cache, config),
      sampler_(model.backend()) {}

StepOutput EngineCore::Step(const std::function<void(const SchedulerOutput&)>& on_scheduled) {
  const SchedulerOutput plan = scheduler_.Schedule();
  if (on_scheduled) on_scheduled(plan);
  StepOutput result;
  if (plan.chunks.empty()) return result;

  std::vector<BatchEntry> batch;
  batch.reserve(plan.chunks.size());
  for (const ScheduledChunk& c : plan.chunks) {
    batch.push_back(BatchEntry{c.seq->kv.get(),
                               std::span<const int32_t>(c.seq->tokens)
                                   .subspan(static_cast<size_t>(c.start),
                                            static_cast<size_t>(c.count)),
                               c.start, false});
  }
  const Tensor logits = runner_.Forward(batch);

  // The prompt is in (a chunk ends there with compress-once heads): those heads compact now, also
  // when a preempted sequence recomputes its generated tokens after it.
  for (const ScheduledChunk& c : plan.chunks) {
    if (c.completes_prompt) CompactAfterPrompt(backend_, cache_, *c.seq->kv, c.start + c.count);
  }

  // Sequences whose tokens are all computed sample from their logits row on the device; a
  // prefill chunk with more to come samples nothing.
  std::vector<BatchSampler::Row> rows;
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    const ScheduledChunk& c = plan.chunks[i];
    if (!c.samples) continue;
    rows.push_back({&c.seq->sampler, static_cast<int>(i), c.seq->prompt(), c.seq->generated()});
  }
  std::vector<SampledToken> tokens = sampler_.Sample(logits, rows);
  if (rows.empty()) backend_.Synchronize();  // the step's timing covers the forward pass
  result.ran = true;
  result.sampled_at = std::chrono::steady_clock::now();
  result.update = scheduler_.Update(plan, std::move(tokens));
  return result;
}

}  // namespace headwise::engine
