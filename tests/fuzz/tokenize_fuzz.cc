// Tokenize / detokenize with fixed real tokenizers, loaded once in LLVMFuzzerInitialize:
//   HEADWISE_FUZZ_TOKENIZERS  ':'-separated paths engine::LoadTokenizerFor takes (a
//                             tokenizer.json, a directory, a sentencepiece .model, a .gguf);
//   default: $HEADWISE_SHARED/tokenizers/{llama2-hf,llama3-hf,llama2-spm} (HEADWISE_SHARED
//   defaults to ../shared beside the source tree), plus $HEADWISE_SMOLLM2_GGUF when set.
// The first input byte picks the tokenizer and the mode, the rest is text or token ids:
//   mode 0 (and 3): Encode(text) -> Decode, both special-token settings;
//   mode 1: the rest as little-endian int32 ids (any values) -> Decode, IdToPiece;
//   mode 2: the same ids, in range, through IncrementalDetokenizer, whose deltas must add up
//           to Decode(ids) when that decode is well-formed UTF-8 without U+FFFD (its
//           documented contract).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model_loader.h"
#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace {

using headwise::tokenizer::Tokenizer;

std::vector<std::unique_ptr<Tokenizer>>& Tokenizers() {
  static std::vector<std::unique_ptr<Tokenizer>> tokenizers;
  return tokenizers;
}

std::vector<std::string> TokenizerPaths() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("HEADWISE_FUZZ_TOKENIZERS"); env && *env) {
    std::stringstream list(env);
    for (std::string path; std::getline(list, path, ':');) {
      if (!path.empty()) paths.push_back(path);
    }
    return paths;
  }
  const std::string dir = headwise::fuzz::SharedDir() + "/tokenizers/";
  paths = {dir + "llama2-hf", dir + "llama3-hf", dir + "llama2-spm/tokenizer.model"};
  if (const char* gguf = std::getenv("HEADWISE_SMOLLM2_GGUF"); gguf && *gguf) {
    paths.push_back(gguf);
  }
  return paths;
}

bool IsWellFormedUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? c : c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

std::vector<int32_t> Ids(const uint8_t* data, size_t size) {
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  return ids;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const std::string& path : TokenizerPaths()) {
    auto tok = headwise::engine::LoadTokenizerFor(path);
    if (!tok.ok()) {
      std::fprintf(stderr, "tokenize_fuzz: cannot load %s: %s\n", path.c_str(),
                   tok.status().ToString().c_str());
      std::exit(1);
    }
    Tokenizers().push_back(std::move(tok).value());
  }
  if (Tokenizers().empty()) {
    std::fprintf(stderr, "tokenize_fuzz: no tokenizers (HEADWISE_FUZZ_TOKENIZERS is empty)\n");
    std::exit(1);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t selector = data[0];
  const auto& tok = *Tokenizers()[(selector >> 2) % Tokenizers().size()];
  const int mode = selector & 3;
  ++data;
  --size;
  if (mode == 0 || mode == 3) {
    const std::string_view text = headwise::fuzz::AsText(data, size);
    for (bool special : {false, true}) {
      const auto ids = tok.Encode(text, special);
      for (int32_t id : ids) {
        if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
      }
      (void)tok.Decode(ids, false);
      (void)tok.Decode(ids, true);
    }
  } else if (mode == 1) {
    const auto ids = Ids(data, size);
    (void)tok.Decode(ids, false);
    (void)tok.Decode(ids, true);
    for (int32_t id : ids) {
      const std::string piece(tok.IdToPiece(id));
      (void)tok.PieceToId(piece);
      (void)tok.IsSpecial(id);
    }
  } else {
    auto ids = Ids(data, size);
    for (int32_t& id : ids) id = static_cast<int32_t>(static_cast<uint32_t>(id) % tok.vocab_size());
    for (bool skip_special : {false, true}) {
      // The first id or two as prompt context, as the server passes the prompt.
      const size_t prompt = ids.size() % 3;
      std::vector<int32_t> prompt_ids(ids.begin(), ids.begin() + std::min(prompt, ids.size()));
      std::vector<int32_t> generated(ids.begin() + prompt_ids.size(), ids.end());
      headwise::tokenizer::IncrementalDetokenizer detok(tok, skip_special, prompt_ids);
      std::string streamed;
      for (int32_t id : generated) streamed += detok.Add(id);
      streamed += detok.Finish();
      if (prompt_ids.empty()) {
        const std::string full = tok.Decode(generated, skip_special);
        // Ill-formed bytes (byte-fallback pieces that do not make a character) decode as
        // U+FFFD, and where the window starts decides how many: the contract excludes them.
        const bool replaced = full.find("\xEF\xBF\xBD") != std::string::npos;
        if (!replaced && IsWellFormedUtf8(full) && streamed != full) {
          std::fprintf(stderr, "incremental detokenization differs from Decode:\n  %s\n  %s\n",
                       streamed.c_str(), full.c_str());
          __builtin_trap();
        }
      }
    }
  }
  return 0;
}
