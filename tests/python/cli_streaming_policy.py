"""`headwise generate` with StreamingLLM policies (every head a sink/window ring with positions
re-indexed inside the cache) on TinyStories (512 positions), on the CPU backend.

- A window covering every position: ranks equal positions, so the greedy text equals the dense
  text exactly.
- A small window: the text differs (a policy silently served as dense, or with original
  positions, would fail here) and every logprob stays finite.
- Past the model's context: a re-indexed all-ring policy generates beyond 512 positions with
  finite logprobs; the same rings with original positions, dense attention, and a re-indexed
  ring whose sink + window + prefill chunk exceeds the context are refused; the OpenAI server
  accepts such a request with the re-indexed policy and refuses it with original positions."""

import json
import math
import os
import subprocess
import sys
import tempfile

SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(os.environ["HEADWISE_SOURCE_DIR"], "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")  # 2 layers, 4 KV heads, 512 positions
PROMPT = "Once upon a time, there was a little girl named Lily. She liked to play in the park. " * 5


def generate(policy, max_tokens, chunk=16, logprobs=False):
    cmd = [os.environ["HEADWISE_BIN"], "generate", "--model", TINY, "--prompt", PROMPT, "--max-tokens",
           str(max_tokens), "--prefill-chunk", str(chunk), "--device", "cpu", "--ignore-eos"]
    if policy:
        cmd += ["--attention-policy", policy]
    if logprobs:
        cmd += ["--logprobs", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout, r.stderr


def logprobs_of(stderr):
    return [float(line.split()[3]) for line in stderr.splitlines() if line.startswith("token ")]


def write_policy(tmp, name, window, positions="reindex"):
    ring = {"storage": {"kind": "ring", "sink": 4, "window": window}, "positions": positions,
            "decode": {"mode": "retained"}, "prefill": {"mode": "retained", "first_chunk_dense": True}}
    path = os.path.join(tmp, f"{name}.json")
    json.dump({"schema": "attn-policy/v1", "name": name, "policies": {"streaming": ring},
               "assignment": {"default": "streaming"}}, open(path, "w"))
    return path


failures = []


def check(name, ok, detail):
    print(f"{name}: {'ok' if ok else 'FAIL'} ({detail})")
    if not ok:
        failures.append(f"{name}: {detail}")


with tempfile.TemporaryDirectory() as tmp:
    rc, dense, err = generate(None, 300)
    check("dense", rc == 0 and dense.strip(), f"exit {rc}")

    rc, out, err = generate(write_policy(tmp, "wide", 496), 300)
    check("wide window equals dense", rc == 0 and out == dense, f"exit {rc}, {len(out)} chars")

    rc, out, err = generate(write_policy(tmp, "narrow", 24), 300, logprobs=True)
    lps = logprobs_of(err)
    check("narrow window differs, finite", rc == 0 and out.strip() and out != dense and len(lps) == 300
          and all(math.isfinite(x) for x in lps), f"exit {rc}, {len(lps)} logprobs, "
          f"{'equal to' if out == dense else 'differs from'} dense")

    rc, orig, err = generate(write_policy(tmp, "narrow-original", 24, "original"), 300)
    check("re-indexed differs from original positions", rc == 0 and orig.strip() and orig != out,
          f"exit {rc}")

    # ~50 prompt tokens + 1200 generated: well past the 512 positions of the model.
    rc, out, err = generate(write_policy(tmp, "long", 60), 1200, logprobs=True)
    lps = logprobs_of(err)
    check("past the context", rc == 0 and len(lps) == 1200 and all(math.isfinite(x) for x in lps)
          and "finish: length" in err, f"exit {rc}, {len(lps)} logprobs, "
          f"mean {sum(lps) / max(len(lps), 1):.3f}; stderr tail {err.strip()[-120:]}")

    for name, policy, chunk, want in [
            ("original positions refused", write_policy(tmp, "orig", 60, "original"), 16, "context of 512"),
            ("dense refused", None, 16, "context of 512"),
            ("ranks beyond the context refused", write_policy(tmp, "big", 500), 16, "could reach")]:
        rc, out, err = generate(policy, 1200, chunk)
        check(name, rc == 2 and want in err, f"exit {rc}: {err.strip()}")

    # The OpenAI server takes the engine's limit: past max_model_len with the re-indexed rings
    # (4 + 60 + a 64-token step fit 512), the context without them.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from server_util import Server
    body = {"model": "m", "prompt": PROMPT, "max_tokens": 800, "ignore_eos": True}
    for name, policy, want in [("server past the context", write_policy(tmp, "srv", 60), 200),
                               ("server original positions capped", write_policy(tmp, "srv-orig", 60,
                                                                                 "original"), 400)]:
        with Server("--attention-policy", policy, "--max-num-batched-tokens", "64",
                    "--max-num-seqs", "2", "--served-model-name", "m") as srv:
            status, reply = srv.post("/v1/completions", body, timeout=300)
            ok = status == want
            if want == 200:
                ok = ok and reply["usage"]["completion_tokens"] == 800
            else:
                ok = ok and "maximum context length is 512" in reply["error"]["message"]
            check(name, ok, f"status {status}: {str(reply)[:200]}")

for f in failures:
    print("FAIL:", f)
print(f"{10 - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
