"""`hw_bench_policy` on a tiny dummy Llama (6 layers, 8 query / 2 KV heads, CPU): dense first,
then TidalDecode (sets per KV head and per query head), Quest, Recycled Attention and a
TidalDecode whose budget covers the context. Every JSON line parses; every decode cell is there
for every policy, in order (dense first in each (batch, context)); the selecting policies
selected (`selects`, and every set of the first sequence was chosen during the run, read back
from the selection state); Recycled's timed steps are whole refresh periods and its refresh
counter ended where the stride rule puts it; the bytes follow bench/step_bytes.h (dense: every
key of every head; budget >= context: the same K and V as dense, plus the logits; smaller
budgets: fewer); speedups and fractions agree with the times and bytes they come from.

usage: bench_policy.py PATH_TO_hw_bench_policy"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.environ["HEADWISE_SOURCE_DIR"]
BIN = sys.argv[1]
LAYERS, HEADS, KV_HEADS, HEAD_DIM = 6, 8, 2, 16
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HEADS * HEAD_DIM,
    "intermediate_size": 256, "max_position_embeddings": 4096, "num_attention_heads": HEADS,
    "num_hidden_layers": LAYERS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32",
    "vocab_size": 256, "bos_token_id": 1, "eos_token_id": 2,
}
CONTEXTS, BATCHES, TOKENS = [256, 512], [1, 2], 6
RECYCLE_EVERY = 4


def full(decode):
    return {"storage": {"kind": "full"}, "decode": decode, "prefill": {"mode": "dense"}}


def tidal(budget, granularity="kv_head", dense_if_len_le=None):
    sel = {"method": "exact_logits", "budget": budget, "unit": "token", "granularity": granularity,
           "always_include": {"sink": 0, "recent": 0, "current": True},
           "refresh": {"every_steps": 1}, "publish": "tidal"}
    select = full({"mode": "select", "selection": sel})
    if dense_if_len_le is not None:
        select["dense_if_len_le"] = dense_if_len_le
    return {"schema": "attn-policy/v1", "name": f"tidal-{budget}-{granularity}",
            "policies": {"dense": full({"mode": "dense"}), "select": select,
                         "consume": full({"mode": "consume", "consume": "tidal"})},
            "assignment": {"default": "consume",
                           "layers": [{"layers": [0, 1], "policy": "dense"},
                                      {"layers": [2, 4], "policy": "select"}]}}


def quest(budget):
    sel = {"method": "page_minmax", "budget": budget, "unit": "page",
           "always_include": {"current": True, "last_page": True}}
    return {"schema": "attn-policy/v1", "name": f"quest-{budget}",
            "kv_cache": {"page_size": 16, "page_metadata": ["kmin", "kmax"]},
            "policies": {"dense": full({"mode": "dense"}),
                         "quest": full({"mode": "select", "selection": sel})},
            "assignment": {"default": "quest", "layers": [{"layers": [0, 1], "policy": "dense"}]}}


def recycled(budget):
    sel = {"method": "recycle", "budget": budget, "unit": "token",
           "always_include": {"current": True, "since_last_refresh": True},
           "refresh": {"every_steps": RECYCLE_EVERY}}
    return {"schema": "attn-policy/v1", "name": f"recycled-{budget}",
            "policies": {"recycled": full({"mode": "select", "selection": sel})},
            "assignment": {"default": "recycled"}}


failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


with tempfile.TemporaryDirectory() as tmp:
    model = os.path.join(tmp, "tiny")
    os.makedirs(model)
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    files = {"dense": os.path.join(ROOT, "configs/policies/dense.json")}
    for name, policy in [("tidal", tidal(64)), ("tidalq", tidal(64, "q_head")),
                         ("tidalall", tidal(4096, dense_if_len_le=16)), ("quest", quest(64)),
                         ("recycled", recycled(64))]:
        files[name] = os.path.join(tmp, name + ".json")
        with open(files[name], "w") as f:
            json.dump(policy, f)
    cmd = [BIN, model, "--load-format", "dummy", "--device", "cpu", "--budget-gb", "1",
           "--skip-capacity", "--tokens", str(TOKENS), "--op-times", "2",
           "--contexts", ",".join(map(str, CONTEXTS)), "--batches", ",".join(map(str, BATCHES)),
           "--policies", ",".join(f"{n}={p}" for n, p in files.items())]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        sys.exit(f"hw_bench_policy failed ({run.returncode}):\n{run.stderr}")
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]

names = list(files)
policy = {r["policy"]: r for r in lines if r["kind"] == "policy"}
check(list(policy) == names, f"policy lines {list(policy)}")
check(not any(r["kind"] == "capacity" for r in lines), "--skip-capacity printed capacity rows")
check(policy["recycled"]["refresh_period"] == RECYCLE_EVERY, "recycled refresh_period")
check(policy["tidal"]["select_sets"] == 2 and policy["tidal"]["select_min_len"] == 64,
      f"tidal sets / select_min_len: {policy['tidal']}")
decode = [r for r in lines if r["kind"] == "decode"]
expect = [(b, c, n) for b in BATCHES for c in CONTEXTS for n in names]
check([(r["batch"], r["context"], r["policy"]) for r in decode] == expect,
      "decode cells out of order or missing")
weights = next(r for r in lines if r["kind"] == "roofline")["weight_bytes"]
head_token = 2 * HEAD_DIM * 4  # K and V, f32 on the CPU
cells = {(r["batch"], r["context"], r["policy"]): r for r in decode}
for (batch, context, name), r in cells.items():
    where = f"{name} batch {batch} context {context}"
    check("skipped" not in r and r["ms"] > 0 and r["steps"] >= TOKENS, f"{where}: {r}")
    check(r["warmup_steps"] >= 3 and r["keys"] > context, f"{where}: warm-up / keys")
    check(abs(r["bytes"] - (weights + r["kv_bytes"] + r["selection_bytes"])) <= 2,
          f"{where}: bytes != weights + kv + selection")
    dense_kv = batch * r["keys"] * LAYERS * KV_HEADS * head_token
    if name == "dense":
        check(not r["selects"] and r["kv_bytes"] == dense_kv and r["selection_bytes"] == 0,
              f"{where}: dense bytes {r['kv_bytes']} != {dense_kv}")
        check("speedup" not in r, f"{where}: the baseline has a speedup")
        continue
    check(r["selects"], f"{where}: did not select")
    check(r.get("sets_chosen") == r.get("sets") and r["sets"] > 0,
          f"{where}: sets chosen {r.get('sets_chosen')} of {r.get('sets')}")
    check(r["selection_bytes"] > 0, f"{where}: no selection bytes")
    if name == "tidalall":
        # Budget over the context: every key of every head, as dense reads.
        check(r["kv_bytes"] == dense_kv, f"{where}: kv {r['kv_bytes']} != dense's {dense_kv}")
    else:
        check(r["kv_bytes"] < dense_kv, f"{where}: kv {r['kv_bytes']} not below dense's {dense_kv}")
    if name == "recycled":
        check(r["steps"] % RECYCLE_EVERY == 0 and r["ms_stat"].startswith("mean"),
              f"{where}: steps {r['steps']} / {r['ms_stat']}")
        check(r.get("refresh_as_expected") is True, f"{where}: refresh counter off the stride")
        check(r["refresh_ms"] > 0 and r["reuse_ms"] > 0, f"{where}: refresh / reuse times")
    else:
        check(r["ms_stat"] == "median", f"{where}: {r['ms_stat']}")
    if name == "tidalq":
        # Consume heads read a set per query head: more than the KV-head sets of the same budget,
        # and the sets read back say how many of their keys were distinct.
        check(r["kv_bytes"] > cells[(batch, context, "tidal")]["kv_bytes"] * 0.99,
              f"{where}: q_head sets read less than kv_head sets")
        check(0.25 <= r.get("q_head_sets_distinct", -1) <= 1, f"{where}: q_head_sets_distinct")
    else:
        check("q_head_sets_distinct" not in r, f"{where}: q_head_sets_distinct without q_head sets")
    base = cells[(batch, context, "dense")]
    speedup, allow = base["ms"] / r["ms"], base["bytes"] / r["bytes"]
    check(abs(r["speedup"] - speedup) < 0.01 * speedup + 2e-3, f"{where}: speedup")
    check(abs(r["bytes_allow"] - allow) < 2e-3, f"{where}: bytes_allow")
    check(abs(r["fraction_of_allowed"] - r["speedup"] / r["bytes_allow"]) < 0.01,
          f"{where}: fraction_of_allowed")

# --op-times: one row per decode cell, its operations adding up to its step; the selection's
# operations where a policy selects, and only there.
ops = {(r["batch"], r["context"], r["policy"]): r for r in lines if r["kind"] == "op_times"}
check(sorted(ops) == sorted(cells), "op_times rows do not match the decode cells")
for key, r in ops.items():
    where = f"op_times {key}"
    check(r["steps"] >= 2 and r["step_ms"] > 0, f"{where}: {r}")
    check(abs(sum(r["ops_ms"].values()) - r["step_ms"]) <= 0.01 * r["step_ms"] + 1e-3,
          f"{where}: operations do not add up to the step")
    check(all(op in r["ops_ms"] for op in ("qkv", "attention", "gate_up", "down", "lm_head")),
          f"{where}: a layer operation is missing: {sorted(r['ops_ms'])}")
    selecting = key[2] != "dense"
    check(("select_topk" in r["ops_ms"]) == selecting and ("select_score" in r["ops_ms"]) == selecting,
          f"{where}: selection operations {sorted(r['ops_ms'])}")

if failures:
    print("\n".join(failures))
    print(run.stdout)
    sys.exit(1)
print(f"ok: {len(decode)} decode cells, {len(names)} policies, {len(ops)} op_times rows")
