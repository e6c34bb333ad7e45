#!/usr/bin/env python3
"""Side-by-side table of one GPU run: hw_bench_gpu's JSON lines and torch_reference.py's.

usage: report.py HEADWISE.jsonl [TORCH.jsonl]   (prints Markdown)
"""
import json
import sys


def load(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main():
    ours = load(sys.argv[1])
    torch = load(sys.argv[2]) if len(sys.argv) > 2 else []
    roof = next((r for r in ours if r["kind"] == "roofline"), {})
    troof = next((r for r in torch if r["kind"] == "roofline"), {})
    print("| bound | headwise run | torch run |\n|---|---|---|")
    print(f"| copy bandwidth (GB/s, read+write) | {fmt(roof.get('copy_gb_s'), '.0f')} "
          f"| {fmt(troof.get('copy_gb_per_s'), '.0f')} |")
    print(f"| bf16 GEMM at the prefill shapes (TFLOP/s) | {fmt(roof.get('gemm_tflops'), '.0f')} "
          f"| {fmt(troof.get('gemm_tflops_overall'), '.0f')} |")

    def torch_decode(impl, b, c):
        for r in torch:
            if (r["kind"] == "decode" and r.get("impl") == impl and r.get("batch") == b
                    and r.get("context") == c and "ms_per_token" in r):
                return r["ms_per_token"]
        return None

    print("\n**Decode step (ms), Llama-3-8B shapes**\n")
    print("| batch | context | headwise | of roofline | eager | transformers static+compile "
          "| transformers static | speedup vs best transformers |")
    print("|---|---|---|---|---|---|---|---|")
    eager = {(r["batch"], r["context"]): r["ms"] for r in ours
             if r["kind"] == "decode" and "ms" in r and not r.get("graphs", True)}
    for r in ours:
        if r["kind"] != "decode" or not r.get("graphs", True):
            continue
        b, c = r["batch"], r["context"]
        if "skipped" in r:
            print(f"| {b} | {c} | {r['skipped']} | | | | | |")
            continue
        comp, stat = torch_decode("transformers-static-compile", b, c), torch_decode(
            "transformers-static", b, c)
        best = min([x for x in (comp, stat) if x is not None], default=None)
        speed = f"{best / r['ms']:.2f}x" if best else "-"
        print(f"| {b} | {c} | {r['ms']:.2f} | {r['fraction_of_roofline']:.0%} "
              f"| {fmt(eager.get((b, c)))} | {fmt(comp)} | {fmt(stat)} | {speed} |")

    print("\n**Decode attention alone, per layer of a graph over all layers (GB/s of K+V read)**\n")
    print("| batch | context | headwise | of copy bandwidth | SDPA | SDPA of copy |")
    print("|---|---|---|---|---|---|")
    for r in ours:
        if r["kind"] == "attention":
            s = next((t for t in torch if t["kind"] == "attention" and t.get("op") == "sdpa-decode"
                      and t.get("batch") == r["batch"] and t.get("context") == r["context"]), None)
            sdpa = s.get("gb_per_s") if s else None
            cb = troof.get("copy_gb_per_s")
            print(f"| {r['batch']} | {r['context']} | {r['kv_gb_s']:.0f} | "
                  f"{r['fraction_of_copy']:.0%} | {fmt(sdpa, '.0f')} | "
                  f"{fmt(sdpa / cb if sdpa and cb else None, '.0%')} |")

    print("\n**Prefill of one prompt**\n")
    print("| tokens | headwise ms | tokens/s | of GEMM rate | transformers ms | SDPA prefill "
          "TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in ours:
        if r["kind"] == "prefill":
            t = next((x for x in torch if x["kind"] == "prefill" and x.get("tokens") == r["tokens"]
                      and "ms" in x), None)
            s = next((x for x in torch if x["kind"] == "attention" and x.get("op") == "sdpa-prefill"
                      and x.get("tokens") == r["tokens"]), None)
            print(f"| {r['tokens']} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | "
                  f"{r['fraction_of_gemm']:.0%} | {fmt(t['ms'] if t else None, '.1f')} | "
                  f"{fmt(s['tflops'] if s else None, '.0f')} |")


if __name__ == "__main__":
    main()
