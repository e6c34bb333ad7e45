// A minimal chat-prompt renderer for the common template families (ChatML, Llama-3, Llama-2),
// recognised from the model's chat template. The full Jinja interpreter, which renders any
// template exactly, replaces this in the server (issue 3); until then an unrecognised template
// is an error, never a guess.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace headwise::engine {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

StatusOr<std::string> RenderChatPrompt(const std::string& chat_template,
                                       const std::vector<ChatMessage>& messages,
                                       const std::string& bos_token);

}  // namespace headwise::engine
