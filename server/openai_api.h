// The OpenAI-compatible API without the HTTP transport: request parsing and validation,
// response and stream-chunk shaping, SSE framing and the OpenAI error shape. Everything here
// is a pure function of its inputs (plus a tokenizer for token texts), so it is unit-tested
// without an engine; http_server.cc glues it to cpp-httplib and the engine.
//
// Strictness: a field we do not know, or a known one we do not implement with a non-default
// value, is a 400 naming the field. Silently ignoring a parameter gives users wrong answers
// they cannot see (PEERS.md §3, item 10), so we never do it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/engine.h"
#include "engine/generation_config.h"
#include "engine/request_output.h"
#include "engine/sampling_params.h"
#include "tokenizer/chat_renderer.h"

namespace headwise::tokenizer {
class Tokenizer;
}

namespace headwise::server {

using Json = nlohmann::ordered_json;

// An error answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // empty: null
  std::string code;   // empty: null
};

ApiError BadRequest(std::string message, std::string param = "");
ApiError NotFoundError(std::string message, std::string param = "", std::string code = "");
// Maps an engine Status: InvalidArgument/OutOfRange/Unimplemented/NotFound -> 400 with the
// status's field as `param` (the engine's field names are the API's), ResourceExhausted -> 503,
// others 500.
ApiError ErrorFromStatus(const Status& status);
Json ErrorBody(const ApiError& error);

// Limits on a request body, checked in one pass before it is parsed. Real requests nest a few
// levels (messages[i].content[j].text; chat_template_kwargs a few more); a prompt of token ids
// is one value per id, so 2^21 values allow 1024 prompts of 2048 ids; parsed, that many values
// take tens of MiB at most, however large the body limit (`[1,1,...]` costs 8 bytes of memory
// per byte of body, `[{},{},...]` about 20).
inline constexpr int kMaxRequestJsonDepth = 64;
inline constexpr size_t kMaxRequestJsonValues = size_t{1} << 21;

// Parses a request body; anything but a JSON object, or a body over the limits above, is a 400.
std::optional<ApiError> ParseJsonObject(std::string_view body, Json& out);

// One prompt of /v1/completions: text, or token ids given by the client.
struct PromptInput {
  bool is_ids = false;
  std::string text;
  std::vector<int32_t> ids;
};

enum class ApiKind { kCompletion, kChat };

// A parsed /v1/completions or /v1/chat/completions request.
struct GenerationRequest {
  ApiKind kind = ApiKind::kCompletion;
  std::string model;                             // empty: not given (the first served model)
  std::vector<PromptInput> prompts;              // completions
  std::vector<tokenizer::ChatMessage> messages;  // chat
  engine::SamplingParams params;                 // max_tokens filled in by ResolveMaxTokens
  std::optional<int> max_tokens;                 // as the client gave it
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;                  // completions: the prompt text precedes the output
  bool logprobs = false;              // any logprobs asked for
  int top_logprobs = 0;               // alternatives per token
  bool add_special_tokens = true;     // completions true, chat false (vLLM defaults)
  bool add_generation_prompt = true;  // chat
  Json chat_template_kwargs = Json::object();
  // A/B arms (engine/arms.h): the client's end-user id ("user"), which keys its arm unless an
  // X-Headwise-Arm-Key header does, and the arm it names itself ("headwise": {"arm": NAME}),
  // which the server grants only when its arms file allows overrides.
  std::optional<std::string> user;
  std::optional<std::string> arm;
  // {"headwise": {"token_ids": true}}: each choice, and each streamed chunk, also carries the ids
  // of the tokens it adds as "token_ids" (the gRPC front end asks for them).
  bool token_ids = false;
};

// The body's field that names an arm, as error params and messages spell it.
inline constexpr std::string_view kArmOverrideField = "headwise.arm";

// `defaults`: the served model's generation defaults (engine/generation_config.h); a sampling
// field the body does not give, or gives as null, takes its default, as in vLLM.
std::optional<ApiError> ParseCompletionRequest(const Json& body, GenerationRequest& out,
                                               const engine::GenerationDefaults& defaults = {});
std::optional<ApiError> ParseChatRequest(const Json& body, GenerationRequest& out,
                                         const engine::GenerationDefaults& defaults = {});

// max_tokens after the prompt is known: the client's value, else 16 for completions (OpenAI)
// and for chat the generation defaults' max_tokens or the rest of the context (vLLM); then at
// most the defaults' max_tokens_cap. A request that cannot fit max_model_len is a 400 with
// vLLM's message.
std::optional<ApiError> ResolveMaxTokens(const GenerationRequest& request, int prompt_tokens,
                                         int max_model_len, int& max_tokens,
                                         const engine::GenerationDefaults& defaults = {});

// SamplingParams::Validate against the model's vocabulary, mapped to a 400 naming the field:
// the range checks of a request's sampling parameters (the parsers above check JSON types and
// the API's own fields only).
std::optional<ApiError> ValidateParams(const engine::SamplingParams& params, int vocab_size);
// Token ids given by the client: inside the vocabulary and not empty.
std::optional<ApiError> ValidatePromptIds(const std::vector<int32_t>& ids, int vocab_size,
                                          const std::string& param);

