#!/usr/bin/env python3
"""Chat-template parity: our Jinja interpreter against Python's jinja2, byte for byte.

jinja2 is set up exactly as transformers' apply_chat_template sets it up
(transformers/utils/chat_template_utils.py, _compile_jinja_template and render_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
a `tojson` filter that is json.dumps(x, ensure_ascii=False, indent, separators, sort_keys),
raise_exception(msg) raising TemplateError, strftime_now(fmt); render(messages=..., tools=...,
documents=..., add_generation_prompt=..., **special_tokens_map, **kwargs). transformers itself is
not needed.

Templates: the chat_template of /work/shared/tokenizers/{llama3-hf,qwen3-hf,llama2-hf} and
/work/shared/models/tinystories-656k (those without one are reported as skipped), SmolLM2's GGUF
tokenizer.chat_template (HEADWISE_SMOLLM2_GGUF or ~/.cache/headwise/models/...), Meta's
Llama-2-chat template (the one from meta-llama/Llama-2-7b-chat-hf, written below: it is the
template that raises "Conversation roles must alternate"), and a set of small feature templates
that exercise the interpreter's corners. Every template renders a list of conversations with
add_generation_prompt false and true; where jinja2 raises, ours must fail too (with the same
message when the template called raise_exception).

Conversations of plain {role, content, name} messages also go the way of a server request
("renderer" cases): through tokenizer::ChatRenderer, which builds each message as vLLM does
({"role", "content"[, "name"]} in that order, whatever the client's order) and always passes
tools=None and documents=None; the reference renders the same dicts. Key order shows in
`tojson`, `items()` and iteration, as in Python; the "key-order" job checks it on both paths.

    chat_template_parity.py --checker build/tests/tokenizer/hw_chat_template_check
"""
import argparse
import datetime
import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

SHARED = Path(os.environ.get("HEADWISE_SHARED_DIR", "/work/shared"))
SMOLLM2_DEFAULT = Path.home() / ".cache/headwise/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

# meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json chat_template.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


class RaisedByTemplate(jinja2.exceptions.TemplateError):
    """raise_exception(msg): transformers raises TemplateError(msg)."""


def make_env():
    def raise_exception(message):
        raise RaisedByTemplate(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def flatten_text_content(messages):
    """vLLM's flattening for templates that expect string contents: text parts joined by \\n."""
    out = []
    for m in messages:
        m = dict(m)
        if isinstance(m.get("content"), list):
            m["content"] = "\n".join(p["text"] for p in m["content"])
        out.append(m)
    return out


def vllm_message(m):
    """vLLM's ConversationMessage for a plain message: role, content, then name if given."""
    out = {"role": m["role"], "content": m["content"]}
    if m.get("name"):
        out["name"] = m["name"]
    return out


def reference(template, cases):
    env = make_env()
    try:
        compiled = env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        return {"parse_error": f"{type(e).__name__}: {e}", "results": []}
    results = []
    for case in cases:
        messages = case["messages"]
        extra = case["extra"]
        if case.get("flatten"):
            messages = flatten_text_content(messages)
        if case.get("renderer"):
            # tokenizer::ChatRenderer: its own message dicts, bos/eos always set, no tools.
            messages = [vllm_message(m) for m in messages]
            extra = {"bos_token": "", "eos_token": "", **extra, "tools": None, "documents": None}
        try:
            text = compiled.render(messages=messages, **extra)
            results.append({"ok": True, "text": text})
        except RaisedByTemplate as e:
            results.append({"ok": False, "error": str(e), "raised": True})
        except Exception as e:  # any jinja2/Python error: ours must fail as well
            results.append({"ok": False, "error": f"{type(e).__name__}: {e}"})
    return {"parse_error": None, "results": results}


# ---------------------------------------------------------------------------------------------
# Conversations

def u(text):
    return {"role": "user", "content": text}


def a(text, **kw):
    return {"role": "assistant", "content": text, **kw}


def s(text):
    return {"role": "system", "content": text}


TRICKY = ("Héllo wörld 🌍 — ünïcödé ✓ 日本語\nsecond line\n\n\"double\" 'single' `back` "
          "{{ not a tag }} {% nope %} {# no comment #} \\ backslash\ttab </s> <|im_end|>")

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Météo for a city — returns °C",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City name"},
                           "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["location"],
        },
    },
}

