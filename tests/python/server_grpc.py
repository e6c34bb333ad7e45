"""The gRPC API (proto/headwise/v1/headwise.proto) of `headwise serve --grpc-port`, through a
client generated from the proto by grpcio-tools: each RPC's answer equals the REST API's for the
same request on the same server (Generate and Chat: greedy tokens, text, logprobs, usage, arm),
32 concurrent streams each equal their answer alone, cancelling a stream or passing its deadline
aborts the request and frees its KV pages, errors come back with the code and message of the
REST error (the field in the "headwise-error-param" trailer; a full queue RESOURCE_EXHAUSTED),
metrics name the front end, SIGINT ends running streams and the server exits 0, the API key
travels in metadata,
reflection lists the service, grpc.health.v1 answers SERVING, a bad --grpc-port is refused at
startup, and the binary still reads sentencepiece tokenizers. Prints "N passed, M failed"."""

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server_util import SOURCE, TINY, Runner, Server

MESSAGES = [
    {"role": "system", "content": "You tell short stories."},
    {"role": "user", "content": "Tell me about a dog."},
]


sys.path.insert(0, os.path.join(SOURCE, "proto"))
import headwise_stubs  # noqa: E402 - needs the path above

pb, pb_grpc = headwise_stubs.load()


def stub(srv):
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    return pb_grpc.HeadwiseStub(channel)


def rest(srv, method, path, body=None):
    if method == "GET":
        status, out = srv.get_json(path)
    else:
        status, out = srv.post(path, body)
    assert status == 200, (status, out)
    return out


def expect_error(call, code, message=None, param=None):
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        if message is not None:
            assert e.details() == message, (e.details(), message)
        trailers = dict(e.trailing_metadata() or ())
        assert trailers.get("headwise-error-param") == param, trailers
        return e
    raise AssertionError(f"no error, expected {code}")


def test_models_and_arms(srv):
    s = stub(srv)
    got = s.ListModels(pb.ListModelsRequest(), timeout=30)
    want = rest(srv, "GET", "/v1/models")["data"]
    assert len(got.data) == len(want) >= 1, (got, want)
    for g, w in zip(got.data, want):
        assert (g.id, g.created, g.owned_by, g.root, g.max_model_len) == (
            w["id"], w["created"], w["owned_by"], w["root"], w["max_model_len"]), (g, w)
    arms = s.ListArms(pb.ListArmsRequest(), timeout=30)
    want = rest(srv, "GET", "/v1/arms")
    assert arms.allow_override == want["allow_override"]
    assert [(a.name, a.attention_policy, a.policy_path or None, a.policy_hash, a.weight)
            for a in arms.data] == [(a["name"], a["attention_policy"], a["policy_path"],
                                     a["policy_hash"], a["weight"]) for a in want["data"]]


def test_tokenize_detokenize(srv):
    s = stub(srv)
    for prompt, special in [("Once upon a time", None), ("Once upon a time", False), ("", None)]:
        req = pb.TokenizeRequest(prompt=prompt)
        body = {"prompt": prompt}
        if special is not None:
            req.add_special_tokens = special
            body["add_special_tokens"] = special
        got = s.Tokenize(req, timeout=30)
        want = rest(srv, "POST", "/tokenize", body)
        assert (list(got.tokens), got.count, got.max_model_len) == (
            want["tokens"], want["count"], want["max_model_len"]), (prompt, got, want)
    got = s.Tokenize(pb.TokenizeRequest(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        add_generation_prompt=False), timeout=30)
    want = rest(srv, "POST", "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False})
    assert list(got.tokens) == want["tokens"] and got.count > 0, (got, want)
    text = s.Detokenize(pb.DetokenizeRequest(tokens=got.tokens), timeout=30).prompt
    assert text == rest(srv, "POST", "/detokenize", {"tokens": want["tokens"]})["prompt"]
    assert "dog" in text, text


def test_errors(srv):
    s = stub(srv)
    status, body = srv.post("/tokenize", {"model": "nope", "prompt": "x"})
    assert status == 404, body
    expect_error(lambda: s.Tokenize(pb.TokenizeRequest(model="nope", prompt="x"), timeout=30),
                 grpc.StatusCode.NOT_FOUND, body["error"]["message"], "model")
    status, body = srv.post("/detokenize", {"tokens": [10**6]})
    assert status == 400, body
    expect_error(lambda: s.Detokenize(pb.DetokenizeRequest(tokens=[10**6]), timeout=30),
                 grpc.StatusCode.INVALID_ARGUMENT, body["error"]["message"], "tokens")
    e = expect_error(lambda: s.Tokenize(pb.TokenizeRequest(
        prompt="x", messages=[pb.ChatMessage(role="user", content="y")]), timeout=30),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert "prompt" in e.details() and "messages" in e.details(), e.details()
    # Bytes no client library would send: a prompt that is not UTF-8, and a message that is not
    # protobuf. Refused; the server goes on.
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    for raw in [b"\x12\x02\xff\xfe", b"\xff\xff\xff\xff"]:
        for method in ["Tokenize", "Generate"]:
            call = (channel.unary_unary if method == "Tokenize" else channel.unary_stream)(
                f"/headwise.v1.Headwise/{method}", request_serializer=lambda b: b,
                response_deserializer=lambda b: b)
            try:
                out = call(raw, timeout=30)
                if method == "Generate":
                    list(out)
                raise AssertionError(f"{method} took {raw!r}")
            except grpc.RpcError as err:
                assert err.code() != grpc.StatusCode.OK, err
    assert s.Tokenize(pb.TokenizeRequest(prompt="still here"), timeout=30).count > 0


def test_reflection(srv):
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=30)
    names = {svc.name for a in answers for svc in a.list_services_response.service}
    assert "headwise.v1.Headwise" in names, names


def test_health(srv):
    """grpc.health.v1 follows REST /health: SERVING for the server and the service while the
    engine runs (open without an API key, as /health is)."""
    assert srv.request("GET", "/health")[0] == 200
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}"))
    for service in ["", "headwise.v1.Headwise"]:
        got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert got.status == health_pb2.HealthCheckResponse.SERVING, (service, got)


