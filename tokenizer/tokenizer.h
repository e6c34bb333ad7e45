// Tokenizers: text <-> token ids for Hugging Face tokenizer.json files, sentencepiece .model
// files and GGUF-embedded vocabularies, all behind one interface.
//
// Contract: Encode(text, add_special_tokens) equals Hugging Face `tokenizers`'
// Tokenizer.encode(text, add_special_tokens).ids, including added/special tokens written in the
// text, which map to their ids. Decode(ids, skip_special_tokens) equals
// Tokenizer.decode(ids, skip_special_tokens) (no transformers-level
// clean_up_tokenization_spaces). Bad input (ill-formed UTF-8, out-of-range ids) never crashes:
// ill-formed bytes are tokenized as bytes, unknown ids are dropped from decodes.
// Tokenizers are immutable after loading; all methods are safe to call from many threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace headwise::tokenizer {

struct GgufVocab;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;

  // The raw vocabulary entry ("Ġthe", "▁the", "<0x0A>", "<|im_end|>"); empty if out of range.
  virtual std::string_view IdToPiece(int32_t id) const = 0;
  virtual std::optional<int32_t> PieceToId(std::string_view piece) const = 0;
  // One past the largest id, added tokens included.
  virtual int32_t vocab_size() const = 0;

  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  // Ids that end generation: eos plus end-of-turn tokens the vocabulary names (<|eot_id|>,
  // <|im_end|>, <|endoftext|>, ...). Callers add generation_config.json's eos_token_id.
  virtual const std::vector<int32_t>& stop_ids() const = 0;
  // Special (control) tokens: skipped by Decode(ids, true).
  virtual bool IsSpecial(int32_t id) const = 0;

  // The most bytes of the text given to Encode that one token of the result can stand for, or
  // 0 when no such bound holds. So Encode(text).size() >= text.size() / max_token_bytes(),
  // which lets a server refuse a prompt that cannot fit the context without tokenizing it.
  // Computed once at load: the longest vocabulary piece, times the most a normalizer can
  // shrink text. 0 where tokens can swallow unbounded text: added tokens that strip
  // whitespace around them (lstrip/rstrip), fused or dropped unknown characters, normalizers
  // that delete text, and sentencepiece's own normalizer (it collapses runs of spaces).
  virtual size_t max_token_bytes() const { return 0; }
  // A lower bound on Encode(text, false).size() from one pass over its bytes: the bytes that
  // yield a token (all, less those a byte-level vocabulary without their character drops) over
  // max_token_bytes(), rounded up. 0 where max_token_bytes() is 0.
  virtual size_t MinTokens(std::string_view text) const {
    (void)text;
    return 0;
  }
};

// tokenizer.json of the Hugging Face `tokenizers` library: BPE models (byte-level as in
// GPT-2/Llama-3/Qwen2, or sentencepiece-style with byte fallback as in Llama-2). The optional
// tokenizer_config.json supplies bos/eos tokens and, for Llama-style tokenizers,
// add_bos_token/add_eos_token as transformers applies them. Features we do not implement are
// refused with kUnimplemented naming the feature.
StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& tokenizer_json_path,
                                                     const std::string& tokenizer_config_path = "");

// A sentencepiece .model file, run by libsentencepiece. Control and unknown pieces written in
// the text ("<s>") map to their ids, as llama.cpp and transformers do; add_special_tokens
// prepends BOS. Decode follows the Hugging Face Llama decoder (▁ -> space, byte pieces, one
// leading space stripped).
StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& model_path);

// A GGUF vocabulary (tokenizer.ggml.* metadata), tokenized as llama.cpp does.
StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const GgufVocab& vocab);

}  // namespace headwise::tokenizer
