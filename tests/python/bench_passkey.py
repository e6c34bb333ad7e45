"""`hw_bench_passkey` on TinyStories-656K (CPU, 2 samples, 200 tokens): dense and a mixed
full/ring policy run through, every JSON line parses, each (policy, length) cell is there with
an accuracy in [0, 1] that agrees with its counts, the prompts land within a few tokens under the
length, and a policy the engine refuses (a ring asking for a dense prefill) stops the run with
the engine's error instead of running as dense.

usage: bench_passkey.py PATH_TO_hw_bench_passkey"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.environ["HEADWISE_SOURCE_DIR"]
SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(ROOT, "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")
BIN = sys.argv[1]
LENGTH = 200


def run(policies):
    cmd = [BIN, TINY, "--device", "cpu", "--lengths", str(LENGTH), "--samples", "2",
           "--prefill-chunk", "64", "--policies", ",".join(f"{n}={f}" for n, f in policies)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


failures = []
with tempfile.TemporaryDirectory() as tmp:
    heads = os.path.join(tmp, "heads.json")
    json.dump({"0": [1, 3], "1": [0]}, open(heads, "w"))
    ring = os.path.join(tmp, "ring.json")
    json.dump({"schema": "attn-policy/v1", "name": "ring-mixed",
               "policies": {"streaming": {"storage": {"kind": "ring", "sink": 4, "window": 24},
                                          "decode": {"mode": "retained"},
                                          "prefill": {"mode": "retained", "first_chunk_dense": True}},
                            "retrieval": {"storage": {"kind": "full"}}},
               "assignment": {"default": "streaming",
                              "head_list": {"format": "razor_json", "path": heads, "policy": "retrieval"}}},
              open(ring, "w"))
    dense = os.path.join(ROOT, "configs", "policies", "dense.json")
    r = run([("dense", dense), ("ring", ring)])
    if r.returncode != 0:
        failures.append(f"run exited {r.returncode}: {r.stderr.strip()}")
    lines = []
    for line in r.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            failures.append(f"not JSON: {line!r} ({e})")
    kinds = [x.get("kind") for x in lines]
    print(f"{len(lines)} lines: {kinds}")
    if kinds[:1] != ["header"]:
        failures.append("the first line is not the header")
    elif lines[0].get("prompt_form") != "raw":  # TinyStories has no chat template
        failures.append(f"prompt_form {lines[0].get('prompt_form')!r}, want 'raw'")
    cells = {x["policy"]: x for x in lines if x.get("kind") == "cell"}
    for name in ("dense", "ring"):
        c = cells.get(name)
        if c is None:
            failures.append(f"no cell for {name}")
            continue
        acc = c.get("accuracy")
        if not (isinstance(acc, (int, float)) and 0 <= acc <= 1):
            failures.append(f"{name}: accuracy {acc!r} outside [0, 1]")
        elif c.get("samples") != 2 or abs(acc - c.get("correct", -1) / 2) > 1e-6:
            failures.append(f"{name}: accuracy {acc} disagrees with {c.get('correct')}/{c.get('samples')}")
        if not (LENGTH - 8 <= c.get("mean_prompt_tokens", 0) <= LENGTH):
            failures.append(f"{name}: mean prompt {c.get('mean_prompt_tokens')} tokens for length {LENGTH}")
    ring_line = [x for x in lines if x.get("kind") == "policy" and x.get("policy") == "ring"]
    if not ring_line or ring_line[0].get("ring_kv_heads") != 5:
        failures.append(f"ring policy line {ring_line}: want 5 ring KV heads")
    vs = {x["policy"]: x for x in lines if x.get("kind") == "vs_first"}
    if set(vs) != {"dense", "ring"} or not all(-1 <= d <= 1 for x in vs.values() for d in x["diff"].values()):
        failures.append(f"vs_first lines {list(vs.values())}")

    dense_prefill_ring = os.path.join(tmp, "ring-dense-prefill.json")
    json.dump({"schema": "attn-policy/v1", "name": "ring-dense-prefill",
               "policies": {"r": {"storage": {"kind": "ring", "sink": 4, "window": 32},
                                  "decode": {"mode": "retained"}, "prefill": {"mode": "dense"}}},
               "assignment": {"default": "r"}}, open(dense_prefill_ring, "w"))
    r = run([("dense", dense), ("refused", dense_prefill_ring)])
    refused = r.returncode != 0 and "dense prefill" in r.stderr and '"cell"' not in r.stdout
    print(f"ring with a dense prefill: exit {r.returncode}, {r.stderr.strip()}")
    if not refused:
        failures.append("a refused policy did not stop the run with the engine's error")

for f in failures:
    print("FAIL:", f)
print("1 passed, 0 failed" if not failures else f"0 passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
