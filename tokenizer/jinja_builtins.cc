#include "tokenizer/jinja_builtins.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <unordered_map>

namespace headwise::tokenizer::jinja {
namespace {

// A string or list built by a filter or an operator may not grow past this (the renderer also
// caps its whole output); "x" * 10**9 must fail, not allocate.
constexpr size_t kMaxBuiltValueBytes = 16u << 20;
// jinja2's sandbox refuses longer ranges (jinja2.sandbox.MAX_RANGE), with this message.
constexpr int64_t kMaxRangeLength = 100'000;

Status TypeError(std::string msg) {
  return InvalidArgument("TypeError: {}", msg);
}
Status ValueError(std::string msg) {
  return InvalidArgument("ValueError: {}", msg);
}

// Binds Python-style arguments to parameter names: positional first, then keywords.
class Args {
 public:
  static StatusOr<Args> Bind(std::string_view fn, const CallArgs& call,
                             std::initializer_list<std::string_view> params) {
    Args a;
    a.values_.assign(params.size(), nullptr);
    if (call.args.size() > params.size()) {
      return TypeError(fmt::format("{}() takes at most {} arguments ({} given)", fn, params.size(),
                                   call.args.size()));
    }
    for (size_t i = 0; i < call.args.size(); ++i) a.values_[i] = &call.args[i];
    for (const auto& [key, value] : call.kwargs) {
      size_t i = 0;
      for (std::string_view p : params) {
        if (p == key) break;
        ++i;
      }
      if (i == params.size()) {
        return TypeError(fmt::format("{}() got an unexpected keyword argument '{}'", fn, key));
      }
      if (a.values_[i] != nullptr) {
        return TypeError(fmt::format("{}() got multiple values for argument '{}'", fn, key));
      }
      a.values_[i] = &value;
    }
    return a;
  }
  // The argument, or nullptr when not given.
  const Value* Get(size_t i) const { return values_[i]; }
  bool Has(size_t i) const { return values_[i] != nullptr && !values_[i]->is_undefined(); }

 private:
  std::vector<const Value*> values_;
};

StatusOr<std::string> StringArg(const Value* v, std::string_view what) {
  if (v == nullptr || !v->is_string()) {
    return TypeError(
        fmt::format("{} must be str, not {}", what, v == nullptr ? "nothing" : v->TypeName()));
  }
  return v->str();
}

StatusOr<int64_t> IntArg(const Value* v, std::string_view what) {
  if (v == nullptr || !(v->is_int() || v->is_bool())) {
    return TypeError(fmt::format("{} must be an integer, not {}", what,
                                 v == nullptr ? "nothing" : v->TypeName()));
  }
  return v->int_value();
}

bool ArgTruthy(const Value* v, bool fallback) {
  return v == nullptr ? fallback : v->Truthy();
}

// jinja2's make_attrgetter: "a.b.0" walks items, integer parts as indexes.
StatusOr<Value> AttrPath(const Value& item, const std::string& path) {
  Value cur = item;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? dot : dot - start);
    Value key = Value::String(part);
    if (!part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      key = Value::Int(std::stoll(part));
    }
    HW_ASSIGN_OR_RETURN(cur, GetItem(cur, key));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

Value CodepointString(char32_t cp) {
  return Value::String(FromU32(std::u32string(1, cp)));
}

// Sort key comparison shared by sort, dictsort, min, max, unique: strings compare
// case-insensitively unless case_sensitive, as jinja2's ignore_case does.
Value SortKey(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::String(PyLower(v.str()));
  return v;
}

// Python's hash() as far as equal values must hash alike (1 == 1.0 == True); lists and dicts
// are unhashable, as in Python.
StatusOr<size_t> PyHash(const Value& v) {
  switch (v.kind()) {
    case Kind::kBool:
    case Kind::kInt:
      return std::hash<int64_t>{}(v.int_value());
    case Kind::kFloat: {
      const double d = v.float_value();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) {
        return std::hash<int64_t>{}(static_cast<int64_t>(d));
      }
      return std::hash<double>{}(d);
    }
    case Kind::kString:
      return std::hash<std::string>{}(v.str());
    case Kind::kList: {
      if (!v.is_tuple()) return TypeError("unhashable type: 'list'");
      size_t h = 0x345678;
      for (const Value& item : v.list()) {
        HW_ASSIGN_OR_RETURN(size_t ih, PyHash(item));
        h = h * 1000003 ^ ih;
      }
      return h;
    }
    case Kind::kDict:
    case Kind::kLoop:
      return TypeError("unhashable type: 'dict'");
    default:
      return static_cast<size_t>(v.kind());
  }
}

StatusOr<Value> SortList(List items, bool reverse, bool case_sensitive, const Value* attribute) {
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& item : items) {
    Value key = item;
    if (attribute != nullptr && !attribute->is_none() && !attribute->is_undefined()) {
      HW_ASSIGN_OR_RETURN(key, AttrPath(item, PyStr(*attribute)));
    }
    keyed.emplace_back(SortKey(key, case_sensitive), std::move(item));
  }
  Status error;
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& a, const auto& b) {
    bool less = false;
    Status st = reverse ? PyLess(b.first, a.first, &less) : PyLess(a.first, b.first, &less);
    if (!st.ok() && error.ok()) error = st;
    return less;
  });
  HW_RETURN_IF_ERROR(error);
  List out;
  for (auto& [k, v] : keyed) out.push_back(std::move(v));
  return Value::MakeList(std::move(out));
}

std::string HtmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// Python's round(x, ndigits) (round-half-even on the binary value, close enough for
// templates).
double PyRound(double x, int64_t digits) {
  if (digits == 0) return std::nearbyint(x);
  const double scale = std::pow(10.0, static_cast<double>(digits));
  const double r = std::nearbyint(x * scale) / scale;
  return std::isfinite(r) ? r : x;
}

