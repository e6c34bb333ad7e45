#include "tokenizer/jinja_eval.h"

#include <chrono>
#include <cmath>
#include <unordered_map>

#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_lexer.h"

namespace headwise::tokenizer::jinja {
namespace {

Status TypeError(std::string msg) {
  return InvalidArgument("TypeError: {}", msg);
}

Status OperandError(std::string_view op, const Value& a, const Value& b) {
  return TypeError(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op,
                               a.TypeName(), b.TypeName()));
}

bool IsIntLike(const Value& v) {
  return v.is_int() || v.is_bool();
}

class Renderer {
 public:
  Renderer(const Template& tpl, const Dict& vars, const RenderLimits& limits)
      : tpl_(tpl), vars_(vars), limits_(limits) {
    scopes_.emplace_back();
  }

  StatusOr<std::string> Run() {
    AllocationBudget budget(limits_.max_allocated_bytes);
    budget_ = &budget;
    start_ = std::chrono::steady_clock::now();
    std::string out;
    out_ = &out;
    auto flow = ExecBody(tpl_.body);
    budget_ = nullptr;
    if (!flow.ok()) return flow.status();
    return out;
  }

 private:
  enum class Flow { kNormal, kBreak, kContinue };
  using Scope = std::unordered_map<std::string, Value>;

  // ---- resource guards ----

  // Counts one level of evaluator recursion for as long as it lives.
  class DepthGuard {
   public:
    explicit DepthGuard(int* depth) : depth_(depth) { ++*depth_; }
    ~DepthGuard() { --*depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    int* depth_;
  };

  // Checked at every expression and statement: recursion depth, the allocation budget and
  // (every so many steps) the time limit.
  Status CheckResources() {
    if (depth_ > limits_.max_render_depth) {
      return ResourceExhausted(
          "chat template nests expressions, statements and macro calls "
          "deeper than {}",
          limits_.max_render_depth);
    }
    if (budget_->exceeded()) {
      return ResourceExhausted("chat template built more than {} bytes of values",
                               budget_->max_bytes());
    }
    if ((++steps_ & 255) == 0) {
      const std::chrono::duration<double> spent = std::chrono::steady_clock::now() - start_;
      if (spent.count() > limits_.max_seconds) {
        return ResourceExhausted("chat template ran longer than {} seconds", limits_.max_seconds);
      }
    }
    return Status::Ok();
  }

  // Every value an expression yields: not too big to print or walk, not too deep to walk or
  // free recursively, and no namespace inside a list or dict (see Value::holds_namespace).
  Status CheckValue(const Value& v) {
    if (v.weight() > limits_.max_value_bytes) {
      return ResourceExhausted("chat template built a value of over {} bytes",
                               limits_.max_value_bytes);
    }
    if (v.depth() > kMaxValueDepth) {
      return ResourceExhausted("chat template built a value nested deeper than {}", kMaxValueDepth);
    }
    if (v.holds_namespace()) {
      return InvalidArgument(
          "namespace objects inside lists, dicts or namespaces are not "
          "supported");
    }
    return Status::Ok();
  }

  // ---- errors ----

  // Adds the position of the innermost failing node, once.
  Status Locate(size_t offset, Status st) {
    if (st.ok() || located_) return st;
    located_ = true;
    const SourcePosition p = PositionOf(tpl_.source, offset);
    return Status(st.code(), fmt::format("chat template error at line {} column {}: {}", p.line,
                                         p.column, st.message()));
  }

  // ---- output ----

  Status Append(std::string_view s) {
    if (out_->size() + s.size() > limits_.max_output_bytes) {
      return ResourceExhausted("chat template output exceeds {} bytes", limits_.max_output_bytes);
    }
    out_->append(s);
    return Status::Ok();
  }

  StatusOr<std::string> Capture(const Body& body) {
    std::string buffer;
    std::string* saved = out_;
    out_ = &buffer;
    auto flow = ExecBody(body);
    out_ = saved;
    if (!flow.ok()) return flow.status();
    return buffer;
  }

  // ---- variables ----