// A cheap refusal before tokenizing a text prompt of `text_bytes` bytes that the tokenizer
// would make at least `min_tokens` tokens (Tokenizer::MinTokens; 0: no bound known, never
// refuses): a 400 naming `param` when that is more than max_tokens_allowed.
std::optional<ApiError> CheckPromptTextSize(size_t min_tokens, size_t text_bytes,
                                            int64_t max_tokens_allowed, std::string_view param);

// /tokenize and /detokenize (vLLM's shapes).
struct TokenizeRequest {
  std::string model;
  bool chat = false;
  std::string prompt;
  std::vector<tokenizer::ChatMessage> messages;
  bool add_special_tokens = true;  // default true for prompts, false for messages
  bool add_generation_prompt = true;
  Json chat_template_kwargs = Json::object();
};
std::optional<ApiError> ParseTokenizeRequest(const Json& body, TokenizeRequest& out);

struct DetokenizeRequest {
  std::string model;
  std::vector<int32_t> tokens;
};
std::optional<ApiError> ParseDetokenizeRequest(const Json& body, DetokenizeRequest& out);

// --- Response shaping ---

// "cmpl-" / "chatcmpl-" followed by 32 random hex digits.
std::string NewResponseId(ApiKind kind);

// The decoded text of one token, and its UTF-8 bytes (a byte-fallback piece "<0xE2>" gives
// its raw byte, which the decoded text cannot show).
std::string TokenText(const tokenizer::Tokenizer& tok, int32_t id);
std::vector<int> TokenBytes(const tokenizer::Tokenizer& tok, int32_t id);

// Token texts are decoded after the token before them (`prev_token`, -1 for none; updated past
// `tokens`), because sentencepiece-style decoders drop the leading space of a decode's first
// token: " the" would otherwise read "the".
//
// Completions logprobs {tokens, token_logprobs, top_logprobs, text_offset} for `tokens`;
// text_offset counts characters from `text_offset` (updated past the tokens).
Json CompletionLogprobs(const tokenizer::Tokenizer& tok,
                        const std::vector<engine::SampledToken>& tokens, int top_k,
                        int64_t& text_offset, int32_t& prev_token);
// Chat logprobs {"content": [{token, logprob, bytes, top_logprobs: [...]}]}.
Json ChatLogprobs(const tokenizer::Tokenizer& tok, const std::vector<engine::SampledToken>& tokens,
                  int top_k, int32_t& prev_token);

// Number of Unicode code points in UTF-8 text (text_offset counts characters, as Python does).
int64_t CountCodePoints(std::string_view utf8);

struct UsageInfo {
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_tokens = 0;
};
Json UsageJson(const UsageInfo& usage);
// What ran the request, reported beside "usage" in every response and on the last chunks of a
// stream: {"arm": name, "attention_policy": policy, "policy_hash": hash}.
Json HeadwiseExtras(const engine::ArmInfo& arm);

// GET /v1/arms: {"object": "list", "allow_override", "data": [{"name", "attention_policy",
// "policy_path" (null without a file), "policy_hash", "weight"}]}; `weights` is parallel to
// `arms`.
Json ArmsList(const std::vector<engine::ArmInfo>& arms, const std::vector<double>& weights,
              bool allow_override);

// The "finish_reason" value of a choice: OpenAI's "stop" and "length", and headwise's "abort"
// (the server shut down mid-stream) and "error". The one place engine::FinishReason becomes a
// string of the API (vLLM's FINISH_REASON_STRINGS).
std::string FinishReasonString(engine::FinishReason reason);

// The final state of one choice, for a non-streaming response.
struct ChoiceResult {
  int index = 0;
  std::string text;  // including the echoed prompt when echo is on
  std::vector<engine::SampledToken> tokens;
  std::string finish_reason;
  Json logprobs;                                  // null, or the formatted logprobs
  std::optional<std::vector<int32_t>> token_ids;  // "token_ids" when asked for
};

// `arm` is the arm that ran (the "headwise" field beside "usage").
Json CompletionResponse(const std::string& id, int64_t created, const std::string& model,
                        const std::vector<ChoiceResult>& choices, const UsageInfo& usage,
                        const engine::ArmInfo& arm);
Json ChatResponse(const std::string& id, int64_t created, const std::string& model,
                  const std::vector<ChoiceResult>& choices, const UsageInfo& usage,
                  const engine::ArmInfo& arm);

// One streamed chunk with a single choice. Chat: `role_delta` gives {"role": "assistant",
// "content": ""}; otherwise a content delta ({} when `text` is empty and finish_reason set).
// `finish_reason` empty: null. `logprobs` null when not asked for. `include_usage` adds
// "usage": null as OpenAI does on every chunk but the last. A choice's finishing chunk (with a
// finish_reason) discloses `arm` as "headwise". `token_ids` (not null): the choice's
// "token_ids".
Json StreamChunk(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                 int index, bool role_delta, const std::string& text, const Json& logprobs,
                 const std::string& finish_reason, bool include_usage, const engine::ArmInfo& arm,
                 const std::vector<int32_t>* token_ids = nullptr);
// The final usage chunk: "choices": [], the usage and the arm.
Json UsageChunk(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                const UsageInfo& usage, const engine::ArmInfo& arm);

// SSE framing: "data: <json>\n\n", and the terminating "data: [DONE]\n\n".
std::string SseEvent(const Json& payload);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// JSON text that never throws on invalid UTF-8 (replaced by U+FFFD).
std::string DumpJson(const Json& j);

}  // namespace headwise::server