StatusOr<Value> SelectOrReject(const Value& input, const CallArgs& call, bool select,
                               bool by_attribute) {
  HW_ASSIGN_OR_RETURN(List items, Iterate(input));
  size_t next = 0;
  std::string attribute;
  if (by_attribute) {
    if (call.args.empty()) return TypeError("selectattr/rejectattr need an attribute");
    attribute = PyStr(call.args[0]);
    next = 1;
  }
  std::string test;
  CallArgs test_args;
  if (next < call.args.size()) {
    test = PyStr(call.args[next]);
    test_args.args.assign(call.args.begin() + static_cast<ptrdiff_t>(next) + 1, call.args.end());
    if (!IsKnownTest(test)) return InvalidArgument("no test named '{}'", test);
  }
  test_args.kwargs = call.kwargs;
  List out;
  for (const Value& item : items) {
    Value subject = item;
    if (by_attribute) {
      HW_ASSIGN_OR_RETURN(subject, AttrPath(item, attribute));
    }
    bool ok = false;
    if (test.empty()) {
      ok = subject.Truthy();
    } else {
      HW_ASSIGN_OR_RETURN(ok, ApplyTest(test, subject, test_args));
    }
    if (ok == select) out.push_back(item);
  }
  return Value::MakeList(std::move(out));
}

StatusOr<Value> DoTojson(const Value& input, const CallArgs& call) {
  // transformers' tojson: json.dumps(x, ensure_ascii=False, indent=indent,
  // separators=separators, sort_keys=sort_keys), no HTML escaping.
  HW_ASSIGN_OR_RETURN(
      Args a, Args::Bind("tojson", call, {"ensure_ascii", "indent", "separators", "sort_keys"}));
  JsonDumpOptions o;
  o.ensure_ascii = ArgTruthy(a.Get(0), false);
  if (a.Get(1) != nullptr && !a.Get(1)->is_none()) {
    o.has_indent = true;
    if (a.Get(1)->is_string()) {
      o.indent_str = a.Get(1)->str();
    } else {
      HW_ASSIGN_OR_RETURN(int64_t indent, IntArg(a.Get(1), "indent"));
      o.indent = static_cast<int>(std::clamp<int64_t>(indent, 0, 64));
    }
    o.item_separator = ",";
  }
  if (a.Get(2) != nullptr && !a.Get(2)->is_none()) {
    const Value& sep = *a.Get(2);
    if (!sep.is_list() || sep.list().size() != 2 || !sep.list()[0].is_string() ||
        !sep.list()[1].is_string()) {
      return ValueError("separators must be a pair of strings");
    }
    o.item_separator = sep.list()[0].str();
    o.key_separator = sep.list()[1].str();
  }
  o.sort_keys = ArgTruthy(a.Get(3), false);
  o.max_bytes = kMaxBuiltValueBytes;
  HW_ASSIGN_OR_RETURN(std::string s, JsonDumps(input, o));
  return Value::String(std::move(s));
}

StatusOr<Value> DoIndent(const Value& input, const CallArgs& call) {
  HW_ASSIGN_OR_RETURN(Args a, Args::Bind("indent", call, {"width", "first", "blank"}));
  std::string indent = "    ";
  if (a.Has(0)) {
    if (a.Get(0)->is_string()) {
      indent = a.Get(0)->str();
    } else {
      HW_ASSIGN_OR_RETURN(int64_t w, IntArg(a.Get(0), "width"));
      indent = std::string(static_cast<size_t>(std::clamp<int64_t>(w, 0, 1024)), ' ');
    }
  }
  const bool first = ArgTruthy(a.Get(1), false);
  const bool blank = ArgTruthy(a.Get(2), false);
  std::string s = PyStr(input);
  // jinja2: s += "\n" then splitlines; lines after the first get the indent (blank ones only
  // when blank=True); the trailing newline added is removed again.
  std::string newline = "\n";
  s += newline;
  // Line by line, without a list of lines (a string of newlines would make millions).
  std::string out;
  size_t start = 0;
  for (size_t i = 0; start < s.size(); ++i) {
    const size_t nl = s.find('\n', start);
    const std::string_view line = std::string_view(s).substr(start, nl - start);
    start = nl + 1;
    const bool is_blank = PyStrip(line, nullptr, true, true).empty();
    if (i > 0) out += newline;
    if ((i > 0 || first) && (blank || !is_blank)) out += indent;
    out += line;
    if (out.size() > kMaxBuiltValueBytes) return InvalidArgument("indent result too large");
  }
  return Value::String(std::move(out));
}

StatusOr<Value> DoMap(const Value& input, const CallArgs& call) {
  HW_ASSIGN_OR_RETURN(List items, Iterate(input));
  List out;
  const Value* attribute = nullptr;
  const Value* default_value = nullptr;
  for (const auto& [k, v] : call.kwargs) {
    if (k == "attribute") {
      attribute = &v;
    } else if (k == "default") {
      default_value = &v;
    }
  }
  if (attribute != nullptr) {
    for (const Value& item : items) {
      HW_ASSIGN_OR_RETURN(Value v, AttrPath(item, PyStr(*attribute)));
      if (v.is_undefined() && default_value != nullptr) v = *default_value;
      out.push_back(std::move(v));
    }
    return Value::MakeList(std::move(out));
  }
  if (call.args.empty()) return TypeError("map() needs a filter name or attribute=");
  const std::string filter = PyStr(call.args[0]);
  if (!IsKnownFilter(filter)) return InvalidArgument("no filter named '{}'", filter);
  CallArgs rest;
  rest.args.assign(call.args.begin() + 1, call.args.end());
  rest.kwargs = call.kwargs;
  for (const Value& item : items) {
    HW_ASSIGN_OR_RETURN(Value v, ApplyFilter(filter, item, rest));
    out.push_back(std::move(v));
  }
  return Value::MakeList(std::move(out));
}

StatusOr<Value> MinMax(const Value& input, const CallArgs& call, bool max) {
  HW_ASSIGN_OR_RETURN(Args a,
                      Args::Bind(max ? "max" : "min", call, {"case_sensitive", "attribute"}));
  HW_ASSIGN_OR_RETURN(List items, Iterate(input));
  if (items.empty()) return Value::Undefined("no items for min/max");
  const bool cs = ArgTruthy(a.Get(0), false);
  size_t best = 0;
  Value best_key;
  for (size_t i = 0; i < items.size(); ++i) {
    Value key = items[i];
    if (a.Has(1)) {
      HW_ASSIGN_OR_RETURN(key, AttrPath(items[i], PyStr(*a.Get(1))));
    }
    key = SortKey(key, cs);
    if (i == 0) {
      best_key = key;
      continue;
    }
    bool less = false;
    HW_RETURN_IF_ERROR(max ? PyLess(best_key, key, &less) : PyLess(key, best_key, &less));
    if (less) {
      best = i;
      best_key = key;
    }
  }
  return items[best];
}

