// What the engine tells a front end about one request: its events (RequestOutput) and why it
// ended (FinishReason). Typed here; the OpenAI strings are the server's business
// (server/openai_api.h), as vLLM maps its FinishReason only at the API edge.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"

namespace headwise::engine {

enum class FinishReason {
  kStop,    // eos, a stop token id or a stop string
  kLength,  // max_tokens reached
  kAbort,   // the consumer aborted it, or the engine shut down
  kError,   // the engine failed (RequestOutput::error says how)
};

// The engine's own name of a reason ("stop", "length", "abort", "error"): its metrics label
// (headwise_request_finished_total{finish_reason=...}) and what logs and the CLI print.
std::string_view FinishReasonName(FinishReason reason);

// One event of a request: what it produced since the last event.
struct RequestOutput {
  std::vector<int32_t> token_ids;
  std::string text;                  // text delta (stop strings and incomplete UTF-8 held back)
  std::vector<SampledToken> tokens;  // one per token id, with logprobs when asked
  bool finished = false;
  FinishReason finish_reason = FinishReason::kStop;  // when finished
  std::string error;                                 // when finish_reason == kError
  int prompt_tokens = 0;
  int completion_tokens = 0;  // so far
  int cached_tokens = 0;      // prompt tokens served from the prefix cache
};

}  // namespace headwise::engine
