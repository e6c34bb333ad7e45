#include "tokenizer/jinja_lexer.h"

#include <cstring>

#include "tokenizer/jinja_value.h"
#include "tokenizer/unicode.h"

namespace headwise::tokenizer::jinja {
namespace {

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// Length of the run of Python-regex whitespace (\s on str) at s[pos...].
size_t WhitespaceRun(std::string_view s, size_t pos) {
  size_t i = pos;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if (!IsAsciiSpace(static_cast<char>(c)) && !(c >= 0x1C && c <= 0x1F)) break;
      ++i;
      continue;
    }
    const size_t n = internal::WellFormedPrefixLength(s.substr(i));
    if (n == 0) break;
    const auto spans = internal::DecodeUtf8(s.substr(i, n));
    if (spans.empty() || !IsPySpace(spans[0].cp)) break;
    i += n;
  }
  return i - pos;
}

// Python's str.rstrip() (Unicode whitespace) on a UTF-8 string.
std::string_view RstripWhitespace(std::string_view s) {
  while (!s.empty()) {
    const unsigned char c = static_cast<unsigned char>(s.back());
    if (c < 0x80) {
      if (!IsAsciiSpace(static_cast<char>(c)) && !(c >= 0x1C && c <= 0x1F)) break;
      s.remove_suffix(1);
      continue;
    }
    // Find the start of the last (multi-byte) character.
    size_t start = s.size() - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 &&
           s.size() - start < 4) {
      --start;
    }
    const auto spans = internal::DecodeUtf8(s.substr(start));
    if (spans.size() != 1 || !IsPySpace(spans[0].cp)) break;
    s.remove_suffix(s.size() - start);
  }
  return s;
}

bool IsNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsNameChar(char c) {
  return IsNameStart(c) || (c >= '0' && c <= '9');
}
bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

class Lexer {
 public:
  Lexer(std::string_view src, const LexerOptions& options) : src_(src), options_(options) {}

