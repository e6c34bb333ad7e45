// Properties of the real tokenizers in ../shared that need no reference ids (those are checked
// against the Python libraries by tests/python/tokenizer_parity.py), plus error handling.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "tests/test_util.h"
#include "tokenizer/gguf_vocab.h"
#include "tokenizer/pipeline.h"

namespace headwise::tokenizer {
namespace {

std::unique_ptr<Tokenizer> LoadShared(const std::string& name) {
  const std::string dir = testing::SharedDir() + "/tokenizers/" + name;
  auto t = name == "llama2-spm"
               ? LoadSentencePieceTokenizer(dir + "/tokenizer.model")
               : LoadHfTokenizer(dir + "/tokenizer.json", dir + "/tokenizer_config.json");
  INFO(name << ": " << (t.ok() ? "" : t.status().ToString()));
  REQUIRE(t.ok());
  return std::move(t).value();
}

std::string WriteTemp(const std::string& name, const std::string& content) {
  const std::string path = std::string(HEADWISE_BINARY_DIR) + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

const char* const kTexts[] = {
    "Hello world",
    "I'm here. DON'T stop!",
    "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD",
    "emoji \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7 zwj",
    "tabs\tand\nnewlines\r\n  spaces   ",
    "1234567 + 89 = ?",
    "def f(x):\n    return x\n"};

TEST_CASE("Decode(Encode(text)) round-trips", "[tokenizer]") {
  for (const char* name : {"llama2-hf", "llama2-spm", "llama3-hf", "qwen3-hf"}) {
    auto t = LoadShared(name);
    for (const char* text : kTexts) {
      INFO(name << " " << text);
      const auto ids = t->Encode(text, false);
      CHECK_FALSE(ids.empty());
      CHECK(t->Decode(ids, false) == text);
    }
  }
}

TEST_CASE("Special tokens in text map to their ids and decode back", "[tokenizer]") {
  auto qwen = LoadShared("qwen3-hf");
  const auto im_start = qwen->PieceToId("<|im_start|>");
  const auto im_end = qwen->PieceToId("<|im_end|>");
  const auto think = qwen->PieceToId("<think>");
  REQUIRE(im_start);
  REQUIRE(im_end);
  REQUIRE(think);
  const auto ids = qwen->Encode("<|im_start|>user\nhi<think><|im_end|>", false);
  CHECK(ids.front() == *im_start);
  CHECK(ids.back() == *im_end);
  CHECK(std::count(ids.begin(), ids.end(), *think) == 1);
  CHECK(qwen->IsSpecial(*im_start));
  CHECK_FALSE(qwen->IsSpecial(*think));  // an added token that is not special
  CHECK(qwen->Decode(ids, true) == "user\nhi<think>");
  CHECK(qwen->Decode(ids, false) == "<|im_start|>user\nhi<think><|im_end|>");
  CHECK(qwen->eos_id() == im_end);
  CHECK_FALSE(qwen->bos_id().has_value());
  CHECK(qwen->Encode("hi", true) == qwen->Encode("hi", false));  // Qwen adds no BOS
}

TEST_CASE("BOS follows the post-processor", "[tokenizer]") {
  for (const char* name : {"llama2-hf", "llama2-spm"}) {
    auto t = LoadShared(name);
    REQUIRE(t->bos_id());
    const auto with = t->Encode("Hello", true);
    const auto without = t->Encode("Hello", false);
    REQUIRE(with.size() == without.size() + 1);
    CHECK(with.front() == *t->bos_id());
    CHECK(t->IsSpecial(*t->bos_id()));
    CHECK(t->Decode(with, true) == "Hello");
  }
  auto llama3 = LoadShared("llama3-hf");
  CHECK(llama3->bos_id() == llama3->PieceToId("<|begin_of_text|>"));
  const auto eot = llama3->PieceToId("<|eot_id|>");
  REQUIRE(eot);
  CHECK(std::count(llama3->stop_ids().begin(), llama3->stop_ids().end(), *eot) == 1);
}

TEST_CASE("Bad input never crashes", "[tokenizer]") {
  for (const char* name : {"llama2-hf", "llama2-spm", "llama3-hf", "qwen3-hf"}) {
    auto t = LoadShared(name);
    const std::string bad = "ok \xFF\xFE bad \xE4\xB8 cut \xC0\x80";
    const auto ids = t->Encode(bad, true);
    CHECK_FALSE(ids.empty());
    const std::string decoded = t->Decode(ids, false);
    CHECK(decoded.find("ok") != std::string::npos);
    const std::vector<int32_t> junk = {-5, t->vocab_size(), t->vocab_size() + 100, 1 << 30};
    CHECK(t->Decode(junk, false).empty());
    CHECK(t->IdToPiece(-1).empty());
    CHECK(t->Encode("", false).empty());
  }
}

TEST_CASE("Unsupported tokenizer.json features are refused by name", "[tokenizer]") {
  const auto load = [](const std::string& json) {
    return LoadHfTokenizer(WriteTemp("tokenizer_test_tmp.json", json));
  };
  const std::string vocab = R"("vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"])";
  auto wordpiece = load(R"({"model": {"type": "WordPiece", )" + vocab + "}}");
  REQUIRE_FALSE(wordpiece.ok());
  CHECK(wordpiece.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(wordpiece.status().message(), Catch::Contains("WordPiece"));

  auto regex = load(R"({"model": {"type": "BPE", )" + vocab +
                    R"(}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"},
                     "behavior": "Isolated", "invert": false}})");
  REQUIRE_FALSE(regex.ok());
  CHECK(regex.status().code() == StatusCode::kUnimplemented);
  CHECK_THAT(regex.status().message(), Catch::Contains("\\w+"));

