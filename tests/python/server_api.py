"""`headwise serve` through the official `openai` client: completions, chat, streaming (both
APIs), n, stop strings, logprobs in both shapes, seeds, echo, usage against /tokenize, models,
health, tokenize/detokenize, and a clean exit 0 on SIGINT. Prints "N passed, M failed"."""

import json
import os
import threading
import time

import openai

from server_util import TINY, Runner, Server, sse_events

PROMPT = "Once upon a time, there was a little girl named Lily. She"
MESSAGES = [
    {"role": "system", "content": "You tell short stories."},
    {"role": "user", "content": "Tell me about a dog."},
]
NAME = "tiny"


def special_tokens():
    with open(os.path.join(TINY, "tokenizer.json")) as f:
        return {t["content"] for t in json.load(f)["added_tokens"] if t.get("special")}


def tokenize(srv, **body):
    status, out = srv.post("/tokenize", body)
    assert status == 200, (status, out)
    assert out["count"] == len(out["tokens"]), out
    return out


def test_completion(srv, client):
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=20, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.id.startswith("cmpl-") and r.object == "text_completion", r
    assert r.model == NAME
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason == "length" and c.text, c
    assert r.usage.completion_tokens == 20, r.usage
    tok = tokenize(srv, prompt=PROMPT)
    assert r.usage.prompt_tokens == tok["count"], (r.usage, tok)
    assert r.usage.total_tokens == r.usage.prompt_tokens + 20
    # One arm, dense attention without a policy file: the arm is named after the policy.
    assert r.model_extra["headwise"] == {"arm": "dense", "attention_policy": "dense", "policy_hash": "none"}, \
        r.model_extra
    # The default max_tokens of completions is 16, as OpenAI's.
    r = client.completions.create(model=NAME, prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16, r.usage


def test_chat(srv, client):
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=24, temperature=0)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion", r
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str) and c.message.content
    assert c.finish_reason in ("stop", "length")
    tok = tokenize(srv, messages=MESSAGES)
    assert r.usage.prompt_tokens == tok["count"], (r.usage, tok)
    assert 1 <= r.usage.completion_tokens <= 24
    # max_completion_tokens is the newer name of max_tokens.
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_completion_tokens=5, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length", r
    # Content given as text parts is the same conversation.
    parts = [dict(m, content=[{"type": "text", "text": m["content"]}]) for m in MESSAGES]
    r2 = client.chat.completions.create(model=NAME, messages=parts, max_completion_tokens=5, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert r2.choices[0].message.content == r.choices[0].message.content


def test_chat_default_max_tokens(srv, client):
    # Without max_tokens chat may use the rest of the context (vLLM); with ignore_eos it does.
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True})
    tok = tokenize(srv, messages=MESSAGES)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == tok["max_model_len"] - tok["count"], (r.usage, tok)


def test_chat_stream(srv, client):
    ref = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=30, temperature=0)
    stream = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks, "no chunks"
    first = chunks[0]
    assert first.object == "chat.completion.chunk"
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(ch.id == first.id for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ref.choices[0].message.content, (text, ref.choices[0].message.content)
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == ref.choices[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert last.usage.completion_tokens == ref.usage.completion_tokens
    assert last.usage.prompt_tokens == ref.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    # Without include_usage no chunk carries usage, and the stream ends with [DONE].
    status, headers, raw = srv.request("POST", "/v1/chat/completions",
                                       {"messages": MESSAGES, "max_tokens": 5, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), headers
    events, done = sse_events(raw)
    assert done and events and all("usage" not in e for e in events), raw[:500]


def test_completion_stream(srv, client):
    ref = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=30, temperature=0)
    chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=30, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == ref.choices[0].text, (text, ref.choices[0].text)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == ref.usage.completion_tokens
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finals == [ref.choices[0].finish_reason], finals


def test_n(srv, client):
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=7, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 48 or all(c.finish_reason == "stop" for c in r.choices if len(c.text) < 5)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert texts[0] != texts[1], texts  # child i is seeded with seed + i
    # Streaming n=2 interleaves choices by index and gives the same texts.
    chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=7, n=2,
                                            stream=True))
    got = {0: "", 1: ""}
    for ch in chunks:
        for c in ch.choices:
            got[c.index] += c.text
    assert [got[0], got[1]] == texts, (got, texts)
    # Chat n=2 greedy: two identical choices.
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0, n=2)
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content
    # Several prompts times n: index = prompt * n + i; prompt tokens counted once per prompt.
    r = client.completions.create(model=NAME, prompt=[PROMPT, "The dog"], max_tokens=5, temperature=0, n=2,
                                  extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    by = {c.index: c.text for c in r.choices}
    assert by[0] == by[1] and by[2] == by[3] and by[0] != by[2], by
    counts = tokenize(srv, prompt=PROMPT)["count"] + tokenize(srv, prompt="The dog")["count"]
    assert r.usage.prompt_tokens == counts and r.usage.completion_tokens == 20, r.usage


def test_stop(srv, client):
    ref = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=40, temperature=0,
                                    extra_body={"ignore_eos": True}).choices[0].text
    words = ref.split()
    assert len(words) > 6, ref
    stop = " " + words[4]
    cut = ref.index(stop)
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop, "zzzz"])
    assert r.choices[0].text == ref[:cut], (r.choices[0].text, ref[:cut], stop)
    assert r.choices[0].finish_reason == "stop"
    # The same through streaming chat-free completions and a single-string stop.
    chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=stop,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref[:cut]


