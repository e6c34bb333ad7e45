#include "engine/chat_renderer.h"

#include "tokenizer/chat_template.h"

namespace headwise::engine {

using Json = nlohmann::json;

ChatRenderer::~ChatRenderer() = default;

StatusOr<std::unique_ptr<ChatRenderer>> ChatRenderer::Create(std::string chat_template,
                                                             std::string bos_token,
                                                             std::string eos_token) {
  std::unique_ptr<ChatRenderer> r(new ChatRenderer());
  r->bos_token_ = std::move(bos_token);
  r->eos_token_ = std::move(eos_token);
  if (chat_template.empty()) return r;
  auto parsed = tokenizer::ChatTemplate::Parse(std::move(chat_template));
  if (!parsed.ok()) return parsed.status().WithContext("chat template");
  r->template_ = std::make_unique<tokenizer::ChatTemplate>(std::move(*parsed));
  // One user message is the conversation every chat template must accept (some refuse system
  // messages or require alternating roles, so nothing more is assumed).
  auto probe = r->Render({{"user", "Hello!", ""}}, true, Json::object());
  if (!probe.ok()) return probe.status().WithContext("chat template (rendering a probe)");
  return r;
}

StatusOr<std::unique_ptr<ChatRenderer>> ChatRenderer::ForTokenizer(
    std::string chat_template, const tokenizer::Tokenizer& tok) {
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
    Json j = {{"role", m.role}, {"content", m.content}};
    if (!m.name.empty()) j["name"] = m.name;
    msgs.push_back(std::move(j));
  }
  Json extra = {{"bos_token", bos_token_},
                {"eos_token", eos_token_},
                {"add_generation_prompt", add_generation_prompt},
                {"tools", nullptr},
                {"documents", nullptr}};
  for (const auto& [key, value] : template_kwargs.items()) {
    if (key == "messages") return InvalidArgument("chat_template_kwargs may not set 'messages'");
    extra[key] = value;
  }
  auto out = template_->Render(msgs, extra);
  if (!out.ok()) return InvalidArgument("chat template: {}", out.status().message());
  return out;
}

}  // namespace headwise::engine