  Value Lookup(const std::string& name) const {
    for (size_t i = scopes_.size(); i-- > frame_base_;) {
      auto it = scopes_[i].find(name);
      if (it != scopes_[i].end()) return it->second;
    }
    if (frame_base_ > 0) {
      auto it = scopes_[0].find(name);
      if (it != scopes_[0].end()) return it->second;
    }
    if (const Value* v = vars_.Find(name)) return *v;
    if (IsGlobalFunction(name)) return GlobalFunction(name);
    return Value::Undefined(fmt::format("'{}' is undefined", name));
  }

  Status Assign(const Stmt& s, const std::vector<std::string>& targets, bool unpack,
                const Value& value) {
    if (!unpack) {
      scopes_.back()[targets[0]] = value;
      return Status::Ok();
    }
    HW_ASSIGN_OR_RETURN(List items, Iterate(value));
    if (items.size() != targets.size()) {
      return Locate(s.offset, InvalidArgument("ValueError: expected {} values to unpack, got {}",
                                              targets.size(), items.size()));
    }
    for (size_t i = 0; i < targets.size(); ++i) scopes_.back()[targets[i]] = items[i];
    return Status::Ok();
  }

  // ---- statements ----

  // The target of {% set %} (plain or block form): names, a tuple, or a namespace attribute.
  Status SetTarget(const Stmt& s, Value v) {
    if (s.ns_attr.empty()) return Assign(s, s.targets, s.unpack, v);
    Value ns = Lookup(s.targets[0]);
    if (!ns.is_namespace()) {
      return Locate(
          s.offset,
          InvalidArgument("cannot assign attribute on non-namespace object '{}'", s.targets[0]));
    }
    if (v.is_namespace() || v.holds_namespace()) {
      return Locate(s.offset, InvalidArgument("namespace objects inside lists, dicts or "
                                              "namespaces are not supported"));
    }
    ns.mutable_namespace().Set(s.ns_attr, std::move(v));
    return Locate(s.offset, CheckValue(ns));
  }

