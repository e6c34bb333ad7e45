"""`headwise eval` end to end on the CPU backend.

  smollm2        SmolLM2-135M-Instruct, two tiny tasks at 320 tokens, dense and a small ring
                 policy as A/B arms of one engine: PREFIX.json and PREFIX.md are written and
                 well-formed, the prompts hash is printed, and a second run (dense alone) has the
                 same prompts and the same dense answers; merging a run with itself is refused.
  qwen_passkey   Qwen2.5-Coder-0.5B-Instruct (HEADWISE_QWEN05_GGUF): a 2K-token passkey
                 (niah_single), 2 samples, answered correctly under dense attention.
  errors         bad command lines are refused with one line on stderr (exit 2), no model needed.

A model that is needed and missing fails the case, never skips it. The haystack comes from
$HEADWISE_HAYSTACK, else scripts/make-haystack.sh (cached)."""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.environ["HEADWISE_SOURCE_DIR"]
BIN = os.environ["HEADWISE_BIN"]
CACHE = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def fail(msg):
    print(f"FAIL: {msg}")
    print("0 passed, 1 failed")
    sys.exit(1)


def model(env, default, hint):
    path = os.environ.get(env) or default
    if not path or not os.path.exists(path):
        fail(f"{env} is not set and {default} does not exist: {hint}")
    return path


