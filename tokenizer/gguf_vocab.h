// What a GGUF file's tokenizer.ggml.* metadata holds. models/ fills it from the file; the
// tokenizer module does not read GGUF itself.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace headwise::tokenizer {

struct GgufVocab {
  // llama.cpp's token types (tokenizer.ggml.token_type).
  enum TokenType : int32_t {
    kUndefined = 0,
    kNormal = 1,
    kUnknown = 2,
    kControl = 3,
    kUserDefined = 4,
    kUnused = 5,
    kByte = 6,
  };

  std::string model;  // tokenizer.ggml.model: "llama" (sentencepiece) or "gpt2" (byte-level BPE)
  std::string pre;    // tokenizer.ggml.pre: "default", "llama-bpe", "qwen2", "smollm", ...
  std::vector<std::string> tokens;
  std::vector<float> scores;        // may be empty ("gpt2")
  std::vector<int32_t> token_type;  // may be empty: all kNormal
  std::vector<std::string> merges;  // "gpt2" only: "a b" in rank order

  // Absent keys keep llama.cpp's defaults for the model type.
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
  std::optional<int32_t> eot_id;
  std::optional<int32_t> eom_id;
  std::optional<int32_t> unk_id;
  std::optional<int32_t> pad_id;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<bool> add_space_prefix;  // tokenizer.ggml.add_space_prefix
};

}  // namespace headwise::tokenizer
