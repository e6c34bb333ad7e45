"""Bad requests to `headwise serve` get the right status and OpenAI's error shape — never a 500,
never a crash: a table of malformed and out-of-range requests, API-key checks, a full queue
(503), a model without chat template, and startup errors (exit 2, one line). The server still
answers /health and normal requests afterwards. Prints "N passed, M failed"."""

import json
import os
import shutil
import subprocess
import tempfile
import threading

from server_util import TINY, Runner, Server, check_error_shape

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "Hi"}]


def comp(**kw):
    return dict({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4}, **kw)


def chat(**kw):
    return dict({"model": "tiny", "messages": MSG, "max_tokens": 4}, **kw)


LONG_PROMPT = " ".join(["the big dog ran to the park"] * 120)

# (name, method, path, body, expected status, expected param or None for "any")
CASES = [
    ("bad_json", "POST", COMP, '{"prompt": "x",', 400, None),
    ("json_not_object", "POST", COMP, "[1, 2, 3]", 400, None),
    ("empty_body", "POST", CHAT, "", 400, None),
    ("temperature_type", "POST", COMP, comp(temperature="hot"), 400, "temperature"),
    ("temperature_range", "POST", CHAT, chat(temperature=-1), 400, "temperature"),
    ("top_p_range", "POST", COMP, comp(top_p=1.5), 400, "top_p"),
    ("max_tokens_zero", "POST", COMP, comp(max_tokens=0), 400, "max_tokens"),
    ("max_tokens_type", "POST", CHAT, chat(max_tokens="ten"), 400, "max_tokens"),
    ("n_zero", "POST", COMP, comp(n=0), 400, "n"),
    ("n_too_large", "POST", CHAT, chat(n=1000), 400, "n"),
    ("logprobs_range", "POST", COMP, comp(logprobs=50), 400, "logprobs"),
    ("top_logprobs_range", "POST", CHAT, chat(logprobs=True, top_logprobs=30), 400, "top_logprobs"),
    ("top_logprobs_without_logprobs", "POST", CHAT, chat(top_logprobs=2), 400, "top_logprobs"),
    ("unknown_model", "POST", COMP, comp(model="gpt-4o"), 404, "model"),
    ("unknown_route", "POST", "/v1/nope", comp(), 404, None),
    ("unknown_route_get", "GET", "/v2/models", None, 404, None),
    ("wrong_method_get", "GET", CHAT, None, 405, None),
    ("wrong_method_put", "PUT", "/v1/models", "{}", 405, None),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "tools"),
    ("tool_choice", "POST", CHAT, chat(tool_choice="auto"), 400, "tool_choice"),
    ("response_format", "POST", CHAT, chat(response_format={"type": "json_object"}), 400, "response_format"),
    ("guided_json", "POST", COMP, comp(guided_json={"type": "object"}), 400, "guided_json"),
    ("suffix", "POST", COMP, comp(suffix="The end."), 400, "suffix"),
    ("best_of", "POST", COMP, comp(best_of=3), 400, "best_of"),
    ("echo_with_logprobs", "POST", COMP, comp(echo=True, logprobs=2), 400, "echo"),
    ("unknown_field", "POST", COMP, comp(temprature=0.5), 400, "temprature"),
    ("unknown_field_chat", "POST", CHAT, chat(foo=1), 400, "foo"),
    ("prompt_too_long", "POST", COMP, comp(prompt=LONG_PROMPT), 400, "prompt"),
    ("max_tokens_over_context", "POST", COMP, comp(max_tokens=600), 400, "max_tokens"),
    ("chat_too_long", "POST", CHAT, chat(messages=[{"role": "user", "content": LONG_PROMPT}]), 400, "messages"),
    ("missing_prompt", "POST", COMP, {"model": "tiny"}, 400, "prompt"),
    ("prompt_type", "POST", COMP, comp(prompt={"text": "x"}), 400, "prompt"),
    ("prompt_id_outside_vocab", "POST", COMP, comp(prompt=[1, 99999]), 400, "prompt"),
    ("empty_prompt_list", "POST", COMP, comp(prompt=[]), 400, "prompt"),
    ("missing_messages", "POST", CHAT, {"model": "tiny"}, 400, "messages"),
    ("empty_messages", "POST", CHAT, chat(messages=[]), 400, "messages"),
    ("bad_role", "POST", CHAT, chat(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
    ("tool_role", "POST", CHAT, chat(messages=[{"role": "tool", "content": "x"}]), 400, "messages[0].role"),
    ("content_part_image", "POST", CHAT,
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]),
     400, "messages[0].content[0].type"),
    ("content_type", "POST", CHAT, chat(messages=[{"role": "user", "content": 42}]), 400, "messages[0].content"),
    ("logit_bias_key", "POST", COMP, comp(logit_bias={"dog": 5}), 400, "logit_bias"),
    ("logit_bias_outside_vocab", "POST", COMP, comp(logit_bias={"99999": 5}), 400, "logit_bias"),
    ("logit_bias_value", "POST", COMP, comp(logit_bias={"5": 500}), 400, "logit_bias"),
    ("stop_list_too_long", "POST", COMP, comp(stop=[f"s{i}" for i in range(17)]), 400, "stop"),
    ("stop_empty_string", "POST", COMP, comp(stop=[""]), 400, "stop"),
    ("stop_token_outside_vocab", "POST", COMP, comp(stop_token_ids=[99999]), 400, "stop_token_ids"),
    ("stream_options_without_stream", "POST", CHAT, chat(stream_options={"include_usage": True}), 400,
     "stream_options"),
    ("stream_type", "POST", CHAT, chat(stream="yes"), 400, "stream"),
    ("seed_type", "POST", COMP, comp(seed="abc"), 400, "seed"),
    ("presence_penalty_range", "POST", COMP, comp(presence_penalty=5), 400, "presence_penalty"),
    ("tokenize_unknown_model", "POST", "/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("tokenize_both", "POST", "/tokenize", {"prompt": "x", "messages": MSG}, 400, None),
    ("detokenize_outside_vocab", "POST", "/detokenize", {"tokens": [1, 99999]}, 400, "tokens"),
    ("detokenize_type", "POST", "/detokenize", {"tokens": "abc"}, 400, "tokens"),
    ("retrieve_unknown_model", "GET", "/v1/models/nope", None, 404, "model"),
]


