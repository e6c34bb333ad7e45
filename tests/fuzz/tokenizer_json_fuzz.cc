// tokenizer.json loading (LoadHfTokenizer): the input is a tokenizer.json, optionally followed
// by a NUL byte and a tokenizer_config.json (NUL never occurs in JSON text, so the split is
// unambiguous). A tokenizer that loads is then used: encode and decode fixed texts, and look
// up ids and pieces, including out-of-range ids.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/tokenizer.h"

namespace {

const char* const kTexts[] = {
    "Hello world",
    " leading  and trailing spaces ",
    "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x91\x8D",
    "tabs\tand\nnewlines\r\n",
    "1234567 + 89 = ?",
    "<s>special</s><|im_start|><|endoftext|>",
    "ill-formed \xC3 \xFF\xFE bytes",
};

void Use(const headwise::tokenizer::Tokenizer& tok) {
  const int32_t vocab = tok.vocab_size();
  for (const char* text : kTexts) {
    for (bool special : {false, true}) {
      const auto ids = tok.Encode(text, special);
      for (int32_t id : ids) {
        if (id < 0 || id >= vocab) __builtin_trap();  // Encode must stay inside the vocabulary
      }
      (void)tok.Decode(ids, false);
      (void)tok.Decode(ids, true);
    }
  }
  std::vector<int32_t> odd = {-1, vocab, vocab + 1, INT32_MAX, INT32_MIN, 0};
  for (int32_t id = 0; id < vocab && id < 512; ++id) odd.push_back(id);
  (void)tok.Decode(odd, false);
  (void)tok.Decode(odd, true);
  for (int32_t id : odd) {
    const std::string piece(tok.IdToPiece(id));
    (void)tok.PieceToId(piece);
    (void)tok.IsSpecial(id);
  }
  (void)tok.bos_id();
  (void)tok.eos_id();
  (void)tok.stop_ids();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static headwise::fuzz::InputFile json_file("tokenizer.json");
  static headwise::fuzz::InputFile config_file("tokenizer_config.json");
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t json_size = nul ? static_cast<size_t>(nul - data) : size;
  const std::string& json_path = json_file.Write(data, json_size);
  std::string config_path;
  if (nul) config_path = config_file.Write(nul + 1, size - json_size - 1);
  auto tok = headwise::tokenizer::LoadHfTokenizer(json_path, config_path);
  if (!tok.ok()) {
    (void)tok.status().ToString();
    return 0;
  }
  Use(**tok);
  return 0;
}