  auto lowercase =
      load(R"({"model": {"type": "BPE", )" + vocab + R"(}, "normalizer": {"type": "Lowercase"}})");
  REQUIRE_FALSE(lowercase.ok());
  CHECK_THAT(lowercase.status().message(), Catch::Contains("Lowercase"));

  auto bad_merge = load(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})");
  REQUIRE_FALSE(bad_merge.ok());
  CHECK(bad_merge.status().code() == StatusCode::kInvalidArgument);

  auto ok = load(R"({"model": {"type": "BPE", )" + vocab + "}}");
  REQUIRE(ok.ok());
  CHECK((*ok)->Encode("ab", false) == std::vector<int32_t>{*(*ok)->PieceToId("ab")});

  CHECK(load("{not json").status().code() == StatusCode::kInvalidArgument);
  CHECK(LoadHfTokenizer("/nonexistent/tokenizer.json").status().code() == StatusCode::kNotFound);
  // Read by us now (size cap, regular files only), so a missing file is NotFound like the above.
  CHECK(LoadSentencePieceTokenizer("/nonexistent/x.model").status().code() ==
        StatusCode::kNotFound);
  CHECK_THAT(LoadSentencePieceTokenizer("/dev/zero").status().message(),
             Catch::Contains("/dev/zero: is a character device, not a regular file"));
}

TEST_CASE("GGUF vocabularies are validated", "[tokenizer]") {
  headwise::tokenizer::GgufVocab v;
  v.model = "llama";
  v.tokens = {"<unk>", "<s>", "</s>", "a"};
  v.scores = {0, 0, 0};
  CHECK(LoadGgufTokenizer(v).status().code() == StatusCode::kInvalidArgument);
  v.scores.push_back(0);
  // As in llama.cpp, an id outside the vocabulary (-1 is "none") keeps the default.
  v.bos_id = -1;
  v.eos_id = 3;
  auto loaded = LoadGgufTokenizer(v);
  REQUIRE(loaded.ok());
  CHECK((*loaded)->bos_id() == 1);
  CHECK((*loaded)->eos_id() == 3);
  v.bos_id = 7;
  v.add_bos_token = true;
  CHECK((*LoadGgufTokenizer(v))->Encode("a", true).front() == 1);
  v.bos_id.reset();
  v.model = "bert";
  CHECK(LoadGgufTokenizer(v).status().code() == StatusCode::kUnimplemented);
  v.model = "gpt2";
  v.pre = "no-such-pre";
  auto unknown_pre = LoadGgufTokenizer(v);
  REQUIRE_FALSE(unknown_pre.ok());
  CHECK_THAT(unknown_pre.status().message(), Catch::Contains("no-such-pre"));
  CHECK(LoadGgufTokenizer(GgufVocab{}).status().code() == StatusCode::kInvalidArgument);
}

