#include "tokenizer/jinja_value.h"

#include <unicode/uchar.h>
#include <unicode/ustring.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "tokenizer/unicode.h"

namespace headwise::tokenizer::jinja {

// ---------------------------------------------------------------------------------------------
// Dict and Value

const Value* Dict::Find(std::string_view key) const {
  for (const auto& [k, v] : items) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Dict::Set(std::string key, Value value) {
  for (auto& [k, v] : items) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

Value Value::Undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.b_ = b;
  v.i_ = b ? 1 : 0;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.s_ = std::move(s);
  return v;
}
Value Value::MakeList(List items, bool tuple) {
  Value v;
  v.kind_ = Kind::kList;
  v.tuple_ = tuple;
  v.list_ = std::make_shared<const List>(std::move(items));
  return v;
}
Value Value::MakeDict(Dict dict) {
  Value v;
  v.kind_ = Kind::kDict;
  v.dict_ = std::make_shared<Dict>(std::move(dict));
  return v;
}
Value Value::MakeNamespace(Dict dict) {
  Value v = MakeDict(std::move(dict));
  v.kind_ = Kind::kNamespace;
  return v;
}
Value Value::MakeLoop(Dict dict) {
  Value v = MakeDict(std::move(dict));
  v.kind_ = Kind::kLoop;
  return v;
}
Value Value::MakeCallable(std::shared_ptr<const Callable> fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  v.fn_ = std::move(fn);
  return v;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return b_;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !s_.empty();
    case Kind::kList:
      return !list_->empty();
    case Kind::kDict:
      return !dict_->items.empty();
    case Kind::kNamespace:
    case Kind::kLoop:
    case Kind::kCallable:
      return true;
  }
  return false;
}

std::string_view Value::TypeName() const {
  switch (kind_) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kNone:
      return "NoneType";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kList:
      return tuple_ ? "tuple" : "list";
    case Kind::kDict:
      return "dict";
    case Kind::kNamespace:
      return "Namespace";
    case Kind::kLoop:
      return "LoopContext";
    case Kind::kCallable:
      return "function";
  }
  return "object";
}

// ---------------------------------------------------------------------------------------------
// UTF-8 helpers

std::u32string ToU32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  // Fast path: ASCII needs no decoding.
  if (std::all_of(s.begin(), s.end(),
                  [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    for (char c : s) out.push_back(static_cast<char32_t>(c));
    return out;
  }
  for (const auto& span : internal::DecodeUtf8(s)) out.push_back(span.cp);
  return out;
}

std::string FromU32(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) {
    if (cp >= internal::kInvalidByteBase) {
      // An ill-formed byte of the input: give it back unchanged.
      out.push_back(static_cast<char>(cp - internal::kInvalidByteBase));
    } else {
      internal::AppendUtf8(cp, &out);
    }
  }
  return out;
}

size_t CodepointCount(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  // Ill-formed input is rare enough that an exact count is only computed for it.
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return ToU32(s).size();
  }
  return n;
}

