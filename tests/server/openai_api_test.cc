// The OpenAI API layer without a server: parsing, validation, response and chunk shapes,
// SSE framing, errors.
#include "server/openai_api.h"

#include <catch2/catch.hpp>
#include <map>
#include <string>

#include "tokenizer/tokenizer.h"

namespace headwise::server {
namespace {

// A sentencepiece-like toy vocabulary: "▁" marks a leading space, dropped at the start of a
// decode (as the Llama decoder does), and <0xHH> byte pieces.
class FakeTokenizer : public tokenizer::Tokenizer {
 public:
  FakeTokenizer() {
    pieces_ = {"<unk>",   "<s>",        "</s>",   "\u2581Once", "\u2581upon",
               "\u2581a", "\u2581time", "<0xE2>", "!",          "\u2581the"};
  }
  std::vector<int32_t> Encode(std::string_view, bool) const override { return {1, 3}; }
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string out;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(pieces_.size())) continue;
      if (skip_special && id < 3) continue;
      std::string p = pieces_[id];
      if (p == "<0xE2>") p = "\xEF\xBF\xBD";  // a lone lead byte decodes to U+FFFD
      const std::string mark = "\u2581";
      if (p.rfind(mark, 0) == 0) p = " " + p.substr(mark.size());
      out += p;
    }
    if (!out.empty() && out[0] == ' ') out.erase(0, 1);
    return out;
  }
  std::string_view IdToPiece(int32_t id) const override {
    return id >= 0 && id < static_cast<int32_t>(pieces_.size()) ? std::string_view(pieces_[id])
                                                                : std::string_view();
  }
  std::optional<int32_t> PieceToId(std::string_view) const override { return std::nullopt; }
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  std::optional<int32_t> bos_id() const override { return 1; }
  std::optional<int32_t> eos_id() const override { return 2; }
  const std::vector<int32_t>& stop_ids() const override { return stops_; }
  bool IsSpecial(int32_t id) const override { return id < 3; }

 private:
  std::vector<std::string> pieces_;
  std::vector<int32_t> stops_ = {2};
};

ApiError CompletionError(const Json& body) {
  GenerationRequest r;
  auto e = ParseCompletionRequest(body, r);
  REQUIRE(e.has_value());
  return *e;
}

ApiError ChatError(const Json& body) {
  GenerationRequest r;
  auto e = ParseChatRequest(body, r);
  REQUIRE(e.has_value());
  return *e;
}

Json Chat(Json extra = Json::object()) {
  Json body = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  body.update(extra);
  return body;
}

Json Completion(Json extra = Json::object()) {
  Json body = {{"model", "m"}, {"prompt", "Once upon"}};
  body.update(extra);
  return body;
}

}  // namespace

TEST_CASE("completion request: sampling fields reach SamplingParams", "[server]") {
  GenerationRequest r;
  Json body = Completion({{"max_tokens", 7},
                          {"temperature", 0.5},
                          {"top_p", 0.9},
                          {"top_k", 40},
                          {"min_p", 0.05},
                          {"presence_penalty", 0.5},
                          {"frequency_penalty", -0.5},
                          {"repetition_penalty", 1.1},
                          {"seed", 42},
                          {"stop", "\n"},
                          {"stop_token_ids", {2}},
                          {"logit_bias", {{"5", 10}}},
                          {"ignore_eos", true},
                          {"n", 3},
                          {"best_of", 3},
                          {"logprobs", 2},
                          {"user", "u1"},
                          {"suffix", nullptr},
                          {"stream", true},
                          {"stream_options", {{"include_usage", true}}}});
  REQUIRE_FALSE(ParseCompletionRequest(body, r).has_value());
  CHECK(r.kind == ApiKind::kCompletion);
  CHECK(r.model == "m");
  REQUIRE(r.prompts.size() == 1);
  CHECK(r.prompts[0].text == "Once upon");
  CHECK(r.max_tokens == 7);
  CHECK(r.params.temperature == Approx(0.5));
  CHECK(r.params.top_p == Approx(0.9));
  CHECK(r.params.top_k == 40);
  CHECK(r.params.min_p == Approx(0.05));
  CHECK(r.params.presence_penalty == Approx(0.5));
  CHECK(r.params.frequency_penalty == Approx(-0.5));
  CHECK(r.params.repetition_penalty == Approx(1.1));
  CHECK(r.params.seed == 42u);
  CHECK(r.params.stop == std::vector<std::string>{"\n"});
  CHECK(r.params.stop_token_ids == std::vector<int32_t>{2});
  CHECK(r.params.logit_bias.at(5) == Approx(10));
  CHECK(r.params.ignore_eos);
  CHECK(r.n == 3);
  CHECK(r.logprobs);
  CHECK(r.top_logprobs == 2);
  CHECK(r.params.logprobs == 2);
  CHECK(r.stream);
  CHECK(r.include_usage);
  CHECK(r.add_special_tokens);
  CHECK(r.user == "u1");  // the key of the request's A/B arm
  CHECK_FALSE(r.arm.has_value());
}

