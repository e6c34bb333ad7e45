"""Turns the two JSON-line logs of bench/streaming/run-20k.sh (PREFIX.streaming.jsonl and
PREFIX.dense.jsonl, one line per span of generated tokens from hw_bench_streaming) into
PREFIX.md: a table per run (resident memory, mean log-probability of the sampled tokens,
non-finite logits, speed), the log-prob trend side by side, and text excerpts.

usage: report.py PREFIX --date D --policy FILE --threads N --tokens N --model PATH
                 [--repetition-penalty R]"""

import argparse
import json
import os
import platform
import subprocess


def load(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("prefix")
    ap.add_argument("--date", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--threads", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--repetition-penalty", default="1")
    args = ap.parse_args()
    stream = load(args.prefix + ".streaming.jsonl")
    dense = load(args.prefix + ".dense.jsonl")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    policy = json.load(open(args.policy))
    ring = next(iter(policy["policies"].values()))["storage"]
    cores = os.cpu_count()
    lines = [
        "# StreamingLLM: 20,000 sampled tokens on the CPU",
        "",
        f"- date: {args.date}",
        f"- device: CPU backend, {cpu_name()}, {cores} cores (shared with other work), "
        f"{args.threads} thread(s) per run, the two runs side by side",
        f"- commit: {commit}",
        f"- command: `bench/streaming/run-20k.sh --tokens {args.tokens} --policy {args.policy} "
        f"--threads {args.threads} --date {args.date} --repetition-penalty {args.repetition_penalty} "
        f"--name {os.path.basename(args.prefix)}`",
        f"- model: {os.path.basename(args.model)} (SmolLM2-135M-Instruct; 8192 positions; f32 on the CPU)",
        f"- policy: `{args.policy}`: every head a ring of {ring['sink']} sinks + {ring['window']} "
        "window tokens, positions re-indexed inside the ring (pre-RoPE keys, rotation by rank)",
        f"- sampling: temperature 0.8, top-p 0.95, repetition penalty {args.repetition_penalty}, seed 1, "
        "EOS sampled and fed back (ignore-eos); "
        "chat prompt asking for a very long story",
        "- per span of 1,000 generated tokens: resident memory (VmRSS) at its end, mean "
        "log-probability of the sampled tokens (log-softmax of the raw logits), count of NaN/inf "
        "logits, speed",
        "",
    ]

    def table(rows, title):
        out = [f"## {title}", "", "| tokens | position | RSS MiB | mean logprob | NaN/inf logits | tokens/s |",
               "|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r['tokens']} | {r['position']} | {r['rss_mib']:.1f} | {r['mean_logprob']:.3f} | "
                       f"{r['nonfinite_logits']} | {r['tokens_per_s']:.2f} |")
        if not rows:
            out.append("| (no data) | | | | | |")
        return out + [""]

    lines += table(stream, f"StreamingLLM ({ring['sink']} + {ring['window']}), {len(stream)} spans")
    lines += table(dense, f"Dense, up to the context, {len(dense)} spans")

    lines += ["## Mean log-prob per span, side by side", "", "| tokens | streaming | dense |", "|---:|---:|---:|"]
    dense_by = {r["tokens"]: r for r in dense}
    for r in stream:
        d = dense_by.get(r["tokens"])
        lines.append(f"| {r['tokens']} | {r['mean_logprob']:.3f} | {d['mean_logprob']:.3f} |" if d else
                     f"| {r['tokens']} | {r['mean_logprob']:.3f} | — |")
    for r in dense:
        if not any(s["tokens"] == r["tokens"] for s in stream):
            lines.append(f"| {r['tokens']} | — | {r['mean_logprob']:.3f} |")
    lines.append("")

    if stream:
        rss = [r["rss_mib"] for r in stream]
        lines += ["## Summary", "",
                  f"- StreamingLLM: {stream[-1]['tokens']} tokens generated (position {stream[-1]['position']}); "
                  f"RSS {min(rss):.1f}-{max(rss):.1f} MiB over the run (first span {rss[0]:.1f}, last {rss[-1]:.1f}); "
                  f"NaN/inf logits: {sum(r['nonfinite_logits'] for r in stream)}.",
                  ]
        if dense:
            drss = [r["rss_mib"] for r in dense]
            lines.append(f"- Dense: {dense[-1]['tokens']} tokens (position {dense[-1]['position']}); RSS "
                         f"{min(drss):.1f}-{max(drss):.1f} MiB; NaN/inf logits: "
                         f"{sum(r['nonfinite_logits'] for r in dense)}.")
        lines.append("")

    for rows, title in [(stream, "StreamingLLM"), (dense, "Dense")]:
        lines += [f"## Excerpts, {title} (the last characters of each span)", ""]
        for r in rows:
            text = r["excerpt"].replace("\n", " ⏎ ").replace("|", "\\|")
            lines.append(f"- {r['tokens']}: {text}")
        lines.append("")
    open(args.prefix + ".md", "w").write("\n".join(lines))
    print(args.prefix + ".md")


if __name__ == "__main__":
    main()
