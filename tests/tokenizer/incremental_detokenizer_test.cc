#include "tokenizer/incremental_detokenizer.h"

#include <catch2/catch.hpp>
#include <string>

#include "tests/test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace headwise::tokenizer {
namespace {

std::unique_ptr<Tokenizer> Load(const std::string& name) {
  const std::string base = testing::SharedDir();
  StatusOr<std::unique_ptr<Tokenizer>> t = Status(StatusCode::kNotFound, name);
  if (name == "llama2-spm") {
    t = LoadSentencePieceTokenizer(base + "/tokenizers/llama2-spm/tokenizer.model");
  } else if (name == "tinystories") {
    t = LoadHfTokenizer(base + "/models/tinystories-656k/tokenizer.json");
  } else {
    t = LoadHfTokenizer(base + "/tokenizers/" + name + "/tokenizer.json");
  }
  INFO(name << ": " << (t.ok() ? "" : t.status().ToString()));
  REQUIRE(t.ok());
  return std::move(t).value();
}

bool IsCompleteUtf8(const std::string& s) {
  return internal::LossyUtf8(s) == s && s.find("\xEF\xBF\xBD") == std::string::npos;
}

const char* const kNames[] = {"llama2-hf", "llama2-spm", "llama3-hf", "qwen3-hf", "tinystories"};
const char* const kTexts[] = {
    "\xF0\x9F\x98\x80",  // 😀
    "Family: \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D"
    "\xF0\x9F\x91\xA6 and \xF0\x9F\x8F\xB3\xEF\xB8\x8F\xE2\x80\x8D\xF0\x9F\x8C\x88!",
    "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C \xF0\x9D\x94\x98 \xE2\x80\x94",
    "  leading spaces and  double  spaces\n\nnew paragraph",
    "<s>Hello</s> <|im_start|>user\nhi<|im_end|> <|begin_of_text|>x",
};

TEST_CASE("Deltas are whole characters and add up to Decode", "[tokenizer]") {
  for (const char* name : kNames) {
    auto t = Load(name);
    bool held_back = false;
    for (const char* text : kTexts) {
      for (bool skip : {false, true}) {
        const std::vector<int32_t> ids = t->Encode(text, true);
        IncrementalDetokenizer detok(*t, skip);
        std::string streamed;
        for (int32_t id : ids) {
          const std::string delta = detok.Add(id);
          INFO(name << " text=" << text << " id=" << id << " delta=" << delta);
          CHECK(IsCompleteUtf8(delta));
          // A token whose own bytes are an incomplete character must be held back.
          if (!IsCompleteUtf8(t->Decode(std::vector<int32_t>{id}, skip))) held_back = true;
          streamed += delta;
        }
        streamed += detok.Finish();
        INFO(name << " skip=" << skip << " text=" << text);
        CHECK(streamed == t->Decode(ids, skip));
      }
    }
    // A vocabulary with byte pieces (byte fallback "<0xF0>" or byte-level "ð" for 0xF0) splits
    // some emoji or CJK character over several tokens; if none did, this test would not be
    // testing the hold-back at all. TinyStories has neither and maps them to <unk>.
    const bool has_byte_pieces = t->PieceToId("<0xF0>") || t->PieceToId("\xC3\xB0");
    INFO(name);
    CHECK(held_back == has_byte_pieces);
  }
}

TEST_CASE("Prompt ids give left context without being emitted", "[tokenizer]") {
  for (const char* name : kNames) {
    auto t = Load(name);
    const std::vector<int32_t> prompt = t->Encode("Once upon a time", true);
    const std::vector<int32_t> generated = t->Encode(" there was \xF0\x9F\x90\x89 a dragon", false);
    IncrementalDetokenizer detok(*t, true, prompt);
    std::string streamed;
    for (int32_t id : generated) streamed += detok.Add(id);
    streamed += detok.Finish();
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    const std::string full = t->Decode(all, true);
    const std::string head = t->Decode(prompt, true);
    INFO(name);
    REQUIRE(full.compare(0, head.size(), head) == 0);
    CHECK(streamed == full.substr(head.size()));
  }
}

TEST_CASE("A stream cut inside a character ends in U+FFFD like Decode", "[tokenizer]") {
  auto t = Load("llama3-hf");
  std::vector<int32_t> ids = t->Encode("ok \xF0\x9F\x98\x80", false);
  IncrementalDetokenizer detok(*t, false);
  std::string streamed;
  bool cut = false;
  for (int32_t id : ids) {
    detok.Add(id);
    if (!IsCompleteUtf8(t->Decode(detok.ids(), false))) {
      cut = true;
      break;
    }
  }
  if (!cut) {
    SUCCEED("the emoji is one token in this vocabulary");
    return;
  }
  IncrementalDetokenizer replay(*t, false);
  for (int32_t id : detok.ids()) streamed += replay.Add(id);
  streamed += replay.Finish();
  CHECK(streamed == t->Decode(detok.ids(), false));
}

}  // namespace
}  // namespace headwise::tokenizer
