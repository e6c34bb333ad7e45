#!/usr/bin/env python3
"""Merges the client processes of each point of bench/serving/run-frontend-ab-gpu.sh and
prints the A/B table.

A point is one folder holding point.json (written by the runner: label, binary, round,
concurrency, server CPU seconds) and one benchmark_serving.py results file per client process
(client-K.json). The clients of a point started their timed runs at one wall-clock moment
(--start-at), so the point's window runs from the earliest start to the latest end, and its
throughputs are all clients' tokens over that window; latency percentiles are over the
requests (TTFT, TPOT, E2E) and the gaps (ITL) of all clients together.

  ab_report.py rate POINT_DIR            prints the point's completed requests per second
  ab_report.py progress POINT_DIR        the same and output tokens per second, for a log
  ab_report.py report WORK_DIR OUT_DIR   table on stdout, ab-table.md and ab-summary.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load_point(d: Path) -> dict:
    meta = json.loads((d / "point.json").read_text())
    clients = []
    for f in sorted(d.glob("client-*.json")):
        doc = json.loads(f.read_text())
        clients.append(doc["runs"][0])
    meta["clients_found"] = len(clients)
    if not clients:
        meta["error"] = "no client results"
        return meta
    starts = [c["summary"].get("start_unix") for c in clients]
    durs = [c["summary"]["duration_s"] for c in clients]
    if all(s is not None for s in starts):
        t0 = min(starts)
        window = max(s + d for s, d in zip(starts, durs)) - t0
        skew = max(starts) - t0
    else:
        window, skew = max(durs), None
    reqs = [r for c in clients for r in c["requests"]]
    ok = [r for r in reqs if r.get("success")]
    out_tokens = sum(r["output_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    chunks = sum(r["chunks"] for r in ok)
    ttft = np.array([r["ttft_ms"] for r in ok], dtype=np.float64)
    e2e = np.array([r["e2e_ms"] for r in ok], dtype=np.float64)
    tpot = np.array([(r["e2e_ms"] - r["ttft_ms"]) / (r["output_tokens"] - 1)
                     for r in ok if r["output_tokens"] > 1], dtype=np.float64)
    itl = np.concatenate([np.asarray(r["itl_ms"], dtype=np.float64) for r in ok]
                         or [np.zeros(0)])

    def pct(a, p):
        return float(np.percentile(a, p)) if a.size else None

    errors: dict[str, int] = {}
    for c in clients:
        for k, v in c["summary"]["errors"].items():
            errors[k] = errors.get(k, 0) + v
    meta.update({
        "requests": len(reqs),
        "completed": len(ok),
        "failed": len(reqs) - len(ok),
        "errors": errors,
        "window_s": window,
        "start_skew_s": skew,
        "request_throughput": len(ok) / window,
        "output_throughput": out_tokens / window,
        "total_token_throughput": (in_tokens + out_tokens) / window,
        "mean_in_tokens": in_tokens / max(1, len(ok)),
        "mean_out_tokens": out_tokens / max(1, len(ok)),
        "tokens_per_chunk": out_tokens / max(1, chunks),
        # CPU seconds per second of the window: cores kept busy. A client near 1.0 is a
        # bottleneck of its own, and the point then measures the client, not the server.
        "server_cores": (meta["server_cpu_s"] / window
                         if meta.get("server_cpu_s") is not None else None),
        "client_cores_max": max(c["summary"].get("client_cpu_s", 0) / c["summary"]["duration_s"]
                                for c in clients),
    })
    for name, a in (("ttft_ms", ttft), ("tpot_ms", tpot), ("itl_ms", itl), ("e2e_ms", e2e)):
        meta[name] = {"n": int(a.size), "mean": float(a.mean()) if a.size else None,
                      "p50": pct(a, 50), "p90": pct(a, 90), "p99": pct(a, 99),
                      "max": float(a.max()) if a.size else None}
    return meta


def quick_rate(d: Path) -> tuple[float, float]:
    """(completed requests per second, output tokens per second) of a point from the clients'
    summaries alone, without reading every request's gaps."""
    done = tokens = 0
    spans = []
    for fpath in sorted(d.glob("client-*.json")):
        s = json.loads(fpath.read_text())["runs"][0]["summary"]
        done += s["completed"]
        tokens += s["total_output_tokens"]
        spans.append((s.get("start_unix") or 0.0, s["duration_s"]))
    if not spans:
        return 0.0, 0.0
    window = max(a + b for a, b in spans) - min(a for a, _ in spans)
    return done / window, tokens / window


