#include "tokenizer/jinja_value.h"

#include <unicode/casemap.h>
#include <unicode/uchar.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

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

namespace {

thread_local AllocationBudget* active_budget = nullptr;

uint64_t SaturatingAdd(uint64_t a, uint64_t b) {
  constexpr uint64_t kMax = UINT64_MAX / 4;
  return a >= kMax || b >= kMax || a + b >= kMax ? kMax : a + b;
}

// repr() of a scalar is at most this long ("-9223372036854775808", "1.7976931348623157e+308").
constexpr uint64_t kScalarWeight = 24;

}  // namespace

AllocationBudget::AllocationBudget(uint64_t max_bytes)
    : max_bytes_(max_bytes), previous_(active_budget) {
  active_budget = this;
}

AllocationBudget::~AllocationBudget() {
  active_budget = previous_;
}

void AllocationBudget::Charge(uint64_t bytes) {
  if (active_budget != nullptr)
    active_budget->allocated_ = SaturatingAdd(active_budget->allocated_, bytes);
}

Value Value::Undefined(std::string hint) {
  Value v;
  if (!hint.empty()) v.obj_ = std::make_shared<std::string>(std::move(hint));
  return v;
}
Value Value::None() {
  Value v;
  v.kind_ = Kind::kNone;
  v.weight_ = kScalarWeight;
  return v;
}
Value Value::Bool(bool b) {
  Value v;
  v.kind_ = Kind::kBool;
  v.i_ = b ? 1 : 0;
  v.weight_ = kScalarWeight;
  return v;
}
Value Value::Int(int64_t i) {
  Value v;
  v.kind_ = Kind::kInt;
  v.i_ = i;
  v.weight_ = kScalarWeight;
  return v;
}
Value Value::Float(double f) {
  Value v;
  v.kind_ = Kind::kFloat;
  v.f_ = f;
  v.weight_ = kScalarWeight;
  return v;
}
Value Value::String(std::string s) {
  Value v;
  v.kind_ = Kind::kString;
  v.weight_ = s.size() + 2;
  AllocationBudget::Charge(s.size());
  v.obj_ = std::make_shared<std::string>(std::move(s));
  return v;
}
Value Value::MakeList(List items, bool tuple) {
  Value v;
  v.kind_ = Kind::kList;
  v.tuple_ = tuple;
  v.weight_ = 2;
  for (const Value& item : items) {
    v.weight_ = SaturatingAdd(v.weight_, item.weight() + 2);
    v.depth_ = std::max(v.depth_, item.depth() + 1);
    v.holds_namespace_ = v.holds_namespace_ || item.is_namespace() || item.holds_namespace_;
  }
  v.depth_ = std::max<uint32_t>(v.depth_, 1);
  AllocationBudget::Charge(items.size() * sizeof(Value));
  v.obj_ = std::make_shared<List>(std::move(items));
  return v;
}
Value Value::MakeDict(Dict dict) {
  return DictOf(std::move(dict), Kind::kDict);
}
Value Value::MakeNamespace(Dict dict) {
  return DictOf(std::move(dict), Kind::kNamespace);
}
Value Value::MakeLoop(Dict dict) {
  return DictOf(std::move(dict), Kind::kLoop);
}
Value Value::DictOf(Dict dict, Kind kind) {
  Value v;
  v.kind_ = kind;
  v.weight_ = 2;
  for (const auto& [k, item] : dict.items) {
    v.weight_ = SaturatingAdd(v.weight_, k.size() + 6 + item.weight());
    v.depth_ = std::max(v.depth_, item.depth() + 1);
    v.holds_namespace_ = v.holds_namespace_ || item.is_namespace() || item.holds_namespace_;
  }
  v.depth_ = std::max<uint32_t>(v.depth_, 1);
  // A loop object is built for every iteration and gone after it: the iteration limit bounds
  // those, not the allocation budget.
  if (kind != Kind::kLoop) AllocationBudget::Charge(dict.items.size() * sizeof(dict.items[0]));
  v.obj_ = std::make_shared<Dict>(std::move(dict));
  return v;
}
Value Value::MakeCallable(std::shared_ptr<const Callable> fn) {
  Value v;
  v.kind_ = Kind::kCallable;
  // A bound method keeps its receiver alive, and so counts it.
  v.weight_ = SaturatingAdd(kScalarWeight, fn->receiver.weight());
  v.depth_ = fn->receiver.depth();
  v.holds_namespace_ = fn->receiver.is_namespace() || fn->receiver.holds_namespace_;
  v.obj_ = std::const_pointer_cast<Callable>(std::move(fn));
  return v;
}