  StatusOr<std::vector<Token>> Run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      // Root state: data up to the next tag opener.
      size_t at = pos;
      char kind = 0;
      while (true) {
        at = src_.find('{', at);
        if (at == std::string_view::npos || at + 1 >= src_.size()) {
          at = std::string_view::npos;
          break;
        }
        const char next = src_[at + 1];
        if (next == '%' || next == '{' || next == '#') {
          kind = next;
          break;
        }
        ++at;
      }
      if (at == std::string_view::npos) {
        Emit(TokenType::kText, std::string(src_.substr(pos)), pos);
        break;
      }
      size_t after = at + 2;
      char sign = 0;
      if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) {
        sign = src_[after];
        ++after;
      }
      std::string_view text = src_.substr(pos, at - pos);
      // jinja2's raw_begin alternative is tried before the plain block opener.
      size_t raw_body = 0;
      if (kind == '%') raw_body = MatchRawBegin(after);
      text = ApplyLeftStrip(text, sign, kind != '{', line_starting);
      if (!text.empty()) Emit(TokenType::kText, std::string(text), pos);

      if (raw_body != 0) {
        HW_ASSIGN_OR_RETURN(pos, LexRaw(raw_body, at, &line_starting));
        continue;
      }
      if (kind == '#') {
        HW_ASSIGN_OR_RETURN(pos, LexComment(after, at, &line_starting));
        continue;
      }
      Emit(kind == '%' ? TokenType::kBlockBegin : TokenType::kVarBegin, "", at);
      HW_ASSIGN_OR_RETURN(pos, LexTag(after, kind == '%', at, &line_starting));
    }
    Emit(TokenType::kEof, "", src_.size());
    return std::move(tokens_);
  }

 private:
  void Emit(TokenType type, std::string value, size_t offset) {
    tokens_.push_back(Token{type, std::move(value), offset});
  }

  Status Error(size_t offset, std::string_view what) const {
    const SourcePosition p = PositionOf(src_, offset);
    return InvalidArgument("chat template syntax error at line {} column {}: {}", p.line, p.column,
                           what);
  }

  // The OptionalLStrip rule of jinja2's root state: "-" strips all whitespace before the tag;
  // otherwise lstrip_blocks strips spaces and tabs between the line start and a block or comment
  // tag when nothing else is on that line before it.
  std::string_view ApplyLeftStrip(std::string_view text, char sign, bool not_variable,
                                  bool line_starting) const {
    if (sign == '-') return RstripWhitespace(text);
    if (sign == '+' || !options_.lstrip_blocks || !not_variable) return text;
    const size_t nl = text.rfind('\n');
    const size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
    if (l_pos == 0 && !line_starting) return text;
    for (size_t i = l_pos; i < text.size(); ++i) {
      if (text[i] != ' ' && text[i] != '\t') return text;
    }
    return text.substr(0, l_pos);
  }

  // The end of a block ("%}"), comment ("#}") at src_[p...]: returns the position after it
  // (with the whitespace that "-" or trim_blocks consumes), or npos.
  size_t MatchBlockLikeEnd(size_t p, char closer) const {
    const auto is_end = [&](size_t q) {
      return q + 1 < src_.size() && src_[q] == closer && src_[q + 1] == '}';
    };
    if (p < src_.size() && src_[p] == '+' && is_end(p + 1)) return p + 3;
    if (p < src_.size() && src_[p] == '-' && is_end(p + 1)) {
      return p + 3 + WhitespaceRun(src_, p + 3);
    }
    if (is_end(p)) {
      size_t q = p + 2;
      if (options_.trim_blocks && q < src_.size() && src_[q] == '\n') ++q;
      return q;
    }
    return std::string_view::npos;
  }

  // `{%[-+]? \s* raw \s* (-%}\s* | %})` (no trim_blocks after raw's opener, as in jinja2).
  // Returns the position of the raw body, or 0 if this is not a raw block.
  size_t MatchRawBegin(size_t p) const {
    p += WhitespaceRun(src_, p);
    if (src_.substr(p, 3) != "raw") return 0;
    p += 3;
    p += WhitespaceRun(src_, p);
    if (src_.substr(p, 3) == "-%}") return p + 3 + WhitespaceRun(src_, p + 3);
    if (src_.substr(p, 2) == "%}") return p + 2;
    return 0;
  }

  StatusOr<size_t> LexRaw(size_t body, size_t open_at, bool* line_starting) {
    size_t search = body;
    while (true) {
      const size_t at = src_.find("{%", search);
      if (at == std::string_view::npos) return Error(open_at, "missing end of raw directive");
      size_t p = at + 2;
      char sign = 0;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      p += WhitespaceRun(src_, p);
      if (src_.substr(p, 6) != "endraw") {
        search = at + 1;
        continue;
      }
      p += 6;
      p += WhitespaceRun(src_, p);
      const size_t end = MatchBlockLikeEnd(p, '%');
      if (end == std::string_view::npos) {
        search = at + 1;
        continue;
      }
      std::string_view text = src_.substr(body, at - body);
      text = ApplyLeftStrip(text, sign, true, *line_starting);
      if (!text.empty()) Emit(TokenType::kText, std::string(text), body);
      *line_starting = src_[end - 1] == '\n';
      return end;
    }
  }

  StatusOr<size_t> LexComment(size_t p, size_t open_at, bool* line_starting) {
    const size_t close = src_.find("#}", p);
    if (close == std::string_view::npos) return Error(open_at, "missing end of comment tag");
    size_t end_start = close;
    if (close > p && (src_[close - 1] == '-' || src_[close - 1] == '+')) end_start = close - 1;
    const size_t end = MatchBlockLikeEnd(end_start, '#');
    *line_starting = src_[end - 1] == '\n';
    return end;
  }

  StatusOr<size_t> LexTag(size_t p, bool block, size_t open_at, bool* line_starting) {
    std::vector<char> balance;
    while (true) {
      if (p >= src_.size()) {
        return Error(open_at, block ? "unexpected end of template: missing '%}'"
                                    : "unexpected end of template: missing '}}'");
      }
      if (balance.empty()) {
        size_t end = std::string_view::npos;
        if (block) {
          end = MatchBlockLikeEnd(p, '%');
        } else if (src_.substr(p, 3) == "-}}") {
          end = p + 3 + WhitespaceRun(src_, p + 3);
        } else if (src_.substr(p, 2) == "}}") {
          end = p + 2;
        }
        if (end != std::string_view::npos) {
          Emit(block ? TokenType::kBlockEnd : TokenType::kVarEnd, "", p);
          *line_starting = src_[end - 1] == '\n';
          return end;
        }
      }
      const size_t ws = WhitespaceRun(src_, p);
      if (ws > 0) {
        p += ws;
        continue;
      }
      const char c = src_[p];
      if (IsDigit(c)) {
        HW_ASSIGN_OR_RETURN(p, LexNumber(p));
        continue;
      }
      if (IsNameStart(c)) {
        size_t q = p;
        while (q < src_.size() && IsNameChar(src_[q])) ++q;
        Emit(TokenType::kName, std::string(src_.substr(p, q - p)), p);
        p = q;
        continue;
      }
      if (c == '\'' || c == '"') {
        HW_ASSIGN_OR_RETURN(p, LexString(p));
        continue;
      }
      static constexpr const char* kOperators[] = {
          "**", "//", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[",
          "]",  "(",  ")",  "{",  "}",  ">",  "<", "=", ".", ":", "|", ",", ";"};
      const char* op = nullptr;
      for (const char* candidate : kOperators) {
        if (src_.substr(p, std::strlen(candidate)) == candidate) {
          op = candidate;
          break;
        }
      }
      if (op == nullptr) {
        return Error(p, fmt::format("unexpected char '{}'", src_.substr(p, 1)));
      }
      if (op[0] == '(' || op[0] == '[' || op[0] == '{') {
        balance.push_back(op[0] == '(' ? ')' : op[0] == '[' ? ']' : '}');
      } else if (op[0] == ')' || op[0] == ']' || op[0] == '}') {
        if (balance.empty()) return Error(p, fmt::format("unexpected '{}'", op));
        if (balance.back() != op[0]) {
          return Error(p, fmt::format("unexpected '{}', expected '{}'", op, balance.back()));
        }
        balance.pop_back();
      }
      Emit(TokenType::kOperator, op, p);
      p += std::strlen(op);
    }
  }

  StatusOr<size_t> LexNumber(size_t p) {
    const size_t start = p;
    const auto digits = [&](size_t q, bool (*ok)(char)) {
      // (digit _?)* digit: underscores only between digits.
      size_t r = q;
      while (r < src_.size() &&
             (ok(src_[r]) || (src_[r] == '_' && r > q && r + 1 < src_.size() && ok(src_[r + 1])))) {
        ++r;
      }
      return r;
    };
    const auto strip_underscores = [](std::string_view s) {
      std::string out;
      for (char c : s) {
        if (c != '_') out.push_back(c);
      }
      return out;
    };
    if (src_[p] == '0' && p + 1 < src_.size()) {
      const char base_char =
          static_cast<char>(std::tolower(static_cast<unsigned char>(src_[p + 1])));
      int base = base_char == 'x' ? 16 : base_char == 'o' ? 8 : base_char == 'b' ? 2 : 0;
      if (base != 0) {
        size_t q = p + 2;
        while (q < src_.size() &&
               (std::isxdigit(static_cast<unsigned char>(src_[q])) || src_[q] == '_'))
          ++q;
        const std::string body = strip_underscores(src_.substr(p + 2, q - p - 2));
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(body.c_str(), &end, base);
        if (body.empty() || *end != '\0' || errno != 0) return Error(p, "invalid integer literal");
        Emit(TokenType::kInteger, std::to_string(v), start);
        return q;
      }
    }
    size_t q = digits(p, IsDigit);
    bool is_float = false;
    // A float needs digits after the dot; "1." is the integer 1 followed by a dot. A number
    // right after a dot ("x.0.1") is never a float, as jinja2's lookbehind says.
    const bool after_dot = start > 0 && src_[start - 1] == '.';
    if (!after_dot && q + 1 < src_.size() && src_[q] == '.' && IsDigit(src_[q + 1])) {
      q = digits(q + 1, IsDigit);
      is_float = true;
    }
    if (!after_dot && q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
      size_t r = q + 1;
      if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
      if (r < src_.size() && IsDigit(src_[r])) {
        q = digits(r, IsDigit);
        is_float = true;
      }
    }
    Emit(is_float ? TokenType::kFloat : TokenType::kInteger,
         strip_underscores(src_.substr(start, q - start)), start);
    return q;
  }

  StatusOr<size_t> LexString(size_t p) {
    const char quote = src_[p];
    size_t q = p + 1;
    while (q < src_.size() && src_[q] != quote) {
      if (src_[q] == '\\') ++q;
      ++q;
    }
    if (q >= src_.size()) return Error(p, "unterminated string literal");
    HW_ASSIGN_OR_RETURN(std::string value, Unescape(src_.substr(p + 1, q - p - 1), p));
    Emit(TokenType::kString, std::move(value), p);
    return q + 1;
  }

  // Python's "unicode-escape" decoding, which jinja2 applies to string literals.
  StatusOr<std::string> Unescape(std::string_view s, size_t offset) const {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] != '\\' || i + 1 >= s.size()) {
        out.push_back(s[i]);
        continue;
      }
      const char c = s[++i];
      const auto hex = [&](size_t n) -> StatusOr<char32_t> {
        char32_t v = 0;
        for (size_t k = 1; k <= n; ++k) {
          if (i + k >= s.size() || !std::isxdigit(static_cast<unsigned char>(s[i + k]))) {
            return Error(offset, "truncated escape in string literal");
          }
          const char h = s[i + k];
          v = v * 16 + static_cast<char32_t>(IsDigit(h) ? h - '0' : std::tolower(h) - 'a' + 10);
        }
        i += n;
        return v;
      };
      switch (c) {
        case '\n':
          break;  // line continuation
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'n':
          out.push_back('\n');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'x':
        case 'u':
        case 'U': {
          HW_ASSIGN_OR_RETURN(char32_t cp, hex(c == 'x' ? 2 : c == 'u' ? 4 : 8));
          if (cp > 0x10FFFF) return Error(offset, "illegal Unicode character in string literal");
          internal::AppendUtf8(cp, &out);
          break;
        }
        case '0':
        case '1':
        case '2':
        case '3':
        case '4':
        case '5':
        case '6':
        case '7': {
          char32_t v = static_cast<char32_t>(c - '0');
          for (int k = 0; k < 2 && i + 1 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7'; ++k) {
            v = v * 8 + static_cast<char32_t>(s[++i] - '0');
          }
          internal::AppendUtf8(v, &out);
          break;
        }
        case 'N':
          return Error(offset, "\\N{...} escapes are not supported");
        default:
          // Unknown escapes stay as written, as in Python.
          out.push_back('\\');
          out.push_back(c);
      }
    }
    return out;
  }

  std::string_view src_;
  LexerOptions options_;
  std::vector<Token> tokens_;
};

}  // namespace

SourcePosition PositionOf(std::string_view source, size_t offset) {
  SourcePosition p{1, 1};
  for (size_t i = 0; i < offset && i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++p.line;
      p.column = 1;
    } else if ((static_cast<unsigned char>(source[i]) & 0xC0) != 0x80) {
      ++p.column;
    }
  }
  return p;
}

StatusOr<std::vector<Token>> Lex(std::string_view source, const LexerOptions& options,
                                 std::string* normalized) {
  // jinja2: every newline sequence becomes "\n", and one trailing newline is dropped.
  std::string& src = *normalized;
  src.clear();
  src.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      src.push_back('\n');
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      src.push_back(source[i]);
    }
  }
  if (!options.keep_trailing_newline && !src.empty() && src.back() == '\n') src.pop_back();
  return Lexer(src, options).Run();
}

}  // namespace headwise::tokenizer::jinja
