// The chat-template interpreter (tokenizer/jinja_lexer, jinja_parser, jinja_eval through
// ChatTemplate): the input is template text, optionally followed by a NUL byte and a JSON
// array of messages (NUL cannot occur in either part's meaningful text). The template is
// lexed with each whitespace option, parsed, and rendered with the fuzzed messages when they
// parse, and always with a fixed conversation that has the shapes real requests bring
// (system prompt, names, list contents, tool calls).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/fuzz/fuzz_util.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/jinja_lexer.h"

namespace {

using headwise::tokenizer::ChatTemplate;
using nlohmann::ordered_json;

const ordered_json& FixedMessages() {
  static const ordered_json messages = ordered_json::parse(R"([
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi <|im_end|> {{ x }}", "name": "ann"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function",
      "function": {"name": "get", "arguments": {"q": "w", "n": [1, 2.5, null, true]}}}]},
    {"role": "tool", "content": "{\"t\": 1}", "tool_call_id": "c1"},
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
  ])");
  return messages;
}

const ordered_json& Extra() {
  static const ordered_json extra = ordered_json::parse(R"({
    "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": true, "tools": null,
    "enable_thinking": false
  })");
  return extra;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const size_t template_size = nul ? static_cast<size_t>(nul - data) : size;
  const std::string_view source = headwise::fuzz::AsText(data, template_size);

  for (int variant = 0; variant < 4; ++variant) {
    headwise::tokenizer::jinja::LexerOptions options;
    options.trim_blocks = variant & 1;
    options.lstrip_blocks = variant & 2;
    std::string normalized;
    (void)headwise::tokenizer::jinja::Lex(source, options, &normalized);
  }

  // Limits well below the server's defaults (16 MiB, 10^6 iterations): a template that runs to
  // the default limit takes seconds under ASan and would drown the fuzzer in "timeouts" that
  // only show how high the limit is; what is fuzzed is that the limits hold.
  headwise::tokenizer::ChatTemplateOptions limits;
  limits.max_output_bytes = 1u << 20;
  limits.max_loop_iterations = 5000;
  auto tpl = ChatTemplate::Parse(std::string(source), limits);
  if (!tpl.ok()) {
    (void)tpl.status().ToString();
    return 0;
  }
  (void)tpl->Render(FixedMessages(), Extra());
  (void)tpl->Render(ordered_json::array(), ordered_json::object());
  if (nul) {
    const std::string_view rest = headwise::fuzz::AsText(nul + 1, size - template_size - 1);
    auto messages = ordered_json::parse(rest, nullptr, /*allow_exceptions=*/false);
    if (!messages.is_discarded()) {
      (void)tpl->Render(messages, Extra());
      if (auto flat = headwise::tokenizer::FlattenTextContent(messages); flat.ok()) {
        (void)tpl->Render(*flat, Extra());
      }
    }
  }
  return 0;
}
