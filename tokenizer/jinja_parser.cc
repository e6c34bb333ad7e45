#include "tokenizer/jinja_parser.h"

#include <charconv>
#include <initializer_list>

#include "tokenizer/jinja_builtins.h"
#include "tokenizer/jinja_lexer.h"

namespace headwise::tokenizer::jinja {
namespace {

// Deep nesting ("((((...") would otherwise recurse until the stack overflows.
constexpr int kMaxNesting = 200;

class Parser {
 public:
  Parser(const std::vector<Token>& tokens, std::string_view source)
      : tokens_(tokens), source_(source) {}

  StatusOr<Body> ParseAll() {
    Body body;
    std::string end;
    HW_RETURN_IF_ERROR(ParseStatements({}, &body, &end));
    return body;
  }

 private:
  // ---- token stream ----
  const Token& Cur() const { return tokens_[pos_]; }
  const Token& Look() const { return tokens_[std::min(pos_ + 1, tokens_.size() - 1)]; }
  void Next() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool IsOp(std::string_view op) const {
    return Cur().type == TokenType::kOperator && Cur().value == op;
  }
  bool IsName(std::string_view name) const {
    return Cur().type == TokenType::kName && Cur().value == name;
  }
  bool SkipOp(std::string_view op) {
    if (!IsOp(op)) return false;
    Next();
    return true;
  }
  bool SkipName(std::string_view name) {
    if (!IsName(name)) return false;
    Next();
    return true;
  }

  static std::string Describe(const Token& t) {
    switch (t.type) {
      case TokenType::kText:
        return "template data";
      case TokenType::kBlockBegin:
        return "'{%'";
      case TokenType::kBlockEnd:
        return "end of statement block";
      case TokenType::kVarBegin:
        return "'{{'";
      case TokenType::kVarEnd:
        return "end of print statement";
      case TokenType::kEof:
        return "end of template";
      case TokenType::kString:
        return "string";
      default:
        return "'" + t.value + "'";
    }
  }

  Status Error(size_t offset, std::string_view what) const {
    const SourcePosition p = PositionOf(source_, offset);
    return InvalidArgument("chat template syntax error at line {} column {}: {}", p.line, p.column,
                           what);
  }
  Status Unsupported(size_t offset, std::string_view construct) const {
    const SourcePosition p = PositionOf(source_, offset);
    return InvalidArgument("chat template uses an unsupported construct at line {} column {}: {}",
                           p.line, p.column, construct);
  }
  Status Unexpected(std::string_view expected) const {
    return Error(Cur().offset, fmt::format("expected {}, got {}", expected, Describe(Cur())));
  }
  Status ExpectOp(std::string_view op) {
    if (!SkipOp(op)) return Unexpected(fmt::format("'{}'", op));
    return Status::Ok();
  }
  Status ExpectBlockEnd() {
    if (Cur().type != TokenType::kBlockEnd) return Unexpected("end of statement block");
    Next();
    return Status::Ok();
  }
  StatusOr<std::string> ExpectName() {
    if (Cur().type != TokenType::kName) return Unexpected("a name");
    std::string name = Cur().value;
    Next();
    return name;
  }

  std::unique_ptr<Expr> MakeExpr(ExprKind kind, size_t offset) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->offset = offset;
    return e;
  }

  // Records a finished node's height and refuses it past kMaxExprHeight. Left-leaning chains
  // (a + b + c ..., x|f|g|h ..., a.b.c ..., f()()()) are built by loops, so the recursion
  // count depth_ does not see them, yet evaluating and freeing them recurses per level.
  Status Seal(Expr* e) const {
    int h = 0;
    const auto see = [&h](const std::unique_ptr<Expr>& c) {
      if (c) h = std::max(h, c->height);
    };
    see(e->a);
    see(e->b);
    see(e->c);
    for (const auto& x : e->args) see(x);
    for (const auto& kv : e->kwargs) see(kv.second);
    e->height = h + 1;
    if (e->height > kMaxExprHeight) {
      return Error(e->offset, fmt::format("expression nested deeper than {}", kMaxExprHeight));
    }
    return Status::Ok();
  }