  StatusOr<Flow> ExecBody(const Body& body) {
    for (const auto& s : body) {
      HW_ASSIGN_OR_RETURN(Flow flow, Exec(*s));
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  StatusOr<Flow> Exec(const Stmt& s) {
    DepthGuard guard(&depth_);
    HW_RETURN_IF_ERROR(Locate(s.offset, CheckResources()));
    switch (s.kind) {
      case StmtKind::kText:
        HW_RETURN_IF_ERROR(Append(s.text));
        return Flow::kNormal;
      case StmtKind::kOutput: {
        HW_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        HW_RETURN_IF_ERROR(Append(PyStr(v)));
        return Flow::kNormal;
      }
      case StmtKind::kIf:
        for (const auto& [cond, body] : s.branches) {
          bool take = true;
          if (cond) {
            HW_ASSIGN_OR_RETURN(Value v, Eval(*cond));
            take = v.Truthy();
          }
          if (take) return ExecBody(body);
        }
        return Flow::kNormal;
      case StmtKind::kFor:
        HW_RETURN_IF_ERROR(ExecFor(s));
        return Flow::kNormal;
      case StmtKind::kSet: {
        HW_ASSIGN_OR_RETURN(Value v, Eval(*s.expr));
        HW_RETURN_IF_ERROR(SetTarget(s, std::move(v)));
        return Flow::kNormal;
      }
      case StmtKind::kSetBlock: {
        HW_ASSIGN_OR_RETURN(std::string text, Capture(s.body));
        Value v = Value::String(std::move(text));
        if (s.expr) {
          HW_ASSIGN_OR_RETURN(v, EvalFilterChain(*s.expr, v));
        }
        HW_RETURN_IF_ERROR(SetTarget(s, std::move(v)));
        return Flow::kNormal;
      }
      case StmtKind::kMacro: {
        auto fn = std::make_shared<Callable>();
        fn->name = s.macro->name;
        fn->macro = s.macro.get();
        scopes_.back()[s.macro->name] = Value::MakeCallable(std::move(fn));
        return Flow::kNormal;
      }
      case StmtKind::kBreak:
        return Flow::kBreak;
      case StmtKind::kContinue:
        return Flow::kContinue;
      case StmtKind::kFilterBlock: {
        HW_ASSIGN_OR_RETURN(std::string text, Capture(s.body));
        HW_ASSIGN_OR_RETURN(Value v, EvalFilterChain(*s.expr, Value::String(std::move(text))));
        HW_RETURN_IF_ERROR(Append(PyStr(v)));
        return Flow::kNormal;
      }
      case StmtKind::kWith: {
        Scope scope;
        for (const auto& [name, expr] : s.assignments) {
          HW_ASSIGN_OR_RETURN(Value v, Eval(*expr));
          scope[name] = std::move(v);
        }
        scopes_.push_back(std::move(scope));
        auto flow = ExecBody(s.body);
        scopes_.pop_back();
        return flow;
      }
      case StmtKind::kScope:
        return ExecBody(s.body);
    }
    return Flow::kNormal;
  }

  Status ExecFor(const Stmt& s) {
    HW_ASSIGN_OR_RETURN(Value iterable, Eval(*s.expr));
    auto listed = Iterate(iterable);
    if (!listed.ok()) return Locate(s.expr->offset, listed.status());
    List items = std::move(*listed);
    AllocationBudget::Charge(items.size() * sizeof(Value));
    if (s.cond) {
      // The `if` filter sees the loop target but not `loop`; loop.length counts what passes.
      List kept;
      for (Value& item : items) {
        HW_RETURN_IF_ERROR(CountIteration(s));
        scopes_.emplace_back();
        Status st = Assign(s, s.targets, s.unpack, item);
        StatusOr<Value> keep = st.ok() ? Eval(*s.cond) : StatusOr<Value>(st);
        scopes_.pop_back();
        if (!keep.ok()) return keep.status();
        if (keep->Truthy()) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      scopes_.emplace_back();
      auto flow = ExecBody(s.else_body);
      scopes_.pop_back();
      return flow.status();
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      HW_RETURN_IF_ERROR(CountIteration(s));
      scopes_.emplace_back();
      Status st = Assign(s, s.targets, s.unpack, items[static_cast<size_t>(i)]);
      if (!st.ok()) {
        scopes_.pop_back();
        return st;
      }
      Dict loop;
      loop.items.reserve(12);
      loop.items.emplace_back("index0", Value::Int(i));
      loop.items.emplace_back("index", Value::Int(i + 1));
      loop.items.emplace_back("revindex0", Value::Int(n - i - 1));
      loop.items.emplace_back("revindex", Value::Int(n - i));
      loop.items.emplace_back("first", Value::Bool(i == 0));
      loop.items.emplace_back("last", Value::Bool(i == n - 1));
      loop.items.emplace_back("length", Value::Int(n));
      loop.items.emplace_back("depth", Value::Int(1));
      loop.items.emplace_back("depth0", Value::Int(0));
      if (i > 0) loop.items.emplace_back("previtem", items[static_cast<size_t>(i - 1)]);
      if (i + 1 < n) loop.items.emplace_back("nextitem", items[static_cast<size_t>(i + 1)]);
      scopes_.back()["loop"] = Value::MakeLoop(std::move(loop));
      auto flow = ExecBody(s.body);
      scopes_.pop_back();
      if (!flow.ok()) return flow.status();
      if (*flow == Flow::kBreak) break;
    }
    return Status::Ok();
  }

  Status CountIteration(const Stmt& s) {
    if (++iterations_ > limits_.max_loop_iterations) {
      return Locate(s.offset, ResourceExhausted("chat template ran more than {} loop iterations",
                                                limits_.max_loop_iterations));
    }
    return Status::Ok();
  }

  // ---- expressions ----

  StatusOr<Value> Eval(const Expr& e) {
    DepthGuard guard(&depth_);
    HW_RETURN_IF_ERROR(Locate(e.offset, CheckResources()));
    StatusOr<Value> v = EvalInner(e);
    if (!v.ok()) return Locate(e.offset, v.status());
    HW_RETURN_IF_ERROR(Locate(e.offset, CheckValue(*v)));
    return v;
  }

  StatusOr<CallArgs> EvalArgs(const Expr& e) {
    CallArgs call;
    for (const auto& arg : e.args) {
      HW_ASSIGN_OR_RETURN(Value v, Eval(*arg));
      call.args.push_back(std::move(v));
    }
    for (const auto& [k, arg] : e.kwargs) {
      HW_ASSIGN_OR_RETURN(Value v, Eval(*arg));
      call.kwargs.emplace_back(k, std::move(v));
    }
    return call;
  }

  // A filter chain whose innermost input is `input` ({% filter %}, {% set x | f %}).
  StatusOr<Value> EvalFilterChain(const Expr& e, Value input) {
    Value in = std::move(input);
    if (e.a) {
      HW_ASSIGN_OR_RETURN(in, EvalFilterChain(*e.a, std::move(in)));
    }
    HW_ASSIGN_OR_RETURN(CallArgs call, EvalArgs(e));
    auto r = ApplyFilter(e.name, in, call);
    if (!r.ok()) return Locate(e.offset, r.status());
    HW_RETURN_IF_ERROR(Locate(e.offset, CheckValue(*r)));
    return r;
  }

  StatusOr<Value> EvalInner(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kConst:
        return e.value;
      case ExprKind::kName:
        return Lookup(e.name);
      case ExprKind::kGetattr: {
        HW_ASSIGN_OR_RETURN(Value obj, Eval(*e.a));
        return GetAttr(obj, e.name);
      }
      case ExprKind::kGetitem: {
        HW_ASSIGN_OR_RETURN(Value obj, Eval(*e.a));
        if (e.b->kind == ExprKind::kSlice) {
          Value parts[3];
          const Expr* exprs[3] = {e.b->a.get(), e.b->b.get(), e.b->c.get()};
          for (int i = 0; i < 3; ++i) {
            if (exprs[i] != nullptr) {
              HW_ASSIGN_OR_RETURN(parts[i], Eval(*exprs[i]));
            }
          }
          return GetSlice(obj, parts[0], parts[1], parts[2]);
        }
        HW_ASSIGN_OR_RETURN(Value key, Eval(*e.b));
        return GetItem(obj, key);
      }
      case ExprKind::kSlice:
        return InvalidArgument("a slice outside of []");
      case ExprKind::kCall: {
        HW_ASSIGN_OR_RETURN(Value callee, Eval(*e.a));
        HW_ASSIGN_OR_RETURN(CallArgs call, EvalArgs(e));
        return CallValue(callee, call);
      }
      case ExprKind::kFilter: {
        Value input;
        if (e.a) {
          HW_ASSIGN_OR_RETURN(input, Eval(*e.a));
        }
        HW_ASSIGN_OR_RETURN(CallArgs call, EvalArgs(e));
        return ApplyFilter(e.name, input, call);
      }
      case ExprKind::kTest: {
        HW_ASSIGN_OR_RETURN(Value input, Eval(*e.a));
        HW_ASSIGN_OR_RETURN(CallArgs call, EvalArgs(e));
        HW_ASSIGN_OR_RETURN(bool r, ApplyTest(e.name, input, call));
        return Value::Bool(r != e.negated);
      }
      case ExprKind::kNot: {
        HW_ASSIGN_OR_RETURN(Value v, Eval(*e.a));
        return Value::Bool(!v.Truthy());
      }
      case ExprKind::kNeg:
      case ExprKind::kPos: {
        HW_ASSIGN_OR_RETURN(Value v, Eval(*e.a));
        if (v.is_undefined()) return UndefinedError(v);
        const bool neg = e.kind == ExprKind::kNeg;
        if (v.is_float()) return Value::Float(neg ? -v.float_value() : v.float_value());
        if (IsIntLike(v)) {
          if (neg && v.int_value() == INT64_MIN) return InvalidArgument("integer overflow");
          return Value::Int(neg ? -v.int_value() : v.int_value());
        }
        return TypeError(
            fmt::format("bad operand type for unary {}: '{}'", neg ? '-' : '+', v.TypeName()));
      }
      case ExprKind::kBinary: {
        HW_ASSIGN_OR_RETURN(Value a, Eval(*e.a));
        HW_ASSIGN_OR_RETURN(Value b, Eval(*e.b));
        return Binary(e.name, a, b);
      }
      case ExprKind::kAnd: {
        HW_ASSIGN_OR_RETURN(Value a, Eval(*e.a));
        if (!a.Truthy()) return a;
        return Eval(*e.b);
      }
      case ExprKind::kOr: {
        HW_ASSIGN_OR_RETURN(Value a, Eval(*e.a));
        if (a.Truthy()) return a;
        return Eval(*e.b);
      }
      case ExprKind::kCompare: {
        HW_ASSIGN_OR_RETURN(Value left, Eval(*e.a));
        for (size_t i = 0; i < e.ops.size(); ++i) {
          HW_ASSIGN_OR_RETURN(Value right, Eval(*e.args[i]));
          HW_ASSIGN_OR_RETURN(bool ok, Compare(e.ops[i], left, right));
          if (!ok) return Value::Bool(false);
          left = std::move(right);
        }
        return Value::Bool(true);
      }
      case ExprKind::kCondExpr: {
        HW_ASSIGN_OR_RETURN(Value cond, Eval(*e.b));
        if (cond.Truthy()) return Eval(*e.a);
        if (e.c) return Eval(*e.c);
        return Value::Undefined(
            "the inline if expression evaluated to false and no else "
            "section was defined");
      }
      case ExprKind::kList:
      case ExprKind::kTuple: {
        List items;
        for (const auto& item : e.args) {
          HW_ASSIGN_OR_RETURN(Value v, Eval(*item));
          items.push_back(std::move(v));
        }
        return Value::MakeList(std::move(items), e.kind == ExprKind::kTuple);
      }
      case ExprKind::kDict: {
        Dict d;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          HW_ASSIGN_OR_RETURN(Value k, Eval(*e.args[i]));
          HW_ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1]));
          if (!k.is_string()) {
            return Locate(e.args[i]->offset,
                          InvalidArgument("dict literal keys other than strings are not "
                                          "supported (got {})",
                                          k.TypeName()));
          }
          d.Set(k.str(), std::move(v));
        }
        return Value::MakeDict(std::move(d));
      }
    }
    return Internal("unknown expression kind");
  }

