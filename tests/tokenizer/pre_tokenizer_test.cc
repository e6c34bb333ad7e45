// Unit tests of the private building blocks: the hand-written regex splitters and the UTF-8
// helpers. Expectations follow from the regex and Unicode definitions, not from our output.
#include "tokenizer/pre_tokenizer.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <vector>

#include "tokenizer/unicode.h"

namespace headwise::tokenizer::internal {
namespace {

std::vector<std::string> Split(std::string_view text, SplitPattern pattern) {
  std::vector<std::string> out;
  for (std::string_view p : SplitIsolated(text, pattern)) out.emplace_back(p);
  return out;
}

using V = std::vector<std::string>;

TEST_CASE("GPT-2 split follows the regex alternatives", "[tokenizer]") {
  CHECK(Split("I'm here", SplitPattern::kGpt2) == V{"I", "'m", " here"});
  CHECK(Split("DON'T", SplitPattern::kGpt2) == V{"DON", "'", "T"});  // case-sensitive
  CHECK(Split("a   b", SplitPattern::kGpt2) == V{"a", "  ", " b"});  // \s+(?!\S) backtracks
  CHECK(Split("x  ", SplitPattern::kGpt2) == V{"x", "  "});
  CHECK(Split("12345 678", SplitPattern::kGpt2) == V{"12345", " 678"});
  CHECK(Split("hi!!\n", SplitPattern::kGpt2) == V{"hi", "!!", "\n"});
}

TEST_CASE("Llama-3 and Qwen2 splits", "[tokenizer]") {
  CHECK(Split("DON'T", SplitPattern::kLlama3) == V{"DON", "'T"});  // (?i:...)
  CHECK(Split("12345", SplitPattern::kLlama3) == V{"123", "45"});
  CHECK(Split("12345", SplitPattern::kQwen2) == V{"1", "2", "3", "4", "5"});
  CHECK(Split("x\n\n y", SplitPattern::kLlama3) == V{"x", "\n\n", " y"});
  CHECK(Split("(hello)", SplitPattern::kLlama3) == V{"(hello", ")"});
  CHECK(Split("a ...\n\nb", SplitPattern::kLlama3) == V{"a", " ...\n\n", "b"});
  CHECK(Split("x'\xC5\xBFt", SplitPattern::kLlama3) == V{"x", "'\xC5\xBF", "t"});  // 'ſ folds to 's
}

TEST_CASE("Splits cover their input exactly, ill-formed UTF-8 included", "[tokenizer]") {
  std::mt19937 rng(7);
  const std::vector<std::string> atoms = {"a",
                                          "Z",
                                          " ",
                                          "\n",
                                          "\r",
                                          "\t",
                                          "'",
                                          "s",
                                          "9",
                                          "!",
                                          "\xE4\xB8\xAD",
                                          "\xF0\x9F\x98\x80",
                                          "\xC3\xA9",
                                          "\xE2\x80\x83",
                                          "\xFF",
                                          "\x80",
                                          "\xE4\xB8"};
  for (int round = 0; round < 500; ++round) {
    std::string text;
    const int n = std::uniform_int_distribution<int>(0, 30)(rng);
    for (int i = 0; i < n; ++i) text += atoms[rng() % atoms.size()];
    for (SplitPattern p : {SplitPattern::kGpt2, SplitPattern::kLlama3, SplitPattern::kQwen2,
                           SplitPattern::kEachNumber, SplitPattern::kPunctuationRun}) {
      std::string joined;
      for (std::string_view piece : SplitIsolated(text, p)) {
        CHECK_FALSE(piece.empty());
        joined += piece;
      }
      CHECK(joined == text);
    }
  }
}

TEST_CASE("Only exact regex spellings are recognised", "[tokenizer]") {
  CHECK(RecognizeSplitRegex(R"(\p{N})") == SplitPattern::kEachNumber);
  CHECK_FALSE(RecognizeSplitRegex(R"(\p{N}{1,4})").has_value());
  CHECK_FALSE(RecognizeSplitRegex("").has_value());
}

TEST_CASE("LossyUtf8 replaces maximal ill-formed subparts like Rust", "[tokenizer]") {
  const std::string r = "\xEF\xBF\xBD";
  CHECK(LossyUtf8("abc") == "abc");
  CHECK(LossyUtf8("\xF0\x9F\x98") == r);  // truncated emoji: one subpart
  CHECK(LossyUtf8("\xE4\xB8"
                  "a") == r + "a");
  CHECK(LossyUtf8("\xC0\x80") == r + r);          // C0 never starts a sequence
  CHECK(LossyUtf8("\xED\xA0\x80") == r + r + r);  // surrogates are ill-formed
  CHECK(LossyUtf8("\xF0\x9F\x98\x80") == "\xF0\x9F\x98\x80");
}

TEST_CASE("Unicode classes", "[tokenizer]") {
  CHECK(IsLetter(U'\u00e9'));
  CHECK(IsLetter(U'\u4e2d'));
  CHECK_FALSE(IsLetter(U'1'));
  CHECK(IsNumber(U'\u0661'));  // ARABIC-INDIC DIGIT ONE
  CHECK(IsNumber(U'\u00bd'));  // VULGAR FRACTION ONE HALF (No)
  CHECK(IsWhitespace(U'\u3000'));
  CHECK(IsWhitespace(U'\u0085'));
  CHECK_FALSE(IsWhitespace(U'\u200b'));  // ZERO WIDTH SPACE is not White_Space
  CHECK_FALSE(IsLetter(kInvalidByteBase + 0xFF));
  auto nfc = Normalize(NormalForm::kNfc, "e\xCC\x81");
  REQUIRE(nfc.ok());
  CHECK(*nfc == "\xC3\xA9");
  auto kept = Normalize(NormalForm::kNfc,
                        "a\xFF"
                        "e\xCC\x81");
  REQUIRE(kept.ok());
  CHECK(*kept == "a\xFF\xC3\xA9");
}

}  // namespace
}  // namespace headwise::tokenizer::internal
