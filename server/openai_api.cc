#include "server/openai_api.h"

#include <fmt/format.h>

#include <charconv>
#include <climits>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "core/json_file.h"
#include "tokenizer/tokenizer.h"

namespace headwise::server {
namespace {

// Fields we know but do not implement, with the values that mean "not used" (null always
// does). Anything else is a 400 naming the field.
const std::map<std::string, std::vector<Json>>& UnsupportedFields() {
  static const auto* fields = new std::map<std::string, std::vector<Json>>{
      {"tools", {Json::array()}},
      {"tool_choice", {"none"}},
      {"functions", {Json::array()}},
      {"function_call", {"none"}},
      {"parallel_tool_calls", {}},
      {"response_format", {Json{{"type", "text"}}}},
      {"audio", {}},
      {"modalities", {Json::array({"text"})}},
      {"prediction", {}},
      {"reasoning_effort", {}},
      {"service_tier", {"auto", "default"}},
      {"store", {false}},
      {"metadata", {}},
      {"web_search_options", {}},
      {"verbosity", {}},
      {"suffix", {""}},
      {"continue_final_message", {false}},
      {"documents", {}},
      {"chat_template", {}},
      {"mm_processor_kwargs", {}},
      {"guided_json", {}},
      {"guided_regex", {}},
      {"guided_choice", {}},
      {"guided_grammar", {}},
      {"guided_decoding_backend", {}},
      {"guided_whitespace_pattern", {}},
      {"structured_outputs", {}},
      {"min_tokens", {0}},
      {"include_stop_str_in_output", {false}},
      {"use_beam_search", {false}},
      {"length_penalty", {1.0, 1}},
      {"prompt_logprobs", {}},
      {"allowed_token_ids", {}},
      {"bad_words", {Json::array()}},
      {"truncate_prompt_tokens", {}},
      {"return_tokens_as_token_ids", {false}},
      {"spaces_between_special_tokens", {true}},
      {"priority", {0}},
      {"request_id", {}},
      {"cache_salt", {}},
      {"logits_processors", {}},
      {"kv_transfer_params", {}},
      {"vllm_xargs", {}},
      {"prompt_embeds", {}},
      {"skip_special_tokens", {true}},
  };
  return *fields;
}

const std::set<std::string>& CommonFields() {
  static const auto* fields = new std::set<std::string>{
      "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs",
      "stop", "presence_penalty", "frequency_penalty", "logit_bias", "seed", "user",
      // headwise's own: {"arm": NAME, "token_ids": BOOL} (ParseHeadwiseField).
      "headwise",
      // vLLM's sampling extras that the engine implements.
      "top_k", "min_p", "repetition_penalty", "stop_token_ids", "ignore_eos", "add_special_tokens"};
  return *fields;
}

const std::set<std::string>& CompletionOnlyFields() {
  static const auto* fields = new std::set<std::string>{"prompt", "echo", "best_of"};
  return *fields;
}

const std::set<std::string>& ChatOnlyFields() {
  static const auto* fields = new std::set<std::string>{
      "messages", "max_completion_tokens", "top_logprobs", "add_generation_prompt",
      "chat_template_kwargs", "safety_identifier", "prompt_cache_key",
      // vLLM's chat "echo" repeats the last message; not implemented.
      "echo", "best_of"};
  return *fields;
}

std::string TypeName(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer";
    case Json::value_t::number_float:
      return "number";
    case Json::value_t::string:
      return "string";
    case Json::value_t::array:
      return "array";
    case Json::value_t::object:
      return "object";
    default:
      return "value";
  }
}

ApiError TypeError(const std::string& name, const char* want, const Json& got) {
  return BadRequest(fmt::format("'{}' must be {}, got {}", name, want, TypeName(got)), name);
}

// Each Get* leaves `out` untouched when the field is absent or null.
std::optional<ApiError> GetNumber(const Json& body, const std::string& name,
                                  std::optional<double>& out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) return TypeError(name, "a number", *it);
  out = it->get<double>();
  return std::nullopt;
}

std::optional<ApiError> GetInt(const Json& body, const std::string& name,
                               std::optional<int64_t>& out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    out = v > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(v);
    return std::nullopt;
  }
  if (!it->is_number_integer()) return TypeError(name, "an integer", *it);
  out = it->get<int64_t>();
  return std::nullopt;
}

std::optional<ApiError> GetBool(const Json& body, const std::string& name,
                                std::optional<bool>& out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) return TypeError(name, "a boolean", *it);
  out = it->get<bool>();
  return std::nullopt;
}

std::optional<ApiError> GetString(const Json& body, const std::string& name,
                                  std::optional<std::string>& out) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) return TypeError(name, "a string", *it);
  out = it->get<std::string>();
  return std::nullopt;
}

std::string FormatNumber(double v) {
  return fmt::format("{}", v);
}