TEST_CASE("the headwise fields: user, headwise.arm and headwise.token_ids, in that shape only",
          "[server]") {
  for (const bool chat : {false, true}) {
    INFO((chat ? "chat" : "completions"));
    const auto parse = [&](const Json& extra, GenerationRequest& r) {
      return chat ? ParseChatRequest(Chat(extra), r) : ParseCompletionRequest(Completion(extra), r);
    };
    GenerationRequest r;
    REQUIRE_FALSE(parse({{"user", "alice"}, {"headwise", {{"arm", "duo"}}}}, r).has_value());
    CHECK(r.user == "alice");
    CHECK(r.arm == "duo");
    // Absent and null leave both unset: no key, no arm named.
    REQUIRE_FALSE(parse(Json::object(), r).has_value());
    CHECK_FALSE(r.user.has_value());
    CHECK_FALSE(r.arm.has_value());
    REQUIRE_FALSE(parse({{"user", nullptr}, {"headwise", nullptr}}, r).has_value());
    CHECK_FALSE(r.user.has_value());
    CHECK_FALSE(r.arm.has_value());
    REQUIRE_FALSE(parse({{"headwise", Json::object()}}, r).has_value());
    CHECK_FALSE(r.arm.has_value());
    REQUIRE_FALSE(parse({{"headwise", {{"arm", nullptr}}}}, r).has_value());
    CHECK_FALSE(r.arm.has_value());
    // headwise.token_ids (the gRPC front end's): off unless true.
    CHECK_FALSE(r.token_ids);
    REQUIRE_FALSE(parse({{"headwise", {{"token_ids", true}}}}, r).has_value());
    CHECK(r.token_ids);

    struct Case {
      Json extra;
      std::string param;
      std::string says;
    };
    const std::vector<Case> refused = {
        {{{"headwise", {{"foo", 1}}}}, "headwise.foo", "unknown parameter 'headwise.foo'"},
        {{{"headwise", {{"arm", "a"}, {"Arm", "b"}}}}, "headwise.Arm", "unknown"},
        {{{"headwise", {{"arm", 3}}}}, "headwise.arm", "must be a string"},
        {{{"headwise", {{"arm", {"a"}}}}}, "headwise.arm", "must be a string"},
        {{{"headwise", {{"token_ids", 1}}}}, "headwise.token_ids", "must be a boolean"},
        {{{"headwise", "duo"}}, "headwise", "must be an object"},
        {{{"headwise", {"arm", "duo"}}}, "headwise", "must be an object"},
        {{{"user", 5}}, "user", "must be a string"},
        {{{"user", {{"id", "alice"}}}}, "user", "must be a string"},
    };
    for (const Case& c : refused) {
      INFO(c.extra.dump());
      GenerationRequest bad;
      auto e = parse(c.extra, bad);
      REQUIRE(e.has_value());
      CHECK(e->status == 400);
      CHECK(e->param == c.param);
      CHECK_THAT(e->message, Catch::Contains(c.says));
    }
  }
}

TEST_CASE("completion request: the four prompt forms", "[server]") {
  GenerationRequest r;
  REQUIRE_FALSE(ParseCompletionRequest(Completion({{"prompt", {"a", "b"}}}), r).has_value());
  CHECK(r.prompts.size() == 2);
  REQUIRE_FALSE(ParseCompletionRequest(Completion({{"prompt", {1, 5, 6}}}), r).has_value());
  REQUIRE(r.prompts.size() == 1);
  CHECK(r.prompts[0].is_ids);
  CHECK(r.prompts[0].ids == std::vector<int32_t>{1, 5, 6});
  REQUIRE_FALSE(ParseCompletionRequest(Completion({{"prompt", {{1, 2}, {3}}}}), r).has_value());
  CHECK(r.prompts.size() == 2);
  CHECK(r.prompts[1].ids == std::vector<int32_t>{3});

  CHECK(CompletionError(Completion({{"prompt", Json::array()}})).param == "prompt");
  CHECK(CompletionError(Completion({{"prompt", {"a", 1}}})).param == "prompt");
  CHECK(CompletionError(Completion({{"prompt", {{1}, Json::array()}}})).param == "prompt");
  CHECK(CompletionError(Completion({{"prompt", {-1}}})).param == "prompt");
  CHECK(CompletionError(Completion({{"prompt", 5}})).param == "prompt");
  CHECK(CompletionError(Json{{"model", "m"}}).param == "prompt");
}