def test_completion_logprobs(srv, client):
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=3,
                                  extra_body={"ignore_eos": True})
    c = r.choices[0]
    lp = c.logprobs
    n = r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n, lp
    assert "".join(t for t in lp.tokens if t not in special_tokens()) == c.text, (lp.tokens, c.text)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for tok, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and 1 <= len(top) <= 4, top
        assert tok in top and abs(top[tok] - logprob) < 1e-6
        assert abs(max(top.values()) - logprob) < 1e-5  # greedy picks the likeliest
    # Streaming carries the same logprobs chunk by chunk, offsets continuing.
    chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=3,
                                            stream=True, extra_body={"ignore_eos": True}))
    toks, offs = [], []
    for ch in chunks:
        for cc in ch.choices:
            if cc.logprobs:
                toks += cc.logprobs.tokens
                offs += cc.logprobs.text_offset
    assert toks == lp.tokens and offs == lp.text_offset, (toks, lp.tokens, offs, lp.text_offset)


def test_chat_logprobs(srv, client):
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True,
                                       top_logprobs=2, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    # Special tokens show in logprobs (as vLLM does) but not in the content.
    visible = [t.token for t in content if t.token not in special_tokens()]
    assert "".join(visible) == r.choices[0].message.content, (content, r.choices[0].message.content)
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode(errors="replace") is not None
        assert len(t.top_logprobs) == 2
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5  # greedy
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True)
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3, temperature=0)
    assert r.choices[0].logprobs is None


def test_seeds(srv, client):
    def sample(seed, prompt=PROMPT):
        return client.completions.create(model=NAME, prompt=prompt, max_tokens=30, temperature=1.0, seed=seed,
                                         extra_body={"ignore_eos": True}).choices[0].text

    a, b = sample(1234), sample(1234)
    assert a == b, (a, b)
    others = {sample(s) for s in (1, 2, 3)}
    assert len(others | {a}) >= 3, others  # different seeds, different text
    chat = [client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=20, temperature=1.0, seed=99)
            .choices[0].message.content for _ in range(2)]
    assert chat[0] == chat[1], chat