ApiError RangeError(const std::string& name, const std::string& range, double got) {
  return BadRequest(fmt::format("'{}' must be {}, got {}", name, range, FormatNumber(got)), name);
}

// Rejects unknown fields and unsupported fields with non-default values.
std::optional<ApiError> CheckFields(const Json& body, const std::set<std::string>& known_a,
                                    const std::set<std::string>& known_b) {
  for (const auto& [key, value] : body.items()) {
    if (known_a.count(key) || known_b.count(key)) continue;
    auto it = UnsupportedFields().find(key);
    if (it != UnsupportedFields().end()) {
      if (value.is_null()) continue;
      bool noop = false;
      for (const Json& ok : it->second) noop = noop || value == ok;
      if (noop) continue;
      return BadRequest(fmt::format("'{}' is not supported by this server", key), key);
    }
    return BadRequest(fmt::format("unknown parameter '{}'", key), key);
  }
  return std::nullopt;
}

#define HW_API_TRY(expr)                       \
  do {                                         \
    if (auto hw_err_ = (expr)) return hw_err_; \
  } while (0)

std::optional<ApiError> ParseTokenIds(const Json& list, const std::string& param,
                                      std::vector<int32_t>& out) {
  for (const auto& v : list) {
    if (!v.is_number_integer()) return TypeError(param, "a list of token ids", v);
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id > INT32_MAX) {
      return BadRequest(fmt::format("'{}': token id {} is out of range", param, id), param);
    }
    out.push_back(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

// "headwise": {"arm": NAME}, the arm a request asks for; nothing else inside it, so that a
// misspelt field is a 400 rather than an arm silently not chosen.
std::optional<ApiError> ParseHeadwiseField(const Json& body, GenerationRequest& out) {
  auto it = body.find("headwise");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return TypeError("headwise", "an object", *it);
  for (const auto& [key, value] : it->items()) {
    const std::string name = "headwise." + key;
    if (key != "arm" && key != "token_ids") {
      return BadRequest(fmt::format("unknown parameter '{}'", name), name);
    }
    if (value.is_null()) continue;
    if (key == "token_ids") {
      if (!value.is_boolean()) return TypeError(name, "a boolean", value);
      out.token_ids = value.get<bool>();
      continue;
    }
    if (!value.is_string()) return TypeError(name, "a string (an arm's name)", value);
    out.arm = value.get<std::string>();
  }
  return std::nullopt;
}

// Fields shared by both APIs: sampling, stop, n, stream, model, user and headwise.
std::optional<ApiError> ParseCommon(const Json& body, GenerationRequest& out) {
  engine::SamplingParams& p = out.params;
  std::optional<std::string> model;
  HW_API_TRY(GetString(body, "model", model));
  if (model) out.model = *model;

  // Types only: the ranges are SamplingParams::Validate's (ValidateParams).
  for (const auto& [name, field] : {std::pair{"temperature", &p.temperature},
                                    {"top_p", &p.top_p},
                                    {"min_p", &p.min_p},
                                    {"presence_penalty", &p.presence_penalty},
                                    {"frequency_penalty", &p.frequency_penalty},
                                    {"repetition_penalty", &p.repetition_penalty}}) {
    std::optional<double> num;
    HW_API_TRY(GetNumber(body, name, num));
    if (num) *field = static_cast<float>(*num);
  }

  std::optional<int64_t> integer;
  HW_API_TRY(GetInt(body, "top_k", integer));
  if (integer) {
    if (*integer < INT_MIN || *integer > INT_MAX) {
      return BadRequest(fmt::format("'top_k' must be a 32-bit integer, got {}", *integer), "top_k");
    }
    p.top_k = static_cast<int>(*integer);
  }
  integer.reset();
  HW_API_TRY(GetInt(body, "n", integer));
  if (integer) {
    if (*integer < 1 || *integer > 128)
      return RangeError("n", "in [1, 128]", static_cast<double>(*integer));
    out.n = static_cast<int>(*integer);
  }
  if (auto it = body.find("best_of"); it != body.end() && !it->is_null()) {
    if (!it->is_number_integer()) return TypeError("best_of", "an integer", *it);
    if (it->get<int64_t>() != out.n) {
      return BadRequest("'best_of' different from n is not supported by this server", "best_of");
    }
  }
  integer.reset();
  HW_API_TRY(GetInt(body, "seed", integer));
  if (integer) p.seed = static_cast<uint64_t>(*integer);
  if (auto it = body.find("seed"); it != body.end() && it->is_number_unsigned()) {
    p.seed = it->get<uint64_t>();  // the full unsigned range, not clamped
  }

  std::optional<bool> flag;
  HW_API_TRY(GetBool(body, "ignore_eos", flag));
  if (flag) p.ignore_eos = *flag;
  flag.reset();
  HW_API_TRY(GetBool(body, "add_special_tokens", flag));
  if (flag) out.add_special_tokens = *flag;
  flag.reset();
  HW_API_TRY(GetBool(body, "stream", flag));
  if (flag) out.stream = *flag;

  if (auto it = body.find("stream_options"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return TypeError("stream_options", "an object", *it);
    if (!out.stream) {
      return BadRequest("'stream_options' is only allowed when 'stream' is true", "stream_options");
    }
    for (const auto& [key, value] : it->items()) {
      const std::string name = "stream_options." + key;
      if (key == "include_usage") {
        if (value.is_null()) continue;
        if (!value.is_boolean()) return TypeError(name, "a boolean", value);
        out.include_usage = value.get<bool>();
      } else if (key == "continuous_usage_stats" || key == "include_obfuscation") {
        if (value.is_null() || value == false) continue;
        return BadRequest(fmt::format("'{}' is not supported by this server", name), name);
      } else {
        return BadRequest(fmt::format("unknown parameter '{}'", name), name);
      }
    }
  }

  if (auto it = body.find("stop"); it != body.end() && !it->is_null()) {
    std::vector<std::string> stops;
    if (it->is_string()) {
      stops.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      if (it->size() > 16) return BadRequest("'stop' takes at most 16 strings", "stop");
      for (const auto& s : *it) {
        if (!s.is_string()) return TypeError("stop", "a string or a list of strings", s);
        stops.push_back(s.get<std::string>());
      }
    } else {
      return TypeError("stop", "a string or a list of strings", *it);
    }
    p.stop = std::move(stops);
  }

  if (auto it = body.find("stop_token_ids"); it != body.end() && !it->is_null()) {
    if (!it->is_array()) return TypeError("stop_token_ids", "a list of token ids", *it);
    HW_API_TRY(ParseTokenIds(*it, "stop_token_ids", p.stop_token_ids));
  }

  if (auto it = body.find("logit_bias"); it != body.end() && !it->is_null()) {
    if (!it->is_object()) return TypeError("logit_bias", "an object", *it);
    if (it->size() > 300) return BadRequest("'logit_bias' takes at most 300 entries", "logit_bias");
    for (const auto& [key, value] : it->items()) {
      int64_t id = -1;
      const char* end = key.data() + key.size();
      auto [ptr, ec] = std::from_chars(key.data(), end, id);
      if (key.empty() || ec != std::errc() || ptr != end || id < 0 || id > INT32_MAX) {
        return BadRequest(
            fmt::format("'logit_bias' keys must be token ids written as strings, got '{}'", key),
            "logit_bias");
      }
      if (!value.is_number()) return TypeError("logit_bias", "an object of numbers", value);
      p.logit_bias[static_cast<int32_t>(id)] = static_cast<float>(value.get<double>());
    }
  }

  // An end-user id: the key of the request's A/B arm.
  HW_API_TRY(GetString(body, "user", out.user));
  return ParseHeadwiseField(body, out);
}

std::optional<ApiError> ParseMaxTokens(const Json& body, const std::string& name,
                                       GenerationRequest& out) {
  std::optional<int64_t> v;
  HW_API_TRY(GetInt(body, name, v));
  if (!v) return std::nullopt;
  if (*v < 1 || *v > INT_MAX) return RangeError(name, ">= 1", static_cast<double>(*v));
  out.max_tokens = static_cast<int>(*v);
  return std::nullopt;
}

// Prompts in one /v1/completions request (a batch of strings or of id lists).
constexpr size_t kMaxPrompts = 1024;

std::optional<ApiError> ParsePrompt(const Json& body, std::vector<PromptInput>& out) {
  auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) return BadRequest("'prompt' is required", "prompt");
  const Json& p = *it;
  const char* want = "a string, a list of strings, a list of token ids or a list of lists of ids";
  if (p.is_string()) {
    out.push_back({false, p.get<std::string>(), {}});
    return std::nullopt;
  }
  if (!p.is_array()) return TypeError("prompt", want, p);
  if (p.empty()) return BadRequest("'prompt' must not be empty", "prompt");
  // A flat list of ids is one prompt (its length is the context length's business); lists of
  // strings and lists of id lists are several, and those are capped.
  if (!p[0].is_number_integer() && p.size() > kMaxPrompts) {
    return BadRequest(
        fmt::format("'prompt' takes at most {} prompts, got {}", kMaxPrompts, p.size()), "prompt");
  }
  if (p[0].is_string()) {
    for (const auto& s : p) {
      if (!s.is_string()) return TypeError("prompt", want, s);
      out.push_back({false, s.get<std::string>(), {}});
    }
  } else if (p[0].is_number_integer()) {
    PromptInput in{true, "", {}};
    HW_API_TRY(ParseTokenIds(p, "prompt", in.ids));
    out.push_back(std::move(in));
  } else if (p[0].is_array()) {
    for (const auto& ids : p) {
      if (!ids.is_array()) return TypeError("prompt", want, ids);
      PromptInput in{true, "", {}};
      HW_API_TRY(ParseTokenIds(ids, "prompt", in.ids));
      out.push_back(std::move(in));
    }
  } else {
    return TypeError("prompt", want, p[0]);
  }
  for (const auto& in : out) {
    if (in.is_ids && in.ids.empty()) return BadRequest("'prompt' must not be empty", "prompt");
  }
  return std::nullopt;
}

std::optional<ApiError> ParseMessages(const Json& body, std::vector<tokenizer::ChatMessage>& out) {
  auto it = body.find("messages");
  if (it == body.end() || it->is_null()) return BadRequest("'messages' is required", "messages");
  if (!it->is_array()) return TypeError("messages", "a list of messages", *it);
  if (it->empty()) return BadRequest("'messages' must not be empty", "messages");
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& m = (*it)[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) return TypeError(at, "an object", m);
    tokenizer::ChatMessage msg;
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) {
      return BadRequest(fmt::format("'{}.role' is required and must be a string", at),
                        at + ".role");
    }
    msg.role = role->get<std::string>();
    if (msg.role == "tool" || msg.role == "function") {
      return BadRequest(fmt::format("'{}.role' '{}' needs tool calling, which this server does "
                                    "not support",
                                    at, msg.role),
                        at + ".role");
    }
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
      return BadRequest(
          fmt::format("'{}.role' must be 'system', 'user' or 'assistant', got '{}'", at, msg.role),
          at + ".role");
    }
    for (const auto& [key, value] : m.items()) {
      if (key == "role" || key == "content") continue;
      if (key == "name") {
        if (!value.is_string()) return TypeError(at + ".name", "a string", value);
        msg.name = value.get<std::string>();
      } else if (key == "tool_calls" || key == "tool_call_id" || key == "function_call" ||
                 key == "audio" || key == "refusal" || key == "reasoning_content") {
        if (value.is_null() || (value.is_array() && value.empty())) continue;
        return BadRequest(fmt::format("'{}.{}' is not supported by this server", at, key),
                          at + "." + key);
      } else {
        return BadRequest(fmt::format("unknown parameter '{}.{}'", at, key), at + "." + key);
      }
    }
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      return BadRequest(fmt::format("'{}.content' is required", at), at + ".content");
    }
    if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      // Text parts are joined with newlines, as vLLM does.
      bool first = true;
      for (size_t j = 0; j < content->size(); ++j) {
        const Json& part = (*content)[j];
        const std::string part_at = fmt::format("{}.content[{}]", at, j);
        if (!part.is_object()) return TypeError(part_at, "an object", part);
        auto type = part.find("type");
        if (type == part.end() || !type->is_string()) {
          return BadRequest(fmt::format("'{}.type' is required", part_at), part_at + ".type");
        }
        const std::string t = type->get<std::string>();
        if (t != "text") {
          return BadRequest(fmt::format("content part type '{}' is not supported by this "
                                        "server (only 'text')",
                                        t),
                            part_at + ".type");
        }
        for (const auto& [key, value] : part.items()) {
          if (key != "type" && key != "text") {
            return BadRequest(fmt::format("unknown parameter '{}.{}'", part_at, key),
                              part_at + "." + key);
          }
        }
        auto text = part.find("text");
        if (text == part.end() || !text->is_string()) {
          return BadRequest(fmt::format("'{}.text' is required and must be a string", part_at),
                            part_at + ".text");
        }
        if (!first) msg.content += "\n";
        msg.content += text->get<std::string>();
        first = false;
      }
    } else {
      return TypeError(at + ".content", "a string or a list of content parts", *content);
    }
    out.push_back(std::move(msg));
  }
  return std::nullopt;
}

