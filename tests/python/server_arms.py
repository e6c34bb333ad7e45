"""`headwise serve --arms FILE`: A/B arms of attention policies in one engine, through the
official `openai` client. Two arms (dense, and a DuoAttention-like split of full and sink/window
heads) weighted 50/50:

- 200 requests with distinct `user` keys split within the binomial 99.9% interval, and a key
  always lands on the same arm (as `user` or as the X-Headwise-Arm-Key header, which wins);
- every response, streamed or not, chat or completions, names its arm and policy (the
  X-Headwise-Arm header and the "headwise" object), and the per-arm metrics match the
  responses' usage per arm and sum to the totals;
- "headwise": {"arm": NAME} forces the arm where the file allows it, and is refused (400,
  param headwise.arm) where it does not or the arm is unknown;
- GET /v1/arms lists the arms with their policies and the FNV-1a hashes of their files;
- greedy output under each arm equals a one-arm server running that arm's policy alone;
- lengths are the arm's: past the context on a re-indexed ring arm, refused on a dense one;
- startup refusals: --arms with --attention-policy, malformed arms files, an arm whose policy
  has another page size.
Prints "N passed, M failed"."""

import json
import math
import os
import subprocess
import tempfile
import threading
import time

from server_util import TINY, Runner, Server, check_error_shape, metric_value, parse_json

NUM_KEYED = 200
WORKERS = 8
# The story prompt of the CLI policy tests: long enough (~100 tokens) that a 4 + 16 window drops
# most of it, so the two arms answer differently.
STORY = "Once upon a time, there was a little girl named Lily. She liked to play in the park. " * 5
NAME = "tiny"


def fnv1a64(path):
    h = 0xCBF29CE484222325
    with open(path, "rb") as f:
        for b in f.read():
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"fnv1a64:{h:016x}"


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def write_files(tmp):
    """Two policy files, a third of another page size, and the arms files that use them."""
    files = {}
    files["dense"] = write_json(os.path.join(tmp, "dense.json"), {
        "schema": "attn-policy/v1", "name": "dense-baseline",
        "policies": {"full": {"storage": {"kind": "full"}}}, "assignment": {"default": "full"}})
    # DuoAttention's shape on TinyStories' 2 layers x 4 KV heads: three full heads, the other
    # five a sink/window ring.
    write_json(os.path.join(tmp, "duo-heads.json"), {"0": [1, 3], "1": [0]})
    ring = {"storage": {"kind": "ring", "sink": 4, "window": 16}, "decode": {"mode": "retained"},
            "prefill": {"mode": "retained", "first_chunk_dense": True}}
    files["duo"] = write_json(os.path.join(tmp, "duo.json"), {
        "schema": "attn-policy/v1", "name": "duo-ring16",
        "policies": {"streaming": ring, "retrieval": {"storage": {"kind": "full"}}},
        "assignment": {"default": "streaming",
                       "head_list": {"format": "razor_json", "path": "duo-heads.json", "policy": "retrieval"}}})
    files["big_pages"] = write_json(os.path.join(tmp, "big-pages.json"), {
        "schema": "attn-policy/v1", "name": "big-pages", "kv_cache": {"page_size": 32},
        "policies": {"full": {"storage": {"kind": "full"}}}, "assignment": {"default": "full"}})
    files["arms"] = write_json(os.path.join(tmp, "arms.json"), {
        "schema": "headwise-arms/v1", "allow_override": True,
        "arms": [{"name": "dense", "attention_policy": "dense.json", "weight": 1},
                 {"name": "duo", "attention_policy": "duo.json", "weight": 1}]})
    # No overrides; the first arm runs the model's own policy (none: dense attention, no file).
    files["arms_fixed"] = write_json(os.path.join(tmp, "arms-fixed.json"), {
        "schema": "headwise-arms/v1",
        "arms": [{"name": "base", "attention_policy": None, "weight": 3},
                 {"name": "duo", "attention_policy": "duo.json"}]})
    files["arms_bad_weight"] = write_json(os.path.join(tmp, "arms-bad-weight.json"), {
        "schema": "headwise-arms/v1",
        "arms": [{"name": "dense", "attention_policy": "dense.json"},
                 {"name": "duo", "attention_policy": "duo.json", "weight": -1}]})
    files["arms_unknown_field"] = write_json(os.path.join(tmp, "arms-unknown-field.json"), {
        "schema": "headwise-arms/v1", "arms": [{"name": "dense", "policy": "dense.json"}]})
    files["arms_not_json"] = os.path.join(tmp, "arms-not-json.json")
    with open(files["arms_not_json"], "w") as f:
        f.write('{"schema": "headwise-arms/v1", "arms": [')
    # StreamingLLM (every head a re-indexed ring) runs past the model's 512 positions; dense
    # attention does not. 4 + 60 + a 64-token step fit 512.
    files["streaming"] = write_json(os.path.join(tmp, "streaming.json"), {
        "schema": "attn-policy/v1", "name": "streaming-64",
        "policies": {"streaming": dict(ring, storage={"kind": "ring", "sink": 4, "window": 60}, positions="reindex")},
        "assignment": {"default": "streaming"}})
    files["arms_lengths"] = write_json(os.path.join(tmp, "arms-lengths.json"), {
        "schema": "headwise-arms/v1", "allow_override": True,
        "arms": [{"name": "dense", "attention_policy": "dense.json"},
                 {"name": "streaming", "attention_policy": "streaming.json"}]})
    files["arms_big_pages"] = write_json(os.path.join(tmp, "arms-big-pages.json"), {
        "schema": "headwise-arms/v1",
        "arms": [{"name": "dense", "attention_policy": "dense.json"},
                 {"name": "wide-pages", "attention_policy": "big-pages.json"}]})
    return files


