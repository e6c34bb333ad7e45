// Built-ins of the chat-template interpreter: jinja2's filters and tests, the Python methods
// templates call on strings, dicts and lists, the globals transformers and jinja2 provide, and
// jinja2's attribute/item lookup rules. All of them report TypeErrors and the like as
// InvalidArgument statuses whose message starts with the Python exception name.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"
#include "tokenizer/jinja_value.h"

namespace headwise::tokenizer::jinja {

struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
};

// Names the parser accepts; anything else is refused when the template is parsed, as jinja2
// refuses unknown filters and tests at compile time.
bool IsKnownFilter(std::string_view name);
bool IsKnownTest(std::string_view name);
bool IsGlobalFunction(std::string_view name);

StatusOr<Value> ApplyFilter(std::string_view name, const Value& input, const CallArgs& args);
StatusOr<bool> ApplyTest(std::string_view name, const Value& input, const CallArgs& args);

// A global function (namespace, range, dict, raise_exception, strftime_now, joiner-less subset)
// as a callable value, and the call of one. raise_exception's status message is exactly the
// template's message.
Value GlobalFunction(std::string_view name);
StatusOr<Value> CallGlobal(std::string_view name, const CallArgs& args);
StatusOr<Value> CallMethod(const Value& receiver, std::string_view name, const CallArgs& args);

// jinja2's sandboxed getattr (obj.name: attribute, then item) and getitem (obj[key]: item, then
// attribute). Missing things are undefined; any access on an undefined value is an error.
StatusOr<Value> GetAttr(const Value& obj, std::string_view name);
StatusOr<Value> GetItem(const Value& obj, const Value& key);
// obj[start:stop:step] for lists, tuples and strings (null Values are omitted parts).
StatusOr<Value> GetSlice(const Value& obj, const Value& start, const Value& stop,
                         const Value& step);
// The items a for loop visits: list items, dict keys, string characters; none for undefined.
StatusOr<List> Iterate(const Value& v);
// `item in container`.
StatusOr<bool> Contains(const Value& container, const Value& item);
// Python's `fmt % args` for the conversions templates use (%s %r %d %i %f %x %%).
StatusOr<std::string> PercentFormat(std::string_view fmt, const Value& args);

// The error an undefined value raises when used, naming what was missing.
Status UndefinedError(const Value& undefined);

}  // namespace headwise::tokenizer::jinja