bool IsPySpace(char32_t cp) {
  // Python's str.isspace(): bidirectional class WS, B or S, or category Zs.
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x1C:
    case 0x1D:
    case 0x1E:
    case 0x1F:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right) {
  std::u32string u = ToU32(s);
  std::u32string set;
  if (chars != nullptr) set = ToU32(*chars);
  const auto strip_it = [&](char32_t cp) {
    return chars == nullptr ? IsPySpace(cp) : set.find(cp) != std::u32string::npos;
  };
  size_t begin = 0, end = u.size();
  if (left) {
    while (begin < end && strip_it(u[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strip_it(u[end - 1])) --end;
  }
  return FromU32(std::u32string_view(u).substr(begin, end - begin));
}

StatusOr<List> PySplit(std::string_view s, const std::string* sep, int64_t maxsplit, bool right) {
  List out;
  if (sep != nullptr) {
    if (sep->empty()) return InvalidArgument("ValueError: empty separator");
    std::vector<std::string> parts;
    if (!right) {
      size_t pos = 0;
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        size_t at = s.find(*sep, pos);
        if (at == std::string_view::npos) break;
        parts.emplace_back(s.substr(pos, at - pos));
        pos = at + sep->size();
      }
      parts.emplace_back(s.substr(pos));
    } else {
      size_t end = s.size();
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        if (end < sep->size()) break;
        size_t at = s.rfind(*sep, end - sep->size());
        if (at == std::string_view::npos) break;
        parts.emplace_back(s.substr(at + sep->size(), end - at - sep->size()));
        end = at;
      }
      parts.emplace_back(s.substr(0, end));
      std::reverse(parts.begin(), parts.end());
    }
    for (auto& p : parts) out.push_back(Value::String(std::move(p)));
    return out;
  }
  // Runs of whitespace separate; leading and trailing whitespace yields no empty strings.
  std::u32string u = ToU32(s);
  std::vector<std::u32string_view> parts;
  std::u32string_view view(u);
  if (!right) {
    size_t i = 0;
    while (true) {
      while (i < u.size() && IsPySpace(u[i])) ++i;
      if (i == u.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        // CPython keeps the rest verbatim, trailing whitespace included.
        parts.push_back(view.substr(i));
        break;
      }
      size_t j = i;
      while (j < u.size() && !IsPySpace(u[j])) ++j;
      parts.push_back(view.substr(i, j - i));
      i = j;
    }
  } else {
    size_t i = u.size();
    while (true) {
      while (i > 0 && IsPySpace(u[i - 1])) --i;
      if (i == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(view.substr(0, i));
        break;
      }
      size_t j = i;
      while (j > 0 && !IsPySpace(u[j - 1])) --j;
      parts.push_back(view.substr(j, i - j));
      i = j;
    }
    std::reverse(parts.begin(), parts.end());
  }
  for (auto p : parts) out.push_back(Value::String(FromU32(p)));
  return out;
}

namespace {

bool IsAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

// Full Unicode case mapping through ICU's root locale, which agrees with Python's str.lower
// and str.upper (including final sigma and one-to-many mappings such as ß -> SS).
std::string IcuCaseMap(std::string_view s, bool upper) {
  UErrorCode err = U_ZERO_ERROR;
  int32_t len16 = 0;
  u_strFromUTF8WithSub(nullptr, 0, &len16, s.data(), static_cast<int32_t>(s.size()), 0xFFFD,
                       nullptr, &err);
  err = U_ZERO_ERROR;
  std::u16string src(static_cast<size_t>(len16), u'\0');
  u_strFromUTF8WithSub(src.data(), len16, nullptr, s.data(), static_cast<int32_t>(s.size()), 0xFFFD,
                       nullptr, &err);
  if (U_FAILURE(err)) return std::string(s);
  std::u16string dst(src.size() * 3 + 8, u'\0');
  err = U_ZERO_ERROR;
  int32_t n =
      upper
          ? u_strToUpper(dst.data(), static_cast<int32_t>(dst.size()), src.data(), len16, "", &err)
          : u_strToLower(dst.data(), static_cast<int32_t>(dst.size()), src.data(), len16, "", &err);
  if (U_FAILURE(err)) return std::string(s);
  std::string out(static_cast<size_t>(n) * 3 + 4, '\0');
  int32_t n8 = 0;
  err = U_ZERO_ERROR;
  u_strToUTF8(out.data(), static_cast<int32_t>(out.size()), &n8, dst.data(), n, &err);
  if (U_FAILURE(err)) return std::string(s);
  out.resize(static_cast<size_t>(n8));
  return out;
}

}  // namespace

std::string PyLower(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }
  return IcuCaseMap(s, false);
}

std::string PyUpper(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
  }
  return IcuCaseMap(s, true);
}

