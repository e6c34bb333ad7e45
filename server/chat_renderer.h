// Turns chat messages into the prompt text the model was trained on, through the model's chat
// template (or --chat-template FILE). Created once at startup: a template that cannot render a
// probe conversation is a startup error, not a surprise on the first request.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "server/openai_api.h"

namespace headwise::server {

class ChatRenderer {
 public:
  // An empty template gives a renderer whose Render() says the model has no chat template.
  static StatusOr<std::unique_ptr<ChatRenderer>> Create(std::string chat_template,
                                                        std::string bos_token,
                                                        std::string eos_token);
  ~ChatRenderer();

  bool has_template() const { return !template_.empty(); }
  // InvalidArgument for requests the template (or this renderer) cannot render.
  StatusOr<std::string> Render(const std::vector<ChatMessageIn>& messages,
                               bool add_generation_prompt, const Json& template_kwargs) const;

 private:
  ChatRenderer() = default;
  std::string template_;
  std::string bos_token_;
  std::string eos_token_;
};

}  // namespace headwise::server
