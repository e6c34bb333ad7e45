#include "engine/generator.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "tokenizer/incremental_detokenizer.h"

namespace headwise::engine {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string: text
// that may still turn into a stop string is held back from streaming.
size_t StopPrefixHold(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& s : stops) {
    for (size_t n = std::min(s.size() - 1, text.size()); n > hold; --n) {
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        hold = n;
        break;
      }
    }
  }
  return hold;
}

}  // namespace

Generator::Generator(models::LlamaModel& model, kvcache::KvCache& cache,
                     const tokenizer::Tokenizer* tok, std::vector<int32_t> eos_ids)
    : model_(model), cache_(cache), tokenizer_(tok), eos_ids_(std::move(eos_ids)) {}

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
  const int total = static_cast<int>(prompt.size()) + params.max_tokens;
  if (config.max_position_embeddings > 0 && total > config.max_position_embeddings) {
    return InvalidArgument("prompt ({} tokens) + max_tokens ({}) exceeds the model's context of {}",
                           prompt.size(), params.max_tokens, config.max_position_embeddings);
  }
  kvcache::SequenceKv kv(cache_);
  if (Status s = kv.Reserve(total); !s.ok()) {
    return ResourceExhausted("{} tokens do not fit in the KV cache: {}", total, s.message());
  }

  GenerationResult result;
  Sampler sampler(params);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<float> logits;
  for (size_t start = 0; start < prompt.size(); start += static_cast<size_t>(prefill_chunk)) {
    const size_t n = std::min(static_cast<size_t>(prefill_chunk), prompt.size() - start);
    models::BatchEntry e{&kv, prompt.subspan(start, n), static_cast<int>(start), false};
    logits = model_.ForwardToHost(std::span<const models::BatchEntry>(&e, 1), cache_);
  }
  auto t1 = std::chrono::steady_clock::now();
  result.prefill_seconds = Seconds(t0, t1);

  // Decoded with the prompt as left context, as vLLM does, so a continuation keeps its
  // leading space.
  std::optional<tokenizer::IncrementalDetokenizer> detok;
  if (tokenizer_ != nullptr) {
    detok.emplace(*tokenizer_, /*skip_special_tokens=*/true,
                  std::vector<int32_t>(prompt.begin(), prompt.end()));
  }
  size_t emitted = 0;  // bytes of text already handed to on_text
  std::string text;
  int32_t next = 0;
  for (int step = 0;; ++step) {
    SampledToken tok = sampler.Sample(logits, prompt, result.output_ids);
    result.output_ids.push_back(tok.id);
    result.tokens.push_back(std::move(tok));
    const int32_t id = result.output_ids.back();
    const bool is_stop_token =
        std::find(params.stop_token_ids.begin(), params.stop_token_ids.end(), id) !=
            params.stop_token_ids.end() ||
        (!params.ignore_eos && std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end());

    const size_t scan_from = text.size();
    if (detok) text += detok->Add(id);
    // A stop string can only complete in the new text or straddle into it.
    size_t stop_at = std::string::npos;
    for (const auto& s : params.stop) {
      const size_t from = scan_from >= s.size() ? scan_from - s.size() + 1 : 0;
      stop_at = std::min(stop_at, text.find(s, from));
    }
    if (stop_at != std::string::npos) {
      text.resize(stop_at);
      result.finish_reason = "stop";
    } else if (is_stop_token) {
      result.finish_reason = "stop";
    } else if (static_cast<int>(result.output_ids.size()) >= params.max_tokens) {
      result.finish_reason = "length";
    }
    const bool done = !result.finish_reason.empty();
    if (done && detok && stop_at == std::string::npos) text += detok->Finish();
    size_t ready = text.size();
    if (!done) ready -= StopPrefixHold(text, params.stop);
    if (on_text && ready > emitted)
      on_text(std::string_view(text).substr(emitted, ready - emitted));
    emitted = std::max(emitted, ready);
    if (done) break;

    next = id;
    models::BatchEntry e{&kv, std::span<const int32_t>(&next, 1),
                         static_cast<int>(prompt.size()) + step, false};
    logits = model_.ForwardToHost(std::span<const models::BatchEntry>(&e, 1), cache_);
  }
  result.text = std::move(text);
  result.decode_seconds = Seconds(t1, std::chrono::steady_clock::now());
  return result;
}

}  // namespace headwise::engine