std::optional<ApiError> ParseChatTemplateKwargs(const Json& body, Json& out) {
  auto it = body.find("chat_template_kwargs");
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return TypeError("chat_template_kwargs", "an object", *it);
  out = *it;
  return std::nullopt;
}

const char kHex[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The token's text given the token before it: sentencepiece-style decoders drop the leading
// space of the first token of a decode, so a token is decoded after its predecessor and the
// predecessor's text removed.
std::string TokenTextAfter(const tokenizer::Tokenizer& tok, int32_t id, int32_t prev) {
  if (prev >= 0) {
    const int32_t both[2] = {prev, id};
    const std::string with = tok.Decode(both, false);
    const std::string alone = tok.Decode(std::span<const int32_t>(both, 1), false);
    if (with.size() >= alone.size() && with.compare(0, alone.size(), alone) == 0) {
      return with.substr(alone.size());
    }
  }
  return TokenText(tok, id);
}

std::vector<int> BytesOf(const tokenizer::Tokenizer& tok, int32_t id, const std::string& text) {
  const std::string_view piece = tok.IdToPiece(id);
  if (piece.size() == 6 && piece.substr(0, 3) == "<0x" && piece[5] == '>') {
    const int hi = HexValue(piece[3]), lo = HexValue(piece[4]);
    if (hi >= 0 && lo >= 0) return {hi * 16 + lo};
  }
  std::vector<int> bytes;
  for (unsigned char c : text) bytes.push_back(c);
  return bytes;
}

double SafeLogprob(float lp) {
  return std::isfinite(lp) ? lp : -9999.0;
}

}  // namespace