const std::string& Value::str() const {
  static const std::string kEmpty;
  if ((kind_ != Kind::kString && kind_ != Kind::kUndefined) || obj_ == nullptr) return kEmpty;
  return *static_cast<const std::string*>(obj_.get());
}

uint32_t Value::depth() const {
  if (kind_ != Kind::kNamespace) return depth_;
  // Namespaces change after they are built; what they hold never holds a namespace (the
  // evaluator sees to it), so this is one level of items.
  uint32_t d = 1;
  for (const auto& [k, v] : dict().items) d = std::max(d, v.depth() + 1);
  return d;
}

uint64_t Value::weight() const {
  if (kind_ != Kind::kNamespace) return weight_;
  uint64_t w = 16;
  for (const auto& [k, v] : dict().items) w = SaturatingAdd(w, k.size() + 6 + v.weight());
  return w;
}

bool Value::Truthy() const {
  switch (kind_) {
    case Kind::kUndefined:
    case Kind::kNone:
      return false;
    case Kind::kBool:
      return i_ != 0;
    case Kind::kInt:
      return i_ != 0;
    case Kind::kFloat:
      return f_ != 0;
    case Kind::kString:
      return !str().empty();
    case Kind::kList:
      return !list().empty();
    case Kind::kDict:
      return !dict().items.empty();
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
  const auto too_many = [] {
    return ResourceExhausted("str.split() would make more than {} parts", kMaxListItems);
  };
  List out;
  if (sep != nullptr) {
    if (sep->empty()) return InvalidArgument("ValueError: empty separator");
    std::vector<std::string_view> parts;
    if (!right) {
      size_t pos = 0;
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        size_t at = FindSubstring(s, *sep, pos);
        if (at == std::string_view::npos) break;
        if (parts.size() >= kMaxListItems) return too_many();
        parts.push_back(s.substr(pos, at - pos));
        pos = at + sep->size();
      }
      parts.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        if (end < sep->size()) break;
        size_t at = RFindSubstring(s.substr(0, end), *sep);
        if (at == std::string_view::npos) break;
        if (parts.size() >= kMaxListItems) return too_many();
        parts.push_back(s.substr(at + sep->size(), end - at - sep->size()));
        end = at;
      }
      parts.push_back(s.substr(0, end));
      std::reverse(parts.begin(), parts.end());
    }
    out.reserve(parts.size());
    for (auto p : parts) out.push_back(Value::String(std::string(p)));
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
      if (parts.size() >= kMaxListItems) return too_many();
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
      if (parts.size() >= kMaxListItems) return too_many();
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
  out.reserve(parts.size());
  for (auto p : parts) out.push_back(Value::String(FromU32(p)));
  return out;
}

namespace {

bool IsAscii(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

enum class CaseOp { kLower, kUpper, kTitle };

// One code point's full case mapping (SpecialCasing's unconditional entries, then
// UnicodeData's simple mapping; a missing titlecase is the uppercase), which is what CPython's
// _PyUnicode_ToLowerFull / ToUpperFull / ToTitleFull give. ICU sees the code point alone, so
// none of its context-dependent rules apply; final sigma is decided by the callers, as CPython
// decides it.
void AppendFullMapping(char32_t cp, CaseOp op, std::u32string* out) {
  if (cp < 0x80) {
    char32_t c = cp;
    if (op == CaseOp::kLower) {
      if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
    } else if (c >= 'a' && c <= 'z') {
      c -= 'a' - 'A';
    }
    out->push_back(c);
    return;
  }
  if (cp >= internal::kInvalidByteBase || (cp >= 0xD800 && cp <= 0xDFFF)) {
    out->push_back(cp);
    return;
  }
  UChar src[2];
  int32_t n = 0;
  U16_APPEND_UNSAFE(src, n, static_cast<UChar32>(cp));
  UChar dst[16];
  UErrorCode err = U_ZERO_ERROR;
  int32_t m = 0;
  switch (op) {
    case CaseOp::kLower:
      m = u_strToLower(dst, 16, src, n, "", &err);
      break;
    case CaseOp::kUpper:
      m = u_strToUpper(dst, 16, src, n, "", &err);
      break;
    case CaseOp::kTitle:
      // The whole (one code point) string is the word, and its first code point is titlecased
      // whatever it is, as CPython does.
      m = icu::CaseMap::toTitle(
          "", U_TITLECASE_WHOLE_STRING | U_TITLECASE_NO_BREAK_ADJUSTMENT | U_TITLECASE_NO_LOWERCASE,
          nullptr, src, n, dst, 16, nullptr, err);
      break;
  }
  if (U_FAILURE(err) || m <= 0 || m > 16) {
    out->push_back(cp);
    return;
  }
  for (int32_t i = 0; i < m;) {
    UChar32 c;
    U16_NEXT(dst, i, m, c);
    out->push_back(static_cast<char32_t>(c));
  }
}

bool IsCased(char32_t cp) {
  return cp < internal::kInvalidByteBase &&
         u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_CASED);
}
bool IsCaseIgnorable(char32_t cp) {
  return cp < internal::kInvalidByteBase &&
         u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_CASE_IGNORABLE);
}