TEST_CASE("bad values name their parameter", "[server]") {
  // As the server does: parse (JSON types, the API's own fields), then the one range check of
  // the sampling parameters (SamplingParams::Validate through ValidateParams).
  auto refusal = [](const Json& body) {
    GenerationRequest r;
    if (auto e = ParseCompletionRequest(body, r)) return *e;
    auto e = ValidateParams(r.params, /*vocab_size=*/10);
    REQUIRE(e.has_value());
    return *e;
  };
  struct Case {
    Json extra;
    std::string param;
  };
  const std::vector<Case> cases = {
      {{{"temperature", -0.1}}, "temperature"},
      {{{"temperature", 2.5}}, "temperature"},
      {{{"temperature", "hot"}}, "temperature"},
      {{{"temperature", true}}, "temperature"},
      {{{"repetition_penalty", 101}}, "repetition_penalty"},
      {{{"top_p", 0}}, "top_p"},
      {{{"top_p", 1.5}}, "top_p"},
      {{{"top_k", -2}}, "top_k"},
      {{{"top_k", int64_t{1} << 40}}, "top_k"},
      {{{"min_p", 2}}, "min_p"},
      {{{"max_tokens", 0}}, "max_tokens"},
      {{{"max_tokens", 1.5}}, "max_tokens"},
      {{{"max_tokens", "10"}}, "max_tokens"},
      {{{"n", 0}}, "n"},
      {{{"n", 1000}}, "n"},
      {{{"best_of", 2}}, "best_of"},
      {{{"logprobs", 21}}, "logprobs"},
      {{{"logprobs", -1}}, "logprobs"},
      {{{"logprobs", true}}, "logprobs"},
      {{{"presence_penalty", 3}}, "presence_penalty"},
      {{{"frequency_penalty", -3}}, "frequency_penalty"},
      {{{"repetition_penalty", 0}}, "repetition_penalty"},
      {{{"seed", 1.5}}, "seed"},
      {{{"stop", 5}}, "stop"},
      {{{"stop", {""}}}, "stop"},
      {{{"stop", Json::array({"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
                              "o", "p", "q"})}},
       "stop"},
      {{{"stop_token_ids", {"a"}}}, "stop_token_ids"},
      {{{"stop_token_ids", {-1}}}, "stop_token_ids"},
      {{{"stop_token_ids", {10}}}, "stop_token_ids"},  // outside the vocabulary of 10
      {{{"logit_bias", {{"abc", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{"-1", 1}}}}, "logit_bias"},
      {{{"logit_bias", {{"5", 101}}}}, "logit_bias"},
      {{{"logit_bias", {{"5", "x"}}}}, "logit_bias"},
      {{{"logit_bias", {{"10", 1}}}}, "logit_bias"},  // outside the vocabulary of 10
      {{{"stream", "yes"}}, "stream"},
      {{{"stream_options", {{"include_usage", true}}}}, "stream_options"},  // without stream
      {{{"stream", true}, {"stream_options", {{"bogus", true}}}}, "stream_options.bogus"},
      {{{"model", 5}}, "model"},
      {{{"user", 5}}, "user"},
      {{{"echo", "yes"}}, "echo"},
      {{{"echo", true}, {"logprobs", 1}}, "echo"},
  };
  for (const auto& c : cases) {
    INFO(c.extra.dump());
    const ApiError e = refusal(Completion(c.extra));
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == c.param);
    CHECK_FALSE(e.message.empty());
  }
}

TEST_CASE("unknown and unsupported fields are refused, their no-op values accepted", "[server]") {
  ApiError e = CompletionError(Completion({{"temprature", 1}}));
  CHECK(e.param == "temprature");
  CHECK(e.message.find("unknown") != std::string::npos);
  e = CompletionError(Completion({{"suffix", "tail"}}));
  CHECK(e.param == "suffix");
  CHECK(e.message.find("not supported") != std::string::npos);
  e = ChatError(Chat({{"tools", {{{"type", "function"}}}}}));
  CHECK(e.param == "tools");
  e = ChatError(Chat({{"response_format", {{"type", "json_object"}}}}));
  CHECK(e.param == "response_format");
  e = ChatError(Chat({{"tool_choice", "auto"}}));
  CHECK(e.param == "tool_choice");
  e = ChatError(Chat({{"guided_json", {{"type", "object"}}}}));
  CHECK(e.param == "guided_json");
  e = ChatError(Chat({{"min_tokens", 5}}));
  CHECK(e.param == "min_tokens");
  e = ChatError(Chat({{"prompt", "x"}}));  // a completions field on chat
  CHECK(e.param == "prompt");
  e = CompletionError(Completion({{"messages", Json::array()}}));
  CHECK(e.param == "messages");
  e = CompletionError(Completion({{"top_logprobs", 2}}));
  CHECK(e.param == "top_logprobs");

  GenerationRequest r;
  CHECK_FALSE(ParseChatRequest(Chat({{"tools", Json::array()},
                                     {"tool_choice", "none"},
                                     {"response_format", {{"type", "text"}}},
                                     {"store", false},
                                     {"parallel_tool_calls", nullptr},
                                     {"min_tokens", 0},
                                     {"metadata", nullptr}}),
                               r)
                  .has_value());
}

