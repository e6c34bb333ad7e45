// Chat templates: the Jinja programs in tokenizer_config.json ("chat_template") and GGUF
// ("tokenizer.chat_template") that turn a list of messages into the prompt text.
//
// Contract: Render equals transformers' apply_chat_template(tokenize=False) byte for byte,
// i.e. jinja2's ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the
// loopcontrols extension, transformers' tojson (json.dumps, ensure_ascii=False, keys in
// insertion order), raise_exception(msg) and strftime_now(fmt). tests/python/
// chat_template_parity.py checks this against jinja2 on the templates we ship with.
//
// The supported subset is what real chat templates use: text with jinja2's whitespace control,
// {{ }}, if/elif/else, for (with loop.*, `if` filters, else, break/continue), set (also
// namespace attributes and block set), macro, filter blocks, with, raw, generation; Python
// expressions with the usual operators, literals, slicing, method calls on str/dict/list, and
// jinja2's common filters and tests. Anything else (include, extends, call blocks, recursive
// loops, unknown filters or tests) is refused by Parse with the construct and its position.
//
// A ChatTemplate is immutable; Render may be called from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/status.h"

namespace headwise::tokenizer {

namespace jinja {
struct Template;
}

struct ChatTemplateOptions {
  // A render that would produce more than this fails instead (ResourceExhausted).
  size_t max_output_bytes = 16u << 20;
  // Loop iterations summed over one render; beyond it the render fails (ResourceExhausted).
  int64_t max_loop_iterations = 1'000'000;
};

class ChatTemplate {
 public:
  // Parses the template. A syntax error or an unsupported construct is InvalidArgument naming
  // its line, column and the construct; callers do this at startup.
  static StatusOr<ChatTemplate> Parse(std::string source, ChatTemplateOptions options = {});

  // messages: a JSON array of {"role", "content", ...} objects, passed to the template as they
  // are (see FlattenTextContent for templates that expect string contents).
  // extra: an object of further variables: bos_token, eos_token, add_generation_prompt, tools,
  // request kwargs... (transformers passes tools=None and add_generation_prompt explicitly; so
  // should callers that want identical output for templates that test `is defined`).
  // Errors: raise_exception(msg) in the template gives InvalidArgument with msg as its message;
  // type errors and undefined values used in operations give InvalidArgument with the position.
  StatusOr<std::string> Render(const nlohmann::json& messages, const nlohmann::json& extra) const;
  // The same for JSON parsed with nlohmann::ordered_json: objects keep their key order, which
  // `tojson` shows (nlohmann::json sorts keys, so tool schemas would print sorted).
  StatusOr<std::string> RenderOrdered(const nlohmann::ordered_json& messages,
                                      const nlohmann::ordered_json& extra) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate(std::string source, std::shared_ptr<const jinja::Template> tpl,
               ChatTemplateOptions options);
  template <typename Json>
  StatusOr<std::string> RenderImpl(const Json& messages, const Json& extra) const;

  std::string source_;
  std::shared_ptr<const jinja::Template> tpl_;
  ChatTemplateOptions options_;
};

// vLLM's normalisation for templates that expect string contents: a content given as a list of
// parts becomes the "\n"-joined text of its {"type": "text", "text": ...} parts. Other part
// types (images, audio) are InvalidArgument: no model here takes them.
StatusOr<nlohmann::json> FlattenTextContent(const nlohmann::json& messages);

}  // namespace headwise::tokenizer