PROMPT = "Once upon a time, there was a little girl named Lily. She"
# Long enough to be cut: SmolLM2-135M decodes about 40 tokens/s on 2 cores (TinyStories would
# finish before a cancel or a deadline reached it).
LONG = dict(text="Once upon a time", max_tokens=400, temperature=0, ignore_eos=True)


def generate(srv, **fields):
    """Every message of one Generate call, in order."""
    return list(stub(srv).Generate(pb.GenerateRequest(**fields), timeout=60))


def test_generate_equals_rest(srv):
    """Greedy tokens, text, logprobs, finish reason, usage and arm equal the REST answer."""
    messages = generate(srv, text=PROMPT, max_tokens=24, temperature=0, ignore_eos=True,
                        logprobs=2)
    want = rest(srv, "POST", "/v1/completions",
                {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
                 "logprobs": 2, "headwise": {"token_ids": True}})
    choice = want["choices"][0]
    assert len({m.id for m in messages}) == 1 and messages[0].id.startswith("cmpl-"), messages[0]
    assert "".join(m.text for m in messages) == choice["text"]
    ids = [i for m in messages for i in m.token_ids]
    assert ids == choice["token_ids"] and len(ids) == 24, (ids, choice["token_ids"])
    logprobs = [lp for m in messages for lp in m.logprobs]
    assert [lp.token for lp in logprobs] == choice["logprobs"]["tokens"]
    for got, value, top in zip(logprobs, choice["logprobs"]["token_logprobs"],
                               choice["logprobs"]["top_logprobs"]):
        assert abs(got.logprob - value) < 1e-5, (got, value)
        assert set(got.top_logprobs) == set(top), (got, top)
    reasons = [m.finish_reason for m in messages if m.finish_reason]
    assert reasons == [choice["finish_reason"]] == ["length"], reasons
    last = messages[-1]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        want["usage"]["prompt_tokens"], want["usage"]["completion_tokens"],
        want["usage"]["total_tokens"]), (last.usage, want["usage"])
    assert (last.headwise.arm, last.headwise.attention_policy, last.headwise.policy_hash) == (
        want["headwise"]["arm"], want["headwise"]["attention_policy"],
        want["headwise"]["policy_hash"])
    # Token ids as the prompt: the same answer.
    prompt_ids = rest(srv, "POST", "/tokenize", {"prompt": PROMPT})["tokens"]
    again = generate(srv, token_ids=pb.TokenIds(ids=prompt_ids), max_tokens=24, temperature=0,
                     ignore_eos=True)
    assert [i for m in again for i in m.token_ids] == ids


