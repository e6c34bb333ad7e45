// Properties of the real tokenizers in ../shared that need no reference ids (those are checked
// against the Python libraries by tests/python/tokenizer_parity.py), plus error handling.
#include "tokenizer/tokenizer.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "tests/test_util.h"
#include "tokenizer/gguf_vocab.h"

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
  GgufVocab v;
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

}  // namespace
}  // namespace headwise::tokenizer