  // ---- statements ----

  // Parses statements until a block tag whose first word is one of end_names (left unconsumed,
  // the stream on that word; its name in *end) or, when end_names is empty, the end of input.
  Status ParseStatements(std::initializer_list<std::string_view> end_names, Body* body,
                         std::string* end) {
    while (true) {
      const Token& t = Cur();
      switch (t.type) {
        case TokenType::kEof:
          if (end_names.size() == 0) return Status::Ok();
          {
            std::string names;
            for (std::string_view e : end_names) {
              names += names.empty() ? "" : " or ";
              names += fmt::format("'{}'", e);
            }
            return Error(t.offset, fmt::format("unexpected end of template, expected {}", names));
          }
        case TokenType::kText: {
          auto s = std::make_unique<Stmt>();
          s->kind = StmtKind::kText;
          s->offset = t.offset;
          s->text = t.value;
          body->push_back(std::move(s));
          Next();
          break;
        }
        case TokenType::kVarBegin: {
          auto s = std::make_unique<Stmt>();
          s->kind = StmtKind::kOutput;
          s->offset = t.offset;
          Next();
          HW_ASSIGN_OR_RETURN(s->expr, ParseTuple(true, false));
          if (Cur().type != TokenType::kVarEnd) return Unexpected("end of print statement");
          Next();
          body->push_back(std::move(s));
          break;
        }
        case TokenType::kBlockBegin: {
          Next();
          if (Cur().type != TokenType::kName) return Unexpected("a statement name");
          for (std::string_view e : end_names) {
            if (Cur().value == e) {
              *end = Cur().value;
              return Status::Ok();
            }
          }
          HW_RETURN_IF_ERROR(ParseStatement(body));
          break;
        }
        default:
          return Error(t.offset, fmt::format("unexpected {}", Describe(t)));
      }
    }
  }

  Status ParseStatement(Body* body) {
    const Token& t = Cur();
    const std::string word = t.value;
    const size_t offset = t.offset;
    if (++depth_ > kMaxNesting) return Error(offset, "statements nested too deeply");
    auto s = std::make_unique<Stmt>();
    s->offset = offset;
    Next();
    Status st;
    if (word == "if") {
      st = ParseIf(s.get());
    } else if (word == "for") {
      st = ParseFor(s.get());
    } else if (word == "set") {
      st = ParseSet(s.get());
    } else if (word == "macro") {
      st = ParseMacro(s.get());
    } else if (word == "break" || word == "continue") {
      // transformers enables jinja2.ext.loopcontrols.
      if (loop_depth_ == 0) {
        return Error(offset, fmt::format("'{}' outside of a loop", word));
      }
      s->kind = word == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      st = ExpectBlockEnd();
    } else if (word == "filter") {
      s->kind = StmtKind::kFilterBlock;
      st = ParseFilterChain(nullptr, true, &s->expr);
      if (st.ok()) st = ExpectBlockEnd();
      if (st.ok()) st = ParseBody({"endfilter"}, &s->body);
    } else if (word == "with") {
      st = ParseWith(s.get());
    } else if (word == "generation") {
      // transformers' AssistantTracker: marks assistant text for masks; renders its body.
      s->kind = StmtKind::kScope;
      st = ExpectBlockEnd();
      if (st.ok()) st = ParseBody({"endgeneration"}, &s->body);
    } else if (word == "print") {
      s->kind = StmtKind::kOutput;
      auto e = ParseTuple(true, false);
      if (!e.ok()) return e.status();
      s->expr = std::move(*e);
      st = ExpectBlockEnd();
    } else if (word == "block" || word == "extends" || word == "include" || word == "import" ||
               word == "from" || word == "call" || word == "autoescape" || word == "do" ||
               word == "trans") {
      return Unsupported(offset, fmt::format("'{{% {} %}}'", word));
    } else {
      return Error(offset, fmt::format("unknown or misplaced tag '{}'", word));
    }
    HW_RETURN_IF_ERROR(st);
    --depth_;
    body->push_back(std::move(s));
    return Status::Ok();
  }