def test_chat_equals_rest(srv):
    """Chat: the role first, then content, token ids, logprobs, usage and arm as REST's."""
    messages = list(stub(srv).Chat(pb.ChatRequest(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        max_tokens=16, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=2),
        timeout=60))
    want = rest(srv, "POST", "/v1/chat/completions",
                {"messages": MESSAGES, "max_tokens": 16, "temperature": 0, "ignore_eos": True,
                 "logprobs": True, "top_logprobs": 2, "headwise": {"token_ids": True}})
    choice = want["choices"][0]
    assert messages[0].role == "assistant" and all(not m.role for m in messages[1:]), messages[:2]
    assert messages[0].id.startswith("chatcmpl-") and len({m.id for m in messages}) == 1
    assert "".join(m.text for m in messages) == choice["message"]["content"]
    ids = [i for m in messages for i in m.token_ids]
    assert ids == choice["token_ids"] and len(ids) == 16, (ids, choice["token_ids"])
    logprobs = [lp for m in messages for lp in m.logprobs]
    assert [lp.token for lp in logprobs] == [e["token"] for e in choice["logprobs"]["content"]]
    for got, entry in zip(logprobs, choice["logprobs"]["content"]):
        assert abs(got.logprob - entry["logprob"]) < 1e-5, (got, entry)
        assert set(got.top_logprobs) == {alt["token"] for alt in entry["top_logprobs"]}
    assert [m.finish_reason for m in messages if m.finish_reason] == ["length"]
    last = messages[-1]
    assert last.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert last.usage.completion_tokens == want["usage"]["completion_tokens"] == 16
    assert last.headwise.arm == want["headwise"]["arm"]
    # A chat the template cannot render is the REST 400, with its message.
    status, answer = srv.post("/v1/chat/completions", {"messages": []})
    assert status == 400, answer
    expect_error(lambda: list(stub(srv).Chat(pb.ChatRequest(), timeout=30)),
                 grpc.StatusCode.INVALID_ARGUMENT, answer["error"]["message"],
                 answer["error"]["param"])


def by_index(messages):
    """{index: (text, token ids, finish reasons)} of a stream's messages."""
    out = {}
    for m in messages:
        text, ids, reasons = out.setdefault(m.index, ("", [], []))
        out[m.index] = (text + m.text, ids + list(m.token_ids),
                        reasons + ([m.finish_reason] if m.finish_reason else []))
    return out


def test_n_echo_kwargs(srv):
    """n completions (index), echo, add_special_tokens and chat_template_kwargs as REST's."""
    got = by_index(generate(srv, text=PROMPT, max_tokens=8, temperature=0.8, seed=7, n=2,
                            echo=True, add_special_tokens=False, ignore_eos=True))
    want = rest(srv, "POST", "/v1/completions",
                {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.8, "seed": 7, "n": 2,
                 "echo": True, "add_special_tokens": False, "ignore_eos": True,
                 "headwise": {"token_ids": True}})
    assert sorted(got) == [0, 1], got
    for choice in want["choices"]:
        text, ids, reasons = got[choice["index"]]
        assert text == choice["text"] and text.startswith(PROMPT), (text, choice["text"])
        assert ids == choice["token_ids"] and reasons == ["length"], (ids, choice)
    from google.protobuf import struct_pb2
    kwargs = struct_pb2.Struct()
    kwargs.update({"unused_variable": "x", "n": 3})
    chat = list(stub(srv).Chat(pb.ChatRequest(
        messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
        max_tokens=6, temperature=0, n=2, chat_template_kwargs=kwargs), timeout=60))
    want = rest(srv, "POST", "/v1/chat/completions",
                {"messages": MESSAGES, "max_tokens": 6, "temperature": 0, "n": 2,
                 "chat_template_kwargs": {"unused_variable": "x", "n": 3},
                 "headwise": {"token_ids": True}})
    got = by_index(chat)
    for choice in want["choices"]:
        assert got[choice["index"]][1] == choice["token_ids"], (got, choice)


def test_generate_concurrent(srv):
    """32 streams at once, each equal to its answer alone."""
    prompts = [f"{PROMPT} {i}" for i in range(32)]
    alone = {p: [i for m in generate(srv, text=p, max_tokens=12, temperature=0, ignore_eos=True)
                 for i in m.token_ids] for p in prompts[:4]}
    results, errors = {}, []

    def run(p):
        try:
            results[p] = [i for m in generate(srv, text=p, max_tokens=12, temperature=0,
                                               ignore_eos=True) for i in m.token_ids]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(results) == 32 and all(len(r) == 12 for r in results.values())
    for p, ids in alone.items():
        assert results[p] == ids, p


