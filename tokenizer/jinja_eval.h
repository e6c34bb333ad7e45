// Evaluator of the chat-template interpreter: renders a parsed template with jinja2's scoping
// (a for loop's body gets a fresh scope each iteration, `set` inside it does not leak out;
// namespace() objects are the way out), its undefined-value rules and Python semantics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/status.h"
#include "tokenizer/jinja_parser.h"
#include "tokenizer/jinja_value.h"

namespace headwise::tokenizer::jinja {

// Guards against templates (or inputs) that would run away: a request must fail with a status,
// never exhaust memory, time or the stack.
struct RenderLimits {
  size_t max_output_bytes = 16u << 20;
  // Any one value (about the bytes of its repr: what printing it would take).
  uint64_t max_value_bytes = 16u << 20;
  int64_t max_loop_iterations = 1'000'000;  // summed over all loops of one render
  int max_call_depth = 50;                  // macro calls nested in macro calls
  // Expressions and statements being evaluated inside one another (macro calls included):
  // bounds the evaluator's recursion, so its stack.
  int max_render_depth = 400;
  // Bytes of strings, lists and dicts the render builds, summed (memory and time).
  uint64_t max_allocated_bytes = 512ull << 20;
  // A catch-all for work no other limit counts (say, == between two big values in a loop).
  double max_seconds = 10;
};
// variables: the names the template sees (messages, bos_token, add_generation_prompt, ...).
// Errors name the line and column of the failing expression, except raise_exception(msg),
// whose status message is msg itself.
StatusOr<std::string> RenderTemplate(const Template& tpl, const Dict& variables,
                                     const RenderLimits& limits);

}  // namespace headwise::tokenizer::jinja
