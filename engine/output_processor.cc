#include "engine/output_processor.h"

#include <algorithm>

namespace headwise::engine {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of some stop string.
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

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

OutputProcessor::OutputProcessor(const SamplingParams& params, const tokenizer::Tokenizer* tok,
                                 std::span<const int32_t> prompt, std::vector<int32_t> eos_ids)
    : params_(params), eos_ids_(std::move(eos_ids)) {
  if (tok != nullptr) {
    detok_.emplace(*tok, /*skip_special_tokens=*/true,
                   std::vector<int32_t>(prompt.begin(), prompt.end()));
  }
}

std::string OutputProcessor::Append(int32_t id) {
  ++num_tokens_;
  const size_t scan_from = text_.size();
  // A stop token (stop_token_ids, or eos unless ignored) ends the output without its text, as
  // vLLM's detokenizer drops it (include_stop_str_in_output, which would keep it, is refused by
  // the API). Eos is usually special and skipped anyway; a stop_token_ids entry is often a
  // plain word.
  const bool stop_token =
      Contains(params_.stop_token_ids, id) || (!params_.ignore_eos && Contains(eos_ids_, id));
  if (detok_ && !stop_token) text_ += detok_->Add(id);
  // A stop string can only complete in the new text or straddle into it.
  size_t stop_at = std::string::npos;
  for (const auto& s : params_.stop) {
    const size_t from = scan_from >= s.size() ? scan_from - s.size() + 1 : 0;
    stop_at = std::min(stop_at, text_.find(s, from));
  }
  if (stop_at != std::string::npos) {
    text_.resize(stop_at);
    finish_reason_ = FinishReason::kStop;
  } else if (stop_token) {
    finish_reason_ = FinishReason::kStop;
  } else if (num_tokens_ >= params_.max_tokens) {
    finish_reason_ = FinishReason::kLength;
  }
  if (finished() && detok_ && stop_at == std::string::npos) text_ += detok_->Finish();
  size_t ready = text_.size();
  if (!finished()) ready -= std::min(ready, StopPrefixHold(text_, params_.stop));
  std::string delta;
  if (ready > emitted_) delta = text_.substr(emitted_, ready - emitted_);
  emitted_ = std::max(emitted_, ready);
  return delta;
}

}  // namespace headwise::engine
