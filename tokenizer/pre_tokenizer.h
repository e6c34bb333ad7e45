// Hand-written equivalents of the pre-tokenizer regexes real vocabularies use (private to
// tokenizer/). std::regex has no \p{L}, and a general regex engine is more than these few
// fixed patterns need; each matcher below follows the backtracking semantics of its regex.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

namespace headwise::tokenizer::internal {

enum class SplitPattern {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // As kLlama3 with \p{N} instead of \p{N}{1,3}.
  kQwen2,
  kEachNumber,        // \p{N}
  kNumberRun,         // \p{N}+
  kThreeAsciiDigits,  // [0-9][0-9][0-9]
  kPunctuationRun,    // [\p{P}\$\+<=>\^~\|]+
};

// Which of our patterns a tokenizer.json Split regex is, if any. Only exact spellings are
// recognised: anything else must be refused, not approximated.
std::optional<SplitPattern> RecognizeSplitRegex(std::string_view regex);

// The "Isolated" split: every match and every gap between matches becomes a piece, in order.
// Pieces are views into text and cover it exactly.
std::vector<std::string_view> SplitIsolated(std::string_view text, SplitPattern pattern);

}  // namespace headwise::tokenizer::internal
