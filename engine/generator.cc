#include "engine/generator.h"

#include <algorithm>
#include <chrono>

#include "engine/attention_setup.h"
#include "engine/kv_compaction.h"
#include "engine/output_processor.h"

namespace headwise::engine {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

Generator::Generator(models::LlamaModel& model, kvcache::KvCache& cache,
                     const tokenizer::Tokenizer* tok, std::vector<int32_t> eos_ids)
    : model_(model),
      cache_(cache),
      runner_(model, cache),
      tokenizer_(tok),
      eos_ids_(std::move(eos_ids)) {}

StatusOr<GenerationResult> Generator::Generate(
    std::span<const int32_t> prompt, const SamplingParams& params, int prefill_chunk,
    const std::function<void(std::string_view)>& on_text) {
  const auto& config = model_.config();
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
  kvcache::SequenceKv kv(cache_);
  if (Status s = kv.Reserve(static_cast<int>(total)); !s.ok()) {
    return ResourceExhausted("{} tokens do not fit in the KV cache: {}", total, s.message());
  }

  GenerationResult result;
  const Sampler sampler(params);
  BatchSampler batch_sampler(model_.backend());
  auto t0 = std::chrono::steady_clock::now();
  Tensor logits;
  for (size_t start = 0; start < prompt.size(); start += static_cast<size_t>(prefill_chunk)) {
    const size_t n = std::min(static_cast<size_t>(prefill_chunk), prompt.size() - start);
    BatchEntry e{&kv, prompt.subspan(start, n), static_cast<int>(start), false};
    logits = runner_.Forward(std::span<const BatchEntry>(&e, 1));
  }
  CompactAfterPrompt(model_.backend(), cache_, kv, static_cast<int>(prompt.size()));
  model_.backend().Synchronize();
  auto t1 = std::chrono::steady_clock::now();
  result.prefill_seconds = Seconds(t0, t1);

  OutputProcessor out(params, tokenizer_, prompt, eos_ids_);
  int32_t next = 0;
  for (int step = 0;; ++step) {
    // Sampled on the device: only the token (and its logprobs) come back.
    const BatchSampler::Row row{&sampler, 0, prompt, result.output_ids};
    SampledToken tok =
        std::move(batch_sampler.Sample(logits, std::span<const BatchSampler::Row>(&row, 1))[0]);
    next = tok.id;
    result.output_ids.push_back(tok.id);
    result.tokens.push_back(std::move(tok));
    const std::string delta = out.Append(next);
    if (on_text && !delta.empty()) on_text(delta);
    if (out.finished()) break;
    BatchEntry e{&kv, std::span<const int32_t>(&next, 1), static_cast<int>(prompt.size()) + step,
                 false};
    logits = runner_.Forward(std::span<const BatchEntry>(&e, 1));
  }
  result.finish_reason = out.finish_reason();
  result.text = out.text();
  result.decode_seconds = Seconds(t1, std::chrono::steady_clock::now());
  return result;
}

}  // namespace headwise::engine