TEST_CASE("chat request: messages, content parts, roles", "[server]") {
  GenerationRequest r;
  Json body = Chat();
  body["messages"] = {
      {{"role", "system"}, {"content", "be brief"}},
      {{"role", "user"},
       {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}},
       {"name", "alice"}},
      {{"role", "assistant"}, {"content", "ok"}}};
  body["max_completion_tokens"] = 9;
  body["logprobs"] = true;
  body["top_logprobs"] = 3;
  REQUIRE_FALSE(ParseChatRequest(body, r).has_value());
  REQUIRE(r.messages.size() == 3);
  CHECK(r.messages[1].content == "a\nb");
  CHECK(r.messages[1].name == "alice");
  CHECK(r.max_tokens == 9);
  CHECK(r.logprobs);
  CHECK(r.top_logprobs == 3);
  CHECK(r.params.logprobs == 3);
  CHECK_FALSE(r.add_special_tokens);

  REQUIRE_FALSE(ParseChatRequest(Chat({{"logprobs", true}}), r).has_value());
  CHECK(r.params.logprobs == 0);
  REQUIRE_FALSE(ParseChatRequest(Chat(), r).has_value());
  CHECK(r.params.logprobs == -1);

  auto with_messages = [](Json messages) {
    Json b = Chat();
    b["messages"] = std::move(messages);
    return b;
  };
  CHECK(ChatError(with_messages(Json::array())).param == "messages");
  CHECK(ChatError(with_messages("hi")).param == "messages");
  CHECK(ChatError(with_messages({{{"role", "wizard"}, {"content", "x"}}})).param ==
        "messages[0].role");
  CHECK(ChatError(with_messages({{{"role", "tool"}, {"content", "x"}}})).param ==
        "messages[0].role");
  CHECK(ChatError(with_messages({{{"content", "x"}}})).param == "messages[0].role");
  CHECK(ChatError(with_messages({{{"role", "user"}}})).param == "messages[0].content");
  CHECK(ChatError(with_messages({{{"role", "user"}, {"content", 5}}})).param ==
        "messages[0].content");
  const ApiError image = ChatError(with_messages(
      {{{"role", "user"},
        {"content", {{{"type", "image_url"}, {"image_url", {{"url", "http://x"}}}}}}}}));
  CHECK(image.param == "messages[0].content[0].type");
  CHECK(image.message.find("image_url") != std::string::npos);
  CHECK(ChatError(with_messages({{{"role", "user"}, {"content", "x"}, {"colour", "red"}}})).param ==
        "messages[0].colour");
  CHECK(ChatError(with_messages(
                      {{{"role", "assistant"}, {"content", "x"}, {"tool_calls", {{{"id", "1"}}}}}}))
            .param == "messages[0].tool_calls");

  CHECK(ChatError(Chat({{"top_logprobs", 2}})).param == "top_logprobs");  // without logprobs
  CHECK(ChatError(Chat({{"logprobs", true}, {"top_logprobs", 21}})).param == "top_logprobs");
  CHECK(ChatError(Chat({{"logprobs", 1}})).param == "logprobs");
  CHECK(ChatError(Chat({{"max_completion_tokens", 0}})).param == "max_completion_tokens");
  CHECK(ChatError(Chat({{"echo", true}})).param == "echo");
}

TEST_CASE("max_tokens defaults and context-length errors", "[server]") {
  GenerationRequest chat;
  chat.kind = ApiKind::kChat;
  GenerationRequest completion;
  int max_tokens = 0;
  CHECK_FALSE(ResolveMaxTokens(chat, 100, 512, max_tokens).has_value());
  CHECK(max_tokens == 412);
  CHECK_FALSE(ResolveMaxTokens(completion, 100, 512, max_tokens).has_value());
  CHECK(max_tokens == 16);
  CHECK_FALSE(ResolveMaxTokens(completion, 500, 512, max_tokens).has_value());
  CHECK(max_tokens == 12);
  auto e = ResolveMaxTokens(completion, 512, 512, max_tokens);
  REQUIRE(e.has_value());
  CHECK(e->param == "prompt");
  CHECK(e->message.find("maximum context length is 512") != std::string::npos);
  completion.max_tokens = 100;
  e = ResolveMaxTokens(completion, 500, 512, max_tokens);
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(e->param == "max_tokens");
}

TEST_CASE("generation defaults fill the sampling fields a request omits", "[server]") {
  engine::GenerationDefaults d;
  d.temperature = 0.7f;
  d.top_p = 0.8f;
  d.top_k = 20;
  d.min_p = 0.05f;
  d.repetition_penalty = 1.05f;
  for (bool chat : {true, false}) {
    CAPTURE(chat);
    auto parse = [&](const Json& body, GenerationRequest& r) {
      return chat ? ParseChatRequest(body, r, d) : ParseCompletionRequest(body, r, d);
    };
    const auto body = [&](Json extra) { return chat ? Chat(extra) : Completion(extra); };
    GenerationRequest omitted;
    REQUIRE_FALSE(parse(body(Json::object()), omitted).has_value());
    CHECK(omitted.params.temperature == 0.7f);
    CHECK(omitted.params.top_p == 0.8f);
    CHECK(omitted.params.top_k == 20);
    CHECK(omitted.params.min_p == 0.05f);
    CHECK(omitted.params.repetition_penalty == 1.05f);
    CHECK(omitted.params.presence_penalty == 0.0f);  // not a generation-config key

    // A field the client sends is the client's, 0 and the "off" values included.
    GenerationRequest sent;
    REQUIRE_FALSE(parse(body({{"temperature", 0},
                              {"top_p", 1},
                              {"top_k", -1},
                              {"min_p", 0},
                              {"repetition_penalty", 1}}),
                        sent)
                      .has_value());
    CHECK(sent.params.temperature == 0.0f);
    CHECK(sent.params.top_p == 1.0f);
    CHECK(sent.params.top_k == -1);
    CHECK(sent.params.min_p == 0.0f);
    CHECK(sent.params.repetition_penalty == 1.0f);

    // null is "not sent" (vLLM: None takes the default).
    GenerationRequest null_sent;
    REQUIRE_FALSE(parse(body({{"temperature", nullptr}}), null_sent).has_value());
    CHECK(null_sent.params.temperature == 0.7f);
  }
  // Without defaults the engine's own stay.
  GenerationRequest plain;
  REQUIRE_FALSE(ParseChatRequest(Chat(), plain).has_value());
  CHECK(plain.params.temperature == 1.0f);
  CHECK(plain.params.top_k == 0);
}