# ---- One request, whatever its shape: (arm from the header, "headwise" object, usage, text) ----

def generate(client, i, key=None, header_key=None, arm=None, max_tokens=3, prompt=None, temperature=1.0):
    """Request shape i % 4: completion, chat, streamed completion, streamed chat."""
    kind = i % 4
    extra_body = {"ignore_eos": True}
    if arm is not None:
        extra_body["headwise"] = {"arm": arm}
    kw = dict(model=NAME, max_tokens=max_tokens, temperature=temperature, extra_body=extra_body)
    if key is not None:
        kw["user"] = key
    if header_key is not None:
        kw["extra_headers"] = {"X-Headwise-Arm-Key": header_key}
    text_prompt = prompt or f"Once upon a time, there was a cat number {i} who"
    messages = [{"role": "user", "content": text_prompt}]
    if kind == 0:
        raw = client.completions.with_raw_response.create(prompt=text_prompt, **kw)
        r = raw.parse()
        return raw.headers.get("x-headwise-arm"), r.model_extra["headwise"], r.usage, r.choices[0].text
    if kind == 1:
        raw = client.chat.completions.with_raw_response.create(messages=messages, **kw)
        r = raw.parse()
        return raw.headers.get("x-headwise-arm"), r.model_extra["headwise"], r.usage, r.choices[0].message.content
    stream_kw = dict(kw, stream=True, stream_options={"include_usage": True})
    if kind == 2:
        raw = client.completions.with_raw_response.create(prompt=text_prompt, **stream_kw)
    else:
        raw = client.chat.completions.with_raw_response.create(messages=messages, **stream_kw)
    chunks = list(raw.parse())
    parts, finishing, usage = [], [], None
    for c in chunks:
        for ch in c.choices:
            parts.append(ch.text if kind == 2 else (ch.delta.content or ""))
            if ch.finish_reason:
                finishing.append(c)
        if c.usage is not None:
            usage = c.usage
    # The finishing chunk and the usage chunk (the last) both disclose the arm.
    assert len(finishing) == 1 and usage is not None, chunks
    told = finishing[0].model_extra["headwise"]
    assert chunks[-1].model_extra["headwise"] == told, chunks[-1]
    assert all("headwise" not in (c.model_extra or {}) for c in chunks if c is not finishing[0] and c is not chunks[-1]), chunks
    return raw.headers.get("x-headwise-arm"), told, usage, "".join(parts)