def aborted_and_freed(srv, aborts):
    assert srv.wait_metric("headwise_kv_pages_used", lambda v: v == 0, timeout=5) == 0
    assert srv.wait_metric("headwise_num_requests_running", lambda v: v == 0, timeout=5) == 0
    got = srv.wait_metric("headwise_request_finished_total", lambda v: v > aborts, timeout=5,
                          finish_reason="abort")
    assert got == aborts + 1, (got, aborts)


def test_cancel_frees_kv(srv):
    aborts = srv.metric("headwise_request_finished_total", finish_reason="abort")
    call = stub(srv).Generate(pb.GenerateRequest(**LONG), timeout=60)
    seen = 0
    for message in call:
        seen += len(message.token_ids)
        if seen >= 3:
            break
    assert srv.metric("headwise_kv_pages_used") > 0, "the request should hold pages while running"
    call.cancel()
    aborted_and_freed(srv, aborts)


def test_deadline_frees_kv(srv):
    aborts = srv.metric("headwise_request_finished_total", finish_reason="abort")
    seen = 0
    try:
        # Sanitized builds run several times slower (scripts/sanitize.sh sets the factor).
        deadline = 2.0 * float(os.environ.get("HEADWISE_TEST_SLOWDOWN", "1"))
        for message in stub(srv).Generate(pb.GenerateRequest(**LONG), timeout=deadline):
            seen += len(message.token_ids)
        raise AssertionError(f"finished {seen} tokens within the deadline")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
    assert 0 < seen < 400, seen
    aborted_and_freed(srv, aborts)


def test_generate_errors(srv):
    """The REST API's refusals, with its messages and fields."""
    for fields, body, code in [
        (dict(text="x", max_tokens=10**6), {"prompt": "x", "max_tokens": 10**6},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", temperature=-1.0), {"prompt": "x", "temperature": -1.0},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", model="nope"), {"prompt": "x", "model": "nope"},
         grpc.StatusCode.NOT_FOUND),
        (dict(token_ids=pb.TokenIds(ids=[10**6])), {"prompt": [10**6]},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", top_p=1.5), {"prompt": "x", "top_p": 1.5},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", top_k=-5), {"prompt": "x", "top_k": -5}, grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", logprobs=50), {"prompt": "x", "logprobs": 50},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", logit_bias={10**6: 1.0}), {"prompt": "x", "logit_bias": {"1000000": 1.0}},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", max_tokens=0), {"prompt": "x", "max_tokens": 0},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", n=0), {"prompt": "x", "n": 0}, grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", stop_token_ids=[-1]), {"prompt": "x", "stop_token_ids": [-1]},
         grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="x", arm="other"), {"prompt": "x", "headwise": {"arm": "other"}},
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        status, answer = srv.post("/v1/completions", body)
        assert status in (400, 404), (body, status, answer)
        error = answer["error"]
        expect_error(lambda: generate(srv, **fields), code, error["message"], error["param"])
    # Chat: the same checks through the same code.
    for fields, body in [(dict(temperature=-1.0), {"temperature": -1.0}),
                         (dict(logprobs=True, top_logprobs=50), {"logprobs": True,
                                                                  "top_logprobs": 50}),
                         (dict(max_tokens=10**6), {"max_tokens": 10**6})]:
        status, answer = srv.post("/v1/chat/completions", dict(body, messages=MESSAGES))
        assert status == 400, (body, status, answer)
        error = answer["error"]
        expect_error(lambda: list(stub(srv).Chat(pb.ChatRequest(
            messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in MESSAGES],
            **fields), timeout=30)), grpc.StatusCode.INVALID_ARGUMENT, error["message"],
            error["param"])


def test_metrics(srv):
    """Requests count by front end; calls by method and status code."""
    for api in ["completions", "chat"]:
        assert srv.metric("headwise_api_requests_total", api=api, frontend="grpc") >= 1, api
        assert srv.metric("headwise_api_requests_total", api=api, frontend="http") >= 1, api
    assert srv.metric("headwise_grpc_requests_total", method="Generate", code="OK") >= 3
    assert srv.metric("headwise_grpc_requests_total", method="Generate",
                      code="INVALID_ARGUMENT") >= 3
    assert srv.metric("headwise_grpc_requests_total", method="Tokenize", code="NOT_FOUND") >= 1


