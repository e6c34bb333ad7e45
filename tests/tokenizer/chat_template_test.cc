// Unit tests of the chat-template interpreter's mechanics. The expected strings are jinja2's
// renderings of the same snippets (jinja2 3.1.4 with transformers' settings); whole real
// templates are compared with jinja2 by tests/python/chat_template_parity.py.
#include "tokenizer/chat_template.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

namespace {

using headwise::StatusCode;
using headwise::tokenizer::ChatTemplate;
using headwise::tokenizer::ChatTemplateOptions;
using headwise::tokenizer::FlattenTextContent;
// Ordered, as Python dicts are: key order is part of what templates print.
using json = nlohmann::ordered_json;

// Renders `source` with no messages and `vars` as the extra variables; "ERROR: <message>" on
// failure so that expectations can look at either.
std::string Render(const std::string& source, const json& vars = json::object(),
                   ChatTemplateOptions options = {}) {
  auto tpl = ChatTemplate::Parse(source, options);
  if (!tpl.ok()) return "PARSE ERROR: " + tpl.status().message();
  auto out = tpl->Render(json::array(), vars);
  if (!out.ok()) return "ERROR: " + out.status().message();
  return *out;
}

std::string ParseError(const std::string& source) {
  auto tpl = ChatTemplate::Parse(source);
  if (tpl.ok()) return "";
  CHECK(tpl.status().code() == StatusCode::kInvalidArgument);
  return tpl.status().message();
}

}  // namespace

TEST_CASE("chat template lexer: trim_blocks and lstrip_blocks as jinja2", "[chat_template]") {
  // trim_blocks drops the newline after a block tag; lstrip_blocks the indentation before it.
  CHECK(Render("a\n  {% if true %}\n  b\n  {% endif %}\nc") == "a\n  b\nc");
  // Not at the start of a line: no lstrip.
  CHECK(Render("x {% if true %} y {% endif %} z") == "x  y  z");
  // Variables are neither trimmed nor lstripped.
  CHECK(Render("  {{ 'v' }}\nw") == "  v\nw");
  // Comments are trimmed and lstripped like blocks.
  CHECK(Render("a\n   {# note #}\nb") == "a\nb");
  // One trailing newline of the template is dropped (keep_trailing_newline=False).
  CHECK(Render("text\n") == "text");
  CHECK(Render("text\n\n") == "text\n");
  // CRLF and CR become LF.
  CHECK(Render("a\r\nb\rc") == "a\nb\nc");
}

TEST_CASE("chat template lexer: explicit whitespace control", "[chat_template]") {
  CHECK(Render("a   \n  {%- if true -%}  \n  b  {%- endif %}") == "ab");
  CHECK(Render("a  {{- 'b' -}}  \n c") == "abc");
  CHECK(Render("a \n{#- c -#}\n b") == "ab");
  // "+" disables lstrip_blocks for that tag; "+%}" disables trim_blocks.
  CHECK(Render("  {%+ if true %}x{% endif %}") == "  x");
  CHECK(Render("{% if true +%}\nx{% endif %}") == "\nx");
  CHECK(Render("{% raw %}{{ a }}{% if %}{% endraw %}") == "{{ a }}{% if %}");
  CHECK(Render("{{ '}}' }}{{ {'a': {'b': 1}}['a'] }}") == "}}{'b': 1}");
}