StatusOr<Value> DoInt(const Value& input, const CallArgs& call) {
  HW_ASSIGN_OR_RETURN(Args a, Args::Bind("int", call, {"default", "base"}));
  const Value fallback = a.Get(0) != nullptr ? *a.Get(0) : Value::Int(0);
  int base = 10;
  if (a.Has(1)) {
    HW_ASSIGN_OR_RETURN(int64_t b, IntArg(a.Get(1), "base"));
    base = static_cast<int>(b);
  }
  if (input.is_int() || input.is_bool()) return Value::Int(input.int_value());
  if (input.is_float()) {
    if (!std::isfinite(input.float_value())) return fallback;
    return Value::Int(static_cast<int64_t>(input.float_value()));
  }
  if (input.is_string()) {
    std::string s = PyStrip(input.str(), nullptr, true, true);
    std::string digits;
    for (char c : s) {
      if (c != '_') digits.push_back(c);
    }
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(digits.c_str(), &end, base);
    if (!digits.empty() && *end == '\0' && errno == 0) return Value::Int(v);
    // jinja2 falls back to int(float(value)).
    end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0' && std::isfinite(d)) return Value::Int(static_cast<int64_t>(d));
  }
  return fallback;
}

StatusOr<Value> DoFloat(const Value& input, const CallArgs& call) {
  HW_ASSIGN_OR_RETURN(Args a, Args::Bind("float", call, {"default"}));
  const Value fallback = a.Get(0) != nullptr ? *a.Get(0) : Value::Float(0.0);
  if (input.is_number()) return Value::Float(input.AsDouble());
  if (input.is_string()) {
    const std::string s = PyStrip(input.str(), nullptr, true, true);
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && *end == '\0') return Value::Float(d);
  }
  return fallback;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Lookup rules

Status UndefinedError(const Value& undefined) {
  if (!undefined.str().empty()) return InvalidArgument("UndefinedError: {}", undefined.str());
  return InvalidArgument("UndefinedError: a value is undefined");
}

namespace {

bool IsStringMethod(std::string_view n) {
  static constexpr std::string_view kNames[] = {
      "startswith", "endswith",   "split",   "rsplit",     "strip",   "lstrip",  "rstrip",
      "lower",      "upper",      "title",   "capitalize", "replace", "find",    "rfind",
      "count",      "join",       "isdigit", "isalpha",    "isalnum", "isspace", "islower",
      "isupper",    "splitlines", "format",  "index"};
  return std::find(std::begin(kNames), std::end(kNames), n) != std::end(kNames);
}
bool IsDictMethod(std::string_view n) {
  return n == "get" || n == "items" || n == "keys" || n == "values";
}
bool IsListMethod(std::string_view n) {
  return n == "index" || n == "count";
}

Value BoundMethod(const Value& receiver, std::string_view name) {
  auto fn = std::make_shared<Callable>();
  fn->name = std::string(name);
  fn->receiver = receiver;
  return Value::MakeCallable(std::move(fn));
}

}  // namespace

StatusOr<Value> GetAttr(const Value& obj, std::string_view name) {
  switch (obj.kind()) {
    case Kind::kUndefined:
      return UndefinedError(obj);
    case Kind::kString:
      if (IsStringMethod(name)) return BoundMethod(obj, name);
      break;
    case Kind::kDict:
      if (IsDictMethod(name)) return BoundMethod(obj, name);
      if (const Value* v = obj.dict().Find(name)) return *v;
      break;
    case Kind::kLoop:
      if (name == "cycle") return BoundMethod(obj, name);
      if (const Value* v = obj.dict().Find(name)) return *v;
      break;
    case Kind::kNamespace:
      if (const Value* v = obj.dict().Find(name)) return *v;
      break;
    case Kind::kList:
      if (IsListMethod(name)) return BoundMethod(obj, name);
      break;
    default:
      break;
  }
  return Value::Undefined(fmt::format("'{}' object has no attribute '{}'", obj.TypeName(), name));
}

StatusOr<Value> GetItem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (key.is_int() || key.is_bool()) {
    int64_t i = key.int_value();
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.list().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.list()[static_cast<size_t>(i)];
    } else if (obj.is_string()) {
      const std::u32string u = ToU32(obj.str());
      const int64_t n = static_cast<int64_t>(u.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return CodepointString(u[static_cast<size_t>(i)]);
    }
  } else if (key.is_string()) {
    if (obj.is_dict() || obj.is_namespace()) {
      if (const Value* v = obj.dict().Find(key.str())) return *v;
    }
    return GetAttr(obj, key.str());
  }
  return Value::Undefined(
      fmt::format("'{}' object has no element {}", obj.TypeName(), PyRepr(key)));
}

StatusOr<Value> GetSlice(const Value& obj, const Value& start, const Value& stop,
                         const Value& step) {
  if (obj.is_undefined()) return UndefinedError(obj);
  if (!obj.is_list() && !obj.is_string()) return Value::Undefined("object is not sliceable");
  const auto as_index = [](const Value& v, const char* what) -> StatusOr<std::optional<int64_t>> {
    if (v.is_undefined() || v.is_none()) return std::optional<int64_t>();
    if (!v.is_int() && !v.is_bool()) {
      return TypeError(fmt::format("slice {} must be an integer or None", what));
    }
    return std::optional<int64_t>(v.int_value());
  };
  HW_ASSIGN_OR_RETURN(auto st, as_index(start, "start"));
  HW_ASSIGN_OR_RETURN(auto sp, as_index(stop, "stop"));
  HW_ASSIGN_OR_RETURN(auto sz, as_index(step, "step"));
  const int64_t stride = sz.value_or(1);
  if (stride == 0) return ValueError("slice step cannot be zero");
  std::u32string u;
  if (obj.is_string()) u = ToU32(obj.str());
  const int64_t n =
      obj.is_string() ? static_cast<int64_t>(u.size()) : static_cast<int64_t>(obj.list().size());
  // CPython's PySlice_AdjustIndices.
  const auto adjust = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t i = *v;
    if (i < 0) {
      i += n;
      if (i < 0) i = stride < 0 ? -1 : 0;
    } else if (i >= n) {
      i = stride < 0 ? n - 1 : n;
    }
    return i;
  };
  const int64_t b = adjust(st, stride < 0 ? n - 1 : 0);
  const int64_t e = adjust(sp, stride < 0 ? -1 : n);
  std::vector<size_t> idx;
  if (stride > 0) {
    for (int64_t i = b; i < e; i += stride) idx.push_back(static_cast<size_t>(i));
  } else {
    for (int64_t i = b; i > e; i += stride) idx.push_back(static_cast<size_t>(i));
  }
  if (obj.is_string()) {
    std::u32string out;
    for (size_t i : idx) out.push_back(u[i]);
    return Value::String(FromU32(out));
  }
  List out;
  for (size_t i : idx) out.push_back(obj.list()[i]);
  return Value::MakeList(std::move(out), obj.is_tuple());
}

