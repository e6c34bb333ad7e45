#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <memory>

#include "engine/attention_setup.h"
#include "engine/engine_core.h"
#include "engine/sequence.h"

namespace headwise::engine {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

Generator::Generator(models::LlamaModel& model, kvcache::KvCache& cache,
                     const tokenizer::Tokenizer* tok, std::vector<int32_t> eos_ids)
    : Generator(std::vector<models::LlamaModel*>{&model}, cache, tok, std::move(eos_ids)) {}

Generator::Generator(std::vector<models::LlamaModel*> ranks, kvcache::KvCache& cache,
                     const tokenizer::Tokenizer* tok, std::vector<int32_t> eos_ids)
    : ranks_(std::move(ranks)), cache_(cache), tokenizer_(tok), eos_ids_(std::move(eos_ids)) {}

StatusOr<GenerationResult> Generator::Generate(
    std::span<const int32_t> prompt, const SamplingParams& params, int prefill_chunk,
    const std::function<void(std::string_view)>& on_text) {
  const auto& config = ranks_.front()->config();
  HW_RETURN_IF_ERROR(params.Validate(config.vocab_size));
  if (prompt.empty()) return InvalidArgument("the prompt is empty");
  if (prefill_chunk < 1)
    return InvalidArgument("prefill chunk must be >= 1, got {}", prefill_chunk);
  for (int32_t id : prompt) {
    if (id < 0 || id >= config.vocab_size) {
      return InvalidArgument("prompt token id {} outside vocabulary of {}", id, config.vocab_size);
    }
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + params.max_tokens;
  if (config.max_position_embeddings > 0) {
    // Past the context only when every head is a re-indexed ring (StreamingLLM).
    const LengthLimit limit =
        MaxSequenceTokens(cache_.layout(0), config.max_position_embeddings,
                          static_cast<int>(std::min<size_t>(prefill_chunk, prompt.size())));
    if (total > limit.tokens) {
      return InvalidArgument(
          "prompt ({} tokens) + max_tokens ({}) exceeds the model's context of {}{}", prompt.size(),
          params.max_tokens, config.max_position_embeddings,
          limit.max_rank_span > 0 ? ": " + limit.Explain() : std::string());
    }
  }
  // The engine's rule (Engine::Submit): a request must fit the pool whole, as its prompt (or its
  // recompute after a preemption) is held whole.
  if (total > cache_.max_tokens_per_sequence(0)) {
    return ResourceExhausted("{} tokens do not fit in the KV cache, which holds {} for a sequence",
                             total, cache_.max_tokens_per_sequence(0));
  }

  // Prefix caching stays off: one request has nothing to share, and a prompt reused across calls
  // is computed again, as each call is its own run.
  EngineCore core(ranks_, cache_,
                  SchedulerConfig{/*max_num_seqs=*/1, /*max_num_batched_tokens=*/prefill_chunk,
                                  /*enable_prefix_caching=*/false});
  core.runner().set_use_graphs(use_graphs_);
  core.scheduler().Add(std::make_unique<Sequence>(
      std::vector<int32_t>(prompt.begin(), prompt.end()), params, tokenizer_, eos_ids_, cache_));

  GenerationResult result;
  const auto t0 = std::chrono::steady_clock::now();
  auto t1 = t0;  // the prompt is in and the first token sampled
  for (;;) {
    StepOutput step = core.Step();
    if (!step.ran && cache_.offload_tier() != nullptr) {
      // The sequence waits for its offload indexes (built on the tier's thread): wait with it.
      cache_.offload_tier()->WaitForBuilds();
      step = core.Step();
    }
    if (!step.ran) {
      // Only pages can stop the one sequence (the pool is shared with other work, or its rings
      // have no room for a sequence); it would wait for ever.
      return ResourceExhausted("the KV cache has no room for the request ({} pages used of {})",
                               cache_.num_pages_used(), cache_.num_pages());
    }
    for (SequenceOutput& o : step.update.outputs) {
      if (result.output_ids.empty()) t1 = step.sampled_at;
      result.output_ids.push_back(o.token.id);
      result.tokens.push_back(std::move(o.token));
      if (on_text && !o.text.empty()) on_text(o.text);
      if (!o.finished) continue;
      result.finish_reason = o.finish_reason;
      result.text = o.seq->output.text();
      result.prefill_seconds = Seconds(t0, t1);
      result.decode_seconds = Seconds(t1, std::chrono::steady_clock::now());
      return result;
    }
  }
}

}  // namespace headwise::engine