def haystack():
    path = os.environ.get("HEADWISE_HAYSTACK")
    if path:
        return path
    r = subprocess.run([os.path.join(ROOT, "scripts/make-haystack.sh")], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        fail(f"scripts/make-haystack.sh: {r.stderr.strip()}")
    return r.stdout.strip()


def run_eval(args, timeout):
    r = subprocess.run([BIN, "eval"] + args, capture_output=True, text=True, timeout=timeout)
    print(f"$ headwise eval {' '.join(args)}\n-> exit {r.returncode}\n{r.stdout}{r.stderr[-3000:]}")
    return r


def check_results(prefix, policies, tasks, lengths, samples):
    j = json.load(open(prefix + ".json"))
    md = open(prefix + ".md").read()
    assert j["schema"] == "headwise-eval/v1", j.get("schema")
    assert [p["name"] for p in j["policies"]] == policies
    assert len(j["cells"]) == len(policies) * len(tasks) * len(lengths), len(j["cells"])
    assert len(j["samples"]) == len(tasks) * len(lengths) * samples
    for c in j["cells"]:
        assert c["n"] == samples and 0 <= c["correct"] <= c["n"], c
        assert 0 <= c["ci"][0] <= c["accuracy"] <= c["ci"][1] <= 1, c
    for s in j["samples"]:
        assert s["prompt_tokens"] <= s["length"], s
        assert len(s["outcomes"]) == len(policies)
        for o in s["outcomes"]:
            assert o["found"] <= o["expected"] == len(s["expected"]), o
            assert o["finish_reason"] in ("stop", "length"), o
    for p in j["policies"]:
        assert p["kv_bytes"] and all(k["bytes_held"] > 0 for k in p["kv_bytes"]), p
        assert p["loglik"] and all(b["mean_logprob"] < 0 for b in p["loglik"]), p
        assert p["wall_s"] > 0 and p["generated_tokens"] > 0, p
    assert "## Accuracy" in md and "## Policies" in md and "## Log-likelihood" in md, md[:500]
    for task in tasks:
        assert f"| {task} | {lengths[0]} | {samples} |" in md, task
    return j


def smollm2():
    gguf = model("HEADWISE_SMOLLM2_GGUF",
                 os.path.join(CACHE, "headwise/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
                 "run scripts/get-model.sh smollm2-135m-instruct (scripts/test.sh does)")
    hay = haystack()
    with tempfile.TemporaryDirectory() as tmp:
        # Every head a re-indexed ring of 4 sink + 60 recent tokens; prompts prefill in chunks of
        # 128, so the ring drops keys in the prefill too.
        ring = os.path.join(tmp, "ring.json")
        json.dump({"schema": "attn-policy/v1", "name": "ring-64",
                   "kv_cache": {"page_size": 16},
                   "policies": {"streaming": {"storage": {"kind": "ring", "sink": 4, "window": 60},
                                              "positions": "reindex",
                                              "decode": {"mode": "retained"},
                                              "prefill": {"mode": "retained",
                                                          "first_chunk_dense": True}}},
                   "assignment": {"default": "streaming"}}, open(ring, "w"))
        common = [gguf, "--tasks", "niah_single,niah_multikey", "--lengths", "320", "--samples",
                  "2", "--depths", "0,1", "--haystack", hay, "--max-model-len", "512",
                  "--max-num-batched-tokens", "128", "--max-num-seqs", "4", "--loglik-tokens",
                  "128", "--loglik-bucket", "32", "--seed", "5", "--commit", "test"]
        a = os.path.join(tmp, "a")
        r = run_eval(common + ["--policies", f"dense,ring={ring}", "--warmup", "1", "--out", a], 900)
        assert r.returncode == 0, "first run failed"
        ja = check_results(a, ["dense", "ring"], ["niah_single", "niah_multikey"], [320], 2)
        assert ja["header"]["commit"] == "test"
        assert ja["header"]["warmup"] == 1, ja["header"]
        assert "after 1 untimed warm-up requests" in open(a + ".md").read()
        ring_kv = ja["policies"][1]["kv_bytes"][0]
        assert ring_kv["retained_vs_first"] < 0.5, ring_kv
        hash_line = [l for l in r.stdout.splitlines() if l.startswith("prompts hash: ")]
        assert hash_line and hash_line[0].split(": ")[1] == ja["header"]["prompts_hash"], hash_line

        b = os.path.join(tmp, "b")
        r = run_eval(common + ["--policies", "dense", "--warmup", "0", "--out", b], 900)
        assert r.returncode == 0, "second run failed"
        jb = check_results(b, ["dense"], ["niah_single", "niah_multikey"], [320], 2)
        assert jb["header"]["prompts_hash"] == ja["header"]["prompts_hash"]
        da = [s["outcomes"][0]["answer"] for s in ja["samples"]]
        db = [s["outcomes"][0]["answer"] for s in jb["samples"]]
        assert da == db, f"dense answers differ between runs:\n{da}\n{db}"
        # SmolLM2 finds a passkey at 320 tokens under dense attention.
        assert ja["cells"][0]["correct"] >= 1, ja["cells"][0]

        r = run_eval(["--merge", f"{a}.json,{a}.json", "--out", os.path.join(tmp, "m")], 60)
        assert r.returncode == 2 and "in two runs" in r.stderr, r.stderr


def qwen_passkey():
    gguf = model("HEADWISE_QWEN05_GGUF",
                 os.path.join(CACHE, "headwise/models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
                 "run scripts/get-model.sh qwen2.5-coder-0.5b-instruct (scripts/test.sh does)")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "q")
        r = run_eval([gguf, "--tasks", "niah_single", "--lengths", "2048", "--samples", "2",
                      "--depths", "0.3,0.7", "--haystack", haystack(), "--max-model-len", "2048",
                      "--max-new-tokens", "12", "--loglik-tokens", "0", "--policies", "dense",
                      "--warmup", "0", "--out", out], 1500)
        assert r.returncode == 0, "run failed"
        j = json.load(open(out + ".json"))
        cell = j["cells"][0]
        assert cell["n"] == 2 and cell["correct"] == 2, (cell, [s["outcomes"] for s in j["samples"]])
        assert all(1900 <= s["prompt_tokens"] <= 2036 for s in j["samples"]), j["samples"]


def errors():
    cases = [
        (["m.gguf", "--tasks", "niah_single"], "--out PREFIX is required"),
        (["m.gguf", "--tasks", "nope", "--out", "/tmp/x"], "unknown task 'nope'"),
        (["m.gguf", "--policies", "a", "--arms", "f.json", "--out", "/tmp/x"], "exclude each other"),
        (["m.gguf", "--depths", "0,2", "--out", "/tmp/x"], "--depths takes values in [0, 1]"),
        (["m.gguf", "--samples", "0", "--out", "/tmp/x"], "--samples must be >= 1"),
        (["m.gguf", "--warmup", "-1", "--out", "/tmp/x"], "--warmup must be >= 0"),
        (["m.gguf", "--bogus", "--out", "/tmp/x"], "unknown flag --bogus"),
    ]
    for args, want in cases:
        r = run_eval(args, 60)
        assert r.returncode == 2 and want in r.stderr, (args, r.stderr)


CASES = {"smollm2": smollm2, "qwen_passkey": qwen_passkey, "errors": errors}
if len(sys.argv) != 2 or sys.argv[1] not in CASES:
    sys.exit(f"usage: eval_cli.py {'|'.join(CASES)}")
try:
    CASES[sys.argv[1]]()
except AssertionError as e:
    fail(f"{sys.argv[1]}: {e}")
print("1 passed, 0 failed")