def test_queue_full():
    """A full queue is RESOURCE_EXHAUSTED with the REST message; the others finish."""
    with Server("--grpc-port", "0", "--max-num-seqs", "1", "--max-waiting", "1") as srv:
        codes, lock = [], threading.Lock()

        def run():
            try:
                generate(srv, text="Once upon a time", max_tokens=300, ignore_eos=True)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
            with lock:
                codes.append((code, details))

        threads = [threading.Thread(target=run) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        ok = [c for c, _ in codes if c == grpc.StatusCode.OK]
        full = [d for c, d in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(codes) == 10 and len(ok) >= 2 and full, codes
        assert len(ok) + len(full) == 10, codes
        assert all("queue" in d for d in full), full


def test_shutdown_drains(srv):
    """SIGINT with a stream running: the stream ends with finish_reason "abort" (the REST
    stream's last chunk) and the server exits 0."""
    call = stub(srv).Generate(pb.GenerateRequest(**LONG), timeout=60)
    reasons, code = [], grpc.StatusCode.OK
    it = iter(call)
    next(it)  # running
    srv.proc.send_signal(signal.SIGINT)
    try:
        for message in it:
            if message.finish_reason:
                reasons.append(message.finish_reason)
    except grpc.RpcError as e:
        code = e.code()
    assert reasons == ["abort"] and code == grpc.StatusCode.OK, (reasons, code)
    assert srv.proc.wait(timeout=30) == 0, srv.log_text()


def test_api_key():
    with Server("--grpc-port", "0", "--api-key", "sekrit") as srv:
        s = stub(srv)
        expect_error(lambda: s.ListModels(pb.ListModelsRequest(), timeout=30),
                     grpc.StatusCode.UNAUTHENTICATED)
        expect_error(lambda: s.ListModels(pb.ListModelsRequest(), timeout=30,
                                          metadata=[("authorization", "Bearer wrong")]),
                     grpc.StatusCode.UNAUTHENTICATED)
        got = s.ListModels(pb.ListModelsRequest(), timeout=30,
                           metadata=[("authorization", "Bearer sekrit")])
        assert len(got.data) == 1, got
        test_health(srv)


def test_bad_port():
    for port in ["70000", "-2", "x"]:
        r = subprocess.run([os.environ["HEADWISE_BIN"], "serve", "unused", "--grpc-port", port],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "grpc-port" in r.stderr, (port, r.returncode, r.stderr)


def test_sentencepiece_beside_grpc():
    """The binary that links gRPC's protobuf still reads sentencepiece .model files (Debian's
    libsentencepiece carries its own protobuf: tools/CMakeLists.txt): the tokenizer loads and
    encodes, and the run ends with the clean error of a vocabulary that does not fit the model."""
    spm = os.path.join(os.environ.get("HEADWISE_SHARED", ""), "tokenizers", "llama2-spm",
                       "tokenizer.model")
    r = subprocess.run([os.environ["HEADWISE_BIN"], "generate", "--model", TINY, "--tokenizer", spm,
                        "--prompt", "Hello world", "--max-tokens", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "outside vocabulary" in r.stderr, (r.returncode, r.stderr[-2000:])


def main():
    runner = Runner()
    with Server("--grpc-port", "0") as srv:
        assert srv.grpc_port, "no gRPC port printed"
        for name, fn in [("models and arms", test_models_and_arms),
                         ("tokenize / detokenize", test_tokenize_detokenize),
                         ("errors", test_errors), ("reflection", test_reflection),
                         ("health", test_health),
                         ("Generate equals REST", test_generate_equals_rest),
                         ("Chat equals REST", test_chat_equals_rest),
                         ("n, echo, template kwargs", test_n_echo_kwargs),
                         ("32 concurrent Generate streams", test_generate_concurrent),
                         ("Generate errors", test_generate_errors),
                         ("metrics by front end", test_metrics)]:
            runner.run(name, fn, srv)
    smollm2 = os.environ.get("HEADWISE_SMOLLM2_GGUF")
    assert smollm2, "HEADWISE_SMOLLM2_GGUF (scripts/test.sh sets it)"
    with Server("--grpc-port", "0", model=smollm2, chat_template=None) as srv:
        runner.run("cancel frees the KV cache", test_cancel_frees_kv, srv)
        runner.run("deadline frees the KV cache", test_deadline_frees_kv, srv)
        runner.run("shutdown ends the streams", test_shutdown_drains, srv)
    runner.run("full queue", test_queue_full)
    runner.run("api key", test_api_key)
    runner.run("bad --grpc-port", test_bad_port)
    runner.run("sentencepiece beside gRPC", test_sentencepiece_beside_grpc)
    runner.finish()


if __name__ == "__main__":
    main()