CONVERSATIONS = [
    ("single_user", [u("Hello!")], {}),
    ("system_user", [s("You are a helpful assistant."), u("What is 2+2?")], {}),
    ("multi_turn", [u("Hi"), a("Hello! How can I help?"), u("Tell me a joke.")], {}),
    ("system_multi_turn", [s("Be brief."), u("One"), a("Two"), u("Three"), a("Four"), u("Five")], {}),
    ("ends_with_assistant", [u("Q?"), a("A.")], {}),
    ("unicode_newlines_quotes_braces", [s(TRICKY), u(TRICKY), a(TRICKY), u("ok")], {}),
    ("whitespace_padding", [u("  padded with spaces and newlines \n\n"), a("\n answer \n"), u("\tq\t")], {}),
    ("empty_content", [u(""), a(""), u("")], {}),
    ("content_text_parts", [u([{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}])], {}),
    ("content_text_parts_flattened",
     [s([{"type": "text", "text": "sys"}]),
      u([{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}])],
     {"flatten": True}),
    ("reasoning_content", [u("Think first"), a("The answer is 4.", reasoning_content="2+2=4"), u("And 3+3?")], {}),
    ("reasoning_content_last", [u("Think"), a("Done.", reasoning_content="\nsome thoughts\n")], {}),
    ("think_in_content", [u("q1"), a("<think>\nreasoning one\n</think>\n\nanswer one"), u("q2"),
                          a("<think>reasoning two</think>answer two")], {}),
    ("tool_calls", [
        s("You can call tools."), u("Weather in Paris?"),
        a("", tool_calls=[{"type": "function", "function": {
            "name": "get_weather", "arguments": {"location": "Paris", "unit": "c"}}}]),
        {"role": "tool", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
        {"role": "tool", "content": "second result"},
        a("It is 21 °C and clear."), u("Thanks"),
    ], {"tools": [WEATHER_TOOL]}),
    ("tool_call_string_arguments", [
        u("Weather?"),
        a("Let me check.", tool_calls=[{"type": "function", "function": {
            "name": "get_weather", "arguments": "{\"location\": \"Oslo\"}"}}]),
        {"role": "tool", "content": "cold"}, u("ok"),
    ], {}),
    ("enable_thinking_false", [u("Quick question")], {"kwargs": {"enable_thinking": False}}),
    ("roles_not_alternating", [u("one"), u("two")], {}),
    ("assistant_first", [a("I start"), u("then you")], {}),
    ("extra_message_keys", [{"role": "user", "content": "named", "name": "bob", "id": 7}], {}),
    ("empty_messages", [], {}),
    ("long_conversation", [m for i in range(30) for m in (u(f"question {i}"), a(f"answer {i}"))] + [u("last")], {}),
]


def renderer_can_take(messages, opts):
    """Whether a conversation is one a server request can carry (tokenizer::ChatMessage)."""
    if opts.get("tools") or opts.get("flatten"):
        return False
    return all(set(m) <= {"role", "content", "name"} and isinstance(m["content"], str)
               and m["role"] in ("system", "user", "assistant") for m in messages)


def cases_for(special_tokens):
    cases = []
    for name, messages, opts in CONVERSATIONS:
        for agp in (False, True):
            extra = {"tools": opts.get("tools"), "documents": None, "add_generation_prompt": agp}
            extra.update(special_tokens)
            extra.update(opts.get("kwargs", {}))
            cases.append({"name": f"{name}/agp={agp}", "messages": messages, "extra": extra,
                          "flatten": bool(opts.get("flatten"))})
            if messages and renderer_can_take(messages, opts):
                cases.append({"name": f"{name}/agp={agp}/renderer", "messages": messages,
                              "extra": extra, "renderer": True})
    return cases


# Key order (issue 13): Python dicts keep insertion order, so templates of function-calling
# models that dump messages or tool schemas with tojson print keys in the client's order
# (transformers) or vLLM's message order; only dictsort sorts.
KEY_ORDER_TEMPLATE = (
    "{% for m in messages %}{{ m|tojson }}|{{ m }}|{% for k in m %}{{ k }},{% endfor %}|"
    "{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}\n{% endfor %}"
    # (ChatRenderer first renders a probe conversation without `info`.)
    "{% if info is defined %}{{ info|tojson }}|{{ info|tojson(indent=1) }}|"
    "{{ info|tojson(sort_keys=true) }}|{{ info|dictsort }}|{{ info.items()|list }}|"
    "{{ info|items|list }}|{{ info.alpha.keys()|list }}|{% endif %}"
    "{{ {'b': 1, 'a': 2}|tojson }}|{{ dict(z=1, y=2)|tojson }}")
KEY_ORDER_MESSAGES = [
    {"content": "hi", "role": "user"},  # the client's order is not vLLM's
    {"role": "assistant", "name": "bot", "content": "yo"},
    {"role": "user", "content": "again"},
]
KEY_ORDER_EXTRA = {"info": {"zeta": 1, "alpha": {"y": 2, "x": [3, {"q": 1, "p": 2}]}, "mid": None}}


def key_order_cases():
    cases = []
    for renderer in (False, True):
        extra = {"add_generation_prompt": False, "bos_token": "<s>", **KEY_ORDER_EXTRA}
        cases.append({"name": f"key-order/renderer={renderer}", "messages": KEY_ORDER_MESSAGES,
                      "extra": extra, "renderer": renderer})
    return cases


# ---------------------------------------------------------------------------------------------
# Feature templates: small programs over one fixed context, for the interpreter's corners.

FEATURE_CONTEXT = {
    "items": [3, 1, 2], "words": ["b", "A", "c"], "d": {"z": 1, "a": [1, 2], "m": {"k": None}},
    "s": "  Hello, World  ", "n": None, "t": True, "f": 1.5, "big": 12345678901234567,
    "msgs": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
    "uni": "ßİ日本 ǅ", "empty": "", "zero": 0,
}

FEATURES = [
    "{{ items }}|{{ d }}|{{ n }}|{{ t }}|{{ f }}|{{ big }}|{{ words }}|{{ (1, 'a') }}|{{ (1,) }}",
    "{{ 1.0 }} {{ 1e20 }} {{ 1e16 }} {{ 1e15 }} {{ 0.1 + 0.2 }} {{ 1e-5 }} {{ 0.0001 }} {{ 2.5e-10 }} {{ -0.0 }} {{ 3 / 2 }} {{ 4 / 2 }}",
    "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % -3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 1 + true }}",
    "{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ undefined_thing }}|{{ 'ab' * 3 }}|{{ [1] * 2 }}|{{ [1] + [2] }}",
    "{{ s|trim }}|{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ s|trim(' H') }}",
    "{{ s.split() }}{{ 'a,b,,c'.split(',') }}{{ 'a b c'.split(' ', 1) }}{{ 'a,b,c'.rsplit(',', 1) }}{{ '  a  b '.split(None, 1) }}{{ ' a  b  '.rsplit(None, 1) }}{{ 'a b c'.rsplit() }}",
    "{{ s.startswith('  He') }}{{ s.endswith(('x', '  ')) }}{{ 'abc'.find('c') }}{{ 'abc'.replace('b', '') }}{{ 'a-b'.split('-')[-1] }}",
    "{{ uni|upper }}|{{ uni|lower }}|{{ uni.upper() }}|{{ 'hello world'|title }}|{{ 'hELLO'|capitalize }}|{{ uni|length }}|{{ uni[1] }}|{{ uni[::-1] }}",
    # jinja2's title filter (do_title) is not str.title(): issue 13.
    "{{ \"<|im_end|> o'neil /reset x-ray\"|title }}|{{ 'ǆ ﬁ ΣΑΣ'|title }}|{{ 'ΑΣ ßx a--b (c) {d} [e] <f>\\tg\\u3000h ﬀ'|title }}|{{ s|title }}|{{ uni|title }}",
    # str.title() and the other case methods: full case mappings, titlecase, final sigma.
    "{{ 'ǆ ﬁ ΣΑΣ'.title() }}|{{ \"o'neil x-ray ǈ\".title() }}|{{ ' ʰΣ aʰΣ'.title() }}|{{ 'ᾳ ŉ ǰ ß'.title() }}|{{ uni.title() }}",
    "{{ 'ß ﬁ ŉ ǰ'.upper() }}|{{ 'ΣΑΣ ΑΣ. İ'.lower() }}|{{ ' ʰΣ'.lower() }}|{{ 'ﬁx ΑΣ'.capitalize() }}|{{ 'ΑΣ'|capitalize }}|{{ 'ǆa'|capitalize }}|{{ 'ß ﬁ'|upper }}|{{ 'ΣΑΣ'|lower }}|{{ uni.capitalize() }}",
    "{{ items[0] }}{{ items[-1] }}{{ items[1:] }}{{ items[:-1] }}{{ items[::-1] }}{{ items[::2] }}{{ items[5] }}{{ 'hello'[1:3] }}{{ 'hello'[-3:] }}{{ items[-10:10] }}",
    "{{ d.z }}{{ d['a'][1] }}{{ d.m.k }}{{ d.missing }}{{ d.get('z') }}{{ d.get('q', 'dflt') }}{{ d.get('q') }}{{ msgs[0].role }}{{ msgs.0.content }}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }}{% endfor %}|{{ d.keys()|list }}{{ d.values()|list }}",
    "{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.cycle('a', 'b') }}|{% endfor %}",
    "{% for x in items %}{{ loop.previtem }}-{{ loop.nextitem }},{% endfor %}",
    "{% for x in items if x > 1 %}{{ x }}{{ loop.length }}{{ loop.last }} {% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% for x in items %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for x in [[1, 2], [3, 4]] %}{% for y in x %}{{ loop.index }}:{{ y }} {% endfor %}{{ loop.index }}|{% endfor %}",
    "{% set x = 1 %}{% for i in items %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}",
    "{% set ns = namespace(a=0, b='') %}{% for i in items %}{% set ns.a = ns.a + i %}{% set ns.b = ns.b ~ i %}{% endfor %}{{ ns.a }} {{ ns.b }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t2 = (3, 4) %}{% set c, e = t2 %}{{ c }}{{ e }}",
    "{% set block %}  inside {{ items|length }}  {% endset %}[{{ block }}]{% set b2 | upper %}up{% endset %}{{ b2 }}",
    "{% if n is none %}none{% elif n %}x{% else %}else{% endif %}{% if t %}T{% endif %}{% if zero %}Z{% else %}z{% endif %}",
    "{{ 'yes' if t else 'no' }}{{ 'yes' if n else 'no' }}[{{ 'only' if n }}]{{ n or 'fallback' }}{{ t and 'both' }}{{ zero or empty or 'last' }}",
    "{{ 1 in items }}{{ 5 not in items }}{{ 'ell' in s }}{{ 'z' in d }}{{ 'q' in d }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}",
    "{{ n is none }}{{ t is true }}{{ t is false }}{{ f is float }}{{ big is integer }}{{ t is integer }}{{ t is number }}{{ s is string }}{{ d is mapping }}{{ items is sequence }}{{ items is iterable }}{{ undefined_thing is defined }}{{ undefined_thing is undefined }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ items is not string }}",
    "{{ 1 is eq 1 }}{{ 1 is ne 2 }}{{ 2 is gt 1 }}{{ 2 is ge 2 }}{{ 1 is lt 2 }}{{ 1 is in items }}{{ n is sameas none }}{{ t is sameas true }}{{ 'abc' is lower }}{{ 'ABC' is upper }}",
    "{{ items|length }}{{ s|length }}{{ d|length }}{{ undefined_thing|length }}{{ items|first }}{{ items|last }}{{ 'abc'|first }}{{ items|sort }}{{ items|sort(reverse=true) }}{{ words|sort }}{{ words|sort(case_sensitive=true) }}",
    "{{ items|join(', ') }}{{ words|join }}{{ msgs|map(attribute='role')|join('/') }}{{ items|map('string')|list }}{{ items|select('odd')|list }}{{ items|reject('odd')|list }}{{ msgs|selectattr('role', 'equalto', 'user')|list }}{{ msgs|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }}",
    "{{ items|sum }}{{ items|min }}{{ items|max }}{{ words|min }}{{ [1, 2, 2, 1]|unique|list }}{{ items|reverse|list }}{{ 'abc'|reverse }}{{ d|dictsort }}{{ d|items|list }}{{ 'ab'|list }}",
    "{{ n|default('D') }}{{ undefined_thing|default('D') }}{{ empty|default('D') }}{{ empty|default('D', true) }}{{ undefined_thing|d('d2') }}",
    "{{ '42'|int + 1 }}{{ '4.7'|int }}{{ 'x'|int }}{{ 'x'|int(7) }}{{ 4.7|int }}{{ '2.5'|float }}{{ 3|float }}{{ 2.5|round }}{{ 3.14159|round(2) }}{{ -3|abs }}{{ 2.7|round(0, 'floor') }}",
    "{{ d|tojson }}|{{ items|tojson }}|{{ uni|tojson }}|{{ 'a\"b\\\\c\\n\\t\\u0001'|tojson }}|{{ f|tojson }}|{{ n|tojson }}|{{ t|tojson }}|{{ (1, 2)|tojson }}",
    "{{ d|tojson(indent=2) }}|{{ d|tojson(indent=4, sort_keys=true) }}|{{ uni|tojson(ensure_ascii=true) }}|{{ d|tojson(separators=(',', ':')) }}|{{ []|tojson(indent=2) }}|{{ {}|tojson(indent=2) }}",
    "{{ 'x'|string }}{{ n|string }}{{ items|string }}{{ s|replace('l', 'L') }}{{ s|replace('l', 'L', 1) }}{{ 'a<b>&\"'|escape }}{{ 'a'|safe }}{{ 'ab cd  ef'|wordcount }}{{ 'a'|center(7) }}|",
    "{{ 'line1\nline2\n\nline4'|indent(2) }}|{{ 'l1\nl2'|indent(2, true) }}|{{ 'l1\n\nl2'|indent(2, blank=true) }}",
    "{{ '%s-%d-%05.1f%%' % ('a', 3, 2.25) }}{{ '%r' % 'x' }}{{ '%s'|format(5) }}{{ '%s and %s'|format('a', 'b') }}",
    "{{ range(3)|list }}{{ range(1, 7, 2)|list }}{{ range(3, 0, -1)|list }}{% for i in range(2) %}{{ i }}{% endfor %}{{ dict(a=1, b=2) }}",
    "{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }} {{ greet() }}",
    "{% macro rec(k) %}{% if k > 0 %}{{ k }}{{ rec(k - 1) }}{% endif %}{% endmacro %}{{ rec(4) }}",
    "{% filter upper %}shout {{ 'this' }}{% endfilter %}{% with a = 5, b = 6 %}{{ a * b }}{% endwith %}{{ a }}",
    "{% raw %}{{ not rendered }} {% if %}{% endraw %}after",
    "{{ 'single \\'quoted\\'' }} {{ \"double \\\"quoted\\\"\" }} {{ 'tab\\tnew\\nline' }} {{ '\\x41\\u00e9\\U0001F600' }} {{ 'unknown \\d escape' }} {{ 'adjacent' 'strings' }}",
    "{{ {'a': 1, 'b': [1, 2, {'c': none}]} }}{{ [] }}{{ {} }}{{ {'q': \"it's\"} }}{{ ['it\\'s \"both\"'] }}{{ ['\\n\\t\\\\'] }}",
    "a\n  {% if true %}\n  b\n  {% endif %}\n  c {% if true %} d {% endif %}\n{# comment #}\n  {# indented comment #}\ne",
    "  {%- if true -%}  x  {%- endif -%}  \n\n{{- ' y ' -}}\n\n{{ 'z' }}  {%+ if true %}w{% endif %}\n   {{ 'v' }}\n",
    "{% for m in msgs %}\n    {{- m.role }}:\n    {%- if m.content %} {{ m.content }}{% endif %}\n\n{% endfor %}\ntrailing\n",
    "{#- strip before -#}   \n  x  {#+ keep +#}  y\n{%- raw -%}  raw body  {%- endraw -%}  z",
    "line with trailing newline\n",
    "crlf\r\nline\r\n{% if true %}\r\n  in\r\n{% endif %}\r\nend\r\n",
    "{{ items.count(1) }}{{ items.index(2) }}{{ 'a-b-c'.count('-') }}{{ s.lower() }}{{ 'abc'.upper() }}{{ ' - '.join(words) }}{{ 'ab\ncd'.splitlines() }}",
    "{{ msgs[-1]['role'] }}{{ msgs[0] }}{{ msgs|length - 1 }}{{ (msgs|length - 1) - loop_index|default(0) }}{{ -items[0] }}{{ - 2 ** 2 }}",
    "{{ n.attr }}|{{ zero.x }}|{{ s.nosuch }}|{{ items.nosuch }}",
    # Errors jinja2 raises at render time; ours must fail too.
    "{{ undefined_thing.attr }}",
    "{{ undefined_thing + 1 }}",
    "{{ 'a' + 1 }}",
    "{{ 1 < 'a' }}",
    "{{ items|tojson }}{{ undefined_thing|tojson }}",
    "{{ 1 / 0 }}",
    "{% set ns2 = 5 %}{% set ns2.x = 1 %}",
    "{{ raise_exception('custom failure: ' ~ items|length) }}",
    "{% for a, b in items %}{% endfor %}",
    "{{ none() }}",
    "{{ 'x'.nosuchmethod() }}",
    "{{ range(100001)|length }}",
    "{{ range(100000)|length }}{{ range(0, 10, 3)|list }}{{ range(10, 0, -3)|list }}{{ range(5, 5)|list }}{{ range(0, -3, -1)|list }}{{ range(-2, 9223372036854775807, 4611686018427387904)|list }}",
    # Syntax errors and unsupported constructs: jinja2 refuses them at compile time (ours
    # must refuse at Parse, or, for constructs jinja2 accepts but we do not support, at least
    # refuse rather than render something different).
    "{% if true %}unclosed",
    "{{ 1 + }}",
    "{% endfor %}",
    "{{ x|no_such_filter }}",
    "{{ x is no_such_test }}",
    "{% include 'other.html' %}",
]


# Documented limitations: jinja2 renders these, ours must refuse (fail with a status) rather
# than render something else.
KNOWN_LIMITATIONS = [
    ("integers are 64-bit", "{{ 2 ** 70 }}"),
    ("integers are 64-bit", "{{ 9223372036854775807 + 1 }}"),
    ("dict keys are strings", "{{ {1: 'a'} }}"),
    ("str.format is not supported", "{{ '{}'.format(1) }}"),
    ("namespaces are not put inside lists, dicts or namespaces",
     "{% set ns = namespace(a=1) %}{{ [ns] }}"),
    ("namespaces are not put inside lists, dicts or namespaces",
     "{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns.a }}"),
]


def feature_cases():
    return [{"name": "feature", "messages": [], "extra": FEATURE_CONTEXT, "flatten": False}]


# ---------------------------------------------------------------------------------------------
# Templates

def token_content(tok):
    if isinstance(tok, dict):
        return tok.get("content")
    return tok


def special_tokens_of(config):
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = token_content(config.get(key))
        if value is not None:
            out[key] = value
    return out


def hf_templates(skipped):
    out = []
    for name, path in (("llama3-hf", SHARED / "tokenizers/llama3-hf/tokenizer_config.json"),
                       ("qwen3-hf", SHARED / "tokenizers/qwen3-hf/tokenizer_config.json"),
                       ("llama2-hf", SHARED / "tokenizers/llama2-hf/tokenizer_config.json"),
                       ("tinystories-656k", SHARED / "models/tinystories-656k/tokenizer_config.json")):
        if not path.exists():
            raise SystemExit(f"missing {path}")
        config = json.loads(path.read_text())
        template = config.get("chat_template")
        if template is None:
            skipped.append(f"{name}: tokenizer_config.json has no chat_template")
            continue
        tokens = special_tokens_of(config)
        if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
            for entry in template:
                out.append((f"{name}:{entry['name']}", entry["template"], tokens))
        else:
            out.append((name, template, tokens))
    return out


def smollm2_template():
    path = Path(os.environ.get("HEADWISE_SMOLLM2_GGUF", str(SMOLLM2_DEFAULT)))
    if not path.exists():
        raise SystemExit(
            f"SmolLM2 GGUF not found at {path}: run scripts/get-model.sh smollm2-135m-instruct "
            "or set HEADWISE_SMOLLM2_GGUF")
    import gguf  # only needed here

    reader = gguf.GGUFReader(str(path))

    def field_str(key):
        f = reader.fields[key]
        return bytes(f.parts[f.data[0]]).decode("utf-8")

    def token(key):
        if key not in reader.fields:
            return None
        f = reader.fields[key]
        idx = int(f.parts[f.data[0]][0])
        tokens = reader.fields["tokenizer.ggml.tokens"]
        return bytes(tokens.parts[tokens.data[idx]]).decode("utf-8")

    tokens = {}
    for name, key in (("bos_token", "tokenizer.ggml.bos_token_id"),
                      ("eos_token", "tokenizer.ggml.eos_token_id"),
                      ("unk_token", "tokenizer.ggml.unknown_token_id"),
                      ("pad_token", "tokenizer.ggml.padding_token_id")):
        value = token(key)
        if value is not None:
            tokens[name] = value
    return ("smollm2-135m-instruct(gguf)", field_str("tokenizer.chat_template"), tokens)


def show_diff(want, got):
    lines = difflib.unified_diff(want.splitlines(keepends=True), got.splitlines(keepends=True),
                                 "jinja2", "headwise", n=2)
    return "".join(repr(l)[1:-1] + "\n" if not l.startswith(("---", "+++", "@@")) else l
                   for l in lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checker", required=True)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()

    skipped = []
    templates = hf_templates(skipped)
    templates.append(("llama2-chat(meta-llama/Llama-2-7b-chat-hf)", LLAMA2_CHAT_TEMPLATE,
                      {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    templates.append(smollm2_template())
    templates.append(("chatml(tests/python/server_chatml.jinja)",
                      (Path(__file__).parent / "server_chatml.jinja").read_text(), {}))

    jobs = []
    for name, template, tokens in templates:
        jobs.append({"name": name, "template": template, "cases": cases_for(tokens), "kind": "model"})
    jobs.append({"name": "key-order", "template": KEY_ORDER_TEMPLATE, "cases": key_order_cases(),
                 "kind": "order"})
    for i, template in enumerate(FEATURES):
        jobs.append({"name": f"feature[{i}]", "template": template, "cases": feature_cases(),
                     "kind": "feature"})
    for why, template in KNOWN_LIMITATIONS:
        jobs.append({"name": f"limitation({why})", "template": template,
                     "cases": feature_cases(), "kind": "limitation"})

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump({"jobs": jobs}, f, ensure_ascii=False)
        jobs_path = f.name
    try:
        proc = subprocess.run([args.checker, jobs_path], capture_output=True, timeout=240)
    finally:
        os.unlink(jobs_path)
    if proc.returncode != 0:
        print(proc.stderr.decode(errors="replace"))
        raise SystemExit(f"checker exited with {proc.returncode}")
    ours = json.loads(proc.stdout.decode("utf-8"))["jobs"]

    failures = 0
    summary = []
    for job, got in zip(jobs, ours):
        want = reference(job["template"], job["cases"])
        if want["parse_error"] is not None or got["parse_error"] is not None:
            if want["parse_error"] is not None and got["parse_error"] is not None:
                summary.append(f"{job['name']}: both refuse the template")
                if args.verbose:
                    print(f"  {job['name']}: jinja2: {want['parse_error']}\n    ours: {got['parse_error']}")
                continue
            if want["parse_error"] is None and job["kind"] == "feature" and all(
                    not r["ok"] for r in want["results"]):
                summary.append(f"{job['name']}: jinja2 fails at render, ours at parse")
                continue
            failures += 1
            print(f"MISMATCH {job['name']}: template parse: jinja2={want['parse_error']!r} "
                  f"ours={got['parse_error']!r}")
            print("  template:", repr(job["template"][:300]))
            continue
        if job["kind"] == "limitation":
            if any(r["ok"] for r in got["results"]):
                failures += 1
                print(f"MISMATCH {job['name']}: {job['template']!r} should be refused, ours rendered "
                      f"{got['results']!r}")
            else:
                summary.append(f"{job['name']}: refused as documented")
            continue
        matched = 0
        for case, w, g in zip(job["cases"], want["results"], got["results"]):
            label = f"{job['name']} / {case['name']}"
            if w["ok"] != g["ok"]:
                failures += 1
                print(f"MISMATCH {label}: jinja2 {'rendered' if w['ok'] else 'raised ' + repr(w['error'])}"
                      f", ours {'rendered' if g['ok'] else 'failed ' + repr(g['error'])}")
                if job["kind"] == "feature":
                    print("  template:", repr(job["template"]))
                if w["ok"]:
                    print("  jinja2:", repr(w["text"][:500]))
                else:
                    print("  ours:", repr(g["text"][:500]))
                continue
            if not w["ok"]:
                # tokenizer::ChatRenderer says where the error comes from.
                want_error = ("chat template: " if case.get("renderer") else "") + w["error"]
                if w.get("raised") and want_error != g["error"]:
                    failures += 1
                    print(f"MISMATCH {label}: raise_exception message: jinja2 {want_error!r}, "
                          f"ours {g['error']!r}")
                    continue
                if args.verbose:
                    print(f"  {label}: both raise: jinja2 {w['error']!r} / ours {g['error']!r}")
                matched += 1
                continue
            if w["text"] != g["text"]:
                failures += 1
                print(f"MISMATCH {label}:")
                if job["kind"] == "feature":
                    print("  template:", repr(job["template"]))
                print(show_diff(w["text"], g["text"]))
                continue
            matched += 1
        summary.append(f"{job['name']}: {matched}/{len(job['cases'])} cases match")

    print("\n".join(summary))
    for line in skipped:
        print("skipped:", line)
    model_jobs = [j for j in jobs if j["kind"] == "model"]
    print(f"{len(model_jobs)} model templates x {len(model_jobs[0]['cases'])} cases, "
          f"{len(FEATURES)} feature templates; {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