StatusOr<List> Iterate(const Value& v) {
  switch (v.kind()) {
    case Kind::kUndefined:
      return List{};
    case Kind::kList:
      return v.list();
    case Kind::kDict:
    case Kind::kLoop: {
      List keys;
      for (const auto& [k, val] : v.dict().items) keys.push_back(Value::String(k));
      return keys;
    }
    case Kind::kString: {
      if (v.str().size() > kMaxListItems && CodepointCount(v.str()) > kMaxListItems) {
        return ResourceExhausted("iterating over a string of more than {} characters",
                                 kMaxListItems);
      }
      List chars;
      for (char32_t cp : ToU32(v.str())) chars.push_back(CodepointString(cp));
      return chars;
    }
    default:
      return TypeError(fmt::format("'{}' object is not iterable", v.TypeName()));
  }
}

StatusOr<bool> Contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::kUndefined:
      return false;
    case Kind::kString:
      if (!item.is_string()) {
        return TypeError(
            fmt::format("'in <string>' requires string as left operand, not {}", item.TypeName()));
      }
      return FindSubstring(container.str(), item.str()) != std::string::npos;
    case Kind::kList:
      for (const Value& v : container.list()) {
        if (PyEquals(v, item)) return true;
      }
      return false;
    case Kind::kDict:
    case Kind::kLoop:
      return item.is_string() && container.dict().Find(item.str()) != nullptr;
    default:
      return TypeError(fmt::format("argument of type '{}' is not iterable", container.TypeName()));
  }
}

