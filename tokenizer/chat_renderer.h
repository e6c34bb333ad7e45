// Turns chat messages into the prompt text the model was trained on, through the model's chat
// template (or --chat-template FILE) run by the Jinja interpreter (tokenizer/chat_template.h).
// Created once at startup: a template that does not parse, or cannot render a one-message
// probe conversation, is a startup error rather than a surprise on the first request.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace headwise::tokenizer {

class ChatTemplate;

struct ChatMessage {
  std::string role;  // system, user or assistant
  std::string content;
  std::string name;  // optional participant name, handed to the chat template
};

class ChatRenderer {
 public:
  // An empty template gives a renderer whose Render() says the model has no chat template.
  static StatusOr<std::unique_ptr<ChatRenderer>> Create(std::string chat_template,
                                                        std::string bos_token,
                                                        std::string eos_token);
  // With the tokenizer's BOS and EOS pieces as bos_token / eos_token.
  static StatusOr<std::unique_ptr<ChatRenderer>> ForTokenizer(std::string chat_template,
                                                              const Tokenizer& tok);
  ~ChatRenderer();

  bool has_template() const { return template_ != nullptr; }
  // Renders with bos_token, eos_token, add_generation_prompt and tools=None (as transformers'
  // apply_chat_template does), plus the request's chat_template_kwargs. InvalidArgument when
  // the template refuses the conversation (raise_exception) or fails on it.
  //
  // Each message is the dict {"role", "content"[, "name"]} in that order, as vLLM builds it
  // (`message|tojson` shows the order). template_kwargs keep the order of their keys, which
  // templates may show (`tojson` of a nested object): parse the request with ordered_json to
  // keep the client's; an nlohmann::json converts implicitly but has sorted its keys already.
  StatusOr<std::string> Render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                               const nlohmann::ordered_json& template_kwargs) const;

 private:
  ChatRenderer() = default;
  std::unique_ptr<ChatTemplate> template_;
  std::string bos_token_;
  std::string eos_token_;
};

}  // namespace headwise::tokenizer