std::string PyCapitalize(std::string_view s) {
  std::u32string u = ToU32(s);
  if (u.empty()) return "";
  std::string first;
  if (u[0] < internal::kInvalidByteBase) {
    internal::AppendUtf8(static_cast<char32_t>(u_totitle(static_cast<UChar32>(u[0]))), &first);
  } else {
    first = FromU32(std::u32string_view(u).substr(0, 1));
  }
  return first + PyLower(FromU32(std::u32string_view(u).substr(1)));
}

std::string PyTitle(std::string_view s) {
  std::u32string u = ToU32(s);
  std::u32string out;
  bool previous_cased = false;
  for (char32_t cp : u) {
    if (cp >= internal::kInvalidByteBase) {
      out.push_back(cp);
      previous_cased = false;
      continue;
    }
    const UChar32 c = static_cast<UChar32>(cp);
    const bool cased = u_hasBinaryProperty(c, UCHAR_CASED);
    if (previous_cased) {
      out.push_back(static_cast<char32_t>(u_tolower(c)));
    } else {
      out.push_back(static_cast<char32_t>(u_totitle(c)));
    }
    previous_cased = cased;
  }
  return FromU32(out);
}

// ---------------------------------------------------------------------------------------------
// str() and repr()

std::string PyFloatRepr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: scientific when the decimal exponent is
  // below -4 or at least 16, fixed with at least one fractional digit otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e_pos = sci.find('e');
  std::string mantissa = sci.substr(0, e_pos);
  const int exponent = std::stoi(sci.substr(e_pos + 1));
  std::string digits;
  for (char c : mantissa) {
    if (c != '.') digits.push_back(c);
  }
  if (exponent < -4 || exponent >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                  std::abs(exponent));
    return out + exp_buf;
  }
  std::string out;
  if (exponent < 0) {
    out = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  } else {
    const size_t int_digits = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= int_digits) {
      out = digits + std::string(int_digits - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    }
  }
  return sign + out;
}

namespace {

bool IsPrintable(char32_t cp) {
  if (cp == ' ') return true;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

std::string StringRepr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  char buf[16];
  for (char32_t cp : ToU32(s)) {
    if (cp >= internal::kInvalidByteBase) {
      // Not a Python str at all; show the byte the way a surrogateescape string would.
      std::snprintf(buf, sizeof(buf), "\\udc%02x", static_cast<unsigned>(cp & 0xFF));
      out += buf;
    } else if (cp == static_cast<char32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp < 0x20 || cp == 0x7F) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
      out += buf;
    } else if (cp < 0x7F || IsPrintable(cp)) {
      internal::AppendUtf8(cp, &out);
    } else if (cp <= 0xFF) {
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
      out += buf;
    } else if (cp <= 0xFFFF) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
      out += buf;
    } else {
      std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(cp));
      out += buf;
    }
  }
  out.push_back(quote);
  return out;
}

}  // namespace

std::string PyRepr(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return "Undefined";
    case Kind::kString:
      return StringRepr(v.str());
    case Kind::kList: {
      std::string out = v.is_tuple() ? "(" : "[";
      for (size_t i = 0; i < v.list().size(); ++i) {
        if (i > 0) out += ", ";
        out += PyRepr(v.list()[i]);
      }
      if (v.is_tuple() && v.list().size() == 1) out += ",";
      out += v.is_tuple() ? ")" : "]";
      return out;
    }
    case Kind::kDict:
    case Kind::kLoop: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, val] : v.dict().items) {
        if (!first) out += ", ";
        first = false;
        out += StringRepr(k) + ": " + PyRepr(val);
      }
      return out + "}";
    }
    case Kind::kNamespace: {
      std::string out = "<Namespace {";
      bool first = true;
      for (const auto& [k, val] : v.dict().items) {
        if (!first) out += ", ";
        first = false;
        out += StringRepr(k) + ": " + PyRepr(val);
      }
      return out + "}>";
    }
    default:
      return PyStr(v);
  }
}