TEST_CASE("max_tokens with generation defaults: chat default, completions' 16, the cap",
          "[server]") {
  GenerationRequest chat;
  chat.kind = ApiKind::kChat;
  GenerationRequest completion;
  engine::GenerationDefaults d;
  d.max_tokens = 50;
  int max_tokens = 0;
  CHECK_FALSE(ResolveMaxTokens(chat, 100, 512, max_tokens, d).has_value());
  CHECK(max_tokens == 50);
  CHECK_FALSE(ResolveMaxTokens(chat, 480, 512, max_tokens, d).has_value());
  CHECK(max_tokens == 32);  // never past the context
  CHECK_FALSE(ResolveMaxTokens(completion, 100, 512, max_tokens, d).has_value());
  CHECK(max_tokens == 16);
  chat.max_tokens = 200;
  CHECK_FALSE(ResolveMaxTokens(chat, 100, 512, max_tokens, d).has_value());
  CHECK(max_tokens == 200);  // a default, not a cap

  d.max_tokens_cap = 40;
  CHECK_FALSE(ResolveMaxTokens(chat, 100, 512, max_tokens, d).has_value());
  CHECK(max_tokens == 40);
  completion.max_tokens = 100;
  CHECK_FALSE(ResolveMaxTokens(completion, 100, 512, max_tokens, d).has_value());
  CHECK(max_tokens == 40);
  // The client's own value must still fit the context, cap or not, as in vLLM.
  completion.max_tokens = 500;
  auto e = ResolveMaxTokens(completion, 100, 512, max_tokens, d);
  REQUIRE(e.has_value());
  CHECK(e->param == "max_tokens");
  CHECK(e->message.find("you requested 600 tokens (100 in the prompt, 500 in the completion)") !=
        std::string::npos);
}

TEST_CASE("engine statuses map to HTTP errors", "[server]") {
  // `param` is the status's field, never guessed from the message.
  ApiError e = ErrorFromStatus(
      InvalidArgument("temperature must be in [0, 2], got -1").WithField("temperature"));
  CHECK(e.status == 400);
  CHECK(e.type == "invalid_request_error");
  CHECK(e.param == "temperature");
  CHECK(e.message == "temperature must be in [0, 2], got -1");
  e = ErrorFromStatus(InvalidArgument("the prompt is empty").WithField("prompt"));
  CHECK(e.param == "prompt");
  e = ErrorFromStatus(InvalidArgument("temperature must be in [0, 2], got -1"));
  CHECK(e.status == 400);
  CHECK(e.param.empty());
  e = ErrorFromStatus(ResourceExhausted("the request queue is full (3 waiting)"));
  CHECK(e.status == 503);
  CHECK(e.code == "server_overloaded");
  e = ErrorFromStatus(Internal("boom"));
  CHECK(e.status == 500);
  CHECK(e.type == "server_error");

  engine::SamplingParams p;
  p.logit_bias[50] = 1.0f;
  auto v = ValidateParams(p, 10);
  REQUIRE(v.has_value());
  CHECK(v->status == 400);
  CHECK(v->param == "logit_bias");
  CHECK_FALSE(ValidateParams(engine::SamplingParams{}, 10).has_value());
  CHECK(ValidatePromptIds({1, 10}, 10, "prompt")->param == "prompt");
  CHECK(ValidatePromptIds({}, 10, "prompt").has_value());
  CHECK_FALSE(ValidatePromptIds({0, 9}, 10, "prompt").has_value());
}

TEST_CASE("error body has OpenAI's shape", "[server]") {
  Json j = ErrorBody(BadRequest("bad temperature", "temperature"));
  CHECK(j == Json::parse(R"({"error": {"message": "bad temperature",
      "type": "invalid_request_error", "param": "temperature", "code": null}})"));
  j = ErrorBody(NotFoundError("The model `x` does not exist.", "model", "model_not_found"));
  CHECK(j["error"]["code"] == "model_not_found");

  Json body;
  CHECK(ParseJsonObject("{\"a\": 1", body).has_value());
  CHECK(ParseJsonObject("[1, 2]", body).has_value());
  CHECK(ParseJsonObject("", body).has_value());
  CHECK_FALSE(ParseJsonObject("{\"a\": 1}", body).has_value());
}

