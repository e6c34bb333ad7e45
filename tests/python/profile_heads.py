"""`headwise profile-heads` on TinyStories-656K, checked against references that share nothing with the engine.

usage: profile_heads.py CASE   (CASE from CASES below; `all` runs every case)
  razor_reference   a numpy forward pass (safetensors parsed here, float64) recomputes the echo / induction score of
                    every query head for the tool's own input ids (--save-input); per-head scores, the KV-head max and
                    the selected heads must agree
  retrieval_file    a retrieval profile (every sample counted) is well formed: every (layer, query head), one score per
                    sample, each a whole number of copy-paste events over the needle span; it and a razor profile feed
                    an attention policy that `headwise generate` runs
  determinism       two runs (different thread counts) write byte-identical razor and retrieval files
Needs HEADWISE_BIN and HEADWISE_SHARED (default ../shared); numpy only."""

import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(os.environ["HEADWISE_SOURCE_DIR"], "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")
BIN = os.environ.get("HEADWISE_BIN", "")


def profile(*args):
    cmd = [BIN, "profile-heads", TINY, *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()}")


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "F16": np.float16}[info["dtype"]]
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + begin : 8 + n + end], dtype=dtype).reshape(info["shape"]).astype(np.float64)
    return out


def attention_probs(tokens):
    """Per layer, the causal attention probabilities [Hq, S, S] of a Llama forward pass (Hugging Face conventions)."""
    cfg = json.load(open(os.path.join(TINY, "config.json")))
    w = read_safetensors(os.path.join(TINY, "model.safetensors"))
    hq, hkv, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    d = hidden // hq
    eps = cfg["rms_norm_eps"]
    s = len(tokens)
    inv_freq = 1.0 / (cfg.get("rope_theta", 10000.0) ** (np.arange(0, d, 2) / d))
    angles = np.outer(np.arange(s), inv_freq)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))

    def rope(x):  # [H, S, D], rotate_half
        rot = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + rot * sin

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g

    embed = w["model.embed_tokens.weight"] if "model.embed_tokens.weight" in w else w["lm_head.weight"]  # tied
    x = embed[np.array(tokens)]
    probs = []
    causal = np.triu(np.full((s, s), -np.inf), 1)
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(s, hq, d).transpose(1, 0, 2)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(s, hkv, d).transpose(1, 0, 2)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(s, hkv, d).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, hq // hkv, 0), np.repeat(v, hq // hkv, 0)
        logits = q @ k.transpose(0, 2, 1) / np.sqrt(d) + causal
        a = np.exp(logits - logits.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        probs.append(a)
        o = (a @ v).transpose(1, 0, 2).reshape(s, hq * d)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "mlp.down_proj.weight"].T
    return probs, hq // hkv


def reference_scores(tokens, first_scored):
    """Echo / induction per (layer, query head) from token identity, mean over the S x S matrix (ALGORITHMS.md 3.1)."""
    probs, group = attention_probs(tokens)
    s = len(tokens)
    echo_mask, ind_mask = np.zeros((s, s)), np.zeros((s, s))
    for i in range(first_scored, s):
        for j in range(i):
            if tokens[j] == tokens[i]:
                echo_mask[i, j] = 1
                ind_mask[i, j + 1] = 1
    echo = np.array([[(a[h] * echo_mask).sum() / (s * s) for h in range(a.shape[0])] for a in probs])
    ind = np.array([[(a[h] * ind_mask).sum() / (s * s) for h in range(a.shape[0])] for a in probs])
    return echo, ind, group


def select(kv_ind, kv_echo, ind_ratio, echo_ratio):
    n = kv_ind.size
    chosen = set()
    for scores, ratio in ((kv_ind, ind_ratio), (kv_echo, echo_ratio)):
        flat = [(-scores[l, h], l, h) for l in range(scores.shape[0]) for h in range(scores.shape[1])]
        chosen |= {(l, h) for _, l, h in sorted(flat)[: int(np.ceil(ratio * n - 1e-9))]}
    return {str(l): sorted(h for ll, h in chosen if ll == l) for l in range(kv_ind.shape[0])}


def close(name, got, want, problems):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    tol = 1e-4 * np.abs(want).max() + 1e-4 * np.abs(want)
    bad = np.argwhere(np.abs(got - want) > tol)
    if got.shape != want.shape:
        problems.append(f"{name}: shape {got.shape}, reference {want.shape}")
    elif len(bad):
        first = tuple(bad[0])
        problems.append(f"{name}: {len(bad)} of {want.size} differ, first at {first}: {got[first]} vs {want[first]}")


