// The dynamic value type of the chat-template interpreter, with the Python semantics that
// jinja2 templates observe: truthiness, str()/repr(), ==, ordering, and json.dumps.
//
// Values are immutable once built (jinja2's ImmutableSandboxedEnvironment forbids mutating
// lists and dicts), so strings and containers are shared by pointer and copying a Value is
// cheap. The one mutable object is namespace(), whose attributes `{% set ns.x = ... %}`
// assigns. Dicts keep insertion order, as Python's do.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace headwise::tokenizer::jinja {

struct MacroStmt;
class Value;

using List = std::vector<Value>;

// A dict with insertion order and string keys (JSON objects and template literals only ever
// have string keys; other keys are refused where a dict is built).
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* Find(std::string_view key) const;
  void Set(std::string key, Value value);
};

enum class Kind : uint8_t {
  kUndefined,
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kList,  // also tuples (tuple_ == true): same behaviour, printed with parentheses
  kDict,
  kNamespace,  // jinja2's namespace(): attribute access, assignable
  kLoop,       // the `loop` object of a for loop: a dict of its fields plus cycle()
  kCallable,
};

// Something that can be called: a global function (raise_exception, namespace, range...),
// a method bound to its receiver ('x'.split, d.items, loop.cycle) or a template macro.
struct Callable;

class Value {
 public:
  Value() = default;  // undefined
  static Value Undefined(std::string hint = "");
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  static Value MakeList(List items, bool tuple = false);
  static Value MakeDict(Dict dict);
  static Value MakeNamespace(Dict dict);
  static Value MakeLoop(Dict dict);
  static Value MakeCallable(std::shared_ptr<const Callable> fn);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  // Python's numbers.Number: bool counts, as isinstance(True, int) does.
  bool is_number() const { return is_bool() || is_int() || is_float(); }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_tuple() const { return kind_ == Kind::kList && tuple_; }
  bool is_dict() const { return kind_ == Kind::kDict || kind_ == Kind::kLoop; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_callable() const { return kind_ == Kind::kCallable; }

  bool bool_value() const { return i_ != 0; }
  int64_t int_value() const { return i_; }  // for kBool too (True == 1)
  double float_value() const { return f_; }
  double AsDouble() const { return is_float() ? f_ : static_cast<double>(i_); }
  // kString; the name hint for kUndefined. Strings are shared, never copied, by Value copies.
  const std::string& str() const;
  const List& list() const { return *static_cast<const List*>(obj_.get()); }
  const Dict& dict() const { return *static_cast<const Dict*>(obj_.get()); }
  Dict& mutable_namespace() const { return *static_cast<Dict*>(obj_.get()); }
  const Callable& callable() const { return *static_cast<const Callable*>(obj_.get()); }

  // Python truthiness (undefined is falsy, as jinja2's Undefined is).
  bool Truthy() const;
  // The Python type name used in error messages ("str", "list", "NoneType"...).
  std::string_view TypeName() const;

  // Size guards, kept up to date as values are built so that the evaluator can refuse a value
  // that is too big or too deep before anything walks it (repr, tojson, ==, destruction all
  // recurse):
  // nesting: 0 for scalars, 1 + the deepest item for lists, dicts and namespaces;
  uint32_t depth() const;
  // weight: about the bytes of its repr() (strings their length, containers the sum of their
  // items), saturating; json.dumps and repr() output is a small multiple of it.
  uint64_t weight() const;
  // Whether a namespace is somewhere inside this list or dict. Namespaces are the one mutable
  // object: inside a container they could make cycles or grow behind the container's back, so
  // the evaluator refuses them there (see jinja_eval.cc).
  bool holds_namespace() const { return holds_namespace_; }

 private:
  static Value DictOf(Dict dict, Kind kind);

  Kind kind_ = Kind::kUndefined;
  bool tuple_ = false;
  bool holds_namespace_ = false;
  uint32_t depth_ = 0;
  int64_t i_ = 0;
  double f_ = 0;
  uint64_t weight_ = 0;
  // std::string (kString, kUndefined's hint), List, Dict (kDict, kNamespace, kLoop) or
  // Callable, by kind.
  std::shared_ptr<void> obj_;
};

// Limits on the values one render may build, shared with the built-ins, which have no access
// to the renderer: the renderer installs them on its thread for the length of the render.
inline constexpr uint32_t kMaxValueDepth = 256;
// Items of one list built by a template (range(), split(), repetition, iteration of a string).
inline constexpr size_t kMaxListItems = 1'000'000;

// The bytes that strings, lists and dicts built during the render on this thread have
// allocated in total (a bound on both memory and time). Outside a render nothing is counted.
class AllocationBudget {
 public:
  explicit AllocationBudget(uint64_t max_bytes);
  ~AllocationBudget();
  AllocationBudget(const AllocationBudget&) = delete;
  AllocationBudget& operator=(const AllocationBudget&) = delete;