def test_echo(srv, client):
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0, echo=True)
    plain = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.choices[0].text == PROMPT + plain.choices[0].text, (r.choices[0].text, plain.choices[0].text)
    chunks = list(client.completions.create(model=NAME, prompt=PROMPT, max_tokens=8, temperature=0, echo=True,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    # Token-id prompts echo their decoded text and count exactly their ids.
    ids = tokenize(srv, prompt=PROMPT)["tokens"]
    r = client.completions.create(model=NAME, prompt=ids, max_tokens=8, temperature=0, echo=True)
    status, detok = srv.post("/detokenize", {"tokens": ids})
    assert status == 200
    assert r.choices[0].text == detok["prompt"] + plain.choices[0].text, r.choices[0].text
    assert r.usage.prompt_tokens == len(ids)


def test_usage_matches_tokenize(srv, client):
    for prompt in ["Hi", "The cat sat on the mat and looked at the big red ball.", PROMPT * 3]:
        tok = tokenize(srv, prompt=prompt)
        r = client.completions.create(model=NAME, prompt=prompt, max_tokens=3, temperature=0)
        assert r.usage.prompt_tokens == tok["count"], (prompt, r.usage, tok)
        no_special = tokenize(srv, prompt=prompt, add_special_tokens=False)
        assert no_special["count"] == tok["count"] - 1  # the BOS
    tok = tokenize(srv, messages=MESSAGES)
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3, temperature=0)
    assert r.usage.prompt_tokens == tok["count"]
    # The generation prompt ("<|im_start|>assistant\n") is rendered only when asked for.
    bare = tokenize(srv, messages=MESSAGES, add_generation_prompt=False)
    assert bare["count"] < tok["count"] and tok["tokens"][:bare["count"]] == bare["tokens"], (bare, tok)
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=3, temperature=0,
                                       extra_body={"add_generation_prompt": False})
    assert r.usage.prompt_tokens == bare["count"], r.usage


def test_models_health_tokenize(srv, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [NAME, "tiny-alias"], models
    assert models.data[0].object == "model"
    assert client.models.retrieve("tiny-alias").id == "tiny-alias"
    r = client.completions.create(model="tiny-alias", prompt=PROMPT, max_tokens=2)
    assert r.model == "tiny-alias"
    status, _, body = srv.request("GET", "/health")
    assert status == 200, status
    tok = tokenize(srv, prompt="Hello world", add_special_tokens=False)
    assert tok["max_model_len"] == 512
    status, out = srv.post("/detokenize", {"tokens": tok["tokens"]})
    assert status == 200 and out["prompt"] == "Hello world", out
    status, headers, body = srv.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    text = body.decode()
    for name in ["headwise_http_requests_total", "headwise_prompt_tokens_total", "headwise_kv_pages_total",
                 "headwise_time_to_first_token_seconds_bucket", "headwise_api_requests_total"]:
        assert name in text, name
    assert 'headwise_http_requests_total{route="/v1/completions",status="200"}' in text


def main():
    runner = Runner()
    srv = Server("--served-model-name", NAME, "--served-model-name", "tiny-alias", "--threads", "2")
    threads, inflight = [], {}
    try:
        client = srv.client()
        for name, fn in [
            ("completion", test_completion),
            ("chat", test_chat),
            ("chat_default_max_tokens", test_chat_default_max_tokens),
            ("chat_stream", test_chat_stream),
            ("completion_stream", test_completion_stream),
            ("n", test_n),
            ("stop", test_stop),
            ("completion_logprobs", test_completion_logprobs),
            ("chat_logprobs", test_chat_logprobs),
            ("seeds", test_seeds),
            ("echo", test_echo),
            ("usage_matches_tokenize", test_usage_matches_tokenize),
            ("models_health_tokenize", test_models_health_tokenize),
        ]:
            runner.run(name, fn, srv, client)
        # Shutdown with one streaming and one non-streaming request running: the stream ends
        # with finish_reason "abort" and [DONE], the other gets a 503, the process exits 0.
        def stream():
            chunks = list(client.completions.create(model=NAME, prompt="Once", max_tokens=490, stream=True,
                                                    extra_body={"ignore_eos": True}))
            inflight["stream"] = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

        def blocking():
            try:
                client.completions.create(model=NAME, prompt="Once", max_tokens=490, extra_body={"ignore_eos": True})
                inflight["blocking"] = "finished"
            except openai.APIStatusError as e:
                inflight["blocking"] = e.status_code

        threads = [threading.Thread(target=stream), threading.Thread(target=blocking)]
        for t in threads:
            t.start()
        srv.wait_metric("headwise_num_requests_running", lambda v: v >= 2, timeout=5)
    finally:
        start = time.monotonic()
        code = srv.stop()
        elapsed = time.monotonic() - start
        log = srv.log_text()
    for t in threads:
        t.join(timeout=10)

    def clean_exit():
        assert code == 0, (code, log)
        assert elapsed < 10, elapsed
        assert "shut down cleanly" in log, log
        assert inflight == {"stream": ["abort"], "blocking": 503}, inflight

    runner.run("sigint_exits_0", clean_exit)
    runner.finish()


if __name__ == "__main__":
    main()