TEST_CASE("tokenize and detokenize requests", "[server]") {
  TokenizeRequest t;
  REQUIRE_FALSE(ParseTokenizeRequest(Json{{"prompt", "hi"}}, t).has_value());
  CHECK_FALSE(t.chat);
  CHECK(t.add_special_tokens);
  REQUIRE_FALSE(ParseTokenizeRequest(Json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, t)
                    .has_value());
  CHECK(t.chat);
  CHECK_FALSE(t.add_special_tokens);
  CHECK(ParseTokenizeRequest(Json::object(), t).has_value());
  CHECK(ParseTokenizeRequest(Json{{"prompt", "x"}, {"messages", Json::array()}}, t).has_value());
  CHECK(ParseTokenizeRequest(Json{{"prompt", "x"}, {"bogus", 1}}, t)->param == "bogus");

  DetokenizeRequest d;
  REQUIRE_FALSE(ParseDetokenizeRequest(Json{{"tokens", {1, 2, 3}}}, d).has_value());
  CHECK(d.tokens == std::vector<int32_t>{1, 2, 3});
  CHECK(ParseDetokenizeRequest(Json{{"tokens", "abc"}}, d)->param == "tokens");
  CHECK(ParseDetokenizeRequest(Json::object(), d)->param == "tokens");
}

TEST_CASE("ids look like OpenAI's", "[server]") {
  const std::string a = NewResponseId(ApiKind::kCompletion);
  const std::string b = NewResponseId(ApiKind::kChat);
  CHECK(a.rfind("cmpl-", 0) == 0);
  CHECK(a.size() == 5 + 32);
  CHECK(b.rfind("chatcmpl-", 0) == 0);
  CHECK(a != NewResponseId(ApiKind::kCompletion));
}

TEST_CASE("completion logprobs: texts in context, offsets, alternatives", "[server]") {
  FakeTokenizer tok;
  std::vector<engine::SampledToken> tokens = {
      {4, -0.5f, {{4, -0.5f}, {5, -1.5f}}},
      {5, -2.0f, {{6, -0.1f}, {4, -1.0f}}},
  };
  int64_t offset = 10;
  int32_t prev = 3;  // "▁Once" ends the prompt
  Json lp = CompletionLogprobs(tok, tokens, 1, offset, prev);
  CHECK(lp["tokens"] == Json({" upon", " a"}));
  CHECK(lp["token_logprobs"][0] == Approx(-0.5));
  CHECK(lp["text_offset"] == Json({10, 15}));
  CHECK(offset == 17);
  CHECK(prev == 5);
  // k = 1 alternative plus the sampled token when it is not among them.
  CHECK(lp["top_logprobs"][0].size() == 1);
  CHECK(lp["top_logprobs"][1].size() == 2);
  CHECK(lp["top_logprobs"][1][" time"] == Approx(-0.1));
  CHECK(lp["top_logprobs"][1][" a"] == Approx(-2.0));
}

TEST_CASE("chat logprobs: tokens, bytes, top_logprobs", "[server]") {
  FakeTokenizer tok;
  std::vector<engine::SampledToken> tokens = {
      {8, -0.25f, {{8, -0.25f}, {7, -3.0f}}},
      {7, -std::numeric_limits<float>::infinity(), {}},
  };
  int32_t prev = -1;
  Json lp = ChatLogprobs(tok, tokens, 2, prev);
  REQUIRE(lp["content"].size() == 2);
  const Json& first = lp["content"][0];
  CHECK(first["token"] == "!");
  CHECK(first["bytes"] == Json({33}));
  REQUIRE(first["top_logprobs"].size() == 2);
  CHECK(first["top_logprobs"][1]["bytes"] == Json({0xE2}));  // the raw byte of <0xE2>
  CHECK(first["top_logprobs"][1]["logprob"] == Approx(-3.0));
  CHECK(lp["content"][1]["logprob"] == Approx(-9999.0));  // -inf is not JSON
  CHECK(lp["content"][1]["top_logprobs"] == Json::array());
}

// An arm as Engine::arms() reports it.
const engine::ArmInfo kDuoArm{"duo-s50", "duo", "/p/duo.json", "fnv1a64:0123456789abcdef"};

TEST_CASE("the arm that ran: HeadwiseExtras and GET /v1/arms", "[server]") {
  CHECK(HeadwiseExtras(kDuoArm) == Json{{"arm", "duo-s50"},
                                        {"attention_policy", "duo"},
                                        {"policy_hash", "fnv1a64:0123456789abcdef"}});
  // The key order is part of the shape clients see.
  CHECK(HeadwiseExtras(kDuoArm).dump() ==
        R"({"arm":"duo-s50","attention_policy":"duo","policy_hash":"fnv1a64:0123456789abcdef"})");

  const engine::ArmInfo dense{"dense", "dense", "", "none"};
  const Json list = ArmsList({dense, kDuoArm}, {3.0, 0.5}, true);
  CHECK(list["object"] == "list");
  CHECK(list["allow_override"] == true);
  REQUIRE(list["data"].size() == 2);
  CHECK(list["data"][0] == Json{{"name", "dense"},
                                {"attention_policy", "dense"},
                                {"policy_path", nullptr},
                                {"policy_hash", "none"},
                                {"weight", 3.0}});
  CHECK(list["data"][1] == Json{{"name", "duo-s50"},
                                {"attention_policy", "duo"},
                                {"policy_path", "/p/duo.json"},
                                {"policy_hash", "fnv1a64:0123456789abcdef"},
                                {"weight", 0.5}});
  CHECK(ArmsList({dense}, {1.0}, false)["allow_override"] == false);
}