def f(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


COLS = ("| binary | run | done/failed | window s | req/s | out tok/s | TTFT p50 | TTFT p99 "
        "| TPOT p50 | TPOT p99 | ITL p50 | ITL p99 | tok/chunk | server cores | client cores max |")


def row(p: dict) -> str:
    if "error" in p:
        return f"| {p['binary']} | {p['round']} | {p['error']} |"
    return (f"| {p['binary']} | {p['round']} | {p['completed']}/{p['failed']} | "
            f"{f(p['window_s'], 1)} | {f(p['request_throughput'], 1)} | "
            f"{f(p['output_throughput'], 0)} | {f(p['ttft_ms']['p50'])} | "
            f"{f(p['ttft_ms']['p99'])} | {f(p['tpot_ms']['p50'], 3)} | "
            f"{f(p['tpot_ms']['p99'], 3)} | {f(p['itl_ms']['p50'], 3)} | "
            f"{f(p['itl_ms']['p99'], 3)} | {f(p['tokens_per_chunk'])} | "
            f"{f(p['server_cores'])} | {f(p['client_cores_max'])} |")


def mean_of(points, get):
    vals = [get(p) for p in points if "error" not in p]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def report(work: Path, out: Path) -> int:
    points = []
    for d in sorted(work.glob("p*/")):
        if (d / "point.json").exists():
            points.append(load_point(d))
    measured = [p for p in points if p["label"] == "measure"]
    manifest = {}
    if (work / "manifest.json").exists():
        manifest = json.loads((work / "manifest.json").read_text())
    lines = [f"# Front-end A/B: {manifest.get('title', 'headwise serve, old vs new')}", ""]
    for k, v in manifest.items():
        if k != "title" and v:
            lines.append(f"- {k}: {v}")
    lines += ["", "Latencies in ms. TPOT: (E2E - TTFT) / (output tokens - 1); ITL: gaps "
              "between token-carrying SSE chunks (tok/chunk > 1 means tokens were coalesced). "
              "server cores: the server's CPU seconds per second of the window; client cores "
              "max: the busiest client process (near 1.0, the client itself limits the point).",
              ""]
    summary_rows = []
    status = 0
    for conc in sorted({p["concurrency"] for p in measured}, reverse=True):
        pts = [p for p in measured if p["concurrency"] == conc]
        ncl = pts[0].get("clients", 1)
        lines += [f"## max concurrency {conc} ({ncl} client process{'es' if ncl > 1 else ''})",
                  "",
                  COLS, "| --- |" + " ---: |" * (COLS.count("|") - 2)]
        lines += [row(p) for p in pts]
        means = {}
        for b in ("old", "new"):
            bp = [p for p in pts if p["binary"] == b]
            means[b] = {
                "out_tok_s": mean_of(bp, lambda p: p["output_throughput"]),
                "req_s": mean_of(bp, lambda p: p["request_throughput"]),
                "ttft_p50": mean_of(bp, lambda p: p["ttft_ms"]["p50"]),
                "ttft_p99": mean_of(bp, lambda p: p["ttft_ms"]["p99"]),
                "tpot_p50": mean_of(bp, lambda p: p["tpot_ms"]["p50"]),
                "tpot_p99": mean_of(bp, lambda p: p["tpot_ms"]["p99"]),
                "itl_p50": mean_of(bp, lambda p: p["itl_ms"]["p50"]),
                "itl_p99": mean_of(bp, lambda p: p["itl_ms"]["p99"]),
                "server_cores": mean_of(bp, lambda p: p["server_cores"]),
            }
        ratio = {k: (means["new"][k] / means["old"][k]
                     if means["new"][k] is not None and means["old"][k] else None)
                 for k in means["old"]}
        lines += ["", "| mean of runs | out tok/s | req/s | TTFT p50 | TTFT p99 | TPOT p50 | "
                  "TPOT p99 | ITL p50 | ITL p99 | server cores |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, m, d in (("old", means["old"], 3), ("new", means["new"], 3),
                           ("new / old", ratio, 3)):
            lines.append(f"| {name} | {f(m['out_tok_s'], 0 if name != 'new / old' else 3)} | "
                         f"{f(m['req_s'], 1 if name != 'new / old' else 3)} | "
                         f"{f(m['ttft_p50'], d)} | {f(m['ttft_p99'], d)} | {f(m['tpot_p50'], d)} | "
                         f"{f(m['tpot_p99'], d)} | {f(m['itl_p50'], d)} | {f(m['itl_p99'], d)} | "
                         f"{f(m['server_cores'], d)} |")
        lines.append("")
        summary_rows.append({"concurrency": conc, "mean": means, "new_over_old": ratio})
        for p in pts:
            if "error" in p or p["failed"]:
                status = 1
                lines.append(f"- {p['binary']} run {p['round']}: "
                             f"{p.get('error') or p['errors']}")
            elif (p["start_skew_s"] is not None and p["start_skew_s"] > 0.05
                  and p["start_skew_s"] > 0.02 * p["window_s"]):
                lines.append(f"- warning: {p['binary']} run {p['round']}: clients started "
                             f"{p['start_skew_s']:.2f} s apart (raise START_SLACK)")
            if "error" not in p and p["client_cores_max"] > 0.7:
                lines.append(f"- warning: {p['binary']} run {p['round']}: a client process "
                             f"kept {p['client_cores_max']:.2f} of a core busy: the client may "
                             "limit this point (raise CLIENTS)")
        if lines[-1]:
            lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ab-table.md").write_text(text)
    (out / "ab-summary.json").write_text(json.dumps(
        {"manifest": manifest, "summary": summary_rows, "points": points}, indent=1) + "\n")
    if not measured:
        return 1
    return status


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in ("rate", "progress"):
        req_s, tok_s = quick_rate(Path(argv[1]))
        print(f"{req_s:.6f}" if argv[0] == "rate" else f"{req_s:.1f} req/s, {tok_s:.0f} tok/s")
        return 0 if req_s > 0 else 1
    if len(argv) == 3 and argv[0] == "report":
        return report(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