StatusOr<std::string> PercentFormat(std::string_view fmt_str, const Value& args) {
  List values;
  if (args.is_tuple()) {
    values = args.list();
  } else {
    values.push_back(args);
  }
  size_t next = 0;
  std::string out;
  for (size_t i = 0; i < fmt_str.size(); ++i) {
    if (fmt_str[i] != '%') {
      out.push_back(fmt_str[i]);
      continue;
    }
    if (++i >= fmt_str.size()) return ValueError("incomplete format");
    std::string spec = "%";
    while (i < fmt_str.size() && std::strchr("-+ #0123456789.", fmt_str[i]) != nullptr) {
      spec.push_back(fmt_str[i++]);
    }
    if (i >= fmt_str.size()) return ValueError("incomplete format");
    const char conv = fmt_str[i];
    if (conv == '%') {
      out.push_back('%');
      continue;
    }
    if (next >= values.size()) return TypeError("not enough arguments for format string");
    const Value& v = values[next++];
    char buf[512];
    switch (conv) {
      case 's':
      case 'r': {
        const std::string s = conv == 's' ? PyStr(v) : PyRepr(v);
        if (spec == "%") {
          out += s;
        } else {
          std::snprintf(buf, sizeof(buf), (spec + "s").c_str(), s.c_str());
          out += buf;
        }
        break;
      }
      case 'd':
      case 'i':
      case 'x':
      case 'X': {
        if (!v.is_number()) return TypeError("%d format: a real number is required");
        const long long n = v.is_float() ? static_cast<long long>(v.float_value())
                                         : static_cast<long long>(v.int_value());
        std::snprintf(buf, sizeof(buf), (spec + "ll" + (conv == 'i' ? 'd' : conv)).c_str(), n);
        out += buf;
        break;
      }
      case 'f':
      case 'e':
      case 'g': {
        if (!v.is_number()) return TypeError("must be real number");
        std::snprintf(buf, sizeof(buf), (spec + conv).c_str(), v.AsDouble());
        out += buf;
        break;
      }
      default:
        return ValueError(fmt::format("unsupported format character '{}'", conv));
    }
  }
  if (next < values.size() && args.is_tuple()) {
    return TypeError("not all arguments converted during string formatting");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Filters

bool IsKnownFilter(std::string_view name) {
  static constexpr std::string_view kNames[] = {
      "abs",     "attr",     "batch",  "capitalize", "center",     "count",      "d",
      "default", "dictsort", "e",      "escape",     "first",      "float",      "format",
      "indent",  "int",      "items",  "join",       "last",       "length",     "list",
      "lower",   "map",      "max",    "min",        "reject",     "rejectattr", "replace",
      "reverse", "round",    "safe",   "select",     "selectattr", "sort",       "string",
      "sum",     "title",    "tojson", "trim",       "unique",     "upper",      "wordcount"};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

StatusOr<Value> ApplyFilter(std::string_view name, const Value& input, const CallArgs& call) {
  // Filters that accept undefined input; everything else treats it as jinja2's Undefined does.
  if (name == "default" || name == "d") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("default", call, {"default_value", "boolean"}));
    const bool use_default =
        input.is_undefined() || (ArgTruthy(a.Get(1), false) && !input.Truthy());
    if (!use_default) return input;
    return a.Get(0) != nullptr ? *a.Get(0) : Value::String("");
  }
  if (name == "tojson") return DoTojson(input, call);
  if (name == "length" || name == "count") {
    switch (input.kind()) {
      case Kind::kUndefined:
        return Value::Int(0);
      case Kind::kString:
        return Value::Int(static_cast<int64_t>(CodepointCount(input.str())));
      case Kind::kList:
        return Value::Int(static_cast<int64_t>(input.list().size()));
      case Kind::kDict:
      case Kind::kLoop:
        return Value::Int(static_cast<int64_t>(input.dict().items.size()));
      default:
        return TypeError(fmt::format("object of type '{}' has no len()", input.TypeName()));
    }
  }
  if (name == "string") return Value::String(PyStr(input));
  if (name == "safe") return input;
  if (name == "trim") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("trim", call, {"chars"}));
    std::string chars;
    if (a.Has(0)) {
      HW_ASSIGN_OR_RETURN(chars, StringArg(a.Get(0), "chars"));
    }
    return Value::String(PyStrip(PyStr(input), a.Has(0) ? &chars : nullptr, true, true));
  }
  if (name == "lower") return Value::String(PyLower(PyStr(input)));
  if (name == "upper") return Value::String(PyUpper(PyStr(input)));
  if (name == "capitalize") return Value::String(PyCapitalize(PyStr(input)));
  if (name == "title") return Value::String(JinjaTitle(PyStr(input)));
  if (name == "escape" || name == "e") return Value::String(HtmlEscape(PyStr(input)));
  if (name == "wordcount") {
    HW_ASSIGN_OR_RETURN(List words, PySplit(PyStr(input), nullptr, -1, false));
    return Value::Int(static_cast<int64_t>(words.size()));
  }
  if (name == "center") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("center", call, {"width"}));
    int64_t width = 80;
    if (a.Has(0)) {
      HW_ASSIGN_OR_RETURN(width, IntArg(a.Get(0), "width"));
    }
    const std::u32string s = ToU32(PyStr(input));
    const int64_t n = static_cast<int64_t>(s.size());
    if (width <= n) return Value::String(PyStr(input));
    width = std::min<int64_t>(width, 1 << 20);
    // CPython: left = pad / 2 + (pad & width & 1).
    const int64_t pad = width - n;
    const int64_t left = pad / 2 + (pad & width & 1);
    return Value::String(std::string(static_cast<size_t>(left), ' ') + PyStr(input) +
                         std::string(static_cast<size_t>(pad - left), ' '));
  }
  if (name == "indent") return DoIndent(input, call);
  if (name == "replace") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("replace", call, {"old", "new", "count"}));
    CallArgs method_args;
    method_args.args.push_back(Value::String(PyStr(a.Get(0) ? *a.Get(0) : Value())));
    method_args.args.push_back(Value::String(PyStr(a.Get(1) ? *a.Get(1) : Value())));
    if (a.Has(2)) method_args.args.push_back(*a.Get(2));
    return CallMethod(Value::String(PyStr(input)), "replace", method_args);
  }
  if (name == "format") {
    Value args;
    if (call.args.size() == 1) {
      args = call.args[0];
      if (args.is_tuple()) args = Value::MakeList(List{args}, true);
    } else {
      args = Value::MakeList(call.args, true);
    }
    HW_ASSIGN_OR_RETURN(std::string s, PercentFormat(PyStr(input), args));
    return Value::String(std::move(s));
  }
  if (name == "int") return DoInt(input, call);
  if (name == "float") return DoFloat(input, call);
  if (name == "abs") {
    if (input.is_float()) return Value::Float(std::fabs(input.float_value()));
    if (input.is_int() || input.is_bool()) return Value::Int(std::llabs(input.int_value()));
    return TypeError(fmt::format("bad operand type for abs(): '{}'", input.TypeName()));
  }
  if (name == "round") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("round", call, {"precision", "method"}));
    int64_t precision = 0;
    if (a.Has(0)) {
      HW_ASSIGN_OR_RETURN(precision, IntArg(a.Get(0), "precision"));
    }
    std::string method = "common";
    if (a.Has(1)) method = PyStr(*a.Get(1));
    if (!input.is_number()) return TypeError("round() needs a number");
    if (method == "common") {
      if (!input.is_float()) return Value::Int(input.int_value());
      return Value::Float(PyRound(input.float_value(), precision));
    }
    const double scale = std::pow(10.0, static_cast<double>(precision));
    const double x = input.AsDouble() * scale;
    if (method == "ceil") return Value::Float(std::ceil(x) / scale);
    if (method == "floor") return Value::Float(std::floor(x) / scale);
    return InvalidArgument("FilterArgumentError: method must be common, ceil or floor");
  }
  if (name == "attr") {
    if (call.args.size() != 1) return TypeError("attr() takes one argument");
    return GetAttr(input, PyStr(call.args[0]));
  }

  // Filters over sequences.
  if (name == "first" || name == "last") {
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    if (items.empty()) return Value::Undefined(fmt::format("no {} item, sequence was empty", name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "items") {
    if (input.is_undefined()) return Value::MakeList({});
    if (!input.is_dict()) return TypeError("can only get item pairs from a mapping");
    List out;
    for (const auto& [k, v] : input.dict().items) {
      out.push_back(Value::MakeList({Value::String(k), v}, true));
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "list") {
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    return Value::MakeList(std::move(items));
  }
  if (name == "join") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("join", call, {"d", "attribute"}));
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    const std::string sep = a.Get(0) != nullptr ? PyStr(*a.Get(0)) : "";
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += sep;
      Value item = items[i];
      if (a.Has(1)) {
        HW_ASSIGN_OR_RETURN(item, AttrPath(item, PyStr(*a.Get(1))));
      }
      out += PyStr(item);
      if (out.size() > kMaxBuiltValueBytes) return InvalidArgument("join result too large");
    }
    return Value::String(std::move(out));
  }
  if (name == "reverse") {
    if (input.is_string()) {
      std::u32string u = ToU32(input.str());
      std::reverse(u.begin(), u.end());
      return Value::String(FromU32(u));
    }
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    std::reverse(items.begin(), items.end());
    return Value::MakeList(std::move(items));
  }
  if (name == "sort") {
    HW_ASSIGN_OR_RETURN(Args a,
                        Args::Bind("sort", call, {"reverse", "case_sensitive", "attribute"}));
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    return SortList(std::move(items), ArgTruthy(a.Get(0), false), ArgTruthy(a.Get(1), false),
                    a.Get(2));
  }
  if (name == "dictsort") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("dictsort", call, {"case_sensitive", "by", "reverse"}));
    if (!input.is_dict()) return InvalidArgument("FilterArgumentError: dictsort needs a dict");
    const bool by_value = a.Has(1) && PyStr(*a.Get(1)) == "value";
    List pairs;
    for (const auto& [k, v] : input.dict().items) {
      pairs.push_back(Value::MakeList({Value::String(k), v}, true));
    }
    const Value key_index = Value::String(by_value ? "1" : "0");
    return SortList(std::move(pairs), ArgTruthy(a.Get(2), false), ArgTruthy(a.Get(0), false),
                    &key_index);
  }
  if (name == "unique") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("unique", call, {"case_sensitive", "attribute"}));
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    // jinja2 keeps a set of the keys seen: hashed here too (a list of seen keys would make a
    // long input quadratic), equal keys found by ==.
    List out;
    List seen;
    std::unordered_multimap<size_t, size_t> by_hash;
    for (const Value& item : items) {
      Value key = item;
      if (a.Has(1)) {
        HW_ASSIGN_OR_RETURN(key, AttrPath(item, PyStr(*a.Get(1))));
      }
      key = SortKey(key, ArgTruthy(a.Get(0), false));
      HW_ASSIGN_OR_RETURN(size_t h, PyHash(key));
      bool dup = false;
      const auto [begin, end] = by_hash.equal_range(h);
      for (auto it = begin; it != end && !dup; ++it) dup = PyEquals(seen[it->second], key);
      if (!dup) {
        by_hash.emplace(h, seen.size());
        seen.push_back(key);
        out.push_back(item);
      }
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "min" || name == "max") return MinMax(input, call, name == "max");
  if (name == "sum") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("sum", call, {"attribute", "start"}));
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    Value total = a.Get(1) != nullptr ? *a.Get(1) : Value::Int(0);
    for (const Value& item : items) {
      Value v = item;
      if (a.Has(0)) {
        HW_ASSIGN_OR_RETURN(v, AttrPath(item, PyStr(*a.Get(0))));
      }
      if (!v.is_number() || !total.is_number()) return TypeError("sum() needs numbers");
      if (v.is_float() || total.is_float()) {
        total = Value::Float(total.AsDouble() + v.AsDouble());
      } else {
        total = Value::Int(total.int_value() + v.int_value());
      }
    }
    return total;
  }
  if (name == "map") return DoMap(input, call);
  if (name == "select") return SelectOrReject(input, call, true, false);
  if (name == "reject") return SelectOrReject(input, call, false, false);
  if (name == "selectattr") return SelectOrReject(input, call, true, true);
  if (name == "rejectattr") return SelectOrReject(input, call, false, true);
  if (name == "batch") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("batch", call, {"linecount", "fill_with"}));
    HW_ASSIGN_OR_RETURN(int64_t n, IntArg(a.Get(0), "linecount"));
    if (n <= 0) return ValueError("batch size must be positive");
    if (n > static_cast<int64_t>(kMaxListItems)) {
      return ResourceExhausted("batch size over {} is refused", kMaxListItems);
    }
    HW_ASSIGN_OR_RETURN(List items, Iterate(input));
    List out;
    List cur;
    for (const Value& item : items) {
      cur.push_back(item);
      if (static_cast<int64_t>(cur.size()) == n) {
        out.push_back(Value::MakeList(std::move(cur)));
        cur.clear();
      }
    }
    if (!cur.empty()) {
      if (a.Get(1) != nullptr) {
        while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*a.Get(1));
      }
      out.push_back(Value::MakeList(std::move(cur)));
    }
    return Value::MakeList(std::move(out));
  }
  return InvalidArgument("no filter named '{}'", name);
}