TEST_CASE("chat template: loop variables", "[chat_template]") {
  CHECK(
      Render("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
             "{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }},{% endfor %}") ==
      "1032TrueFalse3,2121FalseFalse3,3210FalseTrue3,");
  CHECK(Render("{% for x in [1, 2, 3] %}{{ loop.cycle('o', 'e') }}{{ loop.previtem }}"
               "{{ loop.nextitem }};{% endfor %}") == "o2;e13;o2;");
  CHECK(Render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}") ==
        "2/2 4/2 ");
  CHECK(Render("{% for x in [] %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(
      Render("{% for x in [1, 2, 3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}") ==
      "1");
  CHECK(Render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{% endfor %}") == "a1b2");
  CHECK(Render("{% for m in messages[::-1] %}{{ m }}{% endfor %}", {{"messages", {1, 2, 3}}}) ==
        "");  // Render() passes its own empty messages; extra cannot replace them.
  // A set inside a loop does not leak out of it; namespace attributes do.
  CHECK(Render("{% set x = 0 %}{% for i in [1, 2] %}{% set x = i %}{% endfor %}{{ x }}") == "0");
  CHECK(Render("{% set ns = namespace(x=0) %}{% for i in [1, 2] %}{% set ns.x = ns.x + i %}"
               "{% endfor %}{{ ns.x }}") == "3");
}

TEST_CASE("chat template: filters", "[chat_template]") {
  const json vars = {{"s", "  hi there \n"},
                     {"items", {3, 1, 2}},
                     {"d", json::parse(R"({"b": 1, "a": [true, null, 1.5, "é"]})")}};
  CHECK(Render("[{{ s|trim }}][{{ s|length }}][{{ items|length }}][{{ nothing|length }}]", vars) ==
        "[hi there][12][3][0]");
  // Insertion order, as transformers' json.dumps(sort_keys=False) prints a Python dict.
  CHECK(Render("{{ d|tojson }}", vars) == R"({"b": 1, "a": [true, null, 1.5, "é"]})");
  CHECK(Render("{{ d|tojson(indent=2) }}", vars) ==
        "{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null,\n    1.5,\n    \"é\"\n  ]\n}");
  CHECK(Render("{{ d|tojson(sort_keys=true) }}", vars) ==
        R"({"a": [true, null, 1.5, "é"], "b": 1})");
  CHECK(Render("{{ items|join(', ') }}|{{ items|sort|list }}|{{ items|first }}{{ items|last }}",
               vars) == "3, 1, 2|[1, 2, 3]|32");
  CHECK(Render("{{ nothing|default('dflt') }}{{ ''|default('e', true) }}{{ none|string }}") ==
        "dflteNone");
  CHECK(Render("{{ 'Hello'|upper }}{{ 'Hello'|lower }}{{ 'hello world'|capitalize }}") ==
        "HELLOhelloHello world");
  CHECK(Render("{{ 'a-b'|replace('-', '+') }}{{ '7'|int + 1 }}{{ '2.5'|float }}{{ 'x'|safe }}") ==
        "a+b82.5x");
  CHECK(Render("{{ {'x': 1}|items|list }}{{ 'ab'|list }}") == "[('x', 1)]['a', 'b']");
}

TEST_CASE("chat template: Python values and methods", "[chat_template]") {
  CHECK(Render("{{ true }} {{ none }} {{ 1.0 }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 7 // -2 }} {{ -7 % 3 "
               "}}") == "True None 1.0 1e+20 0.30000000000000004 -4 2");
  CHECK(Render("{{ [1, 'a', none, {'k': \"it's\"}] }}") == "[1, 'a', None, {'k': \"it's\"}]");
  CHECK(Render("{{ 'a</think>b'.split('</think>')[-1] }}{{ '\\n\\nx'.lstrip('\\n') }}"
               "{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}") == "bxTrueTrue");
  CHECK(Render("{{ 'héllo'[1] }}{{ 'héllo'[::-1] }}{{ 'héllo'|length }}") == "éolléh5");
  CHECK(Render("{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 2) }}{{ {'a': 1}.b }}") == "12");
  CHECK(Render("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ 1 in [1] }}"
               "{{ 'z' not in 'abc' }}") == "FalseTrueTrueTrueTrue");
}

TEST_CASE("chat template: messages, extra variables and raise_exception", "[chat_template]") {
  auto tpl = ChatTemplate::Parse(
      "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('Bad role: ' ~ m.role) }}"
      "{% endif %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>"
      "{% endif %}{{ bos_token }}");
  REQUIRE(tpl.ok());
  const json messages = json::parse(R"([{"role": "user", "content": "hi"}])");
  auto out = tpl->Render(messages, {{"add_generation_prompt", true}, {"bos_token", "<s>"}});
  REQUIRE(out.ok());
  CHECK(*out == "<user>hi<a><s>");
  auto bad = tpl->Render(json::parse(R"([{"role": "bad", "content": ""}])"), json::object());
  REQUIRE(!bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(bad.status().message() == "Bad role: bad");
  CHECK(!tpl->Render(json::object(), json::object()).ok());
  CHECK(!tpl->Render(messages, json::array()).ok());
}

TEST_CASE("chat template: runtime errors name line and column", "[chat_template]") {
  const std::string out = Render("line one\n{{ 'a' }}\n  {{ x.y }}");
  CHECK(out.find("ERROR: ") == 0);
  CHECK(out.find("line 3 column 7") != std::string::npos);
  CHECK(out.find("'x' is undefined") != std::string::npos);
  CHECK(Render("{{ 'a' + 1 }}").find("TypeError") != std::string::npos);
  CHECK(Render("{{ 1 / 0 }}").find("ZeroDivisionError") != std::string::npos);
  CHECK(Render("{% set n = 1 %}{% set n.x = 2 %}").find("non-namespace") != std::string::npos);
}

TEST_CASE("chat template: syntax errors name line and column", "[chat_template]") {
  CHECK(ParseError("ok\n{% if x %}\nno end") ==
        "chat template syntax error at line 3 column 7: unexpected end of template, expected "
        "'elif' or 'else' or 'endif'");
  CHECK(ParseError("{{ 1 + }}").find("line 1 column 8") != std::string::npos);
  CHECK(ParseError("a\nb {% endfor %}").find("line 2 column 6") != std::string::npos);
  CHECK(ParseError("{{ 'unterminated }}").find("unterminated string") != std::string::npos);
  CHECK(ParseError("{# never closed").find("comment") != std::string::npos);
  CHECK(ParseError("{{ a ]").find("unexpected ']'") != std::string::npos);
  CHECK(ParseError("{% break %}").find("outside of a loop") != std::string::npos);
}

TEST_CASE("chat template: unsupported constructs are refused at Parse", "[chat_template]") {
  CHECK(ParseError("{% include 'x.jinja' %}")
            .find("unsupported construct at line 1 column 4: "
                  "'{% include %}'") != std::string::npos);
  CHECK(ParseError("{% extends 'base' %}").find("unsupported") != std::string::npos);
  CHECK(ParseError("{% call m() %}x{% endcall %}").find("unsupported") != std::string::npos);
  CHECK(ParseError("\n{% for x in y recursive %}{% endfor %}").find("line 2") != std::string::npos);
  CHECK(ParseError("{{ x|no_such_filter }}").find("filter 'no_such_filter'") != std::string::npos);
  CHECK(ParseError("{{ x is no_such_test }}").find("test 'no_such_test'") != std::string::npos);
  CHECK(ParseError("{{ f(*args) }}").find("unsupported") != std::string::npos);
  CHECK(ParseError("{% frobnicate %}").find("unknown or misplaced tag 'frobnicate'") !=
        std::string::npos);
}

TEST_CASE("chat template: guards against runaway templates", "[chat_template]") {
  ChatTemplateOptions small;
  small.max_output_bytes = 1000;
  CHECK(Render("{% for i in range(100) %}{{ 'xxxxxxxxxxxxxxxxxxxx' }}{% endfor %}", {}, small)
            .find("exceeds 1000 bytes") != std::string::npos);
  CHECK(Render("{% for i in range(10) %}x{% endfor %}", {}, small) == "xxxxxxxxxx");
  CHECK(Render("{{ 'x' * 1000000000 }}").find("ERROR") == 0);
  CHECK(Render("{{ range(100000000)|length }}").find("ERROR") == 0);
  ChatTemplateOptions few_loops;
  few_loops.max_loop_iterations = 1000;
  CHECK(Render("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", {},
               few_loops)
            .find("loop iterations") != std::string::npos);
  CHECK(Render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("nested deeper") !=
        std::string::npos);
  CHECK(Render("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
               "{% endfor %}")
            .find("ERROR") == 0);
  // Deep nesting is refused, not a stack overflow.
  CHECK(!ParseError("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}")
             .empty());
  CHECK(!ParseError(std::string(20000, '{') + "%").empty());
}

TEST_CASE("chat template: no crash on truncated or mangled templates", "[chat_template]") {
  const std::string source =
      "{%- set ns = namespace(i=0) %}{%- for m in messages[::-1] %}{%- set ns.i = loop.index0 %}"
      "{{- '<|im_start|>' + m.role + '\\n' + m.content|trim + '<|im_end|>\\n' }}{%- endfor %}"
      "{# c #}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  const json messages = json::parse(R"([{"role": "user", "content": " x "}])");
  int parsed = 0;
  for (size_t n = 0; n <= source.size(); ++n) {
    for (const std::string& variant :
         {source.substr(0, n), source.substr(n), source.substr(0, n) + "}}%}" + source.substr(n)}) {
      auto tpl = ChatTemplate::Parse(variant);
      if (!tpl.ok()) continue;
      ++parsed;
      (void)tpl->Render(messages, {{"add_generation_prompt", true}});
    }
  }
  CHECK(parsed > 0);
}

TEST_CASE("FlattenTextContent joins text parts with newlines", "[chat_template]") {
  const json messages = json::parse(R"([
    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    {"role": "assistant", "content": "plain"}])");
  auto flat = FlattenTextContent(messages);
  REQUIRE(flat.ok());
  CHECK((*flat)[0]["content"] == "a\nb");
  CHECK((*flat)[1]["content"] == "plain");
  auto image = FlattenTextContent(json::parse(
      R"([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])"));
  REQUIRE(!image.ok());
  CHECK(image.status().message().find("image_url") != std::string::npos);
}

TEST_CASE("chat template: transformers' generation block renders its body", "[chat_template]") {
  CHECK(Render("a{% generation %}b{{ 1 }}{% endgeneration %}c") == "ab1c");
  CHECK(Render("{% macro m(x) %}[{{ x }}]{% endmacro %}{% filter upper %}{{ m('q') }}"
               "{% endfilter %}") == "[Q]");
}

// ---- Issue 13 item 6: key order, title, case mappings, limits. Expected strings are what
// jinja2 3.1.4 (with transformers' tojson) and Python 3.11 print; chat_template_parity.py
// checks the same cases against them.

TEST_CASE("chat template: mappings keep insertion order end to end", "[chat_template]") {
  // transformers and vLLM hand the template Python dicts: tojson, items() and iteration show
  // the client's key order; only dictsort sorts.
  const json messages = json::parse(R"([{"role": "user", "content": "hi", "name": "bob"}])");
  const json extra = json::parse(R"({"info": {"zeta": 1, "alpha": {"y": 2, "x": 3}}})");
  auto tpl = ChatTemplate::Parse(
      "{{ messages[0]|tojson }}|{{ info|tojson }}|{% for k, v in messages[0].items() %}{{ k }},"
      "{% endfor %}|{% for k in info %}{{ k }},{% endfor %}|{{ info.alpha|dictsort }}|"
      "{{ info|items|list }}|{{ messages[0] }}");
  REQUIRE(tpl.ok());
  auto out = tpl->Render(messages, extra);
  REQUIRE(out.ok());
  CHECK(
      *out ==
      R"({"role": "user", "content": "hi", "name": "bob"}|{"zeta": 1, "alpha": {"y": 2, "x": 3}}|)"
      R"(role,content,name,|zeta,alpha,|[('x', 3), ('y', 2)]|)"
      R"([('zeta', 1), ('alpha', {'y': 2, 'x': 3})]|{'role': 'user', 'content': 'hi', 'name': 'bob'})");
  // Dicts built by the template keep their order too, and so does FlattenTextContent.
  CHECK(Render("{{ {'b': 1, 'a': 2}|tojson }}{{ dict(z=1, y=2)|tojson }}") ==
        R"({"b": 1, "a": 2}{"z": 1, "y": 2})");
  auto flat = FlattenTextContent(
      json::parse(R"([{"role": "user", "content": [{"type": "text", "text": "a"}], "id": 1}])"));
  REQUIRE(flat.ok());
  CHECK(flat->dump() == R"([{"role":"user","content":"a","id":1}])");
}

TEST_CASE("chat template: the title filter is jinja2's do_title, not str.title",
          "[chat_template]") {
  CHECK(Render("{{ \"<|im_end|> o'neil /reset x-ray\"|title }}") ==
        "<|im_end|> O'neil /reset X-Ray");
  CHECK(Render("{{ 'ǆ ﬁ ΣΑΣ'|title }}") == "Ǆ FI Σας");
  CHECK(Render("{{ 'hello (world) {x} [y] <z>\\tTAB\\u3000ideographic'|title }}") ==
        "Hello (World) {X} [Y] <Z>\tTab\u3000Ideographic");
  CHECK(Render("{{ 'ΑΣ ßx'|title }}") == "Ασ SSx");  // piece[1:] is lowered on its own
  CHECK(Render("{{ ''|title }}{{ '  '|title }}{{ 'a--b'|title }}") == "  A--B");
}

TEST_CASE("chat template: str case methods follow Python's full case mappings", "[chat_template]") {
  CHECK(Render("{{ 'ǆ ﬁ ΣΑΣ'.title() }}") == "ǅ Fi Σας");
  CHECK(Render("{{ \"o'neil x-ray ǈ\".title() }}") == "O'Neil X-Ray ǈ");
  CHECK(Render("{{ 'ß ﬁ ŉ'.upper() }}|{{ 'ß ﬁ'|upper }}") == "SS FI ʼN|SS FI");
  CHECK(Render("{{ 'ΣΑΣ ΑΣ.'.lower() }}|{{ 'İ'.lower()|length }}|{{ ' ʰΣ'.lower() }}") ==
        "σας ας.|2| ʰσ");
  CHECK(Render("{{ 'ﬁx ΑΣ'.capitalize() }}|{{ 'ΑΣ'|capitalize }}|{{ 'ǆa'.capitalize() }}") ==
        "Fix ας|Ας|ǅa");
  CHECK(Render("{{ 'ᾳ'.title() }}{{ 'ǰ'.upper() }}") == "ᾼJ̌");
}

namespace {

std::string Repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

// The render must fail (not crash, not hang) with a status naming why.
void CheckRefused(const std::string& source, const json& vars = json::object()) {
  const auto start = std::chrono::steady_clock::now();
  const std::string out = Render(source, vars);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(source.substr(0, 80) << " -> " << out.substr(0, 200));
  CHECK((out.rfind("ERROR: ", 0) == 0 || out.rfind("PARSE ERROR: ", 0) == 0));
  CHECK(seconds < 5);
}

}  // namespace

TEST_CASE("chat template: hostile nesting fails with a status, not a stack overflow",
          "[chat_template]") {
  constexpr size_t kDeep = 100'000;
  // Parser recursion.
  CheckRefused("{{ " + Repeat("(", kDeep) + "1" + Repeat(")", kDeep) + " }}");
  CheckRefused("{{ " + Repeat("[", kDeep) + Repeat("]", kDeep) + " }}");
  CheckRefused("{{ " + Repeat("{'a': ", kDeep) + "1" + Repeat("}", kDeep) + " }}");
  CheckRefused("{{ x" + Repeat("[x", kDeep) + Repeat("]", kDeep) + " }}");
  CheckRefused("{{ " + Repeat("f(", kDeep) + Repeat(")", kDeep) + " }}");
  CheckRefused("{{ " + Repeat("not ", kDeep) + "1 }}");
  CheckRefused("{{ " + Repeat("- ", kDeep) + "1 }}");
  CheckRefused("{{ " + Repeat("1 if 1 else ", kDeep) + "1 }}");
  CheckRefused(Repeat("{% if true %}", kDeep) + Repeat("{% endif %}", kDeep));
  CheckRefused(Repeat("{% for x in [1] %}", kDeep) + Repeat("{% endfor %}", kDeep));
  // Left-leaning chains: built by loops, but evaluated and freed recursively.
  CheckRefused("{{ 1" + Repeat(" + 1", kDeep) + " }}");
  CheckRefused("{{ 'a'" + Repeat(" ~ 'a'", kDeep) + " }}");
  CheckRefused("{{ 1" + Repeat(" or 1", kDeep) + " }}");
  CheckRefused("{{ 'x'" + Repeat("|trim", kDeep) + " }}");
  CheckRefused("{{ x" + Repeat(".y", kDeep) + " }}");
  CheckRefused("{{ x" + Repeat("[0]", kDeep) + " }}");
  CheckRefused("{{ f" + Repeat("()", kDeep) + " }}");
  CheckRefused("{{ 1" + Repeat(" is odd()", kDeep) + " }}");
  CheckRefused("{% filter " + Repeat("trim|", kDeep) + "trim %}x{% endfilter %}");
  // The lexer's bracket matching and whole-template size.
  CHECK(!ParseError(Repeat("{", 20000) + "%").empty());
  CHECK(ParseError(Repeat("x", (1u << 20) + 1)).find("over the limit") != std::string::npos);
  // Recursive macros, directly, mutually and through deep expressions.
  CheckRefused("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  CheckRefused(
      "{% macro f(n) %}{{ g(n) }}{% endmacro %}{% macro g(n) %}{{ f(n) }}{% endmacro %}"
      "{{ f(0) }}");
  CheckRefused(
      "{% macro f(n) %}{% if true %}{% if true %}{{ ((((((((f(n)))))))))|trim }}"
      "{% endif %}{% endif %}{% endmacro %}{{ f(0) }}");
  // Moderate nesting still works.
  CHECK(Render("{{ " + Repeat("(", 40) + "1" + Repeat(")", 40) + " }}") == "1");
  CHECK(Render("{{ 1" + Repeat(" + 1", 100) + " }}") == "101");
}

TEST_CASE("chat template: hostile data fails with a status", "[chat_template]") {
  // Deep values: from the request, and built by the template.
  // (Parsed, not built: nlohmann copies JSON recursively, and would overflow the stack itself.)
  const json deep = json::parse("{\"x\": " + Repeat("[", 100'000) + Repeat("]", 100'000) + "}");
  CheckRefused("{{ x }}", deep);
  CHECK(!headwise::tokenizer::CheckJsonDepth(deep).ok());
  CHECK(headwise::tokenizer::CheckJsonDepth(json::parse(R"({"a": [[1]]})")).ok());
  CheckRefused(
      "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}"
      "{% endfor %}{{ ns.x }}");
  CheckRefused(
      "{% set ns = namespace(x={}) %}{% for i in range(100000) %}"
      "{% set ns.x = {'a': ns.x} %}{% endfor %}{{ ns.x|tojson }}");
  // A namespace inside itself (a cycle) or inside a container.
  CheckRefused("{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns }}");
  CheckRefused("{% set ns = namespace(a=1) %}{% set ns.l = [ns] %}{{ ns }}");
  CheckRefused("{% set ns = namespace(a=1) %}{{ [ns] }}");
  // Huge ranges and repetitions.
  CheckRefused("{% for i in range(10**12) %}{% endfor %}");
  CheckRefused("{% for i in range(0, 10**18, 1) %}{{ i }}{% endfor %}");
  CheckRefused("{{ range(100001)|length }}");
  CheckRefused("{{ 'x' * 10**12 }}");
  CheckRefused("{{ [1] * 10**12 }}");
  CHECK(Render("{{ '' * 10**12 }}{{ [] * 10**12 }}") == "[]");
  // Values whose printing or building would take gigabytes.
  CheckRefused("{% set s = 'x' * 1000000 %}{{ [s] * 100000 }}");
  CheckRefused("{% set s = 'x' * 1000000 %}{% set l = [s] * 1000 %}{{ l|tojson }}");
  CheckRefused("{% set l = [[[[[[1]]]]]] * 100000 %}{{ l|tojson(indent=64) }}");
  CheckRefused("{{ ('\\n' * 10000000)|indent(1000, blank=true) }}");
  CheckRefused("{{ ('x' * 10000000)|list|length }}");
  CheckRefused("{{ ('a ' * 5000000).split()|length }}");
  CheckRefused("{{ [1]|batch(10**12, 0)|list }}");
  // Many large values, each within the limits, add up past the allocation budget.
  CheckRefused(
      "{% set ns = namespace(l=[]) %}{% for i in range(2000) %}"
      "{% set ns.l = ns.l + [('x' * 1000000)] %}{% endfor %}{{ ns.l|length }}");
  // Work nothing else counts: substring search in linear time, unique() in n log n.
  CHECK(Render("{{ (('a' * 1000000) ~ 'b') in ('a' * 2000000) }}") == "False");
  CHECK(Render("{{ range(100000)|unique|list|length }}") == "100000");
  // Rendered output.
  ChatTemplateOptions small;
  small.max_output_bytes = 1 << 20;
  CHECK(Render("{% for i in range(100) %}{{ 'x' * 20000 }}{% endfor %}", {}, small)
            .find("exceeds 1048576 bytes") != std::string::npos);
}
