"""`headwise generate` with sink/window (ring) policies on TinyStories, on the CPU backend: a
DuoAttention-style mix of full and ring KV heads, prefilled in chunks; and RazorAttention's
compress-once heads (full and compress_once, compacted after the prompt).

A policy must change the output exactly when it drops something: with a window covering every
position the greedy text equals the dense text; with a small window it differs (a policy that
were silently served as dense would fail here), and the run still finishes cleanly, also with
every head a ring."""

import json
import os
import subprocess
import sys
import tempfile

SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(os.environ["HEADWISE_SOURCE_DIR"], "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")  # 2 layers, 4 KV heads, 512 positions
PROMPT = "Once upon a time, there was a little girl named Lily. She liked to play in the park. " * 5
MAX_TOKENS = 300


def generate(policy=None):
    cmd = [os.environ["HEADWISE_BIN"], "generate", "--model", TINY, "--prompt", PROMPT,
           "--max-tokens", str(MAX_TOKENS), "--prefill-chunk", "16", "--device", "cpu"]
    if policy:
        cmd += ["--attention-policy", policy]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def write_policy(tmp, name, window, mixed, kind="ring"):
    ring = {"storage": {"kind": "ring", "sink": 4, "window": window},
            "decode": {"mode": "retained"},
            "prefill": {"mode": "retained", "first_chunk_dense": True}}
    if kind == "compress_once":
        ring = {"storage": {"kind": "compress_once", "sink": 4, "window": window,
                            "compress": {"compensation": {"enabled": True, "weighting": "count"}}},
                "decode": {"mode": "retained"}, "prefill": {"mode": "dense"}}
    full = {"storage": {"kind": "full"}}
    assignment = {"default": "streaming"}
    if mixed:
        heads = os.path.join(tmp, f"{name}-heads.json")
        json.dump({"0": [1, 3], "1": [0]}, open(heads, "w"))  # RazorAttention's format
        assignment["head_list"] = {"format": "razor_json", "path": heads, "policy": "retrieval"}
    path = os.path.join(tmp, f"{name}.json")
    json.dump({"schema": "attn-policy/v1", "name": name,
               "policies": {"streaming": ring, "retrieval": full}, "assignment": assignment},
              open(path, "w"))
    return path


failures = []
with tempfile.TemporaryDirectory() as tmp:
    rc, dense, err = generate()
    if rc != 0 or not dense.strip():
        failures.append(f"dense run: exit {rc}: {err.strip()}")
    tokens = err.split("prompt: ")[1].split(" tokens")[0] if "prompt: " in err else "?"
    print(f"prompt {tokens} tokens, {MAX_TOKENS} generated")
    # A compress-once window covering the prompt compacts nothing: dense text exactly.
    cases = [("wide-mixed", 512, True, "equal", "ring"), ("narrow-mixed", 24, True, "differ", "ring"),
             ("narrow-all", 24, False, "differ", "ring"),
             ("razor-wide", 512, True, "equal", "compress_once"),
             ("razor-narrow", 24, True, "differ", "compress_once"),
             ("razor-narrow-all", 24, False, "differ", "compress_once")]
    for name, window, mixed, want, kind in cases:
        rc, out, err = generate(write_policy(tmp, name, window, mixed, kind))
        same = out == dense
        ok = rc == 0 and out.strip() and same == (want == "equal")
        print(f"{name}: window {window}, exit {rc}, {'equal to' if same else 'differs from'} dense: "
              f"{'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"{name}: exit {rc}, want output to {want} dense; stderr {err.strip()}")

for f in failures:
    print("FAIL:", f)
print(f"{len(cases) - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
