// Parser of the chat-template interpreter: tokens -> syntax tree, following jinja2's grammar
// (operator precedence, `is` tests, filters, slices, tuples) for the subset chat templates use.
// Anything outside that subset is refused here, naming the construct and where it is, so a
// server fails at startup rather than on the first request.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"
#include "tokenizer/jinja_ast.h"

namespace headwise::tokenizer::jinja {

struct Template {
  std::string source;  // newline-normalised, for error positions
  Body body;
};

// Bounds that keep hostile templates (a --chat-template file, a GGUF's or tokenizer_config's
// template) from exhausting the stack or memory; beyond them Parse fails with InvalidArgument.
// Evaluating and freeing a syntax tree recurses once per level, so its height is bounded too.
inline constexpr size_t kMaxTemplateBytes = 1u << 20;
inline constexpr int kMaxExprHeight = 128;

StatusOr<std::unique_ptr<Template>> ParseTemplate(std::string_view source);

}  // namespace headwise::tokenizer::jinja