// ---------------------------------------------------------------------------------------------
// Tests

bool IsKnownTest(std::string_view name) {
  static constexpr std::string_view kNames[] = {
      "boolean", "callable",  "defined", "divisibleby", "eq",     "equalto",     "escaped",
      "even",    "false",     "float",   "ge",          "gt",     "greaterthan", "in",
      "integer", "iterable",  "le",      "lessthan",    "lower",  "lt",          "mapping",
      "ne",      "none",      "number",  "odd",         "sameas", "sequence",    "string",
      "true",    "undefined", "upper",   "==",          "!=",     "<",           "<=",
      ">",       ">="};
  return std::find(std::begin(kNames), std::end(kNames), name) != std::end(kNames);
}

StatusOr<bool> ApplyTest(std::string_view name, const Value& v, const CallArgs& call) {
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.bool_value();
  if (name == "false") return v.is_bool() && !v.bool_value();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "mapping") return v.is_dict();
  if (name == "callable") return v.is_callable();
  if (name == "escaped") return false;
  if (name == "iterable") {
    return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  }
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict();
  if (name == "lower") return v.is_string() && PyLower(v.str()) == v.str();
  if (name == "upper") return v.is_string() && PyUpper(v.str()) == v.str();
  if (name == "odd" || name == "even") {
    if (!(v.is_int() || v.is_bool())) return TypeError("odd/even need an integer");
    const bool odd = (v.int_value() % 2) != 0;
    return name == "odd" ? odd : !odd;
  }
  // Tests with one argument.
  if (call.args.size() != 1 || !call.kwargs.empty()) {
    return TypeError(fmt::format("test '{}' takes exactly one argument", name));
  }
  const Value& other = call.args[0];
  if (name == "divisibleby") {
    if (!(v.is_int() || v.is_bool()) || !(other.is_int() || other.is_bool())) {
      return TypeError("divisibleby needs integers");
    }
    if (other.int_value() == 0) return InvalidArgument("ZeroDivisionError: integer modulo by zero");
    return v.int_value() % other.int_value() == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return PyEquals(v, other);
  if (name == "ne" || name == "!=") return !PyEquals(v, other);
  if (name == "sameas") {
    // `is` identity: singletons (None, True, False) and, loosely, equal small values.
    if (v.is_none() || other.is_none()) return v.is_none() && other.is_none();
    if (v.is_bool() || other.is_bool()) {
      return v.is_bool() && other.is_bool() && v.bool_value() == other.bool_value();
    }
    return v.kind() == other.kind() && PyEquals(v, other);
  }
  if (name == "in") {
    return Contains(other, v);
  }
  bool less = false;
  if (name == "lt" || name == "lessthan" || name == "<") {
    HW_RETURN_IF_ERROR(PyLess(v, other, &less));
    return less;
  }
  if (name == "gt" || name == "greaterthan" || name == ">") {
    HW_RETURN_IF_ERROR(PyLess(other, v, &less));
    return less;
  }
  if (name == "le" || name == "<=") {
    HW_RETURN_IF_ERROR(PyLess(other, v, &less));
    return !less;
  }
  if (name == "ge" || name == ">=") {
    HW_RETURN_IF_ERROR(PyLess(v, other, &less));
    return !less;
  }
  return InvalidArgument("no test named '{}'", name);
}

