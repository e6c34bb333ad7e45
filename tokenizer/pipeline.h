// The tokenization pipeline all our formats map onto (private to tokenizer/): added-token
// splitting, normalizers, pre-tokenizers, a model, a post-processor and decoders, in the order
// and with the semantics of Hugging Face `tokenizers`.
#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace headwise::tokenizer::internal {

// Turns one pre-tokenized piece into ids.
class Model {
 public:
  virtual ~Model() = default;
  virtual void Tokenize(std::string_view piece, std::vector<int32_t>* ids) const = 0;
  // The most bytes of a Tokenize() input that one output id can cover, or 0 if unbounded (an
  // input character may produce no id, or a run of them one id). `byte_level_input`: the
  // input is made only of ByteToUnicode()'s 256 characters (a ByteLevel pre-tokenizer ran);
  // then `dropped` marks the bytes whose character yields no id at all (a vocabulary without
  // it and no <unk>), which the bound leaves out instead of giving up.
  virtual size_t MaxInputBytesPerToken(bool byte_level_input, std::bitset<256>& dropped) const {
    (void)byte_level_input;
    (void)dropped;
    return 0;
  }
};

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool single_word = false;
};

struct NormalizerStep {
  enum class Kind { kUnicode, kPrepend, kReplace };
  Kind kind;
  NormalForm form = NormalForm::kNfc;
  std::string pattern = {};  // kReplace: what to replace
  std::string content = {};  // kPrepend: what to prepend; kReplace: the replacement
};

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel };
  Kind kind;
  SplitPattern pattern = SplitPattern::kGpt2;  // kSplit; kByteLevel with use_regex uses kGpt2
  bool use_regex = false;                      // kByteLevel
  bool add_prefix_space = false;               // kByteLevel
};

struct DecoderStep {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip };
  Kind kind;
  std::string pattern = {};  // kReplace
  std::string content = {};  // kReplace: replacement; kStrip: the character stripped
  int start = 0;             // kStrip
  int stop = 0;              // kStrip
};

struct PipelineConfig {
  std::vector<std::string> id_to_piece;  // every id, added tokens included
  std::vector<AddedToken> added_tokens;
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::unique_ptr<Model> model;
  std::vector<DecoderStep> decoders;
  std::vector<int32_t> prefix_ids;  // post-processor, with add_special_tokens
  std::vector<int32_t> suffix_ids;
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
  std::vector<int32_t> stop_ids;
  std::vector<bool> special;  // by id; added special tokens and control pieces
};

std::unique_ptr<Tokenizer> MakePipelineTokenizer(PipelineConfig config);

// GPT-2's reversible byte <-> printable code point table used by byte-level BPE.
const std::vector<std::string>& ByteToUnicode();

// Hugging Face BPE (also llama.cpp's "gpt2" BPE, which merges identically).
struct BpeOptions {
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<int32_t> unk_id;
};
// merges: pairs of pieces in rank order. Fails if a merge names a piece not in the vocab.
StatusOr<std::unique_ptr<Model>> MakeBpeModel(
    const std::vector<std::string>& id_to_piece,
    const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options);

// llama.cpp's sentencepiece tokenizer: score-driven bigram merging, byte fallback.
std::unique_ptr<Model> MakeSpmScoreModel(const std::vector<std::string>& id_to_piece,
                                         const std::vector<float>& scores,
                                         const std::vector<int32_t>& byte_ids /* 256 or empty */,
                                         std::optional<int32_t> unk_id);

// Known end-of-turn token texts, as llama.cpp's end-of-generation detection lists them.
bool IsEndOfTurnText(std::string_view piece);

}  // namespace headwise::tokenizer::internal