std::string PyStr(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return "";
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return v.bool_value() ? "True" : "False";
    case Kind::kInt:
      return std::to_string(v.int_value());
    case Kind::kFloat:
      return PyFloatRepr(v.float_value());
    case Kind::kString:
      return v.str();
    case Kind::kCallable:
      return "<function " + v.callable().name + ">";
    default:
      return PyRepr(v);
  }
}

// ---------------------------------------------------------------------------------------------
// Comparisons

bool PyEquals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) return a.AsDouble() == b.AsDouble();
    return a.int_value() == b.int_value();
  }
  if (a.kind() != b.kind()) {
    // Dict-like kinds of different flavours (loop vs dict) are still never equal in Python.
    return false;
  }
  switch (a.kind()) {
    case Kind::kUndefined:
    case Kind::kNone:
      return true;
    case Kind::kString:
      return a.str() == b.str();
    case Kind::kList: {
      if (a.is_tuple() != b.is_tuple() || a.list().size() != b.list().size()) return false;
      for (size_t i = 0; i < a.list().size(); ++i) {
        if (!PyEquals(a.list()[i], b.list()[i])) return false;
      }
      return true;
    }
    case Kind::kDict: {
      if (a.dict().items.size() != b.dict().items.size()) return false;
      for (const auto& [k, v] : a.dict().items) {
        const Value* other = b.dict().Find(k);
        if (other == nullptr || !PyEquals(v, *other)) return false;
      }
      return true;
    }
    case Kind::kNamespace:
    case Kind::kLoop:
      return &a.dict() == &b.dict();
    case Kind::kCallable:
      return &a.callable() == &b.callable();
    default:
      return false;
  }
}

Status PyLess(const Value& a, const Value& b, bool* less) {
  if (a.is_number() && b.is_number()) {
    if (a.is_float() || b.is_float()) {
      *less = a.AsDouble() < b.AsDouble();
    } else {
      *less = a.int_value() < b.int_value();
    }
    return Status::Ok();
  }
  if (a.is_string() && b.is_string()) {
    // UTF-8 byte order is code point order, which is Python's string order.
    *less = a.str() < b.str();
    return Status::Ok();
  }
  if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
    const List& x = a.list();
    const List& y = b.list();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (PyEquals(x[i], y[i])) continue;
      return PyLess(x[i], y[i], less);
    }
    *less = x.size() < y.size();
    return Status::Ok();
  }
  return InvalidArgument("TypeError: '<' not supported between instances of '{}' and '{}'",
                         a.TypeName(), b.TypeName());
}

// ---------------------------------------------------------------------------------------------
// json.dumps