  // Parses a body ending at one of end_names, consumes that end tag (which must close at once).
  Status ParseBody(std::initializer_list<std::string_view> end_names, Body* body) {
    std::string end;
    HW_RETURN_IF_ERROR(ParseStatements(end_names, body, &end));
    Next();  // the end word
    return ExpectBlockEnd();
  }

  Status ParseIf(Stmt* s) {
    s->kind = StmtKind::kIf;
    while (true) {
      HW_ASSIGN_OR_RETURN(auto cond, ParseTuple(false, false));
      HW_RETURN_IF_ERROR(ExpectBlockEnd());
      Body body;
      std::string end;
      HW_RETURN_IF_ERROR(ParseStatements({"elif", "else", "endif"}, &body, &end));
      s->branches.emplace_back(std::move(cond), std::move(body));
      Next();
      if (end == "elif") continue;
      if (end == "else") {
        HW_RETURN_IF_ERROR(ExpectBlockEnd());
        Body else_body;
        HW_RETURN_IF_ERROR(ParseBody({"endif"}, &else_body));
        s->branches.emplace_back(nullptr, std::move(else_body));
        return Status::Ok();
      }
      return ExpectBlockEnd();
    }
  }

  // Assignment targets: a name, names separated by commas, or a parenthesised tuple of names.
  Status ParseTargets(Stmt* s) {
    bool parens = SkipOp("(");
    while (true) {
      HW_ASSIGN_OR_RETURN(std::string name, ExpectName());
      if (name == "true" || name == "false" || name == "none" || name == "True" ||
          name == "False" || name == "None") {
        return Error(Cur().offset, fmt::format("cannot assign to '{}'", name));
      }
      s->targets.push_back(std::move(name));
      if (!SkipOp(",")) break;
      s->unpack = true;
      if (parens && IsOp(")")) break;
      if (!parens && (IsName("in") || IsOp("=") || Cur().type == TokenType::kBlockEnd)) break;
    }
    if (parens) {
      s->unpack = true;
      HW_RETURN_IF_ERROR(ExpectOp(")"));
    }
    return Status::Ok();
  }

  Status ParseFor(Stmt* s) {
    s->kind = StmtKind::kFor;
    HW_RETURN_IF_ERROR(ParseTargets(s));
    if (!SkipName("in")) return Unexpected("'in'");
    HW_ASSIGN_OR_RETURN(s->expr, ParseTuple(false, false));
    if (SkipName("if")) {
      HW_ASSIGN_OR_RETURN(s->cond, ParseExpression(true));
    }
    if (IsName("recursive")) return Unsupported(Cur().offset, "recursive for loops");
    HW_RETURN_IF_ERROR(ExpectBlockEnd());
    ++loop_depth_;
    std::string end;
    Status st = ParseStatements({"endfor", "else"}, &s->body, &end);
    --loop_depth_;
    HW_RETURN_IF_ERROR(st);
    Next();
    HW_RETURN_IF_ERROR(ExpectBlockEnd());
    if (end == "else") HW_RETURN_IF_ERROR(ParseBody({"endfor"}, &s->else_body));
    return Status::Ok();
  }

  Status ParseSet(Stmt* s) {
    if (Cur().type == TokenType::kName && Look().type == TokenType::kOperator &&
        Look().value == ".") {
      s->targets.push_back(Cur().value);
      Next();
      Next();
      HW_ASSIGN_OR_RETURN(s->ns_attr, ExpectName());
    } else {
      HW_RETURN_IF_ERROR(ParseTargets(s));
    }
    if (SkipOp("=")) {
      s->kind = StmtKind::kSet;
      HW_ASSIGN_OR_RETURN(s->expr, ParseTuple(true, false));
      return ExpectBlockEnd();
    }
    s->kind = StmtKind::kSetBlock;
    if (IsOp("|")) HW_RETURN_IF_ERROR(ParseFilterChain(nullptr, false, &s->expr));
    HW_RETURN_IF_ERROR(ExpectBlockEnd());
    return ParseBody({"endset"}, &s->body);
  }