// CPython's handle_capital_sigma: U+03A3 at u[i] lowercases to final sigma when a cased code
// point precedes it and none follows it, case-ignorable code points skipped both ways (a code
// point both cased and case-ignorable is skipped, which is where ICU's rule differs).
char32_t LowerSigma(const std::u32string& u, size_t i) {
  size_t j = i;
  while (j > 0 && IsCaseIgnorable(u[j - 1])) --j;
  bool final_sigma = j > 0 && IsCased(u[j - 1]);
  if (final_sigma) {
    size_t k = i + 1;
    while (k < u.size() && IsCaseIgnorable(u[k])) ++k;
    final_sigma = k == u.size() || !IsCased(u[k]);
  }
  return final_sigma ? 0x3C2 : 0x3C3;
}

// CPython's lower_ucs4: the lowercase of u[i] in the context of the string u.
void AppendLower(const std::u32string& u, size_t i, std::u32string* out) {
  if (u[i] == 0x3A3) {
    out->push_back(LowerSigma(u, i));
  } else {
    AppendFullMapping(u[i], CaseOp::kLower, out);
  }
}

std::string LowerOf(const std::u32string& u, size_t begin, size_t end) {
  // A slice is a string of its own in Python: final sigma looks only inside it.
  const std::u32string part = u.substr(begin, end - begin);
  std::u32string out;
  out.reserve(part.size());
  for (size_t i = 0; i < part.size(); ++i) AppendLower(part, i, &out);
  return FromU32(out);
}

}  // namespace

std::string PyLower(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  }
  const std::u32string u = ToU32(s);
  return LowerOf(u, 0, u.size());
}

std::string PyUpper(std::string_view s) {
  if (IsAscii(s)) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
  }
  std::u32string out;
  for (char32_t cp : ToU32(s)) AppendFullMapping(cp, CaseOp::kUpper, &out);
  return FromU32(out);
}

// CPython's do_capitalize: the first code point titlecased, the rest lowercased in the context
// of the whole string.
std::string PyCapitalize(std::string_view s) {
  const std::u32string u = ToU32(s);
  std::u32string out;
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 0) {
      AppendFullMapping(u[0], CaseOp::kTitle, &out);
    } else {
      AppendLower(u, i, &out);
    }
  }
  return FromU32(out);
}

// CPython's do_title: a code point after a cased one is lowercased, any other titlecased.
std::string PyTitle(std::string_view s) {
  const std::u32string u = ToU32(s);
  std::u32string out;
  bool previous_cased = false;
  for (size_t i = 0; i < u.size(); ++i) {
    if (previous_cased) {
      AppendLower(u, i, &out);
    } else {
      AppendFullMapping(u[i], CaseOp::kTitle, &out);
    }
    previous_cased = IsCased(u[i]);
  }
  return FromU32(out);
}

