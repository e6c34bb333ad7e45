// What a sequence's sampled tokens become: text through the incremental detokenizer, and the
// stop decision (eos and stop token ids, stop strings, max_tokens), with streamed text held
// back while it could still turn into a stop string. The scheduler runs one per sequence
// (engine/scheduler.h), so `headwise generate` and the server stop in exactly the same place.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "engine/request_output.h"
#include "engine/sampling_params.h"
#include "tokenizer/incremental_detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace headwise::engine {

class OutputProcessor {
 public:
  // `tok` may be null (no text, token-level stops only). The prompt is left context for the
  // detokenizer, so a continuation keeps its leading space as vLLM's does.
  OutputProcessor(const SamplingParams& params, const tokenizer::Tokenizer* tok,
                  std::span<const int32_t> prompt, std::vector<int32_t> eos_ids);

  // Takes the next sampled token; returns the text now safe to stream.
  std::string Append(int32_t id);

  bool finished() const { return finish_reason_.has_value(); }
  // kStop or kLength; only once finished().
  FinishReason finish_reason() const { return *finish_reason_; }
  const std::string& text() const { return text_; }
  int num_tokens() const { return num_tokens_; }

 private:
  const SamplingParams& params_;
  std::optional<tokenizer::IncrementalDetokenizer> detok_;
  std::vector<int32_t> eos_ids_;
  std::string text_;
  size_t emitted_ = 0;
  int num_tokens_ = 0;
  std::optional<FinishReason> finish_reason_;
};

}  // namespace headwise::engine
