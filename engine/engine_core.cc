#include "engine/engine_core.h"

#include <span>
#include <vector>

#include "engine/kv_compaction.h"

namespace headwise::engine {

EngineCore::EngineCore(models::LlamaModel& model, kvcache::KvCache& cache,
                       const SchedulerConfig& config)
    : EngineCore(std::vector<models::LlamaModel*>{&model}, cache, config) {}

EngineCore::EngineCore(std::vector<models::LlamaModel*> ranks, kvcache::KvCache& cache,
                       const SchedulerConfig& config)
    : backend_(ranks.front()->backend()),
      cache_(cache),
      runner_(ranks, cache),
      scheduler_(cache, config),
      sampler_(ranks.front()->backend()) {}

StepOutput EngineCore::Step(const std::function<void(const SchedulerOutput&)>& on_scheduled) {
  const SchedulerOutput plan = scheduler_.Schedule();
  if (on_scheduled) on_scheduled(plan);
  if (plan.chunks.empty()) return {};

  std::vector<BatchEntry> batch;
  batch.reserve(plan.chunks.size());
  for (const ScheduledChunk& c : plan.chunks) {
    batch.push_back(
        BatchEntry{c.seq->kv.get(),
                   std::span<const int32_t>(c.seq->tokens)
                       .subspan(static_cast<size_t>(c.start), static_cast<size_t>(c.count)),
                   c.start, false});
  }
  const Tensor logits = runner_.Forward(batch);

  // The prompt is in (a chunk ends there with compress-once heads): those heads compact now, also
  // when a preempted sequence recomputes its generated tokens after it. Offload heads' windows
  // slide as tokens are decoded (or recomputed).
  StepOutput result;
  for (const ScheduledChunk& c : plan.chunks) {
    if (cache_.comp_pages(c.seq->kv->layout()) == 0) continue;
    const auto t0 = std::chrono::steady_clock::now();
    if (c.completes_prompt) {
      CompactAfterPrompt(backend_, cache_, *c.seq->kv, c.start + c.count);
    } else {
      SlideOffloadWindow(backend_, cache_, *c.seq->kv, c.start + c.count);
    }
    result.compaction_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
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
  // Before Update: finished sequences give their selection slots back there.
  if (cache_.has_select_heads()) ReportSelection(plan, result);
  result.update = scheduler_.Update(plan, std::move(tokens));
  return result;
}

void EngineCore::ReportSelection(const SchedulerOutput& plan, StepOutput& result) {
  struct Selecting {
    const Sequence* seq;
    int keys;
    int32_t slot;
  };
  std::vector<Selecting> selecting;
  for (const ScheduledChunk& c : plan.chunks) {
    const int keys = c.start + c.count;
    if (c.count != 1) continue;
    const int32_t slot = cache_.SelectSlotFor(*c.seq->kv, keys);
    if (slot >= 0) selecting.push_back({c.seq, keys, slot});
  }
  // Recycled sets' refresh state is read back only on steps where some sequence selected.
  if (selecting.empty()) return;
  const bool recycle = cache_.has_recycle_heads();
  if (recycle) cache_.CopyRefreshToHost(refresh_, chosen_len_);
  const auto sets = static_cast<size_t>(cache_.select_sets());
  for (const Selecting& s : selecting) {
    std::span<const int32_t> refresh, chosen_len;
    if (recycle) {
      const size_t row = static_cast<size_t>(s.slot) * sets;
      refresh = std::span<const int32_t>(refresh_).subspan(row, sets);
      chosen_len = std::span<const int32_t>(chosen_len_).subspan(row, sets);
    }
    result.selected.emplace_back(
        s.seq, SelectedKeys(cache_.layout(s.seq->kv->layout()), s.keys, cache_.config().page_size,
                            refresh, chosen_len, s.seq->kv->compacted_from()));
  }
}

}  // namespace headwise::engine