ApiError BadRequest(std::string message, std::string param) {
  return ApiError{400, std::move(message), "invalid_request_error", std::move(param), ""};
}

ApiError NotFoundError(std::string message, std::string param, std::string code) {
  return ApiError{404, std::move(message), "invalid_request_error", std::move(param),
                  std::move(code)};
}

ApiError ErrorFromStatus(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kUnimplemented:
    case StatusCode::kNotFound:
      return BadRequest(status.message(), status.field());
    case StatusCode::kResourceExhausted:
      return ApiError{503, status.message(), "server_error", "", "server_overloaded"};
    default:
      return ApiError{500, status.message(), "server_error", "", ""};
  }
}

Json ErrorBody(const ApiError& e) {
  return Json{{"error",
               {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? Json(nullptr) : Json(e.param)},
                {"code", e.code.empty() ? Json(nullptr) : Json(e.code)}}}};
}

std::optional<ApiError> ParseJsonObject(std::string_view body, Json& out) {
  // Checked before nlohmann allocates anything: nesting (copies and dumps recurse per level,
  // so a deep body would overflow the stack) and the number of values (memory).
  JsonLimits limits;
  limits.max_depth = kMaxRequestJsonDepth;
  limits.max_values = kMaxRequestJsonValues;
  if (Status s = CheckJsonLimits(body, limits, "the request body"); !s.ok()) {
    return BadRequest(s.message());
  }
  out = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (out.is_discarded()) return BadRequest("the request body is not valid JSON");
  if (!out.is_object()) return BadRequest("the request body must be a JSON object");
  return std::nullopt;
}