// ---------------------------------------------------------------------------------------------
// Globals

bool IsGlobalFunction(std::string_view name) {
  return name == "namespace" || name == "range" || name == "dict" || name == "raise_exception" ||
         name == "strftime_now";
}

Value GlobalFunction(std::string_view name) {
  auto fn = std::make_shared<Callable>();
  fn->name = std::string(name);
  return Value::MakeCallable(std::move(fn));
}

StatusOr<Value> CallGlobal(std::string_view name, const CallArgs& call) {
  if (name == "raise_exception") {
    // transformers: raise TemplateError(message); the message is what the user sees.
    if (call.args.empty()) return InvalidArgument("raise_exception() called without a message");
    return InvalidArgument("{}", PyStr(call.args[0]));
  }
  if (name == "namespace" || name == "dict") {
    Dict d;
    for (const Value& arg : call.args) {
      if (!arg.is_dict()) {
        return TypeError(fmt::format("{}() positional argument must be a dict", name));
      }
      for (const auto& [k, v] : arg.dict().items) d.Set(k, v);
    }
    for (const auto& [k, v] : call.kwargs) d.Set(k, v);
    return name == "namespace" ? Value::MakeNamespace(std::move(d)) : Value::MakeDict(std::move(d));
  }
  if (name == "range") {
    if (!call.kwargs.empty() || call.args.empty() || call.args.size() > 3) {
      return TypeError("range expected 1 to 3 integer arguments");
    }
    int64_t bounds[3] = {0, 0, 1};
    for (size_t i = 0; i < call.args.size(); ++i) {
      HW_ASSIGN_OR_RETURN(int64_t v, IntArg(&call.args[i], "range() argument"));
      bounds[call.args.size() == 1 ? 1 : i] = v;
    }
    const int64_t start = bounds[0], stop = bounds[1], step = bounds[2];
    if (step == 0) return ValueError("range() arg 3 must not be zero");
    // The length first (in 128 bits: stop - start may not fit in 64), so that range(10**12)
    // fails at once instead of counting.
    const __int128 span = static_cast<__int128>(stop) - start;
    const __int128 length = step > 0 ? (span <= 0 ? 0 : (span + step - 1) / step)
                                     : (span >= 0 ? 0
                                                  : (-span + (-static_cast<__int128>(step)) - 1) /
                                                        (-static_cast<__int128>(step)));
    if (length > kMaxRangeLength) {
      return InvalidArgument(
          "OverflowError: Range too big. The sandbox blocks ranges larger than MAX_RANGE ({}).",
          kMaxRangeLength);
    }
    List out;
    out.reserve(static_cast<size_t>(length));
    // Each value lies between start and stop, so it fits; k * step alone may not (found by
    // UBSan: range(-2**62, 2**62, 2**62)), so the product is taken in 128 bits.
    for (int64_t k = 0; k < static_cast<int64_t>(length); ++k) {
      out.push_back(Value::Int(
          static_cast<int64_t>(static_cast<__int128>(start) + static_cast<__int128>(k) * step)));
    }
    return Value::MakeList(std::move(out));
  }
  if (name == "strftime_now") {
    if (call.args.size() != 1 || !call.args[0].is_string()) {
      return TypeError("strftime_now() takes one format string");
    }
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[512];
    const size_t n = std::strftime(buf, sizeof(buf), call.args[0].str().c_str(), &tm);
    return Value::String(std::string(buf, n));
  }
  return InvalidArgument("'{}' is not callable", name);
}

// ---------------------------------------------------------------------------------------------
// Methods