std::string JinjaTitle(std::string_view s) {
  // re.split(r"([-\s\(\{\[\<]+)", s): separators (re's \s is str.isspace) stay as they are,
  // each piece between them becomes piece[0].upper() + piece[1:].lower().
  const std::u32string u = ToU32(s);
  const auto is_separator = [](char32_t cp) {
    return cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || IsPySpace(cp);
  };
  std::string out;
  size_t i = 0;
  while (i < u.size()) {
    if (is_separator(u[i])) {
      out += FromU32(std::u32string_view(u).substr(i, 1));
      ++i;
      continue;
    }
    size_t end = i;
    while (end < u.size() && !is_separator(u[end])) ++end;
    std::u32string first;
    AppendFullMapping(u[i], CaseOp::kUpper, &first);
    out += FromU32(first);
    out += LowerOf(u, i + 1, end);
    i = end;
  }
  return out;
}

namespace {

// Knuth-Morris-Pratt over accessors, so that one routine searches forwards and backwards:
// the first i with needle(0..m) == hay(i..i+m), or npos. Linear in n + m whatever the text.
template <typename Hay, typename Needle>
size_t KmpSearch(Hay hay, size_t n, Needle needle, size_t m) {
  std::vector<uint32_t> fail(m, 0);
  for (size_t i = 1, k = 0; i < m; ++i) {
    while (k > 0 && needle(i) != needle(k)) k = fail[k - 1];
    if (needle(i) == needle(k)) ++k;
    fail[i] = static_cast<uint32_t>(k);
  }
  for (size_t i = 0, k = 0; i < n; ++i) {
    while (k > 0 && hay(i) != needle(k)) k = fail[k - 1];
    if (hay(i) == needle(k)) ++k;
    if (k == m) return i + 1 - m;
  }
  return std::string_view::npos;
}

// Needles up to this long use the library's search, at most this many times linear.
constexpr size_t kShortNeedle = 32;

}  // namespace

size_t FindSubstring(std::string_view haystack, std::string_view needle, size_t from) {
  if (from > haystack.size()) return std::string_view::npos;
  if (needle.size() <= kShortNeedle) return haystack.find(needle, from);
  const std::string_view rest = haystack.substr(from);
  const size_t at = KmpSearch([&](size_t i) { return rest[i]; }, rest.size(),
                              [&](size_t i) { return needle[i]; }, needle.size());
  return at == std::string_view::npos ? at : from + at;
}

size_t RFindSubstring(std::string_view haystack, std::string_view needle) {
  if (needle.size() <= kShortNeedle) return haystack.rfind(needle);
  const size_t n = haystack.size(), m = needle.size();
  if (m > n) return std::string_view::npos;
  // The first match of the reversed needle in the reversed text is the last match.
  const size_t at = KmpSearch([&](size_t i) { return haystack[n - 1 - i]; }, n,
                              [&](size_t i) { return needle[m - 1 - i]; }, m);
  return at == std::string_view::npos ? at : n - at - m;
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
  // Indentation multiplies the output by the depth: checked as it grows.
  if (out->size() > o.max_bytes) {
    return ResourceExhausted("tojson output exceeds {} bytes", o.max_bytes);
  }
  const auto newline = [&](int level) {
    if (!o.has_indent) return;
    out->push_back('\n');
    std::string unit = o.indent_str.empty()
                           ? std::string(static_cast<size_t>(std::max(o.indent, 0)), ' ')
                           : o.indent_str;
    for (int i = 0; i < level && out->size() <= o.max_bytes; ++i) *out += unit;
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
StatusOr<Value> FromJsonImpl(const J& j, uint32_t depth) {
  if (depth > kMaxValueDepth) {
    return InvalidArgument("JSON input nested deeper than {} levels", kMaxValueDepth);
  }
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
      for (const auto& item : j) {
        HW_ASSIGN_OR_RETURN(Value v, FromJsonImpl(item, depth + 1));
        items.push_back(std::move(v));
      }
      return Value::MakeList(std::move(items));
    }
    case J::value_t::object: {
      Dict dict;
      dict.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) {
        HW_ASSIGN_OR_RETURN(Value v, FromJsonImpl(it.value(), depth + 1));
        dict.items.emplace_back(it.key(), std::move(v));
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
  if (out.size() > options.max_bytes) {
    return ResourceExhausted("tojson output exceeds {} bytes", options.max_bytes);
  }
  return out;
}

StatusOr<Value> FromJson(const nlohmann::json& j) {
  return FromJsonImpl(j, 0);
}
StatusOr<Value> FromJson(const nlohmann::ordered_json& j) {
  return FromJsonImpl(j, 0);
}

}  // namespace headwise::tokenizer::jinja
