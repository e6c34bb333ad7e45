#include "tokenizer/incremental_detokenizer.h"

#include <span>

namespace headwise::tokenizer {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";
// How far back the first window starts into the prompt (vLLM uses 5 too).
constexpr size_t kInitialContext = 5;

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens,
                                               std::vector<int32_t> prompt_ids)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      ids_(std::move(prompt_ids)) {
  read_offset_ = ids_.size();
  prefix_offset_ = ids_.size() > kInitialContext ? ids_.size() - kInitialContext : 0;
}

std::string IncrementalDetokenizer::Add(int32_t id) {
  ids_.push_back(id);
  const std::span<const int32_t> all(ids_);
  const std::string prefix_text = tokenizer_.Decode(
      all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_);
  const std::string new_text = tokenizer_.Decode(all.subspan(prefix_offset_), skip_special_tokens_);
  // A trailing U+FFFD is an incomplete character still waiting for its next bytes.
  if (new_text.size() <= prefix_text.size() || EndsWith(new_text, kReplacementChar) ||
      new_text.compare(0, prefix_text.size(), prefix_text) != 0) {
    return "";
  }
  std::string delta = new_text.substr(prefix_text.size());
  // The next window starts at the token that begins the new text, unless that token decodes to
  // nothing (a skipped special token): a window starting there would lose the context that
  // keeps a leading-space strip from eating the following token's space.
  const std::string first = tokenizer_.Decode(all.subspan(read_offset_, 1), skip_special_tokens_);
  if (!first.empty()) prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return delta;
}

std::string IncrementalDetokenizer::Finish() {
  if (read_offset_ >= ids_.size()) return "";
  const std::span<const int32_t> all(ids_);
  const std::string prefix_text = tokenizer_.Decode(
      all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_tokens_);
  const std::string new_text = tokenizer_.Decode(all.subspan(prefix_offset_), skip_special_tokens_);
  read_offset_ = ids_.size();
  if (new_text.size() <= prefix_text.size()) return "";
  return new_text.substr(prefix_text.size());
}

}  // namespace headwise::tokenizer
