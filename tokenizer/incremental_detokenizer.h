// Streaming detokenization: fed one token id at a time, returns the text it adds, never half a
// UTF-8 character. The concatenated deltas plus Finish() equal Decode(all ids) for any id
// sequence whose decoding is well-formed UTF-8.
//
// Like vLLM and text-generation-inference, each step decodes a short window that starts a few
// tokens back and emits what the new token appended to it, so decoders that look at
// neighbours (sentencepiece's leading-space strip, byte-fallback runs, byte-level pieces) agree
// with a full decode at O(window) cost per token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace headwise::tokenizer {

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object. prompt_ids, if given, provide left context only
  // (their text is not emitted), so the first generated token decodes as it will in the full
  // text.
  IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens,
                         std::vector<int32_t> prompt_ids = {});

  // The text the id adds; empty while it ends inside an incomplete character.
  std::string Add(int32_t id);
  // Text still held back at the end of the stream (an incomplete character, decoded as U+FFFD
  // the way Decode does).
  std::string Finish();

  const std::vector<int32_t>& ids() const { return ids_; }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // window start
  size_t read_offset_ = 0;    // ids before this have been emitted
};

}  // namespace headwise::tokenizer
