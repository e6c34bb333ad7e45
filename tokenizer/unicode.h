// UTF-8 and Unicode-property helpers shared by the tokenizers (private to tokenizer/).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace headwise::tokenizer::internal {

// Code points of text with their byte spans. A byte that is not part of well-formed UTF-8
// becomes its own entry with cp = kInvalidByteBase + byte, so callers never lose bytes and
// never see a valid code point that was not in the input.
inline constexpr char32_t kInvalidByteBase = 0x110000;
struct CodepointSpan {
  char32_t cp;
  uint32_t offset;
  uint32_t size;
};
std::vector<CodepointSpan> DecodeUtf8(std::string_view text);

void AppendUtf8(char32_t cp, std::string* out);

// Length of the well-formed UTF-8 sequence at the start of s, or 0 if s does not start with one.
size_t WellFormedPrefixLength(std::string_view s);

// Rust's String::from_utf8_lossy: each maximal ill-formed subpart becomes one U+FFFD.
// The Hugging Face decoders use it, so our decoders must too.
std::string LossyUtf8(std::string_view bytes);

// The three classes the GPT-2 family regexes use: \p{L}, \p{N} and \s (White_Space).
bool IsLetter(char32_t cp);
bool IsNumber(char32_t cp);
bool IsWhitespace(char32_t cp);
bool IsPunctuation(char32_t cp);  // \p{P}

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
StatusOr<std::string> Normalize(NormalForm form, std::string_view text);

}  // namespace headwise::tokenizer::internal