  Status ParseMacro(Stmt* s) {
    s->kind = StmtKind::kMacro;
    s->macro = std::make_unique<MacroStmt>();
    HW_ASSIGN_OR_RETURN(s->macro->name, ExpectName());
    HW_RETURN_IF_ERROR(ExpectOp("("));
    bool defaults = false;
    while (!IsOp(")")) {
      if (!s->macro->params.empty()) HW_RETURN_IF_ERROR(ExpectOp(","));
      HW_ASSIGN_OR_RETURN(std::string name, ExpectName());
      std::unique_ptr<Expr> def;
      if (SkipOp("=")) {
        HW_ASSIGN_OR_RETURN(def, ParseExpression(true));
        defaults = true;
      } else if (defaults) {
        return Error(Cur().offset, "non-default argument follows default argument");
      }
      s->macro->params.emplace_back(std::move(name), std::move(def));
    }
    Next();
    HW_RETURN_IF_ERROR(ExpectBlockEnd());
    const int saved_loop_depth = loop_depth_;
    loop_depth_ = 0;
    Status st = ParseBody({"endmacro"}, &s->body);
    loop_depth_ = saved_loop_depth;
    s->macro->body = &s->body;
    return st;
  }

  Status ParseWith(Stmt* s) {
    s->kind = StmtKind::kWith;
    while (Cur().type != TokenType::kBlockEnd) {
      if (!s->assignments.empty()) HW_RETURN_IF_ERROR(ExpectOp(","));
      HW_ASSIGN_OR_RETURN(std::string name, ExpectName());
      HW_RETURN_IF_ERROR(ExpectOp("="));
      HW_ASSIGN_OR_RETURN(auto value, ParseExpression(true));
      s->assignments.emplace_back(std::move(name), std::move(value));
    }
    Next();
    return ParseBody({"endwith"}, &s->body);
  }

  // ---- expressions (jinja2's precedence, lowest first) ----

  bool IsTupleEnd() const {
    return Cur().type == TokenType::kVarEnd || Cur().type == TokenType::kBlockEnd || IsOp(")");
  }

  // jinja2's parse_tuple: "a, b" is a tuple; one expression without a comma is itself.
  StatusOr<std::unique_ptr<Expr>> ParseTuple(bool with_condexpr, bool explicit_parens) {
    const size_t offset = Cur().offset;
    std::vector<std::unique_ptr<Expr>> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) HW_RETURN_IF_ERROR(ExpectOp(","));
      if (IsTupleEnd()) break;
      HW_ASSIGN_OR_RETURN(auto e, ParseExpression(with_condexpr));
      items.push_back(std::move(e));
      if (IsOp(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) {
        return Error(Cur().offset, fmt::format("expected an expression, got {}", Describe(Cur())));
      }
    }
    auto t = MakeExpr(ExprKind::kTuple, offset);
    t->args = std::move(items);
    HW_RETURN_IF_ERROR(Seal(t.get()));
    return t;
  }

  StatusOr<std::unique_ptr<Expr>> ParseExpression(bool with_condexpr) {
    if (++depth_ > kMaxNesting) return Error(Cur().offset, "expression nested too deeply");
    auto r = with_condexpr ? ParseCondExpr() : ParseOr();
    --depth_;
    return r;
  }

  StatusOr<std::unique_ptr<Expr>> ParseCondExpr() {
    const size_t offset = Cur().offset;
    // `a if b else c if d else ...` recurses once per else.
    if (++depth_ > kMaxNesting) return Error(offset, "expression nested too deeply");
    HW_ASSIGN_OR_RETURN(auto expr1, ParseOr());
    while (SkipName("if")) {
      auto e = MakeExpr(ExprKind::kCondExpr, offset);
      HW_ASSIGN_OR_RETURN(e->b, ParseOr());
      if (SkipName("else")) {
        HW_ASSIGN_OR_RETURN(e->c, ParseCondExpr());
      }
      e->a = std::move(expr1);
      HW_RETURN_IF_ERROR(Seal(e.get()));
      expr1 = std::move(e);
    }
    --depth_;
    return expr1;
  }

