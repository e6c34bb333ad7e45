#!/usr/bin/env python3
"""Writes a RazorAttention head profile with other selection ratios, re-selected from the KV-head
scores the profile already holds (no new model run), for a quality comparison beside the original.

  razor_ratio.py SRC OUT INDUCTION_RATIO [ECHO_RATIO]

The rule is SelectRazorHeads (engine/attention/head_profile.cc): the ceil(ratio * heads) KV heads
with the highest induction score, joined with the ceil(echo_ratio * heads) highest echo scores,
ties kept in (layer, head) order. The script first re-selects with SRC's own ratios and refuses
when that does not give SRC's heads, so a drift from the C++ rule cannot pass unnoticed. OUT is
best written beside the policy that names it; never commit it."""
import json
import math
import pathlib
import sys


def select(kv_induction, kv_echo, induction_ratio, echo_ratio):
    chosen = set()
    for scores, ratio in ((kv_induction, induction_ratio), (kv_echo, echo_ratio)):
        order = [(s, (l, h)) for l, row in enumerate(scores) for h, s in enumerate(row)]
        order.sort(key=lambda e: -e[0])  # stable: ties keep (layer, head) order
        want = max(0, math.ceil(ratio * len(order) - 1e-9))
        chosen.update(pos for _, pos in order[:want])
    heads = {str(l): [] for l in range(len(kv_induction))}
    for l, h in sorted(chosen):
        heads[str(l)].append(h)
    return heads


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    doc = json.loads(src.read_text())
    if doc.get("method") != "razor":
        sys.exit(f"razor_ratio.py: {src} is not a razor profile")
    settings, scores = doc["settings"], doc["kv_head_scores"]
    again = select(scores["induction"], scores["echo"], settings["induction_ratio"],
                   settings["echo_ratio"])
    if again != doc["heads"]:
        sys.exit(f"razor_ratio.py: re-selecting {src} with its own ratios does not give its heads")
    induction_ratio = float(sys.argv[3])
    echo_ratio = float(sys.argv[4]) if len(sys.argv) == 5 else settings["echo_ratio"]
    doc["heads"] = select(scores["induction"], scores["echo"], induction_ratio, echo_ratio)
    settings["induction_ratio"], settings["echo_ratio"] = induction_ratio, echo_ratio
    out.write_text(json.dumps(doc, indent=2) + "\n")
    kept = sum(len(v) for v in doc["heads"].values())
    total = sum(len(row) for row in scores["induction"])
    print(f"{out}: {kept} of {total} KV heads full")


if __name__ == "__main__":
    main()