def check_case(srv, method, path, body, status, param):
    got, headers, data = srv.request(method, path, body, timeout=30)
    assert got == status, (got, data[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    err = check_error_shape(json.loads(data))
    if param is not None:
        assert err["param"] == param, err
    if status == 400:
        assert err["type"] == "invalid_request_error", err
    if status == 405:
        assert "allow" in headers, headers


def test_body_limit(srv):
    body = json.dumps(comp(prompt="a" * (2 << 20))).encode()
    status, _, data = srv.request("POST", COMP, body, headers={"Content-Type": "application/json"})
    assert status == 413, (status, data[:200])
    check_error_shape(json.loads(data))


def test_still_healthy(srv, allow_503=False):
    status, _, _ = srv.request("GET", "/health")
    assert status == 200
    r = srv.client().completions.create(model="tiny", prompt="Once upon a time", max_tokens=5)
    assert r.choices[0].text and r.usage.completion_tokens == 5
    m = srv.metrics()
    five_hundreds = sum(v for (n, ls), v in m.items()
                        if n == "headwise_http_requests_total" and dict(ls).get("status", "").startswith("5")
                        and not (allow_503 and dict(ls)["status"] == "503"))
    assert five_hundreds == 0, "a bad request was answered with a 5xx"


def test_api_key(srv, key):
    status, headers, data = srv.request("POST", COMP, comp())
    assert status == 401, status
    err = check_error_shape(json.loads(data))
    assert err["code"] == "invalid_api_key"
    status, _, data = srv.request("POST", COMP, comp(), headers={"Authorization": "Bearer wrong"})
    assert status == 401
    check_error_shape(json.loads(data))
    status, _, _ = srv.request("GET", "/v1/models", headers={"Authorization": "Basic " + key})
    assert status == 401
    status, _, data = srv.request("POST", COMP, comp(), headers={"Authorization": "Bearer " + key})
    assert status == 200, data
    r = srv.client(api_key=key).chat.completions.create(model="tiny", messages=MSG, max_tokens=3)
    assert r.choices[0].message.content is not None
    # Health and metrics stay open, as in vLLM.
    assert srv.request("GET", "/health")[0] == 200
    assert srv.request("GET", "/metrics")[0] == 200
    # Tokenizing is work too: /tokenize and /detokenize need the key (vLLM leaves them open).
    for path, body in [("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1]})]:
        assert srv.request("POST", path, body)[0] == 401, path
        status, _, data = srv.request("POST", path, body, headers={"Authorization": "Bearer " + key})
        assert status == 200, (path, data)


def test_queue_full(srv):
    results = []
    lock = threading.Lock()

    def worker():
        got = srv.request("POST", COMP, comp(max_tokens=300, ignore_eos=True), timeout=60)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    statuses = sorted(s for s, _, _ in results)
    assert statuses.count(200) >= 2, statuses
    full = [(h, d) for s, h, d in results if s == 503]
    assert full, statuses
    assert set(statuses) <= {200, 503}, statuses
    for headers, data in full:
        err = check_error_shape(json.loads(data))
        assert err["type"] == "server_error" and "queue" in err["message"], err
        assert headers.get("retry-after") == "1", headers
    test_still_healthy(srv, allow_503=True)


def test_no_chat_template(srv):
    status, _, data = srv.request("POST", CHAT, chat())
    assert status == 400, status
    err = check_error_shape(json.loads(data))
    assert "chat template" in err["message"], err


def test_policy_reported(srv, name):
    """The policy that ran is named beside usage (plain and streamed) and in the metrics label; a
    one-arm server's arm is named after its policy."""
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    status, headers, data = srv.request("POST", "/v1/completions", body)
    assert status == 200, (status, data)
    told = json.loads(data)["headwise"]
    assert told["arm"] == told["attention_policy"] == name, data
    assert told["policy_hash"].startswith("fnv1a64:") and len(told["policy_hash"]) == 24, told
    assert headers.get("x-headwise-arm") == name, headers
    status, _, data = srv.request("POST", "/v1/completions",
                                  dict(body, stream=True, stream_options={"include_usage": True}))
    assert status == 200, (status, data)
    events = [json.loads(line[6:]) for line in data.decode().splitlines()
              if line.startswith("data: {")]
    tagged = [e["headwise"] for e in events if "headwise" in e]
    assert tagged and all(t == told for t in tagged), events
    assert srv.metric("headwise_api_requests_total", api="completions", attention_policy=name) == 2


def startup_error(args, expect):
    binary = os.environ["HEADWISE_BIN"]
    p = subprocess.run([binary, "serve", *args, "--port", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("headwise: error:")]
    assert len(errors) == 1 and expect in errors[0], lines
    assert "listening" not in p.stdout


def test_startup_errors(port_in_use):
    with tempfile.TemporaryDirectory() as tmp:
        bad_template = os.path.join(tmp, "bad.jinja")
        with open(bad_template, "w") as f:
            f.write("{{ this is not a chat template")
        startup_error([TINY, "--device", "cuda"], "--device cuda")
        startup_error([TINY, "--chat-template", bad_template], "chat template")
        startup_error([TINY, "--chat-template", os.path.join(tmp, "missing.jinja")], "--chat-template")
        startup_error([os.path.join(tmp, "no-such-model")], "no-such-model")
        startup_error([TINY, "--kv-cache-memory", "1K"], "--kv-cache-memory")
        startup_error([TINY, "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization")
        startup_error([TINY, "--kv-cache-memory", "lots"], "--kv-cache-memory")
        startup_error([TINY, "--max-num-seqs", "0"], "--max-num-seqs")
        startup_error([TINY, "--bogus-flag", "1"], "--bogus-flag")
        startup_error([], "MODEL")
        ring = {"storage": {"kind": "ring", "sink": 4, "window": 60}, "positions": "reindex",
                "decode": {"mode": "retained"}}
        # Refused at startup, never served as dense.
        full_reindex = os.path.join(tmp, "full-reindex.json")
        with open(full_reindex, "w") as f:
            json.dump({"schema": "attn-policy/v1", "policies": {"d": {"storage": {"kind": "full"}, "positions": "reindex"}},
                       "assignment": {"default": "d"}}, f)
        startup_error([TINY, "--attention-policy", full_reindex], "reindex applies to ring storage")
        startup_error([TINY, "--attention-policy", os.path.join(tmp, "none.json")], "cannot open")
        startup_error([TINY, "--num-kv-pages", "4"], "cannot hold a single token")
        rings = os.path.join(tmp, "rings.json")
        with open(rings, "w") as f:
            json.dump({"schema": "attn-policy/v1", "policies": {"s": {**ring, "positions": "original"}},
                       "assignment": {"default": "s"}}, f)
        startup_error([TINY, "--attention-policy", rings, "--num-kv-pages", "64"], "its rings and one page per growing")
        # A head profile of another model (headwise profile-heads): refused with both identities.
        with open(os.path.join(tmp, "razor.json"), "w") as f:
            json.dump({"schema": "headwise-head-profile/v1", "method": "razor", "heads": {"0": [1]},
                       "identity": {"num_layers": 2, "num_heads": 8, "num_kv_heads": 4,
                                    "weights_hash": "0123456789abcdef"}}, f)
        profiled = os.path.join(tmp, "profiled.json")
        with open(profiled, "w") as f:
            json.dump({"schema": "attn-policy/v1", "policies": {"a": {}, "b": {}},
                       "assignment": {"default": "a",
                                      "head_list": {"format": "razor_json", "path": "razor.json", "policy": "b"}}}, f)
        startup_error([TINY, "--attention-policy", profiled], "computed for another model (2 layers, 8 heads, 4 KV heads, "
                      "weights 0123456789abcdef); the loaded model has 2 layers, 8 heads, 4 KV heads, weights ")
        binary = os.environ["HEADWISE_BIN"]
        p = subprocess.run([binary, "serve", TINY, "--port", str(port_in_use)], capture_output=True, text=True,
                           timeout=60)
        assert p.returncode == 2 and "cannot listen" in p.stderr, (p.returncode, p.stderr)


def main():
    runner = Runner()
    with Server("--served-model-name", "tiny", "--max-body-bytes", "1M") as srv:
        for name, method, path, body, status, param in CASES:
            runner.run(f"bad_request.{name}", check_case, srv, method, path, body, status, param)
        runner.run("body_over_limit", test_body_limit, srv)
        runner.run("healthy_after_bad_requests", test_still_healthy, srv)
        runner.run("startup_errors", test_startup_errors, srv.port)
    with Server("--served-model-name", "tiny", "--api-key", "sekrit") as srv:
        runner.run("api_key_flag", test_api_key, srv, "sekrit")
    with Server("--served-model-name", "tiny", env={"HEADWISE_API_KEY": "from-env"}) as srv:
        runner.run("api_key_env", test_api_key, srv, "from-env")
    with tempfile.TemporaryDirectory() as tmp:
        policy = os.path.join(tmp, "baseline.json")
        with open(policy, "w") as f:
            json.dump({"schema": "attn-policy/v1", "name": "baseline-arm",
                       "policies": {"full": {"storage": {"kind": "full"}}}, "assignment": {"default": "full"}}, f)
        with Server("--served-model-name", "tiny", "--attention-policy", policy) as srv:
            runner.run("policy_reported", test_policy_reported, srv, "baseline-arm")
        # A model directory's own attention-policy.json applies without the flag.
        model = os.path.join(tmp, "model")
        shutil.copytree(TINY, model)
        shutil.copy(policy, os.path.join(model, "attention-policy.json"))
        with Server("--served-model-name", "tiny", model=model) as srv:
            runner.run("policy_from_model_dir", test_policy_reported, srv, "baseline-arm")
        # Sink/window heads beside full ones (DuoAttention's shape) serve on the CPU.
        heads = os.path.join(tmp, "heads.json")
        with open(heads, "w") as f:
            json.dump({"0": [1, 3], "1": [0]}, f)
        duo = os.path.join(tmp, "duo.json")
        with open(duo, "w") as f:
            json.dump({"schema": "attn-policy/v1", "name": "duo-arm",
                       "policies": {"full": {"storage": {"kind": "full"}},
                                    "ring": {"storage": {"kind": "ring", "sink": 4, "window": 16}}},
                       "assignment": {"default": "ring", "head_list": {"format": "razor_json", "path": heads,
                                                                       "policy": "full"}}}, f)
        with Server("--served-model-name", "tiny", "--attention-policy", duo) as srv:
            runner.run("policy_ring_served", test_policy_reported, srv, "duo-arm")
    with Server("--served-model-name", "tiny", "--max-num-seqs", "1", "--max-waiting", "1", chat_template=None) as srv:
        runner.run("queue_full_503", test_queue_full, srv)
        runner.run("no_chat_template", test_no_chat_template, srv)
    runner.finish()


if __name__ == "__main__":
    main()