  StatusOr<std::unique_ptr<Expr>> ParseOr() {
    const size_t offset = Cur().offset;
    HW_ASSIGN_OR_RETURN(auto left, ParseAnd());
    while (SkipName("or")) {
      auto e = MakeExpr(ExprKind::kOr, offset);
      e->a = std::move(left);
      HW_ASSIGN_OR_RETURN(e->b, ParseAnd());
      HW_RETURN_IF_ERROR(Seal(e.get()));
      left = std::move(e);
    }
    return left;
  }

  StatusOr<std::unique_ptr<Expr>> ParseAnd() {
    const size_t offset = Cur().offset;
    HW_ASSIGN_OR_RETURN(auto left, ParseNot());
    while (SkipName("and")) {
      auto e = MakeExpr(ExprKind::kAnd, offset);
      e->a = std::move(left);
      HW_ASSIGN_OR_RETURN(e->b, ParseNot());
      HW_RETURN_IF_ERROR(Seal(e.get()));
      left = std::move(e);
    }
    return left;
  }

  StatusOr<std::unique_ptr<Expr>> ParseNot() {
    if (IsName("not")) {
      const size_t offset = Cur().offset;
      Next();
      if (++depth_ > kMaxNesting) return Error(offset, "expression nested too deeply");
      auto e = MakeExpr(ExprKind::kNot, offset);
      HW_ASSIGN_OR_RETURN(e->a, ParseNot());
      HW_RETURN_IF_ERROR(Seal(e.get()));
      --depth_;
      return e;
    }
    return ParseCompare();
  }

  StatusOr<std::unique_ptr<Expr>> ParseCompare() {
    const size_t offset = Cur().offset;
    HW_ASSIGN_OR_RETURN(auto expr, ParseMath1());
    std::unique_ptr<Expr> cmp;
    while (true) {
      std::string op;
      if (Cur().type == TokenType::kOperator &&
          (Cur().value == "==" || Cur().value == "!=" || Cur().value == "<" ||
           Cur().value == "<=" || Cur().value == ">" || Cur().value == ">=")) {
        op = Cur().value;
        Next();
      } else if (IsName("in")) {
        op = "in";
        Next();
      } else if (IsName("not") && Look().type == TokenType::kName && Look().value == "in") {
        op = "notin";
        Next();
        Next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = MakeExpr(ExprKind::kCompare, offset);
        cmp->a = std::move(expr);
      }
      cmp->ops.push_back(op);
      HW_ASSIGN_OR_RETURN(auto rhs, ParseMath1());
      cmp->args.push_back(std::move(rhs));
    }
    if (cmp) {
      HW_RETURN_IF_ERROR(Seal(cmp.get()));
      return cmp;
    }
    return expr;
  }

  using SubParser = StatusOr<std::unique_ptr<Expr>> (Parser::*)();

  StatusOr<std::unique_ptr<Expr>> ParseBinaryLevel(std::initializer_list<std::string_view> ops,
                                                   SubParser next) {
    const size_t offset = Cur().offset;
    HW_ASSIGN_OR_RETURN(auto left, (this->*next)());
    while (Cur().type == TokenType::kOperator) {
      std::string op;
      for (std::string_view o : ops) {
        if (Cur().value == o) op = std::string(o);
      }
      if (op.empty()) break;
      Next();
      auto e = MakeExpr(ExprKind::kBinary, offset);
      e->name = op;
      e->a = std::move(left);
      HW_ASSIGN_OR_RETURN(e->b, (this->*next)());
      HW_RETURN_IF_ERROR(Seal(e.get()));
      left = std::move(e);
    }
    return left;
  }

  StatusOr<std::unique_ptr<Expr>> ParseMath1() {
    return ParseBinaryLevel({"+", "-"}, &Parser::ParseConcat);
  }
  StatusOr<std::unique_ptr<Expr>> ParseConcat() {
    return ParseBinaryLevel({"~"}, &Parser::ParseMath2);
  }
  StatusOr<std::unique_ptr<Expr>> ParseMath2() {
    return ParseBinaryLevel({"*", "/", "//", "%"}, &Parser::ParsePow);
  }
  StatusOr<std::unique_ptr<Expr>> ParsePow() {
    return ParseBinaryLevel({"**"}, &Parser::ParseUnaryWithFilter);
  }
  StatusOr<std::unique_ptr<Expr>> ParseUnaryWithFilter() { return ParseUnary(true); }