StatusOr<Value> CallMethod(const Value& self, std::string_view name, const CallArgs& call) {
  if (self.kind() == Kind::kLoop && name == "cycle") {
    if (call.args.empty()) return TypeError("no items for cycling given");
    const Value* index0 = self.dict().Find("index0");
    const int64_t i = index0 != nullptr ? index0->int_value() : 0;
    return call.args[static_cast<size_t>(i % static_cast<int64_t>(call.args.size()))];
  }
  if (self.is_dict()) {
    if (name == "get") {
      HW_ASSIGN_OR_RETURN(Args a, Args::Bind("get", call, {"key", "default"}));
      if (a.Get(0) == nullptr) return TypeError("get expected at least 1 argument");
      if (a.Get(0)->is_string()) {
        if (const Value* v = self.dict().Find(a.Get(0)->str())) return *v;
      }
      return a.Get(1) != nullptr ? *a.Get(1) : Value::None();
    }
    if (!call.args.empty() || !call.kwargs.empty()) {
      return TypeError(fmt::format("dict.{}() takes no arguments", name));
    }
    List out;
    for (const auto& [k, v] : self.dict().items) {
      if (name == "items") {
        out.push_back(Value::MakeList({Value::String(k), v}, true));
      } else if (name == "keys") {
        out.push_back(Value::String(k));
      } else {
        out.push_back(v);
      }
    }
    return Value::MakeList(std::move(out));
  }
  if (self.is_list()) {
    if (call.args.size() != 1) return TypeError(fmt::format("list.{}() takes one argument", name));
    int64_t count = 0;
    for (size_t i = 0; i < self.list().size(); ++i) {
      if (PyEquals(self.list()[i], call.args[0])) {
        if (name == "index") return Value::Int(static_cast<int64_t>(i));
        ++count;
      }
    }
    if (name == "index") return ValueError("value is not in list");
    return Value::Int(count);
  }
  if (!self.is_string()) {
    return InvalidArgument("AttributeError: '{}' object has no method '{}'", self.TypeName(), name);
  }
  const std::string& s = self.str();
  if (name == "startswith" || name == "endswith") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind(name, call, {"prefix"}));
    if (a.Get(0) == nullptr) return TypeError(fmt::format("{}() takes one argument", name));
    List options;
    if (a.Get(0)->is_tuple()) {
      options = a.Get(0)->list();
    } else {
      options.push_back(*a.Get(0));
    }
    for (const Value& o : options) {
      if (!o.is_string()) {
        return TypeError(fmt::format("{} first arg must be str or a tuple of str", name));
      }
      const std::string& p = o.str();
      const bool hit = name == "startswith" ? s.compare(0, p.size(), p) == 0
                                            : s.size() >= p.size() &&
                                                  s.compare(s.size() - p.size(), p.size(), p) == 0;
      if (hit) return Value::Bool(true);
    }
    return Value::Bool(false);
  }
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind(name, call, {"chars"}));
    std::string chars;
    if (a.Get(0) != nullptr && !a.Get(0)->is_none()) {
      HW_ASSIGN_OR_RETURN(chars, StringArg(a.Get(0), "chars"));
    }
    const bool has_chars = a.Get(0) != nullptr && !a.Get(0)->is_none();
    return Value::String(
        PyStrip(s, has_chars ? &chars : nullptr, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind(name, call, {"sep", "maxsplit"}));
    std::string sep;
    const bool has_sep = a.Get(0) != nullptr && !a.Get(0)->is_none();
    if (has_sep) {
      HW_ASSIGN_OR_RETURN(sep, StringArg(a.Get(0), "sep"));
    }
    int64_t maxsplit = -1;
    if (a.Get(1) != nullptr) {
      HW_ASSIGN_OR_RETURN(maxsplit, IntArg(a.Get(1), "maxsplit"));
    }
    HW_ASSIGN_OR_RETURN(List parts,
                        PySplit(s, has_sep ? &sep : nullptr, maxsplit, name == "rsplit"));
    return Value::MakeList(std::move(parts));
  }
  if (name == "splitlines") {
    List out;
    size_t start = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n' || s[i] == '\r') {
        if (out.size() >= kMaxListItems) {
          return ResourceExhausted("splitlines() would make more than {} lines", kMaxListItems);
        }
        out.push_back(Value::String(s.substr(start, i - start)));
        if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        start = i + 1;
      }
    }
    if (start < s.size()) out.push_back(Value::String(s.substr(start)));
    return Value::MakeList(std::move(out));
  }
  if (name == "lower") return Value::String(PyLower(s));
  if (name == "upper") return Value::String(PyUpper(s));
  if (name == "title") return Value::String(PyTitle(s));
  if (name == "capitalize") return Value::String(PyCapitalize(s));
  if (name == "replace") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("replace", call, {"old", "new", "count"}));
    HW_ASSIGN_OR_RETURN(std::string from, StringArg(a.Get(0), "replace() argument 1"));
    HW_ASSIGN_OR_RETURN(std::string to, StringArg(a.Get(1), "replace() argument 2"));
    int64_t count = -1;
    if (a.Get(2) != nullptr) {
      HW_ASSIGN_OR_RETURN(count, IntArg(a.Get(2), "count"));
    }
    std::string out;
    if (from.empty()) {
      // Python inserts `to` between every character (and at both ends).
      const std::u32string u = ToU32(s);
      int64_t done = 0;
      for (size_t i = 0; i <= u.size(); ++i) {
        if (count < 0 || done < count) {
          out += to;
          ++done;
        }
        if (i < u.size()) out += FromU32(std::u32string(1, u[i]));
        if (out.size() > kMaxBuiltValueBytes) return InvalidArgument("replace result too large");
      }
      return Value::String(std::move(out));
    }
    size_t pos = 0;
    int64_t done = 0;
    while (count < 0 || done < count) {
      const size_t at = FindSubstring(s, from, pos);
      if (at == std::string::npos) break;
      out.append(s, pos, at - pos);
      out += to;
      pos = at + from.size();
      ++done;
      if (out.size() > kMaxBuiltValueBytes) return InvalidArgument("replace result too large");
    }
    out.append(s, pos, std::string::npos);
    return Value::String(std::move(out));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "count") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind(name, call, {"sub"}));
    HW_ASSIGN_OR_RETURN(std::string sub, StringArg(a.Get(0), "sub"));
    if (name == "count") {
      if (sub.empty()) return Value::Int(static_cast<int64_t>(CodepointCount(s)) + 1);
      int64_t n = 0;
      for (size_t at = FindSubstring(s, sub); at != std::string::npos;
           at = FindSubstring(s, sub, at + sub.size())) {
        ++n;
      }
      return Value::Int(n);
    }
    const size_t at = name == "rfind" ? RFindSubstring(s, sub) : FindSubstring(s, sub);
    if (at == std::string::npos) {
      if (name == "index") return ValueError("substring not found");
      return Value::Int(-1);
    }
    return Value::Int(static_cast<int64_t>(CodepointCount(s.substr(0, at))));
  }
  if (name == "join") {
    HW_ASSIGN_OR_RETURN(Args a, Args::Bind("join", call, {"iterable"}));
    if (a.Get(0) == nullptr) return TypeError("join() takes exactly one argument");
    HW_ASSIGN_OR_RETURN(List items, Iterate(*a.Get(0)));
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string()) {
        return TypeError(fmt::format("sequence item {}: expected str instance, {} found", i,
                                     items[i].TypeName()));
      }
      if (i > 0) out += s;
      out += items[i].str();
      if (out.size() > kMaxBuiltValueBytes) return InvalidArgument("join result too large");
    }
    return Value::String(std::move(out));
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" ||
      name == "islower" || name == "isupper") {
    if (!call.args.empty()) return TypeError(fmt::format("{}() takes no arguments", name));
    const std::u32string u = ToU32(s);
    if (u.empty()) return Value::Bool(false);
    if (name == "islower" || name == "isupper") {
      const bool has_cased = PyLower(s) != PyUpper(s);
      return Value::Bool(has_cased && (name == "islower" ? PyLower(s) == s : PyUpper(s) == s));
    }
    for (char32_t cp : u) {
      bool ok = false;
      if (name == "isspace") {
        ok = IsPySpace(cp);
      } else if (cp < 0x80) {
        const bool digit = cp >= '0' && cp <= '9';
        const bool alpha = (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
        ok = name == "isdigit" ? digit : name == "isalpha" ? alpha : digit || alpha;
      } else {
        return InvalidArgument("str.{}() on non-ASCII text is not supported", name);
      }
      if (!ok) return Value::Bool(false);
    }
    return Value::Bool(true);
  }
  if (name == "format") {
    return InvalidArgument("str.format() is not supported in chat templates; use '~' or '%'");
  }
  return InvalidArgument("AttributeError: 'str' object has no method '{}'", name);
}

}  // namespace headwise::tokenizer::jinja