TEST_CASE("response shapes", "[server]") {
  ChoiceResult c;
  c.index = 0;
  c.text = "hello";
  c.finish_reason = "length";
  UsageInfo u{5, 3, 0};
  Json r = CompletionResponse("cmpl-1", 123, "m", {c}, u, kDuoArm);
  CHECK(r["object"] == "text_completion");
  CHECK(r["choices"][0]["text"] == "hello");
  CHECK(r["choices"][0]["logprobs"].is_null());
  CHECK(r["choices"][0]["finish_reason"] == "length");
  CHECK(r["usage"] == Json{{"prompt_tokens", 5}, {"completion_tokens", 3}, {"total_tokens", 8}});
  CHECK(r["headwise"] == Json{{"arm", "duo-s50"},
                              {"attention_policy", "duo"},
                              {"policy_hash", "fnv1a64:0123456789abcdef"}});

  u.cached_tokens = 4;
  Json chat = ChatResponse("chatcmpl-1", 123, "m", {c}, u, kDuoArm);
  CHECK(chat["object"] == "chat.completion");
  CHECK(chat["headwise"] == r["headwise"]);
  CHECK(chat["choices"][0]["message"] == Json{{"role", "assistant"}, {"content", "hello"}});
  CHECK(chat["usage"]["prompt_tokens_details"]["cached_tokens"] == 4);
}

TEST_CASE("finish reasons become the API's strings", "[server]") {
  CHECK(FinishReasonString(engine::FinishReason::kStop) == "stop");
  CHECK(FinishReasonString(engine::FinishReason::kLength) == "length");
  CHECK(FinishReasonString(engine::FinishReason::kAbort) == "abort");
  CHECK(FinishReasonString(engine::FinishReason::kError) == "error");
}

TEST_CASE("stream chunks and SSE framing", "[server]") {
  Json role = StreamChunk(ApiKind::kChat, "id", 1, "m", 0, true, "", nullptr, "", true, kDuoArm);
  CHECK(role["object"] == "chat.completion.chunk");
  CHECK(role["choices"][0]["delta"] == Json{{"role", "assistant"}, {"content", ""}});
  CHECK(role["choices"][0]["finish_reason"].is_null());
  CHECK(role.contains("usage"));
  CHECK(role["usage"].is_null());
  CHECK_FALSE(role.contains("headwise"));  // the arm is told once a choice finishes

  Json content =
      StreamChunk(ApiKind::kChat, "id", 1, "m", 1, false, "hi", nullptr, "", false, kDuoArm);
  CHECK(content["choices"][0]["index"] == 1);
  CHECK(content["choices"][0]["delta"] == Json{{"content", "hi"}});
  CHECK_FALSE(content.contains("usage"));
  CHECK_FALSE(content.contains("headwise"));

  Json fin =
      StreamChunk(ApiKind::kChat, "id", 1, "m", 0, false, "", nullptr, "stop", false, kDuoArm);
  CHECK(fin["choices"][0]["delta"] == Json::object());
  CHECK(fin["choices"][0]["finish_reason"] == "stop");
  CHECK(fin["headwise"] == HeadwiseExtras(kDuoArm));

  Json text =
      StreamChunk(ApiKind::kCompletion, "id", 1, "m", 0, false, "x", nullptr, "", false, kDuoArm);
  CHECK(text["object"] == "text_completion");
  CHECK(text["choices"][0]["text"] == "x");

  Json usage = UsageChunk(ApiKind::kChat, "id", 1, "m", UsageInfo{2, 3, 0}, kDuoArm);
  CHECK(usage["choices"] == Json::array());
  CHECK(usage["usage"]["total_tokens"] == 5);
  CHECK(usage["headwise"] == HeadwiseExtras(kDuoArm));

  CHECK(SseEvent(Json{{"a", 1}}) == "data: {\"a\":1}\n\n");
  CHECK(kSseDone == "data: [DONE]\n\n");
  // Invalid UTF-8 never throws while serialising.
  CHECK(DumpJson(Json("\xE2")) == "\"\xEF\xBF\xBD\"");
}

TEST_CASE("text offsets count characters", "[server]") {
  CHECK(CountCodePoints("abc") == 3);
  CHECK(CountCodePoints("h\xC3\xA9") == 2);
  CHECK(CountCodePoints("\xE2\x96\x81x") == 2);
}

// --- input limits ---

std::string DeepObject(int depth) {
  std::string s;
  for (int i = 0; i < depth; ++i) s += "{\"k\":";
  s += "1";
  s += std::string(static_cast<size_t>(depth), '}');
  return s;
}

