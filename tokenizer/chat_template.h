// Chat templates: the Jinja programs in tokenizer_config.json ("chat_template") and GGUF
// ("tokenizer.chat_template") that turn a list of messages into the prompt text.
//
// Contract: Render equals transformers' apply_chat_template(tokenize=False) byte for byte,
// i.e. jinja2's ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the
// loopcontrols extension, transformers' tojson (json.dumps, ensure_ascii=False, keys in
// insertion order), raise_exception(msg) and strftime_now(fmt). tests/python/
// chat_template_parity.py checks this against jinja2 on the templates we ship with.
//
// Key order: Python dicts keep insertion order, and templates show it (`message|tojson`,
// `for k, v in d.items()`), so inputs are nlohmann::ordered_json. nlohmann::json converts to
// it implicitly, but has sorted its object keys when it was parsed or built: JSON that should
// keep the client's order must be parsed as ordered_json from the start.
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

// Every render runs under these limits; passing one fails the render with ResourceExhausted,
// so that a hostile template or request can cost neither the stack, nor memory, nor time.
// Parse has fixed limits of its own (jinja_parser.h: template size, nesting).
struct ChatTemplateOptions {
  // The rendered text, and any one value (string, list, dict) the template builds.
  size_t max_output_bytes = 16u << 20;
  // Loop iterations summed over one render.
  int64_t max_loop_iterations = 1'000'000;
  // Bytes of strings, lists and dicts built during one render, summed.
  uint64_t max_allocated_bytes = 512ull << 20;
  // Wall-clock time of one render (a catch-all: the limits above bound nearly everything).
  double max_seconds = 10;
};

class ChatTemplate {
 public:
  // Parses the template. A syntax error or an unsupported construct is InvalidArgument naming
  // its line, column and the construct; callers do this at startup.
  static StatusOr<ChatTemplate> Parse(std::string source, ChatTemplateOptions options = {});

  // messages: a JSON array of {"role", "content", ...} objects, passed to the template as they
  // are, keys in their order (see FlattenTextContent for templates that expect string
  // contents). JSON nested deeper than 256 levels is InvalidArgument.
  // extra: an object of further variables: bos_token, eos_token, add_generation_prompt, tools,
  // request kwargs... (transformers passes tools=None and add_generation_prompt explicitly; so
  // should callers that want identical output for templates that test `is defined`).
  // Errors: raise_exception(msg) in the template gives InvalidArgument with msg as its message;
  // type errors and undefined values used in operations give InvalidArgument with the position.
  // Limits (ChatTemplateOptions) passed: ResourceExhausted.
  StatusOr<std::string> Render(const nlohmann::ordered_json& messages,
                               const nlohmann::ordered_json& extra) const;

  const std::string& source() const { return source_; }

 private:
  ChatTemplate(std::string source, std::shared_ptr<const jinja::Template> tpl,
               ChatTemplateOptions options);
  std::string source_;
  std::shared_ptr<const jinja::Template> tpl_;
  ChatTemplateOptions options_;
};

// InvalidArgument when `j` nests arrays and objects deeper than max_depth levels; walks it
// without recursion. nlohmann copies and converts JSON recursively (a 100,000-deep array from
// a request would overflow the stack), so callers check JSON from outside before copying it.
Status CheckJsonDepth(const nlohmann::ordered_json& j, size_t max_depth = 256);
Status CheckJsonDepth(const nlohmann::json& j, size_t max_depth = 256);

// vLLM's normalisation for templates that expect string contents: a content given as a list of
// parts becomes the "\n"-joined text of its {"type": "text", "text": ...} parts. Other part
// types (images, audio) are InvalidArgument: no model here takes them. Keys keep their order.
StatusOr<nlohmann::ordered_json> FlattenTextContent(const nlohmann::ordered_json& messages);

}  // namespace headwise::tokenizer
