#include "tokenizer/unicode.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

namespace headwise::tokenizer::internal {
namespace {

// Well-formed UTF-8 per Unicode Table 3-7. Returns the sequence length, or 0 with
// *subpart set to the length of the maximal ill-formed subpart (at least 1).
size_t DecodeOne(std::string_view s, size_t i, char32_t* cp, size_t* subpart) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  const size_t left = s.size() - i;
  const uint8_t b0 = b(0);
  *subpart = 1;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  char32_t value = b0 & (need == 2 ? 0x1F : need == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < need; ++k) {
    if (k >= left) return 0;
    const uint8_t c = b(k);
    const uint8_t l = k == 1 ? lo : 0x80;
    const uint8_t h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) return 0;
    value = (value << 6) | (c & 0x3F);
    *subpart = k + 1;
  }
  *cp = value;
  return need;
}

}  // namespace

std::vector<CodepointSpan> DecodeUtf8(std::string_view text) {
  std::vector<CodepointSpan> out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    char32_t cp = 0;
    size_t subpart = 0;
    const size_t n = DecodeOne(text, i, &cp, &subpart);
    if (n == 0) {
      out.push_back(
          {kInvalidByteBase + static_cast<uint8_t>(text[i]), static_cast<uint32_t>(i), 1});
      ++i;
    } else {
      out.push_back({cp, static_cast<uint32_t>(i), static_cast<uint32_t>(n)});
      i += n;
    }
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp >= kInvalidByteBase) {
    out->push_back(static_cast<char>(cp - kInvalidByteBase));
  } else if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t WellFormedPrefixLength(std::string_view s) {
  if (s.empty()) return 0;
  char32_t cp;
  size_t subpart;
  return DecodeOne(s, 0, &cp, &subpart);
}

std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    char32_t cp = 0;
    size_t subpart = 0;
    const size_t n = DecodeOne(bytes, i, &cp, &subpart);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      i += subpart;
    } else {
      out.append(bytes.substr(i, n));
      i += n;
    }
  }
  return out;
}

bool IsLetter(char32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  if (cp >= kInvalidByteBase) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_L_MASK) != 0;
}

bool IsNumber(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  if (cp >= kInvalidByteBase) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_N_MASK) != 0;
}

bool IsWhitespace(char32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= '\t' && cp <= '\r');
  if (cp >= kInvalidByteBase) return false;
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE);
}

bool IsPunctuation(char32_t cp) {
  if (cp >= kInvalidByteBase) return false;
  return (U_GET_GC_MASK(static_cast<UChar32>(cp)) & U_GC_P_MASK) != 0;
}

StatusOr<std::string> Normalize(NormalForm form, std::string_view text) {
  UErrorCode error = U_ZERO_ERROR;
  const icu::Normalizer2* normalizer = nullptr;
  switch (form) {
    case NormalForm::kNfc:
      normalizer = icu::Normalizer2::getNFCInstance(error);
      break;
    case NormalForm::kNfd:
      normalizer = icu::Normalizer2::getNFDInstance(error);
      break;
    case NormalForm::kNfkc:
      normalizer = icu::Normalizer2::getNFKCInstance(error);
      break;
    case NormalForm::kNfkd:
      normalizer = icu::Normalizer2::getNFKDInstance(error);
      break;
  }
  if (U_FAILURE(error)) return Internal("ICU normalizer unavailable: {}", u_errorName(error));
  // ICU would turn ill-formed bytes into U+FFFD; keep them as they are by normalizing only the
  // well-formed runs between them.
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = i;
    while (j < text.size()) {
      const size_t n = WellFormedPrefixLength(text.substr(j));
      if (n == 0) break;
      j += n;
    }
    if (j > i) {
      const icu::UnicodeString in = icu::UnicodeString::fromUTF8(
          icu::StringPiece(text.data() + i, static_cast<int32_t>(j - i)));
      const icu::UnicodeString normalized = normalizer->normalize(in, error);
      if (U_FAILURE(error)) return Internal("ICU normalization failed: {}", u_errorName(error));
      normalized.toUTF8String(out);
      i = j;
    }
    if (i < text.size()) {
      out.push_back(text[i]);
      ++i;
    }
  }
  return out;
}

}  // namespace headwise::tokenizer::internal