  bool exceeded() const { return allocated_ > max_bytes_; }
  uint64_t max_bytes() const { return max_bytes_; }
  // Adds to the budget of this thread's render, if any.
  static void Charge(uint64_t bytes);

 private:
  uint64_t max_bytes_;
  uint64_t allocated_ = 0;
  AllocationBudget* previous_;
};

struct Callable {
  std::string name;  // the global's or method's name
  Value receiver;    // bound methods: the object; otherwise undefined
  const MacroStmt* macro = nullptr;
};

// Python str(): strings as they are, None -> "None", True -> "True", floats as repr() prints
// them, containers as their repr(). Undefined -> "".
std::string PyStr(const Value& v);
// Python repr() (strings quoted and escaped as Python does).
std::string PyRepr(const Value& v);
std::string PyFloatRepr(double d);

// Python ==, which never fails (different types are simply unequal; 1 == 1.0 == True).
bool PyEquals(const Value& a, const Value& b);
// Python <, which fails with a TypeError for unorderable types. Sets *less.
Status PyLess(const Value& a, const Value& b, bool* less);

// json.dumps(v, ensure_ascii=..., indent=..., separators=..., sort_keys=...) with Python's
// formatting. indent < 0 means None; indent_str overrides the indent when not empty.
struct JsonDumpOptions {
  bool ensure_ascii = false;
  int indent = -1;
  std::string indent_str;
  bool has_indent = false;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  // Longer output fails (ResourceExhausted) instead of growing further.
  size_t max_bytes = 64u << 20;
};
StatusOr<std::string> JsonDumps(const Value& v, const JsonDumpOptions& options);

// JSON to values; objects keep their key order (nlohmann::json has sorted them already).
// Nesting deeper than kMaxValueDepth is InvalidArgument.
StatusOr<Value> FromJson(const nlohmann::json& j);
StatusOr<Value> FromJson(const nlohmann::ordered_json& j);

// ---- UTF-8 / Python str helpers (code-point based, as Python strings are) ----
std::u32string ToU32(std::string_view s);
std::string FromU32(std::u32string_view s);
size_t CodepointCount(std::string_view s);
// str.isspace() for one code point.
bool IsPySpace(char32_t cp);
// str.strip/lstrip/rstrip(chars): chars == nullptr strips whitespace.
std::string PyStrip(std::string_view s, const std::string* chars, bool left, bool right);
// str.split(sep, maxsplit) / str.rsplit; sep == nullptr splits on runs of whitespace.
StatusOr<List> PySplit(std::string_view s, const std::string* sep, int64_t maxsplit, bool right);
// Python's str.lower(), upper(), capitalize() and title(): full case mappings (ß -> SS,
// ﬁ -> Fi, İ -> i̇), titlecase letters (ǆ -> ǅ), final sigma as CPython decides it, and
// Python's Cased / Case_Ignorable properties.
std::string PyLower(std::string_view s);
std::string PyUpper(std::string_view s);
std::string PyCapitalize(std::string_view s);
std::string PyTitle(std::string_view s);
// jinja2's `title` filter (do_title), which is not str.title(): the text is split at runs of
// whitespace, '-', '(', '{', '[' and '<', and each piece (separators included) becomes
// piece[0].upper() + piece[1:].lower().
std::string JinjaTitle(std::string_view s);
// str.find / str.rfind on bytes (UTF-8 keeps code point order), in linear time even for long
// needles (std::string::find is quadratic on 'aaa...ab'). npos when absent.
size_t FindSubstring(std::string_view haystack, std::string_view needle, size_t from = 0);
size_t RFindSubstring(std::string_view haystack, std::string_view needle);

}  // namespace headwise::tokenizer::jinja
