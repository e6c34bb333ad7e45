#include "engine/chat_prompt.h"

namespace headwise::engine {
namespace {

// ChatML templates that inject a default system message (SmolLM2, Qwen2) spell it as a string
// literal between "<|im_start|>system" plus a newline (a real one, or the escape \n that
// Jinja unescapes) and "<|im_end|>".
std::string DefaultChatMlSystem(const std::string& tmpl) {
  const std::string open = "<|im_start|>system";
  const std::string close = "<|im_end|>";
  const size_t start = tmpl.find(open);
  if (start == std::string::npos) return "";
  size_t text = start + open.size();
  if (tmpl.compare(text, 1, "\n") == 0) {
    text += 1;
  } else if (tmpl.compare(text, 2, "\\n") == 0) {
    text += 2;
  } else {
    return "";
  }
  const size_t end = tmpl.find(close, text);
  if (end == std::string::npos) return "";
  std::string s = tmpl.substr(text, end - text);
  if (s.find_first_of("{}'\"\\") != std::string::npos) return "";  // not a plain literal
  return s;
}

}  // namespace

StatusOr<std::string> RenderChatPrompt(const std::string& chat_template,
                                       const std::vector<ChatMessage>& messages,
                                       const std::string& bos_token) {
  if (messages.empty()) return InvalidArgument("chat: no messages");
  for (const auto& m : messages) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
      return InvalidArgument("chat: unknown role '{}'", m.role);
    }
  }
  std::string out;
  if (chat_template.find("<|im_start|>") != std::string::npos) {
    if (messages.front().role != "system") {
      const std::string sys = DefaultChatMlSystem(chat_template);
      if (!sys.empty()) out += "<|im_start|>system\n" + sys + "<|im_end|>\n";
    }
    for (const auto& m : messages)
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    return out + "<|im_start|>assistant\n";
  }
  if (chat_template.find("<|start_header_id|>") != std::string::npos) {
    out = bos_token;
    for (const auto& m : messages) {
      out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
    }
    return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
  }
  if (chat_template.find("[INST]") != std::string::npos) {
    std::string system;
    size_t i = 0;
    if (messages.front().role == "system") system = messages[i++].content;
    for (; i < messages.size(); ++i) {
      const auto& m = messages[i];
      if (m.role == "user") {
        std::string content = m.content;
        if (!system.empty()) {
          content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
          system.clear();
        }
        out += bos_token + "[INST] " + content + " [/INST]";
      } else if (m.role == "assistant") {
        out += " " + m.content + " </s>";
      }
    }
    return out;
  }
  if (chat_template.empty()) return InvalidArgument("chat: the model has no chat template");
  return Unimplemented(
      "chat: this chat template is not one of the families the minimal renderer knows "
      "(ChatML, Llama-3, Llama-2)");
}

}  // namespace headwise::engine