std::optional<ApiError> ParseCompletionRequest(const Json& body, GenerationRequest& out,
                                               const engine::GenerationDefaults& defaults) {
  try {
    out = GenerationRequest{};
    defaults.ApplyTo(out.params);  // the fields parsed below replace these
    out.kind = ApiKind::kCompletion;
    out.add_special_tokens = true;
    HW_API_TRY(CheckFields(body, CommonFields(), CompletionOnlyFields()));
    HW_API_TRY(ParseCommon(body, out));
    HW_API_TRY(ParsePrompt(body, out.prompts));
    HW_API_TRY(ParseMaxTokens(body, "max_tokens", out));
    std::optional<bool> echo;
    HW_API_TRY(GetBool(body, "echo", echo));
    out.echo = echo.value_or(false);
    std::optional<int64_t> logprobs;
    HW_API_TRY(GetInt(body, "logprobs", logprobs));
    if (logprobs) {
      if (*logprobs < 0 || *logprobs > 20)
        return RangeError("logprobs", "in [0, 20]", static_cast<double>(*logprobs));
      out.logprobs = true;
      out.top_logprobs = static_cast<int>(*logprobs);
      out.params.logprobs = out.top_logprobs;
    }
    if (out.echo && out.logprobs) {
      return BadRequest(
          "'echo' together with 'logprobs' needs prompt logprobs, which this server does not "
          "support",
          "echo");
    }
    return std::nullopt;
  } catch (const std::exception& e) {  // a safety net: bad input is never a 500
    return BadRequest(fmt::format("invalid request: {}", e.what()));
  }
}