def case_razor_reference(tmp):
    out, inp = os.path.join(tmp, "razor.json"), os.path.join(tmp, "input.json")
    length = 40
    # 30 ids for 40 draws: R repeats tokens, so the masks differ from index arithmetic and the first copy of R has
    # echo positions of its own, which must not count.
    profile("--method", "razor", "--razor-length", str(length), "--token-range", "1900:1930", "--out", out,
            "--save-input", inp, "--induction-ratio", "0.3", "--echo-ratio", "0.2", "--prefill-chunk", "37")
    doc, tokens = json.load(open(out)), json.load(open(inp))
    problems = []
    s = doc["settings"]
    if tokens[0] != 1 or len(tokens) != 1 + 4 * length or tokens[1 : 1 + length] * 4 != tokens[1:]:
        problems.append("input is not [BOS] + R x 4")
    lo, hi = s["token_range"]
    if not all(lo <= t < hi for t in tokens[1:]) or (lo, hi) != (1900, 1930):
        problems.append(f"tokens outside the range {lo, hi} (asked 1900:1930)")
    if len(set(tokens[1 : 1 + length])) == length:
        problems.append("R has no repeated token: the first-copy exclusion is not exercised")
    echo, ind, group = reference_scores(tokens, 1 + length)
    close("echo (query heads)", doc["query_head_scores"]["echo"], echo, problems)
    close("induction (query heads)", doc["query_head_scores"]["induction"], ind, problems)
    kv_echo = echo.reshape(echo.shape[0], -1, group).max(-1)
    kv_ind = ind.reshape(ind.shape[0], -1, group).max(-1)
    close("echo (KV heads)", doc["kv_head_scores"]["echo"], kv_echo, problems)
    close("induction (KV heads)", doc["kv_head_scores"]["induction"], kv_ind, problems)
    want_heads = select(kv_ind, kv_echo, 0.3, 0.2)
    if doc["heads"] != want_heads:
        problems.append(f"heads {doc['heads']}, reference {want_heads}")
    if ind.max() <= 0 or echo.max() <= 0:
        problems.append("reference scores are all zero: the check would prove nothing")
    return problems


def run_generate(policy):
    r = subprocess.run([BIN, "generate", "--model", TINY, "--prompt", "Once upon a time", "--max-tokens", "8",
                        "--attention-policy", policy], capture_output=True, text=True, timeout=120)
    return None if r.returncode == 0 else f"generate with {os.path.basename(policy)}: exit {r.returncode}: {r.stderr.strip()}"


def case_retrieval_file(tmp):
    out = os.path.join(tmp, "retrieval.json")
    max_new = 6
    profile("--method", "retrieval", "--context-lengths", "96,160", "--depths", "3", "--max-new-tokens", str(max_new),
            "--min-recall", "-1", "--out", out)
    doc = json.load(open(out))
    problems = []
    samples = doc["samples"]
    if len(samples) != 6 or doc["accepted_samples"] != 6:
        problems.append(f"{len(samples)} samples, {doc['accepted_samples']} accepted; want 6 and 6")
    want_keys = {f"{l}-{h}" for l in range(2) for h in range(8)}
    if set(doc["scores"]) != want_keys:
        problems.append(f"score keys {sorted(doc['scores'])[:4]}...: want every layer-head of 2 x 8")
    spans = [s["needle_span"] for s in samples]
    if any(b < 0 or e - b < 5 for b, e in spans):
        problems.append(f"needle not located: {spans}")
    for key, scores in doc["scores"].items():
        if len(scores) != len(samples):
            problems.append(f"{key}: {len(scores)} scores for {len(samples)} samples")
            continue
        for (b, e), v in zip(spans, scores):
            events = v * (e - b)
            if abs(events - round(events)) > 1e-9 or not 0 <= round(events) <= max_new:
                problems.append(f"{key}: {v} is not a whole number (0..{max_new}) of events / {e - b}")
                break
    # The profile feeds a policy: heads scoring above the threshold keep a full cache, the rest a ring.
    ring = {"storage": {"kind": "ring", "sink": 4, "window": 16}, "decode": {"mode": "retained"},
            "prefill": {"mode": "retained"}}
    policy = os.path.join(tmp, "policy.json")
    json.dump({"schema": "attn-policy/v1", "policies": {"full": {}, "streaming": ring},
               "assignment": {"default": "streaming", "head_scores": {"format": "retrieval_head_json", "path": out,
                                                                      "threshold": 0.0, "above": "full"}}},
              open(policy, "w"))
    problems += [p for p in [run_generate(policy)] if p]
    razor = os.path.join(tmp, "razor.json")
    profile("--method", "razor", "--razor-length", "24", "--out", razor)
    json.dump({"schema": "attn-policy/v1", "policies": {"full": {}, "streaming": ring},
               "assignment": {"default": "streaming", "head_list": {"format": "razor_json", "path": razor,
                                                                    "policy": "full"}}},
              open(policy, "w"))
    problems += [p for p in [run_generate(policy)] if p]
    return problems


def case_determinism(tmp):
    problems = []
    for method, extra in (("razor", ["--razor-length", "64"]),
                          ("retrieval", ["--context-lengths", "128", "--depths", "2", "--min-recall", "-1"])):
        files = []
        for i, threads in enumerate(("1", "2")):
            files.append(os.path.join(tmp, f"{method}{i}.json"))
            profile("--method", method, "--threads", threads, "--out", files[-1], *extra)
        if open(files[0], "rb").read() != open(files[1], "rb").read():
            problems.append(f"{method}: two runs wrote different files")
        if method == "razor" and json.load(open(files[0]))["settings"]["token_range"] != [1638, 2048]:
            problems.append("default razor token range is not [0.8 V, V) = [1638, 2048) for TinyStories' 2048 ids")
    return problems


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def main():
    names = list(CASES) if sys.argv[1:] == ["all"] else sys.argv[1:]
    failures = 0
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                problems = CASES[name](tmp)
            except AssertionError as e:
                problems = [str(e)]
        for p in problems:
            print(f"FAIL {name}: {p}")
        if not problems:
            print(f"ok   {name}")
        failures += bool(problems)
    print(f"{len(names) - failures} passed, {failures} failed")
    return 1 if failures or not names else 0


if __name__ == "__main__":
    sys.exit(main())
