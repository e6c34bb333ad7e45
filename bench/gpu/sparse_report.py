#!/usr/bin/env python3
"""Issue 16's speed table from scripts/device/run-sparse-decode-bench.sh's JSON lines
(hw_bench_policy runs, each opened by a {"kind": "run"} line, then hw_bench_gpu's lines marked
"bench": "hw_bench_gpu"). Prints Markdown: per (batch, context) every policy's step time against
the dense step of the same run and against the bytes the step must read, whether it reaches 90%
of the speedup the bytes allow (the issue's target), the selection checks, the cells skipped,
and the GPU benchmark's dense step beside the policy bench's.

usage: sparse_report.py sparse-decode.jsonl [--commit SHA]
"""
import argparse
import json
import re

TARGET = 0.9


def load(path):
    runs, gpu_bench, current = [], [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("kind") == "run":
                if r.get("attempt") == "gpu_bench":
                    current = None
                    continue
                current = {"meta": r, "rows": []}
                runs.append(current)
            elif r.get("bench") == "hw_bench_gpu":
                gpu_bench.append(r)
            elif current is not None:
                current["rows"].append(r)
            else:  # lines of a bare hw_bench_policy run, without the script's markers
                current = {"meta": {}, "rows": [r]}
                runs.append(current)
    return runs, gpu_bench


def budget_of(name):
    m = re.search(r"-(\d+)$", name)
    return int(m.group(1)) if m else None


def k(n):
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--commit", default="(fill in)")
    args = ap.parse_args()
    runs, gpu_bench = load(args.jsonl)
    if not runs:
        raise SystemExit(f"{args.jsonl}: no hw_bench_policy lines")
    meta = runs[0]["meta"]
    roof = next((r for r in runs[0]["rows"] if r["kind"] == "roofline"), {})
    print("# Decode-time selection at Llama-3-8B shapes: step time against dense and the bytes\n")
    print(f"- Device: {meta.get('device', '(fill in)')}. Copy bandwidth measured in the run: "
          f"{roof.get('copy_gb_s', 0):.0f} GB/s; weights {roof.get('weight_bytes', 0) / 1e9:.2f} "
          "GB (bf16, dummy values).")
    print(f"- Commit: {args.commit}. Date: (fill in).")
    print("- Command (device, carry `.carry/gpu`): `bash scripts/device/run-sparse-decode-bench.sh`"
          f" (batches {meta.get('batches', '?')}, contexts {meta.get('contexts', '?')}, "
          f"{meta.get('tokens', '?')} timed steps).")
    print("- Bytes a step must read: bench/step_bytes.h (weights + the K and V every (layer, KV "
          "head) attends + logits written and Quest's page bounds). \"allow\" = dense bytes / "
          "policy bytes; \"of allowed\" = measured speedup / allow; target >= "
          f"{TARGET:.0%}. Recycled: mean over whole refresh periods (refresh / reuse medians "
          "beside it), bytes averaged over a period.\n")
    met = total = 0
    for i, run in enumerate(runs):
        rows = run["rows"]
        if len(runs) > 1:
            print(f"## Run {run['meta'].get('attempt', i + 1)}: "
                  f"{run['meta'].get('policies', '')}\n")
        decode = [r for r in rows if r["kind"] == "decode"]
        ran = [r for r in decode if "skipped" not in r]
        skipped = [r for r in decode if "skipped" in r]
        print("| batch | context | policy | budget | step ms | refresh / reuse ms | GB read "
              "| of roofline | speedup | allow | of allowed | target | selection check |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in ran:
            checks = []
            if r.get("selects"):
                checks.append(f"{r.get('sets_chosen')}/{r.get('sets')} sets chosen")
                if "refresh_as_expected" in r:
                    checks.append("stride ok" if r["refresh_as_expected"] else "STRIDE OFF")
                if "q_head_sets_distinct" in r:
                    checks.append(f"q-head sets {r['q_head_sets_distinct']:.0%} distinct")
            elif r["policy"] != "dense":
                checks.append("DID NOT SELECT")
            mark = "-"
            if "fraction_of_allowed" in r:
                total += 1
                ok = r["fraction_of_allowed"] >= TARGET
                met += ok
                mark = "yes" if ok else "**no**"
            rr = (f"{r['refresh_ms']:.2f} / {r['reuse_ms']:.2f}" if "refresh_ms" in r else "-")
            budget = budget_of(r["policy"])
            print(f"| {r['batch']} | {k(r['context'])} | {r['policy']} "
                  f"| {budget if budget else '-'} | {r['ms']:.3f} | {rr} | {r['bytes'] / 1e9:.2f} "
                  f"| {r['fraction_of_roofline']:.2f} | {r.get('speedup', '-')} "
                  f"| {r.get('bytes_allow', '-')} | {r.get('fraction_of_allowed', '-')} | {mark} "
                  f"| {', '.join(checks) or '-'} |")
        if skipped:
            cells = sorted({(r["batch"], r["context"], r["skipped"]) for r in skipped
                            if r["policy"] == "dense"})
            print("\nSkipped (the dense KV does not fit; the policies' KV is the same size): " +
                  "; ".join(f"batch {b} at {k(c)} ({why})" for b, c, why in cells))
        print()
    print(f"**Target (>= {TARGET:.0%} of the speedup the bytes allow): met in {met} of {total} "
          "rows.**\n")
    # hw_bench_policy --op-times: where an eager, per-operation synchronized step's time goes.
    ops = [r for run in runs for r in run["rows"] if r["kind"] == "op_times"]
    if ops:
        groups = [("selection", ("select_gate", "select_score", "select_topk", "select_attention",
                                 "page_summaries")),
                  ("attention", ("attention",)),
                  ("GEMMs", ("qkv", "o_proj", "gate_up", "down", "lm_head")),
                  ("other", None)]
        print("Where a step's time goes (`--op-times`: eager steps, the device synchronized after "
              "every operation, so each launch's latency counts: this explains a step, it does not "
              "time one). Milliseconds per step, summed over layers:\n")
        print("| batch | context | policy | eager step ms | " +
              " | ".join(g for g, _ in groups) + " | selection: gate / score / top-k / attention |")
        print("|---|---|---|---|" + "---|" * len(groups) + "---|")
        for r in ops:
            o = r["ops_ms"]
            named = set()
            cells = []
            for _, names in groups:
                if names is None:
                    cells.append(sum(v for n, v in o.items() if n not in named))
                else:
                    named.update(names)
                    cells.append(sum(o.get(n, 0.0) for n in names))
            sel = " / ".join(f"{o.get(n, 0.0):.3f}" for n in
                             ("select_gate", "select_score", "select_topk", "select_attention"))
            print(f"| {r['batch']} | {k(r['context'])} | {r['policy']} | {r['step_ms']:.3f} | " +
                  " | ".join(f"{c:.3f}" for c in cells) + f" | {sel} |")
        print()
    # The GPU benchmark's dense step, same shapes, another process of the same call.
    dense = {}
    for run in runs:
        for r in run["rows"]:
            if r["kind"] == "decode" and r["policy"] == "dense" and "ms" in r:
                dense.setdefault((r["batch"], r["context"]), r["ms"])
    cross = [r for r in gpu_bench if r["kind"] == "decode" and "ms" in r]
    if cross:
        print("Dense step, hw_bench_policy's (first run) beside hw_bench_gpu's (same call):\n")
        print("| batch | context | hw_bench_policy ms | hw_bench_gpu ms | ratio |")
        print("|---|---|---|---|---|")
        for r in cross:
            p = dense.get((r["batch"], r["context"]))
            ratio = f"{p / r['ms']:.3f}" if p else "-"
            print(f"| {r['batch']} | {k(r['context'])} | {p if p else '-'} | {r['ms']:.3f} "
                  f"| {ratio} |")
        print()


if __name__ == "__main__":
    main()
