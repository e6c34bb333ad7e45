// Lexer of the chat-template interpreter: splits a template into text and tag tokens exactly as
// jinja2's lexer does with trim_blocks=True and lstrip_blocks=True, which is how transformers
// configures it. Whitespace control happens here, so the parser only ever sees final text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace headwise::tokenizer::jinja {

enum class TokenType {
  kText,        // template data, already trimmed by whitespace control
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kVarBegin,    // {{
  kVarEnd,      // }}
  kName,
  kString,  // value: the unescaped literal
  kInteger,
  kFloat,
  kOperator,  // value: the operator's text ("+", "//", "(", ...)
  kEof,
};

struct Token {
  TokenType type;
  std::string value;
  size_t offset;  // byte offset of the token in the (newline-normalised) source
};

struct LexerOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
  bool keep_trailing_newline = false;
};

// jinja2 normalises every newline to "\n" and drops one trailing newline before lexing; the
// offsets of tokens refer to that normalised source, which is returned in *normalized.
StatusOr<std::vector<Token>> Lex(std::string_view source, const LexerOptions& options,
                                 std::string* normalized);

// 1-based line and column of a byte offset, for error messages.
struct SourcePosition {
  int line;
  int column;
};
SourcePosition PositionOf(std::string_view source, size_t offset);

}  // namespace headwise::tokenizer::jinja