  StatusOr<std::unique_ptr<Expr>> ParseUnary(bool with_filter) {
    if (++depth_ > kMaxNesting) return Error(Cur().offset, "expression nested too deeply");
    const size_t offset = Cur().offset;
    std::unique_ptr<Expr> node;
    if (IsOp("-") || IsOp("+")) {
      node = MakeExpr(IsOp("-") ? ExprKind::kNeg : ExprKind::kPos, offset);
      Next();
      HW_ASSIGN_OR_RETURN(node->a, ParseUnary(false));
      HW_RETURN_IF_ERROR(Seal(node.get()));
    } else {
      HW_ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    HW_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (with_filter) {
      HW_ASSIGN_OR_RETURN(node, ParseFilterExpr(std::move(node)));
    }
    --depth_;
    return node;
  }

  StatusOr<std::unique_ptr<Expr>> ParsePrimary() {
    const Token& t = Cur();
    const size_t offset = t.offset;
    switch (t.type) {
      case TokenType::kName: {
        auto e = MakeExpr(ExprKind::kConst, offset);
        if (t.value == "true" || t.value == "True") {
          e->value = Value::Bool(true);
        } else if (t.value == "false" || t.value == "False") {
          e->value = Value::Bool(false);
        } else if (t.value == "none" || t.value == "None") {
          e->value = Value::None();
        } else {
          e->kind = ExprKind::kName;
          e->name = t.value;
        }
        Next();
        return e;
      }
      case TokenType::kString: {
        std::string s;
        while (Cur().type == TokenType::kString) {
          s += Cur().value;
          Next();
        }
        auto e = MakeExpr(ExprKind::kConst, offset);
        e->value = Value::String(std::move(s));
        return e;
      }
      case TokenType::kInteger: {
        int64_t v = 0;
        const auto r = std::from_chars(t.value.data(), t.value.data() + t.value.size(), v);
        if (r.ec != std::errc()) return Unsupported(offset, "integer literal beyond 64 bits");
        auto e = MakeExpr(ExprKind::kConst, offset);
        e->value = Value::Int(v);
        Next();
        return e;
      }
      case TokenType::kFloat: {
        auto e = MakeExpr(ExprKind::kConst, offset);
        e->value = Value::Float(std::strtod(t.value.c_str(), nullptr));
        Next();
        return e;
      }
      case TokenType::kOperator: {
        if (t.value == "(") {
          Next();
          HW_ASSIGN_OR_RETURN(auto e, ParseTuple(true, true));
          HW_RETURN_IF_ERROR(ExpectOp(")"));
          return e;
        }
        if (t.value == "[") {
          Next();
          auto e = MakeExpr(ExprKind::kList, offset);
          while (!IsOp("]")) {
            if (!e->args.empty()) HW_RETURN_IF_ERROR(ExpectOp(","));
            if (IsOp("]")) break;
            HW_ASSIGN_OR_RETURN(auto item, ParseExpression(true));
            e->args.push_back(std::move(item));
          }
          Next();
          HW_RETURN_IF_ERROR(Seal(e.get()));
          return e;
        }
        if (t.value == "{") {
          Next();
          auto e = MakeExpr(ExprKind::kDict, offset);
          while (!IsOp("}")) {
            if (!e->args.empty()) HW_RETURN_IF_ERROR(ExpectOp(","));
            if (IsOp("}")) break;
            HW_ASSIGN_OR_RETURN(auto key, ParseExpression(true));
            HW_RETURN_IF_ERROR(ExpectOp(":"));
            HW_ASSIGN_OR_RETURN(auto value, ParseExpression(true));
            e->args.push_back(std::move(key));
            e->args.push_back(std::move(value));
          }
          Next();
          HW_RETURN_IF_ERROR(Seal(e.get()));
          return e;
        }
        break;
      }
      default:
        break;
    }
    return Error(offset, fmt::format("unexpected {}", Describe(t)));
  }

  StatusOr<std::unique_ptr<Expr>> ParsePostfix(std::unique_ptr<Expr> node) {
    while (true) {
      if (IsOp(".")) {
        const size_t offset = Cur().offset;
        Next();
        if (Cur().type == TokenType::kName) {
          auto e = MakeExpr(ExprKind::kGetattr, offset);
          e->a = std::move(node);
          e->name = Cur().value;
          Next();
          HW_RETURN_IF_ERROR(Seal(e.get()));
          node = std::move(e);
        } else if (Cur().type == TokenType::kInteger) {
          HW_ASSIGN_OR_RETURN(auto index, ParsePrimary());
          auto e = MakeExpr(ExprKind::kGetitem, offset);
          e->a = std::move(node);
          e->b = std::move(index);
          HW_RETURN_IF_ERROR(Seal(e.get()));
          node = std::move(e);
        } else {
          return Unexpected("a name or number");
        }
      } else if (IsOp("[")) {
        const size_t offset = Cur().offset;
        Next();
        std::vector<std::unique_ptr<Expr>> subs;
        while (!IsOp("]")) {
          if (!subs.empty()) HW_RETURN_IF_ERROR(ExpectOp(","));
          HW_ASSIGN_OR_RETURN(auto sub, ParseSubscribed());
          subs.push_back(std::move(sub));
        }
        Next();
        if (subs.empty()) return Error(offset, "empty subscript");
        auto e = MakeExpr(ExprKind::kGetitem, offset);
        e->a = std::move(node);
        if (subs.size() == 1) {
          e->b = std::move(subs[0]);
        } else {
          e->b = MakeExpr(ExprKind::kTuple, offset);
          e->b->args = std::move(subs);
          HW_RETURN_IF_ERROR(Seal(e->b.get()));
        }
        HW_RETURN_IF_ERROR(Seal(e.get()));
        node = std::move(e);
      } else if (IsOp("(")) {
        HW_ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  StatusOr<std::unique_ptr<Expr>> ParseSubscribed() {
    const size_t offset = Cur().offset;
    auto slice = MakeExpr(ExprKind::kSlice, offset);
    if (IsOp(":")) {
      Next();
    } else {
      HW_ASSIGN_OR_RETURN(auto node, ParseExpression(true));
      if (!IsOp(":")) return node;
      Next();
      slice->a = std::move(node);
    }
    if (!IsOp(":") && !IsOp("]") && !IsOp(",")) {
      HW_ASSIGN_OR_RETURN(slice->b, ParseExpression(true));
    }
    if (SkipOp(":")) {
      if (!IsOp("]") && !IsOp(",")) {
        HW_ASSIGN_OR_RETURN(slice->c, ParseExpression(true));
      }
    }
    HW_RETURN_IF_ERROR(Seal(slice.get()));
    return slice;
  }

  Status ParseCallArgs(Expr* e) {
    HW_RETURN_IF_ERROR(ExpectOp("("));
    bool require_comma = false;
    while (!IsOp(")")) {
      if (require_comma) {
        HW_RETURN_IF_ERROR(ExpectOp(","));
        if (IsOp(")")) break;
      }
      if (IsOp("*") || IsOp("**")) return Unsupported(Cur().offset, "*args / **kwargs in calls");
      if (Cur().type == TokenType::kName && Look().type == TokenType::kOperator &&
          Look().value == "=") {
        std::string key = Cur().value;
        Next();
        Next();
        HW_ASSIGN_OR_RETURN(auto value, ParseExpression(true));
        e->kwargs.emplace_back(std::move(key), std::move(value));
      } else {
        if (!e->kwargs.empty()) {
          return Error(Cur().offset, "positional argument follows keyword argument");
        }
        HW_ASSIGN_OR_RETURN(auto value, ParseExpression(true));
        e->args.push_back(std::move(value));
      }
      require_comma = true;
    }
    Next();
    return Status::Ok();
  }

  StatusOr<std::unique_ptr<Expr>> ParseCall(std::unique_ptr<Expr> callee) {
    auto e = MakeExpr(ExprKind::kCall, Cur().offset);
    e->a = std::move(callee);
    HW_RETURN_IF_ERROR(ParseCallArgs(e.get()));
    HW_RETURN_IF_ERROR(Seal(e.get()));
    return e;
  }

  // `| name(args)` chains; with start_inline the first filter has no pipe ({% filter f %}).
  Status ParseFilterChain(std::unique_ptr<Expr> node, bool start_inline,
                          std::unique_ptr<Expr>* out) {
    while (IsOp("|") || start_inline) {
      if (!start_inline) Next();
      start_inline = false;
      const size_t offset = Cur().offset;
      HW_ASSIGN_OR_RETURN(std::string name, ExpectName());
      while (SkipOp(".")) {
        HW_ASSIGN_OR_RETURN(std::string part, ExpectName());
        name += "." + part;
      }
      if (!IsKnownFilter(name)) {
        return Unsupported(offset, fmt::format("filter '{}'", name));
      }
      auto e = MakeExpr(ExprKind::kFilter, offset);
      e->name = name;
      e->a = std::move(node);
      if (IsOp("(")) HW_RETURN_IF_ERROR(ParseCallArgs(e.get()));
      HW_RETURN_IF_ERROR(Seal(e.get()));
      node = std::move(e);
    }
    *out = std::move(node);
    return Status::Ok();
  }

  StatusOr<std::unique_ptr<Expr>> ParseFilterExpr(std::unique_ptr<Expr> node) {
    while (true) {
      if (IsOp("|")) {
        HW_RETURN_IF_ERROR(ParseFilterChain(std::move(node), false, &node));
      } else if (IsName("is")) {
        HW_ASSIGN_OR_RETURN(node, ParseTest(std::move(node)));
      } else if (IsOp("(")) {
        HW_ASSIGN_OR_RETURN(node, ParseCall(std::move(node)));
      } else {
        return node;
      }
    }
  }

  StatusOr<std::unique_ptr<Expr>> ParseTest(std::unique_ptr<Expr> node) {
    const size_t offset = Cur().offset;
    Next();  // is
    auto e = MakeExpr(ExprKind::kTest, offset);
    e->negated = SkipName("not");
    HW_ASSIGN_OR_RETURN(e->name, ExpectName());
    while (SkipOp(".")) {
      HW_ASSIGN_OR_RETURN(std::string part, ExpectName());
      e->name += "." + part;
    }
    if (!IsKnownTest(e->name)) return Unsupported(offset, fmt::format("test '{}'", e->name));
    e->a = std::move(node);
    const Token& t = Cur();
    if (IsOp("(")) {
      HW_RETURN_IF_ERROR(ParseCallArgs(e.get()));
    } else if ((t.type == TokenType::kName || t.type == TokenType::kString ||
                t.type == TokenType::kInteger || t.type == TokenType::kFloat || IsOp("(") ||
                IsOp("[") || IsOp("{")) &&
               !IsName("else") && !IsName("or") && !IsName("and")) {
      // jinja2 takes one bare argument: `x is divisibleby 3`, `x is sameas false`.
      if (IsName("is")) return Error(t.offset, "you cannot chain multiple tests with is");
      HW_ASSIGN_OR_RETURN(auto arg, ParsePrimary());
      HW_ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
      e->args.push_back(std::move(arg));
    }
    HW_RETURN_IF_ERROR(Seal(e.get()));
    return e;
  }

  const std::vector<Token>& tokens_;
  std::string_view source_;
  size_t pos_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<Template>> ParseTemplate(std::string_view source) {
  if (source.size() > kMaxTemplateBytes) {
    return InvalidArgument("chat template of {} bytes is over the limit of {}", source.size(),
                           kMaxTemplateBytes);
  }
  auto tpl = std::make_unique<Template>();
  HW_ASSIGN_OR_RETURN(auto tokens, Lex(source, LexerOptions{}, &tpl->source));
  Parser parser(tokens, tpl->source);
  HW_ASSIGN_OR_RETURN(tpl->body, parser.ParseAll());
  return tpl;
}

}  // namespace headwise::tokenizer::jinja
