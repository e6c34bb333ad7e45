"""`hw_bench_ann` on TinyStories-656K (CPU, a 300-token raw prompt, 4 decode steps, top-10): the
run goes through, every JSON line parses, the run line says what was indexed (the prompt less the
static set), every (layer, KV head) has a build line and head lines for exact, RoarGraph and HNSW
(when built), exact per-head search and RoarGraph with a queue of every key score recall 1, each
layer and the model have their means and reach lines, and the Markdown summary is written.
RoarGraph's step 1 through the backend (--train-top backend) builds the same graphs as the
host's. Bad flags stop it with an error naming the flag.

usage: bench_ann.py PATH_TO_hw_bench_ann"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.environ["HEADWISE_SOURCE_DIR"]
SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(ROOT, "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")
BIN = sys.argv[1]
SINK, WINDOW, TOP_K = 16, 32, 10

failures = []
with tempfile.TemporaryDirectory() as tmp:
    haystack = os.path.join(tmp, "haystack.txt")
    with open(haystack, "w") as f:
        f.write(" ".join(["Tom had a red ball.", "He liked to play in the park.",
                          "One day the ball rolled away.", "Lily saw it under a big tree.",
                          "She gave it back to Tom."] * 40))
    md = os.path.join(tmp, "ann.md")
    base = [BIN, TINY, "--device", "cpu", "--threads", "2", "--haystack", haystack,
            "--prompt-form", "raw"]
    cmd = base + ["--task", "niah_single", "--lengths", "300", "--decode-steps", "4", "--prefill-chunk", "128",
                  "--sink", str(SINK), "--window", str(WINDOW), "--top-k", str(TOP_K),
                  "--queues", "10,20,1000", "--efs", "10,1000", "--mean-ks", "10,20",
                  "--markdown", md]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        failures.append(f"run exited {r.returncode}: {r.stderr.strip()}")
    lines = []
    for line in r.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            failures.append(f"not JSON: {line!r} ({e})")
    by_kind = {}
    for x in lines:
        by_kind.setdefault(x.get("kind"), []).append(x)
    print({k: len(v) for k, v in by_kind.items()})
    runs = by_kind.get("run", [])
    if len(runs) != 1:
        failures.append(f"{len(runs)} run lines, want 1")
    else:
        run = runs[0]
        layers, kv_heads = run["num_layers"], run["num_kv_heads"]
        if run["indexed_keys"] != run["prompt_tokens"] - SINK - WINDOW:
            failures.append(f"indexed {run['indexed_keys']} of {run['prompt_tokens']} tokens, "
                            f"want the prompt less {SINK} + {WINDOW}")
        if not 200 <= run["prompt_tokens"] <= 296:
            failures.append(f"prompt of {run['prompt_tokens']} tokens for length 300")
        group = run["num_heads"] // kv_heads
        if run["test_queries_per_kv_head"] != group * 4:
            failures.append(f"test queries {run['test_queries_per_kv_head']}, want {group * 4}")
        builds = {(b["layer"], b["kv_head"]) for b in by_kind.get("build", [])}
        if builds != {(l, h) for l in range(layers) for h in range(kv_heads)}:
            failures.append(f"build lines for {sorted(builds)}")
        heads = by_kind.get("head", [])
        indexes = {h["index"] for h in heads}
        want = {"exact", "roargraph"} | ({"hnsw"} if "hnsw" in indexes else set())
        if not {"exact", "roargraph"} <= indexes:
            failures.append(f"indexes {sorted(indexes)}, want {sorted(want)}")
        for h in heads:
            where = f"layer {h['layer']} KV head {h['kv_head']} {h['index']} {h['mode']} {h['setting']}"
            if not 0 <= h["recall_min"] <= h["recall"] <= 1:
                failures.append(f"{where}: recall {h['recall']} min {h['recall_min']}")
            exact_one = h["mode"] == "per_head" and (
                h["index"] == "exact" or (h["index"] == "roargraph" and h["setting"] == 1000))
            if exact_one and h["recall"] != 1:
                failures.append(f"{where}: recall {h['recall']}, want 1")
            if h["index"] == "roargraph" and not 0 < h["scanned_frac"] <= 1:
                failures.append(f"{where}: scanned {h['scanned_frac']}")
            if h["mode"] == "group_mean" and h["setting"] < h["search_k"]:
                failures.append(f"{where}: a setting below search_k {h['search_k']}")
        per_head = [h for h in heads if h["index"] == "roargraph" and h["mode"] == "per_head"]
        if sorted({h["setting"] for h in per_head}) != [10, 20, 1000]:
            failures.append(f"roargraph queues {sorted({h['setting'] for h in per_head})}")
        if {x["layer"] for x in by_kind.get("layer", [])} != set(range(layers)):
            failures.append("layer lines missing")
        if not by_kind.get("model"):
            failures.append("no model lines")
        if not any(x["layer"] == "all" for x in by_kind.get("reach", [])):
            failures.append("no reach line for the model")
        if len(by_kind.get("done", [])) != 1:
            failures.append("no done line")
    if not os.path.exists(md):
        failures.append("no Markdown summary")
    else:
        text = open(md).read()
        for want in ("### Smallest setting with mean recall >= 0.9", "#### roargraph per_head",
                     "| all |"):
            if want not in text:
                failures.append(f"the summary lacks {want!r}")

    # RoarGraph's step 1 through the backend's TopKeys (the engine's way; on the CPU backend the
    # same arithmetic as the build's own) gives the same graphs and the same recalls.
    def roar(extra):
        r = subprocess.run(cmd + ["--no-hnsw"] + extra, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            failures.append(f"{extra}: exit {r.returncode}: {r.stderr.strip()}")
            return None
        rows = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        # Units run in parallel: their lines come in any order.
        return (sorted((x["layer"], x["kv_head"], x["roargraph_edges"]) for x in rows if x["kind"] == "build"),
                sorted((x["layer"], x["kv_head"], x["mode"], x["search_k"], x["setting"], x["recall"],
                        x["scanned_frac"]) for x in rows if x["kind"] == "head" and x["index"] == "roargraph"))
    host, backend = roar(["--train-top", "host"]), roar(["--train-top", "backend"])
    if host is None or backend is None or not host[0] or host != backend:
        failures.append("--train-top backend: other graphs or recalls than the host's step 1")

    for flags, name in ((["--top-k", "0"], "--top-k"), (["--task", "nope"], "--task"),
                        (["--layers", "7"], "--layers"), (["--target", "2"], "--target"),
                        (["--train-top", "gpu"], "--train-top")):
        task = [] if name == "--task" else ["--task", "niah_single"]
        r = subprocess.run(base + task + ["--lengths", "300"] + flags, capture_output=True, text=True,
                           timeout=60)
        if r.returncode == 0 or name not in r.stderr:
            failures.append(f"{flags}: exit {r.returncode}, stderr {r.stderr.strip()!r}")

for f in failures:
    print("FAIL:", f)
sys.exit(1 if failures else 0)