std::optional<ApiError> ParseChatRequest(const Json& body, GenerationRequest& out,
                                         const engine::GenerationDefaults& defaults) {
  try {
    out = GenerationRequest{};
    defaults.ApplyTo(out.params);  // the fields parsed below replace these
    out.kind = ApiKind::kChat;
    out.add_special_tokens = false;  // the chat template writes its own special tokens
    HW_API_TRY(CheckFields(body, CommonFields(), ChatOnlyFields()));
    if (auto it = body.find("echo"); it != body.end() && !it->is_null() && *it != false) {
      return BadRequest("'echo' is not supported for chat by this server", "echo");
    }
    HW_API_TRY(ParseCommon(body, out));
    HW_API_TRY(ParseMessages(body, out.messages));
    HW_API_TRY(ParseMaxTokens(body, "max_tokens", out));
    // max_completion_tokens is the newer name; it wins when both are given.
    HW_API_TRY(ParseMaxTokens(body, "max_completion_tokens", out));
    std::optional<bool> logprobs;
    HW_API_TRY(GetBool(body, "logprobs", logprobs));
    out.logprobs = logprobs.value_or(false);
    std::optional<int64_t> top;
    HW_API_TRY(GetInt(body, "top_logprobs", top));
    if (top) {
      if (*top < 0 || *top > 20)
        return RangeError("top_logprobs", "in [0, 20]", static_cast<double>(*top));
      if (!out.logprobs) {
        return BadRequest("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
      }
      out.top_logprobs = static_cast<int>(*top);
    }
    if (out.logprobs) out.params.logprobs = out.top_logprobs;
    std::optional<bool> agp;
    HW_API_TRY(GetBool(body, "add_generation_prompt", agp));
    out.add_generation_prompt = agp.value_or(true);
    HW_API_TRY(ParseChatTemplateKwargs(body, out.chat_template_kwargs));
    std::optional<std::string> ident;
    HW_API_TRY(GetString(body, "safety_identifier", ident));
    HW_API_TRY(GetString(body, "prompt_cache_key", ident));
    return std::nullopt;
  } catch (const std::exception& e) {
    return BadRequest(fmt::format("invalid request: {}", e.what()));
  }
}

std::optional<ApiError> ResolveMaxTokens(const GenerationRequest& request, int prompt_tokens,
                                         int max_model_len, int& max_tokens,
                                         const engine::GenerationDefaults& defaults) {
  const std::string what = request.kind == ApiKind::kChat ? "messages" : "prompt";
  if (prompt_tokens >= max_model_len) {
    return BadRequest(fmt::format("This model's maximum context length is {} tokens. However, "
                                  "your request has {} input tokens. Please reduce the length "
                                  "of the input.",
                                  max_model_len, prompt_tokens),
                      what);
  }
  const bool chat = request.kind == ApiKind::kChat;
  const int room = max_model_len - prompt_tokens;
  if (!request.max_tokens) {
    max_tokens = std::min(defaults.ResolveMaxTokens(std::nullopt, chat, chat ? room : 16), room);
    return std::nullopt;
  }
  // The client's own value must fit, whatever the cap makes of it (vLLM checks it first too).
  const int requested = *request.max_tokens;
  if (static_cast<int64_t>(prompt_tokens) + requested > max_model_len) {
    return BadRequest(
        fmt::format("This model's maximum context length is {} tokens. However, you requested "
                    "{} tokens ({} in the {}, {} in the completion). Please reduce the length "
                    "of the {} or completion.",
                    max_model_len, static_cast<int64_t>(prompt_tokens) + requested, prompt_tokens,
                    what, requested, what),
        request.kind == ApiKind::kChat ? "messages" : "max_tokens");
  }
  max_tokens = defaults.ResolveMaxTokens(requested, chat, room);
  return std::nullopt;
}

std::optional<ApiError> ValidateParams(const engine::SamplingParams& params, int vocab_size) {
  Status s = params.Validate(vocab_size);
  if (s.ok()) return std::nullopt;
  return ErrorFromStatus(s);
}

std::optional<ApiError> ValidatePromptIds(const std::vector<int32_t>& ids, int vocab_size,
                                          const std::string& param) {
  if (ids.empty()) return BadRequest(fmt::format("'{}' must not be empty", param), param);
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      return BadRequest(
          fmt::format("'{}': token id {} is outside the vocabulary of {}", param, id, vocab_size),
          param);
    }
  }
  return std::nullopt;
}

std::optional<ApiError> CheckPromptTextSize(size_t min_tokens, size_t text_bytes,
                                            int64_t max_tokens_allowed, std::string_view param) {
  if (max_tokens_allowed < 0 || min_tokens <= static_cast<uint64_t>(max_tokens_allowed)) {
    return std::nullopt;
  }
  const std::string name(param);
  return BadRequest(fmt::format("'{}' is {} bytes long, which this model's tokenizer makes at "
                                "least {} tokens, more than the {} allowed",
                                name, text_bytes, min_tokens, max_tokens_allowed),
                    name);
}

std::optional<ApiError> ParseTokenizeRequest(const Json& body, TokenizeRequest& out) {
  try {
    out = TokenizeRequest{};
    static const std::set<std::string> known = {"model",
                                                "prompt",
                                                "messages",
                                                "add_special_tokens",
                                                "add_generation_prompt",
                                                "chat_template_kwargs"};
    static const std::set<std::string> none;
    HW_API_TRY(CheckFields(body, known, none));
    std::optional<std::string> s;
    HW_API_TRY(GetString(body, "model", s));
    if (s) out.model = *s;
    const bool has_prompt = body.contains("prompt") && !body["prompt"].is_null();
    const bool has_messages = body.contains("messages") && !body["messages"].is_null();
    if (has_prompt == has_messages) {
      return BadRequest("exactly one of 'prompt' and 'messages' is required", "prompt");
    }
    if (has_prompt) {
      s.reset();
      HW_API_TRY(GetString(body, "prompt", s));
      out.prompt = *s;
      out.add_special_tokens = true;
    } else {
      out.chat = true;
      out.add_special_tokens = false;
      HW_API_TRY(ParseMessages(body, out.messages));
    }
    std::optional<bool> flag;
    HW_API_TRY(GetBool(body, "add_special_tokens", flag));
    if (flag) out.add_special_tokens = *flag;
    flag.reset();
    HW_API_TRY(GetBool(body, "add_generation_prompt", flag));
    if (flag) out.add_generation_prompt = *flag;
    HW_API_TRY(ParseChatTemplateKwargs(body, out.chat_template_kwargs));
    return std::nullopt;
  } catch (const std::exception& e) {
    return BadRequest(fmt::format("invalid request: {}", e.what()));
  }
}

