// The dynamic value type of the chat-template interpreter, with the Python semantics that
// jinja2 templates observe: truthiness, str()/repr(), ==, ordering, and json.dumps.
//
// Values are immutable once built (jinja2's ImmutableSandboxedEnvironment forbids mutating
// lists and dicts), so containers are shared by pointer and copying a Value is cheap. The one
// mutable object is namespace(), whose attributes `{% set ns.x = ... %}` assigns.
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

  bool bool_value() const { return b_; }
  int64_t int_value() const { return i_; }  // for kBool too (True == 1)
  double float_value() const { return f_; }
  double AsDouble() const { return is_float() ? f_ : static_cast<double>(i_); }
  const std::string& str() const { return s_; }  // kString; the name hint for kUndefined
  const List& list() const { return *list_; }
  const Dict& dict() const { return *dict_; }
  Dict& mutable_namespace() const { return *dict_; }
  const Callable& callable() const { return *fn_; }

  // Python truthiness (undefined is falsy, as jinja2's Undefined is).
  bool Truthy() const;
  // The Python type name used in error messages ("str", "list", "NoneType"...).
  std::string_view TypeName() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool tuple_ = false;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<const List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Callable> fn_;
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
};
StatusOr<std::string> JsonDumps(const Value& v, const JsonDumpOptions& options);

Value FromJson(const nlohmann::json& j);
Value FromJson(const nlohmann::ordered_json& j);

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
std::string PyLower(std::string_view s);
std::string PyUpper(std::string_view s);
std::string PyCapitalize(std::string_view s);
std::string PyTitle(std::string_view s);

}  // namespace headwise::tokenizer::jinja