def check_disclosed(header_arm, told, arms):
    """The header and the "headwise" object agree and name a listed arm with its policy."""
    assert set(told) == {"arm", "attention_policy", "policy_hash"}, told
    assert header_arm == told["arm"], (header_arm, told)
    listed = arms[told["arm"]]
    assert told["attention_policy"] == listed["attention_policy"], (told, listed)
    assert told["policy_hash"] == listed["policy_hash"], (told, listed)
    return told["arm"]


def list_arms(srv, headers=None):
    status, _, data = srv.request("GET", "/v1/arms", headers=headers)
    assert status == 200, (status, data)
    body = parse_json(data)
    assert body["object"] == "list" and isinstance(body["data"], list), body
    return body


def arms_by_name(body):
    return {a["name"]: a for a in body["data"]}


# ---- The two-arm server with overrides ----

def test_arms_listed(srv, files, state):
    body = list_arms(srv)
    assert body["allow_override"] is True, body
    assert [a["name"] for a in body["data"]] == ["dense", "duo"], body
    for a in body["data"]:
        assert set(a) == {"name", "attention_policy", "policy_path", "policy_hash", "weight"}, a
        assert a["weight"] == 1, a
    dense, duo = body["data"]
    assert dense["attention_policy"] == "dense-baseline" and duo["attention_policy"] == "duo-ring16", body
    # The hash is FNV-1a 64 of the file's bytes: the exact file that produced a result.
    assert dense["policy_hash"] == fnv1a64(files["dense"]), (dense, fnv1a64(files["dense"]))
    assert duo["policy_hash"] == fnv1a64(files["duo"]), (duo, fnv1a64(files["duo"]))
    assert dense["policy_hash"] != duo["policy_hash"], body
    assert os.path.samefile(dense["policy_path"], files["dense"]), dense
    assert os.path.samefile(duo["policy_path"], files["duo"]), duo
    assert list_arms(srv) == body, "the listing is stable"
    state["arms"] = arms_by_name(body)