// Texts that a bound in bytes per token is weakest on: each tokenizer's longest pieces written
// out repeatedly, long runs of one character, and text that NFC shrinks (composition).
std::vector<std::string> HardTexts(const Tokenizer& t) {
  std::vector<std::string> texts(std::begin(kTexts), std::end(kTexts));
  texts.push_back(std::string(5000, ' '));
  texts.push_back(std::string(5000, 'a'));
  texts.push_back(std::string(2000, '\n'));
  texts.push_back(std::string(3000, '='));
  std::string jamo, accents;
  for (int i = 0; i < 300; ++i)
    jamo += "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8";      // L V T -> one syllable
  for (int i = 0; i < 300; ++i) accents += "e\xCC\x81";  // e + combining acute -> é
  texts.push_back(jamo);
  texts.push_back(accents);
  std::vector<std::pair<size_t, int32_t>> by_length;
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    if (t.IsSpecial(id)) continue;
    const int32_t one[1] = {id};
    by_length.emplace_back(t.Decode(one, false).size(), id);
  }
  std::sort(by_length.rbegin(), by_length.rend());
  for (size_t i = 0; i < 5 && i < by_length.size(); ++i) {
    const int32_t one[1] = {by_length[i].second};
    const std::string piece = t.Decode(one, false);
    std::string repeated;
    for (int k = 0; k < 20; ++k) repeated += piece;
    texts.push_back(piece);
    texts.push_back(repeated);
  }
  return texts;
}

TEST_CASE("max_token_bytes bounds the text bytes one token covers", "[tokenizer][limits]") {
  for (const char* name : {"llama2-hf", "llama3-hf", "qwen3-hf"}) {
    INFO(name);
    auto t = LoadShared(name);
    const size_t m = t->max_token_bytes();
    REQUIRE(m > 0);
    for (const std::string& text : HardTexts(*t)) {
      INFO(text.substr(0, 40) << " (" << text.size() << " bytes)");
      for (bool special : {false, true}) {
        CHECK(t->Encode(text, special).size() * m >= text.size());
      }
      CHECK(t->MinTokens(text) <= t->Encode(text, false).size());
      CHECK(t->MinTokens(text) * m >= text.size());
    }
  }
  // Byte fallback over every byte (Llama 2): the longest piece; "▁" for a space makes pieces
  // longer than the text they cover, never shorter.
  const auto llama2 = LoadShared("llama2-hf");
  CHECK(llama2->max_token_bytes() < 64);
  // NFC (Qwen3) may shrink text, so its bound is a multiple of its longest piece.
  const auto qwen = LoadShared("qwen3-hf");
  CHECK(qwen->max_token_bytes() % 8 == 0);
  // sentencepiece's own normalizer may collapse runs of spaces: no bound is claimed.
  CHECK(LoadShared("llama2-spm")->max_token_bytes() == 0);
}

