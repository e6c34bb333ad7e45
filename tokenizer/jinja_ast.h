// Syntax tree of the chat-template interpreter. One node struct per family (expressions,
// statements) with a kind tag keeps the parser and evaluator small; unused fields stay empty.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace headwise::tokenizer::jinja {

enum class ExprKind {
  kConst,     // value
  kName,      // name
  kGetattr,   // a.name
  kGetitem,   // a[b]
  kSlice,     // a:b:c inside [] (each may be null)
  kCall,      // a(args, kwargs)
  kFilter,    // a | name(args, kwargs); a is null for {% filter %} and {% set x | f %}
  kTest,      // a is [not] name(args, kwargs)
  kNot,       // not a
  kNeg,       // -a
  kPos,       // +a
  kBinary,    // a <name> b for + - * / // % ** ~
  kAnd,       // a and b
  kOr,        // a or b
  kCompare,   // a op[0] args[0] op[1] args[1] ... (chained), ops in `ops`
  kCondExpr,  // a if b else c (c may be null)
  kList,      // [args]
  kTuple,     // (args)
  kDict,      // {args[0]: args[1], ...}
};

struct Expr {
  ExprKind kind;
  size_t offset = 0;  // where it starts in the source, for runtime error messages
  int height = 1;     // 1 + the tallest operand's; the parser refuses tall trees
  Value value;
  std::string name;
  bool negated = false;
  std::unique_ptr<Expr> a, b, c;
  std::vector<std::unique_ptr<Expr>> args;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> kwargs;
  std::vector<std::string> ops;
};

enum class StmtKind {
  kText,      // text
  kOutput,    // {{ expr }}
  kIf,        // branches: (condition, body)...; a null condition is the else branch
  kFor,       // for targets in expr [if cond] body [else else_body]
  kSet,       // set targets = expr, or set ns.attr = expr (ns_attr non-empty)
  kSetBlock,  // set targets [| filter] body endset
  kMacro,     // macro name(params) body
  kBreak,
  kContinue,
  kFilterBlock,  // filter f body endfilter (expr is the filter chain, innermost input null)
  kWith,         // with a = x, b = y body endwith
  kScope,        // a body rendered as it is: transformers' {% generation %}
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

// A macro's signature and body; Stmt of kind kMacro points here.
struct MacroStmt {
  std::string name;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> params;  // default may be null
  const Body* body = nullptr;
};

struct Stmt {
  StmtKind kind;
  size_t offset = 0;
  std::string text;
  std::unique_ptr<Expr> expr;
  std::unique_ptr<Expr> cond;  // for's `if` filter
  std::vector<std::string> targets;
  bool unpack = false;  // targets came as a tuple, even of one name
  std::string ns_attr;  // set ns.attr
  std::vector<std::pair<std::unique_ptr<Expr>, Body>> branches;
  std::vector<std::pair<std::string, std::unique_ptr<Expr>>> assignments;  // with
  std::unique_ptr<MacroStmt> macro;
  Body body;
  Body else_body;
};

}  // namespace headwise::tokenizer::jinja