def run_parallel(srv, fn, items, workers=WORKERS):
    """fn(client, item) for every item on `workers` threads, each with its own client of `srv`;
    the results in order, or the first exception raised."""
    results, errors = [None] * len(items), []
    lock = threading.Lock()
    next_index = [0]

    def worker(client):
        while True:
            with lock:
                if next_index[0] >= len(items) or errors:
                    return
                i = next_index[0]
                next_index[0] += 1
            try:
                results[i] = fn(client, items[i])
            except Exception as e:  # noqa: BLE001 - re-raised below
                with lock:
                    errors.append(e)

    threads = [threading.Thread(target=worker, args=(srv.client(),)) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "requests did not finish in time"
    if errors:
        raise errors[0]
    return results


def test_split_by_key(srv, state):
    """200 distinct keys: the split is within the binomial 99.9% interval; the per-arm metrics
    move by exactly the responses' counts and usage."""
    arms = state["arms"]
    before = srv.metrics()
    keys = [f"user-{i:04d}" for i in range(NUM_KEYED)]

    def one(client, i):
        header_arm, told, usage, _ = generate(client, i, key=keys[i])
        return check_disclosed(header_arm, told, arms), usage

    start = time.monotonic()
    results = run_parallel(srv, one, list(range(NUM_KEYED)))
    elapsed = time.monotonic() - start
    state["key_arm"] = {keys[i]: arm for i, (arm, _) in enumerate(results)}
    counts = {name: 0 for name in arms}
    prompt_tokens = {name: 0 for name in arms}
    completion_tokens = {name: 0 for name in arms}
    for arm, usage in results:
        counts[arm] += 1
        prompt_tokens[arm] += usage.prompt_tokens
        completion_tokens[arm] += usage.completion_tokens
    k = counts["dense"]
    bound = 3.29 * math.sqrt(NUM_KEYED * 0.25)
    print(f"  {NUM_KEYED} keyed requests in {elapsed:.1f} s: {counts} (|k - 100| <= {bound:.1f})")
    assert abs(k - NUM_KEYED / 2) <= bound, counts
    assert sum(counts.values()) == NUM_KEYED, counts

    # The engine counts a request's tokens when it finishes, which the response follows.
    def delta(samples, name, **labels):
        return metric_value(samples, name, **labels) - metric_value(before, name, **labels)

    deadline = time.monotonic() + 5
    while True:
        after = srv.metrics()
        got = {arm: (delta(after, "headwise_arm_requests_total", arm=arm),
                     delta(after, "headwise_arm_request_finished_total", arm=arm),
                     delta(after, "headwise_arm_request_finished_total", arm=arm, finish_reason="length"),
                     delta(after, "headwise_arm_prompt_tokens_total", arm=arm),
                     delta(after, "headwise_arm_generation_tokens_total", arm=arm),
                     delta(after, "headwise_arm_e2e_request_latency_seconds_count", arm=arm))
               for arm in arms}
        want = {arm: (counts[arm], counts[arm], counts[arm], prompt_tokens[arm], completion_tokens[arm],
                      counts[arm])
                for arm in arms}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == want, (got, want)
    assert all(c == 3 * counts[arm] for arm, c in completion_tokens.items()), completion_tokens
    # The server's own counter carries the arm too.
    for arm in arms:
        assert delta(after, "headwise_api_requests_total", arm=arm) == counts[arm], arm


def test_metrics_sum_to_totals(srv, state):
    samples = srv.metrics()
    arms = list(state["arms"])
    for arm_name, total in [("headwise_arm_prompt_tokens_total", "headwise_prompt_tokens_total"),
                            ("headwise_arm_generation_tokens_total", "headwise_generation_tokens_total"),
                            ("headwise_arm_request_finished_total", "headwise_request_finished_total"),
                            ("headwise_arm_preemptions_total", "headwise_preemptions_total"),
                            ("headwise_arm_kv_pages_used", "headwise_kv_pages_used"),
                            ("headwise_arm_e2e_request_latency_seconds_count",
                             "headwise_e2e_request_latency_seconds_count"),
                            ("headwise_arm_time_to_first_token_seconds_count",
                             "headwise_time_to_first_token_seconds_count")]:
        parts = [metric_value(samples, arm_name, arm=a) for a in arms]
        assert sum(parts) == metric_value(samples, total), (arm_name, parts, metric_value(samples, total))
    for reason in ("length", "stop"):
        parts = [metric_value(samples, "headwise_arm_request_finished_total", arm=a, finish_reason=reason)
                 for a in arms]
        assert sum(parts) == metric_value(samples, "headwise_request_finished_total", finish_reason=reason), reason
    # Every request is accepted on an arm and has finished.
    accepted = sum(metric_value(samples, "headwise_arm_requests_total", arm=a) for a in arms)
    assert accepted == metric_value(samples, "headwise_request_finished_total") > 0, accepted
    per_arm = [metric_value(samples, "headwise_arm_requests_total", arm=a) for a in arms]
    assert all(n > 0 for n in per_arm), per_arm


def test_same_key_same_arm(srv, state):
    """Repeated keys keep their arm: as `user`, as the header alone, and the header wins over a
    `user` that maps to the other arm."""
    arms, key_arm = state["arms"], state["key_arm"]
    by_arm = {a: [k for k, v in sorted(key_arm.items()) if v == a] for a in arms}
    repeats = sorted(key_arm)[:24]
    # (i, user, header, expected arm)
    cases = [(i, k, None, key_arm[k]) for i, k in enumerate(repeats)]
    cases += [(i, None, k, key_arm[k]) for i, k in enumerate(repeats[:12])]
    for i, (a, b) in enumerate(zip(by_arm["dense"][:4], by_arm["duo"][:4])):
        cases += [(i, a, b, "duo"), (i + 1, b, a, "dense")]

    def one(client, case):
        i, user, header, want = case
        header_arm, told, _, _ = generate(client, i, key=user, header_key=header)
        got = check_disclosed(header_arm, told, arms)
        assert got == want, (case, got)

    run_parallel(srv, one, cases)


def test_override(srv, state):
    """headwise.arm forces the arm whatever the key says, in every request shape; n > 1 runs all
    choices on it."""
    arms, key_arm = state["arms"], state["key_arm"]
    client = srv.client()
    for i, (key, arm) in enumerate(sorted(key_arm.items())[:8]):
        other = "duo" if arm == "dense" else "dense"
        header_arm, told, _, _ = generate(client, i, key=key, arm=other)
        assert check_disclosed(header_arm, told, arms) == other, (key, arm, told)
        header_arm, told, _, _ = generate(client, i, header_key=key, arm=arm)
        assert check_disclosed(header_arm, told, arms) == arm, (key, arm, told)
    raw = client.completions.with_raw_response.create(model=NAME, prompt=["Once", "One day"], n=3, max_tokens=2,
                                                      user="user-0000", extra_body={"headwise": {"arm": "duo"}})
    r = raw.parse()
    assert len(r.choices) == 6 and raw.headers["x-headwise-arm"] == "duo", r
    assert r.model_extra["headwise"]["arm"] == "duo", r.model_extra


def test_refused_overrides(srv, state):
    """An unknown arm, or a malformed "headwise" object, is a 400 naming the field."""
    for body_extra, param, says in [
        ({"headwise": {"arm": "sparse"}}, "headwise.arm", "no arm named \"sparse\""),
        ({"headwise": {"arm": "DENSE"}}, "headwise.arm", "no arm named"),
        ({"headwise": {"arm": 1}}, "headwise.arm", "must be a string"),
        ({"headwise": {"foo": "dense"}}, "headwise.foo", "unknown parameter 'headwise.foo'"),
        ({"headwise": {"arm": "dense", "policy": "x"}}, "headwise.policy", "unknown"),
        ({"headwise": "dense"}, "headwise", "must be an object"),
        ({"user": 7}, "user", "must be a string"),
    ]:
        for path, body in [("/v1/completions", {"model": NAME, "prompt": "Once", "max_tokens": 2}),
                           ("/v1/chat/completions",
                            {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})]:
            for stream in (False, True):
                status, headers, data = srv.request("POST", path, dict(body, stream=stream, **body_extra))
                assert status == 400, (path, body_extra, status, data)
                err = check_error_shape(parse_json(data))
                assert err["param"] == param and says in err["message"], (body_extra, err)
                assert "x-headwise-arm" not in headers, headers


def test_unkeyed_spread(srv, state):
    """Requests without a key are spread over the arms by weight."""
    arms = state["arms"]

    def one(client, i):
        header_arm, told, _, _ = generate(client, i)
        return check_disclosed(header_arm, told, arms)

    got = run_parallel(srv, one, list(range(16)))
    assert set(got) == set(arms), got
    assert abs(got.count("dense") - 8) <= 2, got


GREEDY_PROMPTS = [STORY, STORY[:160] + " One day", "The dog ran to the park. " * 6 + "Then",
                  "Tom had a red ball. " * 8 + "He"]
GREEDY_TOKENS = 40


def test_greedy_mixed(srv, state):
    """Each prompt under each arm, all at once (the arms share the engine's batches); kept for
    the comparison with one-arm servers. Prompt j goes in request shape j % 4 under both arms
    (completion, chat, and both streamed), so the arms' texts are comparable."""
    items = [(j, p, a) for a in ("dense", "duo") for j, p in enumerate(GREEDY_PROMPTS)]

    def one(client, item):
        j, prompt, arm = item
        header_arm, told, _, text = generate(client, j, arm=arm, max_tokens=GREEDY_TOKENS, prompt=prompt,
                                             temperature=0)
        assert header_arm == arm and told["arm"] == arm, (header_arm, told, arm)
        return text

    texts = run_parallel(srv, one, items, workers=len(items))
    state["greedy"] = {(a, p): t for (_, p, a), t in zip(items, texts)}
    assert all(state["greedy"].values()), state["greedy"]
    differ = [p for p in GREEDY_PROMPTS if state["greedy"][("dense", p)] != state["greedy"][("duo", p)]]
    # A ring arm silently served as dense (or the other way) would make every text equal.
    assert differ, "the two arms gave the same greedy text for every prompt"
    print(f"  greedy texts differ between the arms for {len(differ)} of {len(GREEDY_PROMPTS)} prompts")


def test_alone_equals_arm(files, state, arm):
    """A one-arm server running the arm's policy alone gives the same greedy texts."""
    with Server("--served-model-name", NAME, "--threads", "2", "--attention-policy", files[arm]) as alone:
        body = list_arms(alone)
        assert body["allow_override"] is False, body
        assert len(body["data"]) == 1, body
        only = body["data"][0]
        assert only["weight"] == 1 and only["policy_hash"] == state["arms"][arm]["policy_hash"], (only, state["arms"])
        assert only["name"] == only["attention_policy"] == state["arms"][arm]["attention_policy"], only
        texts = []
        client = alone.client()
        for j, p in enumerate(GREEDY_PROMPTS):  # one at a time, in the same shapes as under the arm
            header_arm, told, _, text = generate(client, j, max_tokens=GREEDY_TOKENS, prompt=p, temperature=0)
            assert header_arm == only["name"] and told["attention_policy"] == only["attention_policy"], told
            texts.append(text)
        # A one-arm server refuses to be told an arm: there is no arms file allowing it.
        status, body = alone.post("/v1/completions", {"model": NAME, "prompt": "Once", "max_tokens": 2,
                                                      "headwise": {"arm": only["name"]}})
        assert status == 400 and check_error_shape(body)["param"] == "headwise.arm", body
    for p, text in zip(GREEDY_PROMPTS, texts):
        assert text == state["greedy"][(arm, p)], (arm, p[:40], text, state["greedy"][(arm, p)])


# ---- The two-arm server without overrides, behind an API key ----

def test_fixed_arms(srv, files):
    auth = {"Authorization": "Bearer sekrit"}
    status, _, data = srv.request("GET", "/v1/arms")
    assert status == 401, (status, data)
    body = list_arms(srv, headers=auth)
    assert body["allow_override"] is False, body
    base, duo = body["data"]
    assert base["name"] == "base" and base["weight"] == 3 and duo["weight"] == 1, body
    # The model's own policy: TinyStories has none, so dense attention without a file.
    assert base["policy_path"] is None and base["policy_hash"] == "none", base
    assert duo["policy_hash"] == fnv1a64(files["duo"]), duo
    client = srv.client(api_key="sekrit")
    arms = arms_by_name(body)
    for i in range(4):
        header_arm, told, _, _ = generate(client, i, key="someone")
        check_disclosed(header_arm, told, arms)
    for arm in ("duo", "base", "nope"):
        for path, body in [("/v1/completions", {"model": NAME, "prompt": "Once", "max_tokens": 2}),
                           ("/v1/chat/completions",
                            {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})]:
            status, _, data = srv.request("POST", path, dict(body, user="someone", headwise={"arm": arm}),
                                          headers=auth)
            assert status == 400, (arm, status, data)
            err = check_error_shape(parse_json(data))
            assert err["param"] == "headwise.arm" and "does not allow" in err["message"], err


# ---- Lengths are the arm's ----

def test_per_arm_limits(srv):
    """A request longer than the context is served on the re-indexed ring arm and refused on
    the dense one, in the engine's words for that arm."""
    client = srv.client()
    for i in range(2):  # a completion, then a chat
        header_arm, told, usage, _ = generate(client, i, arm="streaming", max_tokens=600, prompt=STORY)
        assert header_arm == told["arm"] == "streaming", told
        assert usage.completion_tokens == 600 and usage.prompt_tokens + 600 > 512, usage
    for path, body in [("/v1/completions", {"model": NAME, "prompt": STORY}),
                       ("/v1/chat/completions", {"model": NAME, "messages": [{"role": "user", "content": STORY}]})]:
        status, reply = srv.post(path, dict(body, max_tokens=600, headwise={"arm": "dense"}))
        assert status == 400 and "maximum context length is 512" in reply["error"]["message"], (status, reply)
        # The same request on the ring arm is accepted.
        status, reply = srv.post(path, dict(body, max_tokens=600, ignore_eos=True, headwise={"arm": "streaming"}))
        assert status == 200 and reply["usage"]["completion_tokens"] == 600, (status, str(reply)[:300])


# ---- Startup ----

def startup_error(args, *expect):
    binary = os.environ["HEADWISE_BIN"]
    p = subprocess.run([binary, "serve", TINY, "--port", "0", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, (p.returncode, p.stderr)
    errors = [line for line in p.stderr.strip().splitlines() if line.startswith("headwise: error:")]
    assert len(errors) == 1 and all(e in errors[0] for e in expect), (expect, p.stderr)
    assert "listening" not in p.stdout


def test_startup_errors(files):
    startup_error(["--arms", files["arms"], "--attention-policy", files["dense"]], "--arms", "--attention-policy")
    startup_error(["--attention-policy", files["dense"], "--arms", files["arms"]], "--arms", "--attention-policy")
    startup_error(["--arms", files["arms_bad_weight"]], "--arms", files["arms_bad_weight"], "arms[1].weight")
    startup_error(["--arms", files["arms_unknown_field"]], "--arms", files["arms_unknown_field"], "arms[0].policy")
    startup_error(["--arms", files["arms_not_json"]], "--arms", files["arms_not_json"])
    missing = os.path.join(os.path.dirname(files["arms"]), "no-such-arms.json")
    startup_error(["--arms", missing], "--arms", missing)
    startup_error(["--arms", files["arms_big_pages"]], "--arms", 'arm "wide-pages"', "page_size 32")


def main():
    runner = Runner()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(tmp)
        state = {}
        with Server("--served-model-name", NAME, "--threads", "2", "--arms", files["arms"]) as srv:
            runner.run("arms_listed", test_arms_listed, srv, files, state)
            runner.run("split_by_key", test_split_by_key, srv, state)
            runner.run("same_key_same_arm", test_same_key_same_arm, srv, state)
            runner.run("override", test_override, srv, state)
            runner.run("refused_overrides", test_refused_overrides, srv, state)
            runner.run("unkeyed_spread", test_unkeyed_spread, srv, state)
            runner.run("greedy_mixed", test_greedy_mixed, srv, state)
            runner.run("metrics_sum_to_totals", test_metrics_sum_to_totals, srv, state)
        for arm in ("dense", "duo"):
            runner.run(f"alone_equals_arm.{arm}", test_alone_equals_arm, files, state, arm)
        with Server("--served-model-name", NAME, "--threads", "2", "--arms", files["arms_fixed"],
                    "--api-key", "sekrit") as srv:
            runner.run("fixed_arms", test_fixed_arms, srv, files)
        with Server("--served-model-name", NAME, "--threads", "2", "--arms", files["arms_lengths"],
                    "--max-num-batched-tokens", "64") as srv:
            runner.run("per_arm_limits", test_per_arm_limits, srv)
        runner.run("startup_errors", test_startup_errors, files)
    runner.finish()


if __name__ == "__main__":
    main()