  StatusOr<Value> CallValue(const Value& callee, const CallArgs& call) {
    if (callee.is_undefined()) return UndefinedError(callee);
    if (!callee.is_callable()) {
      return TypeError(fmt::format("'{}' object is not callable", callee.TypeName()));
    }
    const Callable& fn = callee.callable();
    if (fn.macro != nullptr) return CallMacro(*fn.macro, call);
    if (!fn.receiver.is_undefined()) return CallMethod(fn.receiver, fn.name, call);
    auto r = CallGlobal(fn.name, call);
    // raise_exception's message is the template author's, shown to the user as it is.
    if (!r.ok() && fn.name == "raise_exception") located_ = true;
    return r;
  }

  StatusOr<Value> CallMacro(const MacroStmt& m, const CallArgs& call) {
    if (call.args.size() > m.params.size()) {
      return TypeError(
          fmt::format("macro '{}' takes not more than {} argument(s)", m.name, m.params.size()));
    }
    for (const auto& [k, v] : call.kwargs) {
      bool known = false;
      for (const auto& p : m.params) known = known || p.first == k;
      if (!known) {
        return TypeError(fmt::format("macro '{}' takes no keyword argument '{}'", m.name, k));
      }
    }
    if (call_depth_ >= limits_.max_call_depth) {
      return ResourceExhausted("macro calls nested deeper than {}", limits_.max_call_depth);
    }
    const size_t saved_base = frame_base_;
    scopes_.emplace_back();
    frame_base_ = scopes_.size() - 1;
    ++call_depth_;
    Status st;
    for (size_t i = 0; i < m.params.size() && st.ok(); ++i) {
      const auto& [name, def] = m.params[i];
      Value v;
      bool given = false;
      if (i < call.args.size()) {
        v = call.args[i];
        given = true;
      }
      for (const auto& [k, kv] : call.kwargs) {
        if (k == name) {
          v = kv;
          given = true;
        }
      }
      if (!given && def) {
        auto d = Eval(*def);
        if (!d.ok()) {
          st = d.status();
          break;
        }
        v = std::move(*d);
      } else if (!given) {
        v = Value::Undefined(fmt::format("parameter '{}' was not provided", name));
      }
      scopes_.back()[name] = std::move(v);
    }
    StatusOr<std::string> text = st.ok() ? Capture(*m.body) : StatusOr<std::string>(st);
    --call_depth_;
    scopes_.pop_back();
    frame_base_ = saved_base;
    if (!text.ok()) return text.status();
    return Value::String(std::move(*text));
  }