std::optional<ApiError> ParseDetokenizeRequest(const Json& body, DetokenizeRequest& out) {
  try {
    out = DetokenizeRequest{};
    static const std::set<std::string> known = {"model", "tokens"};
    static const std::set<std::string> none;
    HW_API_TRY(CheckFields(body, known, none));
    std::optional<std::string> s;
    HW_API_TRY(GetString(body, "model", s));
    if (s) out.model = *s;
    auto it = body.find("tokens");
    if (it == body.end() || it->is_null()) return BadRequest("'tokens' is required", "tokens");
    if (!it->is_array()) return TypeError("tokens", "a list of token ids", *it);
    HW_API_TRY(ParseTokenIds(*it, "tokens", out.tokens));
    return std::nullopt;
  } catch (const std::exception& e) {
    return BadRequest(fmt::format("invalid request: {}", e.what()));
  }
}

std::string NewResponseId(ApiKind kind) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = kind == ApiKind::kChat ? "chatcmpl-" : "cmpl-";
  for (int i = 0; i < 2; ++i) {
    uint64_t v = rng();
    for (int j = 0; j < 16; ++j, v >>= 4) id.push_back(kHex[v & 15]);
  }
  return id;
}

std::string TokenText(const tokenizer::Tokenizer& tok, int32_t id) {
  const int32_t one[1] = {id};
  return tok.Decode(one, false);
}

std::vector<int> TokenBytes(const tokenizer::Tokenizer& tok, int32_t id) {
  return BytesOf(tok, id, TokenText(tok, id));
}

int64_t CountCodePoints(std::string_view utf8) {
  int64_t n = 0;
  for (unsigned char c : utf8) n += (c & 0xC0) != 0x80;
  return n;
}

Json CompletionLogprobs(const tokenizer::Tokenizer& tok,
                        const std::vector<engine::SampledToken>& tokens, int top_k,
                        int64_t& text_offset, int32_t& prev_token) {
  Json out = {{"tokens", Json::array()},
              {"token_logprobs", Json::array()},
              {"top_logprobs", Json::array()},
              {"text_offset", Json::array()}};
  int32_t& prev = prev_token;
  for (const auto& t : tokens) {
    const std::string text = TokenTextAfter(tok, t.id, prev);
    out["tokens"].push_back(text);
    out["token_logprobs"].push_back(SafeLogprob(t.logprob));
    // The sampled token is always among the alternatives (vLLM's k + 1); keys are texts, so
    // two ids with the same text keep the likelier one.
    Json top = Json::object();
    int k = 0;
    for (const auto& [id, lp] : t.top_logprobs) {
      if (k++ >= top_k) break;
      const std::string alt = TokenTextAfter(tok, id, prev);
      if (!top.contains(alt)) top[alt] = SafeLogprob(lp);
    }
    if (!top.contains(text)) top[text] = SafeLogprob(t.logprob);
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(text_offset);
    text_offset += CountCodePoints(text);
    prev = t.id;
  }
  return out;
}

Json ChatLogprobs(const tokenizer::Tokenizer& tok, const std::vector<engine::SampledToken>& tokens,
                  int top_k, int32_t& prev_token) {
  Json content = Json::array();
  int32_t& prev = prev_token;
  for (const auto& t : tokens) {
    const std::string text = TokenTextAfter(tok, t.id, prev);
    Json top = Json::array();
    int k = 0;
    for (const auto& [id, lp] : t.top_logprobs) {
      if (k++ >= top_k) break;
      const std::string alt = TokenTextAfter(tok, id, prev);
      top.push_back(
          {{"token", alt}, {"logprob", SafeLogprob(lp)}, {"bytes", BytesOf(tok, id, alt)}});
    }
    content.push_back({{"token", text},
                       {"logprob", SafeLogprob(t.logprob)},
                       {"bytes", BytesOf(tok, t.id, text)},
                       {"top_logprobs", std::move(top)}});
    prev = t.id;
  }
  return Json{{"content", std::move(content)}};
}