TEST_CASE("request bodies: deep nesting is a 400, not a crash", "[server][limits]") {
  const std::string deep = DeepObject(100000);
  const std::vector<std::string> bodies = {
      // /v1/chat/completions with chat_template_kwargs nested 100,000 deep.
      R"({"model": "m", "messages": [{"role": "user", "content": "hi"}],
          "chat_template_kwargs": )" +
          deep + "}",
      // /tokenize, both shapes.
      R"({"prompt": "hi", "chat_template_kwargs": )" + deep + "}",
      R"({"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": )" + deep + "}",
      // Any other field: refused the same way.
      R"({"prompt": "x", "stop": )" + std::string(100000, '[') + std::string(100000, ']') + "}",
  };
  for (const std::string& body : bodies) {
    Json parsed;
    auto e = ParseJsonObject(body, parsed);
    REQUIRE(e.has_value());
    CHECK(e->status == 400);
    CHECK(e->type == "invalid_request_error");
    CHECK_THAT(e->message, Catch::Contains("the request body: JSON nested deeper than the limit "
                                           "of 64 levels"));
  }

  // Depth 64 in all (the body is one level) passes, 65 does not; the chat parser then takes the
  // kwargs as given.
  Json body;
  const std::string ok = R"({"model": "m", "messages": [{"role": "user", "content": "hi"}],
      "chat_template_kwargs": )" +
                         DeepObject(kMaxRequestJsonDepth - 1) + "}";
  REQUIRE_FALSE(ParseJsonObject(ok, body).has_value());
  GenerationRequest r;
  CHECK_FALSE(ParseChatRequest(body, r).has_value());
  const std::string over = R"({"chat_template_kwargs": )" + DeepObject(kMaxRequestJsonDepth) + "}";
  auto e = ParseJsonObject(over, body);
  REQUIRE(e.has_value());
  CHECK_THAT(e->message, Catch::Contains("at byte"));
}

TEST_CASE("request bodies: the number of values is capped", "[server][limits]") {
  std::string ids = "[1";
  for (size_t i = 1; i < kMaxRequestJsonValues; ++i) ids += ",1";
  Json body;
  // The object, "prompt"'s array and its ids: 2 + n values.
  auto e = ParseJsonObject(R"({"prompt": )" + ids + "]}", body);
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK_THAT(e->message, Catch::Contains("more than the limit of " +
                                         std::to_string(kMaxRequestJsonValues) + " JSON values"));
  ids.resize(ids.size() - 4);  // two ids fewer: n - 2 + 2 values fit
  CHECK_FALSE(ParseJsonObject(R"({"prompt": )" + ids + "]}", body).has_value());
}

TEST_CASE("prompt: a flat list of ids is one prompt, lists of lists are capped",
          "[server][limits]") {
  GenerationRequest r;
  Json ids = Json::array();
  for (int i = 0; i < 5000; ++i) ids.push_back(i % 7);
  REQUIRE_FALSE(ParseCompletionRequest(Completion({{"prompt", ids}}), r).has_value());
  REQUIRE(r.prompts.size() == 1);
  CHECK(r.prompts[0].ids.size() == 5000);
  // Its length is for the context check, with vLLM's message.
  int max_tokens = 0;
  auto e = ResolveMaxTokens(r, 5000, 2048, max_tokens);
  REQUIRE(e.has_value());
  CHECK_THAT(e->message, Catch::Contains("maximum context length is 2048 tokens") &&
                             Catch::Contains("5000 input tokens"));

  Json lists = Json::array();
  for (int i = 0; i < 1024; ++i) lists.push_back({1, 2});
  REQUIRE_FALSE(ParseCompletionRequest(Completion({{"prompt", lists}}), r).has_value());
  CHECK(r.prompts.size() == 1024);
  lists.push_back({1, 2});
  ApiError too_many = CompletionError(Completion({{"prompt", lists}}));
  CHECK(too_many.param == "prompt");
  CHECK(too_many.message == "'prompt' takes at most 1024 prompts, got 1025");
  Json strings = Json::array();
  for (int i = 0; i < 1025; ++i) strings.push_back("a");
  CHECK(CompletionError(Completion({{"prompt", strings}})).message ==
        "'prompt' takes at most 1024 prompts, got 1025");
}

TEST_CASE("CheckPromptTextSize: refuses only texts that must exceed the limit",
          "[server][limits]") {
  CHECK_FALSE(CheckPromptTextSize(100, 1600, 100, "prompt").has_value());
  auto e = CheckPromptTextSize(101, 1601, 100, "prompt");
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(e->param == "prompt");
  CHECK(e->message ==
        "'prompt' is 1601 bytes long, which this model's tokenizer makes at least 101 tokens, "
        "more than the 100 allowed");
  CHECK(CheckPromptTextSize(1, 10, 0, "messages")->param == "messages");
  // No bound known (0 tokens at least): never refuses.
  CHECK_FALSE(CheckPromptTextSize(0, size_t{1} << 40, 1, "prompt").has_value());
  CHECK(CheckPromptTextSize(SIZE_MAX, SIZE_MAX, INT64_MAX, "prompt").has_value());
}

TEST_CASE("chat_template_kwargs keep the client's key order", "[server]") {
  // Templates that dump them (tojson) or iterate them must see what jinja2 would: the order
  // the client wrote, not sorted keys.
  Json body;
  REQUIRE_FALSE(ParseJsonObject(R"({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                    "chat_template_kwargs": {"zeta": 1, "alpha": {"y": 2, "b": 3}}})",
                                body)
                    .has_value());
  GenerationRequest r;
  REQUIRE_FALSE(ParseChatRequest(body, r).has_value());
  CHECK(r.chat_template_kwargs.dump() == R"({"zeta":1,"alpha":{"y":2,"b":3}})");
}

}  // namespace headwise::server