  StatusOr<bool> Compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return PyEquals(a, b);
    if (op == "!=") return !PyEquals(a, b);
    if (op == "in") return Contains(b, a);
    if (op == "notin") {
      HW_ASSIGN_OR_RETURN(bool in, Contains(b, a));
      return !in;
    }
    if (a.is_undefined()) return UndefinedError(a);
    if (b.is_undefined()) return UndefinedError(b);
    bool less = false;
    if (op == "<") {
      HW_RETURN_IF_ERROR(PyLess(a, b, &less));
      return less;
    }
    if (op == ">") {
      HW_RETURN_IF_ERROR(PyLess(b, a, &less));
      return less;
    }
    if (op == "<=") {
      HW_RETURN_IF_ERROR(PyLess(b, a, &less));
      return !less;
    }
    if (op == ">=") {
      HW_RETURN_IF_ERROR(PyLess(a, b, &less));
      return !less;
    }
    return Internal("unknown comparison {}", op);
  }

  StatusOr<Value> CheckedString(std::string s) {
    if (s.size() > limits_.max_output_bytes) {
      return ResourceExhausted("chat template built a string over {} bytes",
                               limits_.max_output_bytes);
    }
    return Value::String(std::move(s));
  }

  StatusOr<Value> Binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      std::string s = PyStr(a);
      s += PyStr(b);
      return CheckedString(std::move(s));
    }
    if (a.is_undefined()) return UndefinedError(a);
    if (b.is_undefined()) return UndefinedError(b);
    const bool ints = IsIntLike(a) && IsIntLike(b);
    const bool nums = a.is_number() && b.is_number();
    int64_t r = 0;
    if (op == "+") {
      if (ints) {
        if (__builtin_add_overflow(a.int_value(), b.int_value(), &r)) {
          return InvalidArgument("integer overflow");
        }
        return Value::Int(r);
      }
      if (nums) return Value::Float(a.AsDouble() + b.AsDouble());
      if (a.is_string() && b.is_string()) return CheckedString(a.str() + b.str());
      if (a.is_list() && b.is_list() && a.is_tuple() == b.is_tuple()) {
        if (a.list().size() + b.list().size() > kMaxListItems) {
          return ResourceExhausted("list too long");
        }
        List items = a.list();
        items.insert(items.end(), b.list().begin(), b.list().end());
        return Value::MakeList(std::move(items), a.is_tuple());
      }
      return OperandError("+", a, b);
    }
    if (op == "-") {
      if (ints) {
        if (__builtin_sub_overflow(a.int_value(), b.int_value(), &r)) {
          return InvalidArgument("integer overflow");
        }
        return Value::Int(r);
      }
      if (nums) return Value::Float(a.AsDouble() - b.AsDouble());
      return OperandError("-", a, b);
    }
    if (op == "*") {
      if (ints) {
        if (__builtin_mul_overflow(a.int_value(), b.int_value(), &r)) {
          return InvalidArgument("integer overflow");
        }
        return Value::Int(r);
      }
      if (nums) return Value::Float(a.AsDouble() * b.AsDouble());
      const Value* seq = IsIntLike(b) ? &a : IsIntLike(a) ? &b : nullptr;
      const Value* count = seq == &a ? &b : &a;
      if (seq != nullptr && (seq->is_string() || seq->is_list())) {
        int64_t n = std::max<int64_t>(count->int_value(), 0);
        const size_t unit = seq->is_string() ? seq->str().size() : seq->list().size();
        const size_t cap = seq->is_string() ? limits_.max_output_bytes : kMaxListItems;
        if (unit != 0 && static_cast<uint64_t>(n) > cap / unit) {
          return ResourceExhausted("sequence repetition too large");
        }
        // '' * 10**12 is '' at once, not after 10**12 appends.
        if (unit == 0) n = 0;
        if (seq->is_string()) {
          // By doubling: 'x' * 10**7 is a few copies, not ten million appends.
          const size_t total = unit * static_cast<size_t>(n);
          std::string s;
          s.reserve(total);
          if (n > 0) s = seq->str();
          while (s.size() < total) s.append(s, 0, std::min(s.size(), total - s.size()));
          return Value::String(std::move(s));
        }
        List items;
        items.reserve(unit * static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
          items.insert(items.end(), seq->list().begin(), seq->list().end());
        }
        return Value::MakeList(std::move(items), seq->is_tuple());
      }
      return OperandError("*", a, b);
    }
    if (op == "/") {
      if (!nums) return OperandError("/", a, b);
      if (b.AsDouble() == 0) return InvalidArgument("ZeroDivisionError: division by zero");
      return Value::Float(a.AsDouble() / b.AsDouble());
    }
    if (op == "//" || op == "%") {
      if (op == "%" && a.is_string()) {
        HW_ASSIGN_OR_RETURN(std::string s, PercentFormat(a.str(), b));
        return CheckedString(std::move(s));
      }
      if (!nums) return OperandError(op, a, b);
      if (ints) {
        const int64_t x = a.int_value(), y = b.int_value();
        if (y == 0) return InvalidArgument("ZeroDivisionError: integer division or modulo by zero");
        if (x == INT64_MIN && y == -1) return InvalidArgument("integer overflow");
        int64_t q = x / y, m = x % y;
        // Python floors toward negative infinity.
        if (m != 0 && ((m < 0) != (y < 0))) {
          --q;
          m += y;
        }
        return Value::Int(op == "//" ? q : m);
      }
      const double x = a.AsDouble(), y = b.AsDouble();
      if (y == 0) return InvalidArgument("ZeroDivisionError: float division by zero");
      if (op == "//") return Value::Float(std::floor(x / y));
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      return Value::Float(m);
    }
    if (op == "**") {
      if (!nums) return OperandError("**", a, b);
      if (ints && b.int_value() >= 0) {
        const int64_t base = a.int_value(), exponent = b.int_value();
        // 0, 1 and -1 never overflow, whatever the exponent; others overflow by 2**63.
        if (base == 0) return Value::Int(exponent == 0 ? 1 : 0);
        if (base == 1) return Value::Int(1);
        if (base == -1) return Value::Int(exponent % 2 == 0 ? 1 : -1);
        int64_t result = 1;
        for (int64_t e = exponent; e > 0; --e) {
          if (__builtin_mul_overflow(result, base, &result)) {
            return InvalidArgument("integer overflow");
          }
        }
        return Value::Int(result);
      }
      return Value::Float(std::pow(a.AsDouble(), b.AsDouble()));
    }
    return Internal("unknown operator {}", op);
  }

  const Template& tpl_;
  const Dict& vars_;
  RenderLimits limits_;
  std::vector<Scope> scopes_;
  size_t frame_base_ = 0;
  std::string* out_ = nullptr;
  int64_t iterations_ = 0;
  int call_depth_ = 0;
  int depth_ = 0;
  uint64_t steps_ = 0;
  AllocationBudget* budget_ = nullptr;
  std::chrono::steady_clock::time_point start_;
  bool located_ = false;
};

}  // namespace

StatusOr<std::string> RenderTemplate(const Template& tpl, const Dict& variables,
                                     const RenderLimits& limits) {
  return Renderer(tpl, variables, limits).Run();
}

}  // namespace headwise::tokenizer::jinja
