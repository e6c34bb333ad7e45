#include "tokenizer/pre_tokenizer.h"

#include "tokenizer/unicode.h"

namespace headwise::tokenizer::internal {
namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// llama.cpp spells the case-insensitive group out because std::wregex lacks (?i:).
constexpr std::string_view kLlama3RegexCpp =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2RegexCpp =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool IsNewline(char32_t c) {
  return c == '\r' || c == '\n';
}
bool IsOther(char32_t c) {
  return !IsWhitespace(c) && !IsLetter(c) && !IsNumber(c);
}

class Matcher {
 public:
  Matcher(const std::vector<CodepointSpan>& cps, SplitPattern pattern)
      : cps_(cps), n_(cps.size()), pattern_(pattern) {}

  // Length in code points of the match starting at i (0: no match).
  size_t MatchAt(size_t i) const {
    switch (pattern_) {
      case SplitPattern::kGpt2:
        return MatchGpt2(i);
      case SplitPattern::kLlama3:
        return MatchLlama3(i, 3);
      case SplitPattern::kQwen2:
        return MatchLlama3(i, 1);
      case SplitPattern::kEachNumber:
        return IsNumber(cp(i)) ? 1 : 0;
      case SplitPattern::kNumberRun:
        return Run(i, IsNumber);
      case SplitPattern::kThreeAsciiDigits: {
        for (size_t k = 0; k < 3; ++k) {
          if (i + k >= n_ || cp(i + k) < '0' || cp(i + k) > '9') return 0;
        }
        return 3;
      }
      case SplitPattern::kPunctuationRun:
        return Run(i, [](char32_t c) {
          return IsPunctuation(c) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' ||
                 c == '^' || c == '~' || c == '|';
        });
    }
    return 0;
  }

 private:
  char32_t cp(size_t i) const { return i < n_ ? cps_[i].cp : 0; }
  bool Has(size_t i) const { return i < n_; }

  template <typename Pred>
  size_t Run(size_t i, Pred pred, size_t max = SIZE_MAX) const {
    size_t j = i;
    while (j < n_ && j - i < max && pred(cps_[j].cp)) ++j;
    return j - i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d, optionally case-insensitive.
  size_t MatchContraction(size_t i, bool ignore_case) const {
    if (cp(i) != '\'' || !Has(i + 1)) return 0;
    const auto eq = [&](size_t k, char c) {
      const char32_t x = cp(k);
      if (!Has(k)) return false;
      if (x == static_cast<char32_t>(c)) return true;
      if (!ignore_case) return false;
      if (x == static_cast<char32_t>(c - 'a' + 'A')) return true;
      // Unicode simple case folding maps U+017F LATIN SMALL LETTER LONG S to 's'.
      return c == 's' && x == 0x17F;
    };
    if (eq(i + 1, 's') || eq(i + 1, 't') || eq(i + 1, 'm') || eq(i + 1, 'd')) return 2;
    if ((eq(i + 1, 'r') && eq(i + 2, 'e')) || (eq(i + 1, 'v') && eq(i + 2, 'e')) ||
        (eq(i + 1, 'l') && eq(i + 2, 'l'))) {
      return 3;
    }
    return 0;
  }

  // \s+(?!\S) then \s+ (when with_plain is set).
  size_t MatchTrailingSpace(size_t i, bool with_plain) const {
    const size_t run = Run(i, IsWhitespace);
    if (run == 0) return 0;
    if (i + run == n_) return run;
    if (run >= 2) return run - 1;  // backtrack one so the lookahead sees whitespace
    return with_plain ? run : 0;
  }

  size_t MatchGpt2(size_t i) const {
    if (size_t m = MatchContraction(i, false)) return m;
    const size_t sp = cp(i) == ' ' ? 1 : 0;
    if (Has(i + sp)) {
      const char32_t c = cp(i + sp);
      if (IsLetter(c)) return sp + Run(i + sp, IsLetter);
      if (IsNumber(c)) return sp + Run(i + sp, IsNumber);
      if (IsOther(c)) return sp + Run(i + sp, IsOther);
    }
    return MatchTrailingSpace(i, true);
  }

  size_t MatchLlama3(size_t i, size_t max_digits) const {
    if (size_t m = MatchContraction(i, true)) return m;
    const char32_t c = cp(i);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (IsLetter(c)) return Run(i, IsLetter);
    if (!IsNewline(c) && !IsNumber(c) && Has(i + 1) && IsLetter(cp(i + 1))) {
      return 1 + Run(i + 1, IsLetter);
    }
    // \p{N}{1,max}
    if (IsNumber(c)) return Run(i, IsNumber, max_digits);
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const size_t sp = c == ' ' ? 1 : 0;
    if (Has(i + sp) && IsOther(cp(i + sp))) {
      size_t j = i + sp + Run(i + sp, IsOther);
      j += Run(j, IsNewline);
      return j - i;
    }
    // \s*[\r\n]+ : the whitespace run up to and including its last newline.
    const size_t run = Run(i, IsWhitespace);
    for (size_t k = i + run; k > i; --k) {
      if (IsNewline(cp(k - 1))) return k - i;
    }
    return MatchTrailingSpace(i, true);
  }

  const std::vector<CodepointSpan>& cps_;
  const size_t n_;
  const SplitPattern pattern_;
};

}  // namespace

std::optional<SplitPattern> RecognizeSplitRegex(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kLlama3Regex || regex == kLlama3RegexCpp) return SplitPattern::kLlama3;
  if (regex == kQwen2Regex || regex == kQwen2RegexCpp) return SplitPattern::kQwen2;
  if (regex == R"(\p{N})") return SplitPattern::kEachNumber;
  if (regex == R"(\p{N}+)") return SplitPattern::kNumberRun;
  if (regex == "[0-9][0-9][0-9]") return SplitPattern::kThreeAsciiDigits;
  if (regex == R"([\p{P}\$\+<=>\^~\|]+)") return SplitPattern::kPunctuationRun;
  return std::nullopt;
}

std::vector<std::string_view> SplitIsolated(std::string_view text, SplitPattern pattern) {
  std::vector<std::string_view> pieces;
  const std::vector<CodepointSpan> cps = DecodeUtf8(text);
  const Matcher matcher(cps, pattern);
  const auto byte_at = [&](size_t k) { return k < cps.size() ? cps[k].offset : text.size(); };
  size_t gap_start = 0;
  size_t i = 0;
  while (i < cps.size()) {
    const size_t m = matcher.MatchAt(i);
    if (m == 0) {
      ++i;
      continue;
    }
    if (gap_start < i)
      pieces.push_back(text.substr(byte_at(gap_start), byte_at(i) - byte_at(gap_start)));
    pieces.push_back(text.substr(byte_at(i), byte_at(i + m) - byte_at(i)));
    i += m;
    gap_start = i;
  }
  if (gap_start < cps.size()) pieces.push_back(text.substr(byte_at(gap_start)));
  return pieces;
}

}  // namespace headwise::tokenizer::internal