Json UsageJson(const UsageInfo& u) {
  Json j = {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
  if (u.cached_tokens > 0) j["prompt_tokens_details"] = {{"cached_tokens", u.cached_tokens}};
  return j;
}

Json HeadwiseExtras(const engine::ArmInfo& arm) {
  return Json{
      {"arm", arm.name}, {"attention_policy", arm.policy}, {"policy_hash", arm.policy_hash}};
}

Json ArmsList(const std::vector<engine::ArmInfo>& arms, const std::vector<double>& weights,
              bool allow_override) {
  Json data = Json::array();
  for (size_t i = 0; i < arms.size(); ++i) {
    const engine::ArmInfo& a = arms[i];
    data.push_back({{"name", a.name},
                    {"attention_policy", a.policy},
                    {"policy_path", a.policy_path.empty() ? Json(nullptr) : Json(a.policy_path)},
                    {"policy_hash", a.policy_hash},
                    {"weight", i < weights.size() ? weights[i] : 1.0}});
  }
  return Json{{"object", "list"}, {"allow_override", allow_override}, {"data", std::move(data)}};
}

namespace {

// The fields every non-streaming response shares, around its choices.
Json ResponseEnvelope(const char* object, const std::string& id, int64_t created,
                      const std::string& model, Json choices, const UsageInfo& usage,
                      const engine::ArmInfo& arm) {
  return Json{{"id", id},
              {"object", object},
              {"created", created},
              {"model", model},
              {"system_fingerprint", nullptr},
              {"choices", std::move(choices)},
              {"usage", UsageJson(usage)},
              {"headwise", HeadwiseExtras(arm)}};
}

}  // namespace

std::string FinishReasonString(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kStop:
      return "stop";
    case engine::FinishReason::kLength:
      return "length";
    case engine::FinishReason::kAbort:
      return "abort";
    case engine::FinishReason::kError:
      return "error";
  }
  return "stop";
}

Json CompletionResponse(const std::string& id, int64_t created, const std::string& model,
                        const std::vector<ChoiceResult>& choices, const UsageInfo& usage,
                        const engine::ArmInfo& arm) {
  Json cs = Json::array();
  for (const auto& c : choices) {
    cs.push_back({{"index", c.index},
                  {"text", c.text},
                  {"logprobs", c.logprobs},
                  {"finish_reason", c.finish_reason}});
    if (c.token_ids) cs.back()["token_ids"] = *c.token_ids;
  }
  return ResponseEnvelope("text_completion", id, created, model, std::move(cs), usage, arm);
}

Json ChatResponse(const std::string& id, int64_t created, const std::string& model,
                  const std::vector<ChoiceResult>& choices, const UsageInfo& usage,
                  const engine::ArmInfo& arm) {
  Json cs = Json::array();
  for (const auto& c : choices) {
    cs.push_back({{"index", c.index},
                  {"message", {{"role", "assistant"}, {"content", c.text}}},
                  {"logprobs", c.logprobs},
                  {"finish_reason", c.finish_reason}});
    if (c.token_ids) cs.back()["token_ids"] = *c.token_ids;
  }
  return ResponseEnvelope("chat.completion", id, created, model, std::move(cs), usage, arm);
}

Json StreamChunk(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                 int index, bool role_delta, const std::string& text, const Json& logprobs,
                 const std::string& finish_reason, bool include_usage, const engine::ArmInfo& arm,
                 const std::vector<int32_t>* token_ids) {
  Json choice;
  choice["index"] = index;
  if (kind == ApiKind::kChat) {
    if (role_delta) {
      choice["delta"] = {{"role", "assistant"}, {"content", ""}};
    } else if (text.empty() && !finish_reason.empty()) {
      choice["delta"] = Json::object();
    } else {
      choice["delta"] = {{"content", text}};
    }
  } else {
    choice["text"] = text;
  }
  choice["logprobs"] = logprobs;
  choice["finish_reason"] = finish_reason.empty() ? Json(nullptr) : Json(finish_reason);
  if (token_ids != nullptr) choice["token_ids"] = *token_ids;
  Json chunk = {{"id", id},
                {"object", kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
                {"created", created},
                {"model", model},
                {"system_fingerprint", nullptr},
                {"choices", Json::array({std::move(choice)})}};
  if (include_usage) chunk["usage"] = nullptr;
  if (!finish_reason.empty()) chunk["headwise"] = HeadwiseExtras(arm);
  return chunk;
}

Json UsageChunk(ApiKind kind, const std::string& id, int64_t created, const std::string& model,
                const UsageInfo& usage, const engine::ArmInfo& arm) {
  return Json{{"id", id},
              {"object", kind == ApiKind::kChat ? "chat.completion.chunk" : "text_completion"},
              {"created", created},
              {"model", model},
              {"system_fingerprint", nullptr},
              {"choices", Json::array()},
              {"usage", UsageJson(usage)},
              {"headwise", HeadwiseExtras(arm)}};
}

std::string DumpJson(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string SseEvent(const Json& payload) {
  return "data: " + DumpJson(payload) + "\n\n";
}

}  // namespace headwise::server
