#!/usr/bin/env python3
"""Ratio table of scripts/device/run-baseline-ab.sh's output: this tree's decode / prefill
step times against a baseline build's, each the median of the rounds (new-1, base-1, new-2,
base-2 ran alternately in one call), with each side's spread across its rounds.

usage: ab_report.py DIR gpu|policy   (prints Markdown)
"""
import glob
import json
import os
import statistics
import sys


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def key(r):
    if r["kind"] == "decode":
        return ("decode", r.get("policy", ""), r["batch"], r["context"], r.get("graphs", True))
    if r["kind"] == "attention":
        return ("attention", r.get("policy", ""), r.get("batch", 1), r.get("context", 0), False)
    if r["kind"] == "prefill":
        return ("prefill", r.get("policy", ""), r.get("tokens", r.get("batch")), r.get("context", 0), False)
    return None


def collect(d, what, label):
    times = {}
    for path in sorted(glob.glob(os.path.join(d, f"{what}-{label}-*.jsonl"))):
        for r in rows(path):
            k = key(r)
            ms = r.get("ms", r.get("us", 0) / 1000 if "us" in r else None)
            if k is not None and ms is not None:
                times.setdefault(k, []).append(ms)
    return times


def main():
    d, what = sys.argv[1], sys.argv[2]
    new, base = collect(d, what, "new"), collect(d, what, "base")
    print("| kind | policy | batch / tokens | context | new ms (median; spread) | base ms (median; spread) | new / base |")
    print("|---|---|---|---|---|---|---|")
    for k in sorted(set(new) & set(base), key=str):
        n, b = new[k], base[k]
        mn, mb = statistics.median(n), statistics.median(b)
        print(f"| {k[0]} | {k[1] or '-'} | {k[2]} | {k[3]} | {mn:.3f}; {min(n):.3f}-{max(n):.3f} | "
              f"{mb:.3f}; {min(b):.3f}-{max(b):.3f} | {mn / mb:.3f} |")


if __name__ == "__main__":
    main()
