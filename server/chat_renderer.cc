#include "server/chat_renderer.h"

#include "engine/chat_prompt.h"

namespace headwise::server {

// Until the Jinja interpreter (tokenizer/chat_template.h) lands, the engine's minimal renderer
// of the common template families stands in; it always adds the generation prompt and takes no
// template arguments, so requests that need either are refused rather than rendered wrongly.

ChatRenderer::~ChatRenderer() = default;

StatusOr<std::unique_ptr<ChatRenderer>> ChatRenderer::Create(std::string chat_template,
                                                             std::string bos_token,
                                                             std::string eos_token) {
  std::unique_ptr<ChatRenderer> r(new ChatRenderer());
  r->template_ = std::move(chat_template);
  r->bos_token_ = std::move(bos_token);
  r->eos_token_ = std::move(eos_token);
  if (r->has_template()) {
    const std::vector<ChatMessageIn> probe = {{"system", "You are a helpful assistant.", ""},
                                              {"user", "Hello!", ""},
                                              {"assistant", "Hi! How can I help?", ""},
                                              {"user", "Tell me a story.", ""}};
    auto rendered = r->Render(probe, true, Json::object());
    if (!rendered.ok()) return rendered.status().WithContext("chat template");
  }
  return r;
}

StatusOr<std::string> ChatRenderer::Render(const std::vector<ChatMessageIn>& messages,
                                           bool add_generation_prompt,
                                           const Json& template_kwargs) const {
  if (!has_template()) {
    return InvalidArgument(
        "the model has no chat template; start the server with --chat-template FILE");
  }
  if (!add_generation_prompt) {
    return InvalidArgument("add_generation_prompt=false is not supported by this server yet");
  }
  if (!template_kwargs.empty()) {
    return InvalidArgument("chat_template_kwargs is not supported by this server yet");
  }
  std::vector<engine::ChatMessage> msgs;
  msgs.reserve(messages.size());
  for (const auto& m : messages) msgs.push_back({m.role, m.content});
  return engine::RenderChatPrompt(template_, msgs, bos_token_);
}

}  // namespace headwise::server
