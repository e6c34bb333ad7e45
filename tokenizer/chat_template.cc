#include "tokenizer/chat_template.h"

#include "tokenizer/jinja_eval.h"
#include "tokenizer/jinja_parser.h"
#include "tokenizer/jinja_value.h"

namespace headwise::tokenizer {

ChatTemplate::ChatTemplate(std::string source, std::shared_ptr<const jinja::Template> tpl,
                           ChatTemplateOptions options)
    : source_(std::move(source)), tpl_(std::move(tpl)), options_(options) {}

StatusOr<ChatTemplate> ChatTemplate::Parse(std::string source, ChatTemplateOptions options) {
  HW_ASSIGN_OR_RETURN(std::unique_ptr<jinja::Template> tpl, jinja::ParseTemplate(source));
  return ChatTemplate(std::move(source), std::shared_ptr<const jinja::Template>(std::move(tpl)),
                      options);
}

template <typename Json>
StatusOr<std::string> ChatTemplate::RenderImpl(const Json& messages, const Json& extra) const {
  if (!messages.is_array()) return InvalidArgument("chat template: messages must be an array");
  if (!extra.is_null() && !extra.is_object()) {
    return InvalidArgument("chat template: extra variables must be an object");
  }
  jinja::Dict vars;
  vars.items.emplace_back("messages", jinja::FromJson(messages));
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      if (it.key() == "messages") continue;
      vars.Set(it.key(), jinja::FromJson(it.value()));
    }
  }
  jinja::RenderLimits limits;
  limits.max_output_bytes = options_.max_output_bytes;
  limits.max_loop_iterations = options_.max_loop_iterations;
  return jinja::RenderTemplate(*tpl_, vars, limits);
}

StatusOr<std::string> ChatTemplate::Render(const nlohmann::json& messages,
                                           const nlohmann::json& extra) const {
  return RenderImpl(messages, extra);
}

StatusOr<std::string> ChatTemplate::RenderOrdered(const nlohmann::ordered_json& messages,
                                                  const nlohmann::ordered_json& extra) const {
  return RenderImpl(messages, extra);
}

StatusOr<nlohmann::json> FlattenTextContent(const nlohmann::json& messages) {
  if (!messages.is_array()) return InvalidArgument("messages must be an array");
  nlohmann::json out = messages;
  for (size_t i = 0; i < out.size(); ++i) {
    nlohmann::json& m = out[i];
    if (!m.is_object() || !m.contains("content") || !m["content"].is_array()) continue;
    std::string text;
    bool first = true;
    for (const auto& part : m["content"]) {
      const bool is_text = part.is_object() && part.value("type", "") == "text" &&
                           part.contains("text") && part["text"].is_string();
      if (!is_text) {
        const std::string type =
            part.is_object() && part.contains("type") && part["type"].is_string()
                ? part["type"].get<std::string>()
                : std::string("(none)");
        return InvalidArgument("message {}: content part of type '{}' is not supported", i, type);
      }
      if (!first) text += "\n";
      first = false;
      text += part["text"].get<std::string>();
    }
    m["content"] = text;
  }
  return out;
}

}  // namespace headwise::tokenizer
