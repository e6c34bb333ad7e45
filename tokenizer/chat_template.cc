#include "tokenizer/chat_template.h"

#include <utility>
#include <vector>

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

StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& messages,
                                           const nlohmann::ordered_json& extra) const {
  if (!messages.is_array()) return InvalidArgument("chat template: messages must be an array");
  if (!extra.is_null() && !extra.is_object()) {
    return InvalidArgument("chat template: extra variables must be an object");
  }
  jinja::Dict vars;
  HW_ASSIGN_OR_RETURN(jinja::Value message_values, jinja::FromJson(messages));
  vars.items.emplace_back("messages", std::move(message_values));
  if (extra.is_object()) {
    for (auto it = extra.begin(); it != extra.end(); ++it) {
      if (it.key() == "messages") continue;
      HW_ASSIGN_OR_RETURN(jinja::Value v, jinja::FromJson(it.value()));
      vars.Set(it.key(), std::move(v));
    }
  }
  jinja::RenderLimits limits;
  limits.max_output_bytes = options_.max_output_bytes;
  limits.max_loop_iterations = options_.max_loop_iterations;
  limits.max_allocated_bytes = options_.max_allocated_bytes;
  limits.max_seconds = options_.max_seconds;
  return jinja::RenderTemplate(*tpl_, vars, limits);
}

namespace {

template <typename Json>
Status CheckJsonDepthImpl(const Json& j, size_t max_depth) {
  std::vector<std::pair<const Json*, size_t>> stack = {{&j, 0}};
  while (!stack.empty()) {
    const auto [node, depth] = stack.back();
    stack.pop_back();
    if (!node->is_structured()) continue;
    if (depth + 1 > max_depth) {
      return InvalidArgument("JSON nested deeper than {} levels", max_depth);
    }
    for (const auto& child : *node) stack.emplace_back(&child, depth + 1);
  }
  return Status::Ok();
}

}  // namespace

Status CheckJsonDepth(const nlohmann::ordered_json& j, size_t max_depth) {
  return CheckJsonDepthImpl(j, max_depth);
}
Status CheckJsonDepth(const nlohmann::json& j, size_t max_depth) {
  return CheckJsonDepthImpl(j, max_depth);
}

StatusOr<nlohmann::ordered_json> FlattenTextContent(const nlohmann::ordered_json& messages) {
  if (!messages.is_array()) return InvalidArgument("messages must be an array");
  HW_RETURN_IF_ERROR(CheckJsonDepth(messages));
  nlohmann::ordered_json out = messages;
  for (size_t i = 0; i < out.size(); ++i) {
    nlohmann::ordered_json& m = out[i];
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