TEST_CASE("max_token_bytes: 0 where tokens can swallow unbounded text", "[tokenizer][limits]") {
  const auto load = [](const std::string& extra, const std::string& model_extra = "") {
    auto t = LoadHfTokenizer(
        WriteTemp("tokenizer_limits_tmp.json",
                  R"({"model": {"type": "BPE", "vocab": {"<unk>": 0, "a": 1, "b": 2, "ab": 3},
            "merges": ["a b"], "unk_token": "<unk>")" +
                      model_extra + "}" + extra + "}"));
    INFO(t.status().ToString());
    REQUIRE(t.ok());
    return std::move(t).value();
  };
  // One <unk> per unknown character (at most 4 bytes); the longest piece is "<unk>" itself.
  auto plain = load("");
  CHECK(plain->max_token_bytes() == 5);
  CHECK(plain->Encode(std::string(100, 'x'), false).size() == 100);
  // A normalizer that replaces 6 bytes by 2 can shrink text 3 times.
  CHECK(load(R"(, "normalizer": {"type": "Replace", "pattern": {"String": "xxxxxx"},
                 "content": "ab"})")
            ->max_token_bytes() == 15);
  CHECK(load(R"(, "normalizer": {"type": "NFKC"})")->max_token_bytes() == 40);
  // fuse_unk: a run of unknown characters is one token.
  auto fused = load("", R"(, "fuse_unk": true)");
  CHECK(fused->Encode(std::string(100, 'x'), false).size() == 1);
  CHECK(fused->max_token_bytes() == 0);
  // A normalizer that deletes text.
  CHECK(load(R"(, "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": ""})")
            ->max_token_bytes() == 0);
  // An added token that strips whitespace around it swallows any run of spaces.
  auto strip = load(R"(, "added_tokens": [{"id": 4, "content": "<m>", "special": true,
      "lstrip": true, "rstrip": false, "normalized": false, "single_word": false}])");
  CHECK(strip->Encode(std::string(1000, ' ') + "<m>", false).size() == 1);
  CHECK(strip->max_token_bytes() == 0);
}

}  // namespace
}  // namespace headwise::tokenizer

TEST_CASE("MinTokens leaves out the bytes a byte-level vocabulary drops", "[tokenizer][limits]") {
  // A GGUF gpt2 vocabulary of the 256 byte characters less that of byte 0x04, plus "aa": as in
  // SmolLM2, whose vocabulary lacks 21 byte characters, a missing byte yields no token.
  headwise::tokenizer::GgufVocab v;
  v.model = "gpt2";
  const auto& chars = headwise::tokenizer::internal::ByteToUnicode();
  for (int b = 0; b < 256; ++b) {
    if (b != 4) v.tokens.push_back(chars[b]);
  }
  v.tokens.push_back("aa");
  v.merges = {"a a"};
  auto t = headwise::tokenizer::LoadGgufTokenizer(v);
  REQUIRE(t.ok());
  CHECK((*t)->max_token_bytes() == 2);
  const std::string dropped(1000, '\x04');
  CHECK((*t)->Encode(dropped, false).empty());
  CHECK((*t)->MinTokens(dropped) == 0);
  const std::string text = std::string(1001, 'a') + dropped;
  CHECK((*t)->MinTokens(text) == 501);
  CHECK((*t)->Encode(text, false).size() == 501);
  // Without the dropped-byte rule there would be no bound at all.
  CHECK((*t)->MinTokens(std::string(10, 'a')) == 5);
}

TEST_CASE("a post-processor id outside the vocabulary is refused at load", "[tokenizer]") {
  // Found by the tokenizer_json fuzzer: Encode returned id 301 from a 3-piece vocabulary, which
  // the model would use as an embedding row.
  const std::string model =
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},)";
  const auto with_ids = [&](const std::string& ids) {
    return headwise::tokenizer::LoadHfTokenizer(headwise::tokenizer::WriteTemp(
        "tokenizer_postproc_tmp.json", model + R"("post_processor": {"type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}}],
          "special_tokens": {"<s>": {"id": "<s>", "ids": )" +
                                           ids + "}}}}"));
  };
  auto bad = with_ids("[301]");
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(bad.status().message(), Catch::Contains("outside the vocabulary of 3"));
  CHECK_FALSE(with_ids("[-1]").ok());
  auto good = with_ids("[2]");
  REQUIRE(good.ok());
  CHECK((*good)->Encode("a", true).front() == 2);
}