namespace {

void JsonString(std::string_view s, bool ensure_ascii, std::string* out) {
  char buf[16];
  out->push_back('"');
  const auto escape_cp = [&](char32_t cp) {
    std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
    *out += buf;
  };
  for (char32_t cp : ToU32(s)) {
    switch (cp) {
      case '"':
        *out += "\\\"";
        continue;
      case '\\':
        *out += "\\\\";
        continue;
      case '\n':
        *out += "\\n";
        continue;
      case '\r':
        *out += "\\r";
        continue;
      case '\t':
        *out += "\\t";
        continue;
      case '\b':
        *out += "\\b";
        continue;
      case '\f':
        *out += "\\f";
        continue;
      default:
        break;
    }
    if (cp >= internal::kInvalidByteBase) {
      out->push_back(static_cast<char>(cp - internal::kInvalidByteBase));
    } else if (cp < 0x20) {
      escape_cp(cp);
    } else if (ensure_ascii && cp > 0x7E) {
      if (cp > 0xFFFF) {
        const char32_t v = cp - 0x10000;
        escape_cp(0xD800 + (v >> 10));
        escape_cp(0xDC00 + (v & 0x3FF));
      } else {
        escape_cp(cp);
      }
    } else {
      internal::AppendUtf8(cp, out);
    }
  }
  out->push_back('"');
}

Status JsonDumpsInto(const Value& v, const JsonDumpOptions& o, int depth, std::string* out) {
  if (depth > 512) return InvalidArgument("ValueError: JSON nesting too deep");
  const auto newline = [&](int level) {
    if (!o.has_indent) return;
    out->push_back('\n');
    std::string unit = o.indent_str.empty()
                           ? std::string(static_cast<size_t>(std::max(o.indent, 0)), ' ')
                           : o.indent_str;
    for (int i = 0; i < level; ++i) *out += unit;
  };
  switch (v.kind()) {
    case Kind::kNone:
      *out += "null";
      return Status::Ok();
    case Kind::kBool:
      *out += v.bool_value() ? "true" : "false";
      return Status::Ok();
    case Kind::kInt:
      *out += std::to_string(v.int_value());
      return Status::Ok();
    case Kind::kFloat: {
      const double d = v.float_value();
      if (std::isnan(d)) {
        *out += "NaN";
      } else if (std::isinf(d)) {
        *out += d < 0 ? "-Infinity" : "Infinity";
      } else {
        *out += PyFloatRepr(d);
      }
      return Status::Ok();
    }
    case Kind::kString:
      JsonString(v.str(), o.ensure_ascii, out);
      return Status::Ok();
    case Kind::kList: {
      if (v.list().empty()) {
        *out += "[]";
        return Status::Ok();
      }
      out->push_back('[');
      bool first = true;
      for (const Value& item : v.list()) {
        if (!first) *out += o.item_separator;
        first = false;
        newline(depth + 1);
        HW_RETURN_IF_ERROR(JsonDumpsInto(item, o, depth + 1, out));
      }
      newline(depth);
      out->push_back(']');
      return Status::Ok();
    }
    case Kind::kDict: {
      if (v.dict().items.empty()) {
        *out += "{}";
        return Status::Ok();
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& item : v.dict().items) items.push_back(&item);
      if (o.sort_keys) {
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* a, const auto* b) { return a->first < b->first; });
      }
      out->push_back('{');
      bool first = true;
      for (const auto* item : items) {
        if (!first) *out += o.item_separator;
        first = false;
        newline(depth + 1);
        JsonString(item->first, o.ensure_ascii, out);
        *out += o.key_separator;
        HW_RETURN_IF_ERROR(JsonDumpsInto(item->second, o, depth + 1, out));
      }
      newline(depth);
      out->push_back('}');
      return Status::Ok();
    }
    default:
      return InvalidArgument("TypeError: Object of type {} is not JSON serializable", v.TypeName());
  }
}

template <typename J>
Value FromJsonImpl(const J& j) {
  switch (j.type()) {
    case J::value_t::null:
    case J::value_t::discarded:
      return Value::None();
    case J::value_t::boolean:
      return Value::Bool(j.template get<bool>());
    case J::value_t::number_integer:
      return Value::Int(j.template get<int64_t>());
    case J::value_t::number_unsigned: {
      const uint64_t u = j.template get<uint64_t>();
      // Beyond int64 Python would still have an int; a float is the closest we keep.
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::Float(static_cast<double>(u));
      return Value::Int(static_cast<int64_t>(u));
    }
    case J::value_t::number_float:
      return Value::Float(j.template get<double>());
    case J::value_t::string:
      return Value::String(j.template get<std::string>());
    case J::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(FromJsonImpl(item));
      return Value::MakeList(std::move(items));
    }
    case J::value_t::object: {
      Dict dict;
      dict.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        dict.items.emplace_back(it.key(), FromJsonImpl(it.value()));
      }
      return Value::MakeDict(std::move(dict));
    }
    case J::value_t::binary:
      return Value::None();
  }
  return Value::None();
}

}  // namespace

StatusOr<std::string> JsonDumps(const Value& v, const JsonDumpOptions& options) {
  std::string out;
  HW_RETURN_IF_ERROR(JsonDumpsInto(v, options, 0, &out));
  return out;
}

Value FromJson(const nlohmann::json& j) {
  return FromJsonImpl(j);
}
Value FromJson(const nlohmann::ordered_json& j) {
  return FromJsonImpl(j);
}

}  // namespace headwise::tokenizer::jinja
