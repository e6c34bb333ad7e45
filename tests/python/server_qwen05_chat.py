"""A short chat through `headwise serve` with the official openai client on
Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, on the CPU): greedy, a few tokens. The answer names
Paris and ends on the model's own end of turn (<|im_end|>, from the GGUF's ChatML template), the
usage matches /tokenize, and a stream of the same request gives the same text.

The model comes from `scripts/get-model.sh qwen2.5-coder-0.5b-instruct` through
HEADWISE_QWEN05_GGUF (scripts/test.sh sets it; otherwise the get-model.sh cache is looked in).
Without the model the test fails: CI fetches it, so a missing file is a broken setup, not a
reason to pass. Prints "N passed, M failed"."""

import os
import sys

from server_util import Runner, Server

SLOWDOWN = float(os.environ.get("HEADWISE_TEST_SLOWDOWN", "1"))
NAME = "qwen2.5-coder-0.5b-instruct"
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def model_path():
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("HEADWISE_QWEN05_GGUF") or os.path.join(
        cache, "headwise/models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")


def test_chat(srv):
    client = srv.client(timeout=300.0 * SLOWDOWN)
    r = client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=24)
    c = r.choices[0]
    text = c.message.content
    print(f"answer: {text!r} ({c.finish_reason}, {r.usage.completion_tokens} tokens)")
    assert "Paris" in text, text
    # It ends on its own (<|im_end|> is a stop token, not part of the text) well before 24.
    assert c.finish_reason == "stop", c
    assert "<|im_end|>" not in text and "<|endoftext|>" not in text, text
    status, tok = srv.post("/tokenize", {"model": NAME, "messages": MESSAGES})
    assert status == 200, tok
    # The GGUF's ChatML template: Qwen's default system message, then the user turn.
    assert tok["count"] == r.usage.prompt_tokens, (tok["count"], r.usage)
    assert 0 < r.usage.completion_tokens < 24, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage

    # The same request streamed: the same text, the usage on the last chunk.
    chunks = list(client.chat.completions.create(model=NAME, messages=MESSAGES, temperature=0, max_tokens=24,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert streamed == text, (streamed, text)
    assert finish == ["stop"], finish
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1].usage


def main():
    path = model_path()
    if not os.path.isfile(path):
        print(f"FAIL: {path} not found; run scripts/get-model.sh qwen2.5-coder-0.5b-instruct and set "
              "HEADWISE_QWEN05_GGUF (scripts/test.sh does both)")
        print("0 passed, 1 failed")
        sys.exit(1)
    runner = Runner()
    # The GGUF's own chat template; a short context keeps the KV cache small.
    with Server("--served-model-name", NAME, "--max-model-len", "1024", model=path, chat_template=None,
                startup_timeout=120 * SLOWDOWN) as srv:
        runner.run("chat", test_chat, srv)
    runner.finish()


if __name__ == "__main__":
    main()
