#include "tokenizer/chat_renderer.h"

#include "tokenizer/chat_template.h"

namespace headwise::tokenizer {

// Ordered: Python dicts keep insertion order, and templates print it.
using Json = nlohmann::ordered_json;

ChatRenderer::~ChatRenderer() = default;

StatusOr<std::unique_ptr<ChatRenderer>> ChatRenderer::Create(std::string chat_template,
                                                             std::string bos_token,
                                                             std::string eos_token) {
  std::unique_ptr<ChatRenderer> r(new ChatRenderer());
  r->bos_token_ = std::move(bos_token);
  r->eos_token_ = std::move(eos_token);
  if (chat_template.empty()) return r;
  auto parsed = ChatTemplate::Parse(std::move(chat_template));
  if (!parsed.ok()) return parsed.status().WithContext("chat template");
  r->template_ = std::make_unique<ChatTemplate>(std::move(*parsed));
  // One user message is the conversation every chat template must accept (some refuse system
  // messages or require alternating roles, so nothing more is assumed).
  auto probe = r->Render({{"user", "Hello!", ""}}, true, Json::object());
  if (!probe.ok()) return probe.status().WithContext("chat template (rendering a probe)");
  return r;
}

StatusOr<std::unique_ptr<ChatRenderer>> ChatRenderer::ForTokenizer(std::string chat_template,
                                                                   const Tokenizer& tok) {
  auto piece = [&](std::optional<int32_t> id) {
    return id ? std::string(tok.IdToPiece(*id)) : std::string();
  };
  return Create(std::move(chat_template), piece(tok.bos_id()), piece(tok.eos_id()));
}

StatusOr<std::string> ChatRenderer::Render(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt,
                                           const Json& template_kwargs) const {
  if (!has_template()) {
    return InvalidArgument(
        "the model has no chat template; start the server with --chat-template FILE");
  }
  Json msgs = Json::array();
  for (const auto& m : messages) {
    // vLLM's ConversationMessage: role, content, then name when given.
    Json j = Json::object();
    j["role"] = m.role;
    j["content"] = m.content;
    if (!m.name.empty()) j["name"] = m.name;
    msgs.push_back(std::move(j));
  }
  Json extra = Json::object();
  extra["bos_token"] = bos_token_;
  extra["eos_token"] = eos_token_;
  extra["add_generation_prompt"] = add_generation_prompt;
  extra["tools"] = nullptr;
  extra["documents"] = nullptr;
  if (!template_kwargs.is_null() && !template_kwargs.is_object()) {
    return InvalidArgument("chat_template_kwargs must be an object");
  }
  // Before copying: copies of JSON recurse, and the kwargs come from the client.
  if (auto st = CheckJsonDepth(template_kwargs); !st.ok()) {
    return InvalidArgument("chat_template_kwargs: {}", st.message());
  }
  for (const auto& [key, value] : template_kwargs.items()) {
    if (key == "messages") return InvalidArgument("chat_template_kwargs may not set 'messages'");
    extra[key] = value;
  }
  auto out = template_->Render(msgs, extra);
  if (!out.ok()) return InvalidArgument("chat template: {}", out.status().message());
  return out;
}

}  // namespace headwise::tokenizer
