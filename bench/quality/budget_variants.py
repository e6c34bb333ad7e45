#!/usr/bin/env python3
"""Writes budget variants of a model's sparse-decode policy files for a quality sweep and prints
the --policies value for `headwise eval` (scripts/device/run-quality.sh POLICIES=...).

  budget_variants.py configs/policies/qwen2.5-coder-0.5b-instruct OUTDIR 128,512,2048

For each budget B: tidal-B (TidalDecode, one set per KV head), tidal-qhead-B (one set per query
head, the paper's granularity), quest-B (Quest; B rounded up to whole pages, at least 2 pages)
and recycled-B. dense_if_len_le follows the budget, as in the committed files. The variants are
derived, never committed: the committed tidal/quest/recycled.json stay the reference."""
import copy
import json
import pathlib
import sys


def variant(doc, budget, q_head=False):
    doc = copy.deepcopy(doc)
    page = doc["kv_cache"]["page_size"]
    for name, pol in doc["policies"].items():
        sel = pol.get("decode", {}).get("selection")
        if sel is None:
            continue
        b = budget
        if sel["unit"] == "page":
            b = max(2, -(-budget // page)) * page
        sel["budget"] = b
        if q_head:
            sel["granularity"] = "q_head"
            sel["group_reduce"] = "none"
        if "dense_if_len_le" in pol:
            pol["dense_if_len_le"] = b
    doc["name"] = f'{doc["name"]}-{budget}' + ("-qhead" if q_head else "")
    doc["description"] = f"Budget variant ({budget}) made by bench/quality/budget_variants.py of: " + doc["description"]
    return doc


def main():
    src, out, budgets = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True, exist_ok=True)
    names = ["dense="]
    for b in (int(x) for x in budgets.split(",")):
        for base, q_head, label in (("tidal", False, "tidal"), ("tidal", True, "tidal-qhead"),
                                    ("quest", False, "quest"), ("recycled", False, "recycled")):
            doc = json.loads((src / f"{base}.json").read_text())
            path = out / f"{label}-{b}.json"
            path.write_text(json.dumps(variant(doc, b, q_head), indent=2) + "\n")
            names.append(f"{label}-{b}={path}")
    print(",".join(names))


if __name__ == "__main__":
    main()
