#!/usr/bin/env python3
"""Online serving benchmark for an OpenAI-compatible server (headwise serve, or any other).

Sends --num-prompts requests with Poisson arrivals at --request-rate (req/s; "inf" sends them
all at once) to /v1/completions (default) or /v1/chat/completions, streaming, and measures per
request:
  TTFT  time from sending the request to the first streamed chunk that carries a token
  ITL   every gap between consecutive token-carrying chunks (a chunk may hold several tokens)
  TPOT  (e2e - TTFT) / (output tokens - 1), for requests with more than one output token
  E2E   time from sending the request to the end of the stream
and reports request / output-token / total-token throughput and mean, p50, p90, p99 of each
latency. Output lengths are exact: ignore_eos=true and max_tokens=output length; prompt and
output token counts are taken from the server's usage chunk (stream_options.include_usage).

Prompts are random token-id lists (the completions API accepts `prompt: [ids]`), or random
text made of words that are one token each (checked with the server's /tokenize, or with a
local tokenizer.json given by --tokenizer), so the prompt length in tokens is known.

--request-rate takes a comma-separated list: each rate is one run (same seed, same prompts),
all written to one results file: bench/results/<name>.json and .md with the date (UTC), the
machine, the git commit, the command line, the server command line and the model.

--start-server "headwise serve MODEL ..." launches the server on a free 127.0.0.1 port, waits
until it is ready, runs the benchmark and stops it.

Example:
  PY=$(scripts/python-env.sh)
  $PY bench/serving/benchmark_serving.py --base-url http://127.0.0.1:8000 \\
      --num-prompts 50 --request-rate 1,2 --input-len 128 --output-len 64 --tag mytest
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]

# Common English words; in byte-level BPE and sentencepiece vocabularies " word" is usually
# one token. Only those the tokenizer confirms as one token are used.
WORDS = """
the of and to in is was for on that with as by at from his he it an are be this which or
had not but have they one were all their she her been has who its new more also when two
there time other into first after would some about up out only over then them year can
these may such most where between many later during him well used under three made world
city number part both state people since known while work found day game life being same
well long before each through state back any end use high name place way both great school
city found film war house set own line good form team four show group school family year
best part high major law book local down five man men early land water area play take
name came make five side six red music river last old march north south east west small
second series based home club public day word light still road work near left until part
general long death head power king hand field order place love church against top major
without even power point under within air story full class open help few across art case
often around along green black white blue gold green life town light body party center
""".split()


# ----------------------------------------------------------------------------------------------
# Requests and their measurements


@dataclass
class RequestSpec:
    index: int
    prompt: object  # list[int] (token ids) or str
    prompt_len: int  # intended prompt tokens (for chat: tokens of the message text)
    output_len: int


@dataclass
class RequestResult:
    index: int
    success: bool = False
    error: str = ""
    prompt_len_sent: int = 0
    prompt_tokens: int = 0  # from the server's usage, else the intended length
    output_tokens: int = 0  # from the server's usage, else the number of token chunks
    usage_reported: bool = False
    chunks: int = 0  # token-carrying chunks
    send_time: float = 0.0  # seconds since the start of the run
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list = field(default_factory=list)
    finish_reason: str = ""

    def add_token_chunk(self, now: float, start: float, last: float) -> float:
        """Counts a token-carrying chunk that arrived at `now` (TTFT for the first, an ITL gap
        after `last` for the others); returns `now`, the next chunk's `last`."""
        self.chunks += 1
        if self.chunks == 1:
            self.ttft = now - start
        else:
            self.itl.append(now - last)
        return now


def _chunk_content(endpoint: str, choice: dict) -> tuple[str | None, bool]:
    """(text of this chunk or None, whether it is a role-only chunk)."""
    if endpoint == "chat":
        delta = choice.get("delta") or {}
        content = delta.get("content")
        role_only = "role" in delta and not content
        return content, role_only
    return choice.get("text"), False


def _is_token_chunk(endpoint: str, choice: dict) -> bool:
    """A chunk that carries generated tokens. Text can be empty for a token that detokenizes
    to nothing (a special token with ignore_eos), so an empty chunk counts unless it is the
    chat role chunk or a chunk that only carries the finish reason."""
    content, role_only = _chunk_content(endpoint, choice)
    if role_only:
        return False
    if content:
        return True
    return choice.get("finish_reason") is None


async def send_request(session: aiohttp.ClientSession, args, model: str, spec: RequestSpec,
                       t0: float, timeout_s: float) -> RequestResult:
    res = RequestResult(index=spec.index, prompt_len_sent=spec.prompt_len)
    body: dict = {
        "model": model,
        "max_tokens": spec.output_len,
        "temperature": args.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.endpoint == "chat":
        url = args.base_url + "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        url = args.base_url + "/v1/completions"
        body["prompt"] = spec.prompt
    if args.extra_body:
        body.update(args.extra_body)

    start = time.perf_counter()
    res.send_time = start - t0
    last = start
    got_done = False
    try:
        async with session.post(url, json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                res.error = f"HTTP {resp.status}: {text}"
                return res
            buf = b""
            async for raw in resp.content:
                now = time.perf_counter()
                buf += raw
                if not buf.endswith(b"\n"):
                    continue  # a partial line (very long chunk): wait for its end
                line = buf.strip()
                buf = b""
                if not line or line.startswith(b":"):
                    continue  # event separator or SSE comment
                if not line.startswith(b"data:"):
                    continue  # event:, id:, retry: fields are not used by this API
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    got_done = True
                    break
                data = json.loads(payload)
                if "error" in data and not data.get("choices"):
                    err = data["error"]
                    res.error = "stream error: " + (err.get("message", str(err))
                                                    if isinstance(err, dict) else str(err))
                    return res
                usage = data.get("usage")
                if usage:
                    res.usage_reported = True
                    res.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                    res.output_tokens = int(usage.get("completion_tokens") or 0)
                choices = data.get("choices") or []
                if not choices:
                    continue
                choice = choices[0]
                if choice.get("finish_reason"):
                    res.finish_reason = choice["finish_reason"]
                if not _is_token_chunk(args.endpoint, choice):
                    continue
                last = res.add_token_chunk(now, start, last)
        end = time.perf_counter()
    except asyncio.TimeoutError:
        res.error = f"timeout after {timeout_s:g} s"
        return res
    except (aiohttp.ClientError, json.JSONDecodeError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res

    res.e2e = end - start
    if res.chunks == 0:
        res.error = "stream ended without a token"
        return res
    if not got_done:
        res.error = "stream ended without [DONE]"
        return res
    if res.finish_reason == "error":
        res.error = "finish_reason error"
        return res
    if not res.usage_reported:
        res.prompt_tokens = spec.prompt_len
        res.output_tokens = res.chunks
    res.success = True
    return res


async def send_request_grpc(pb, stub, args, model: str, spec: RequestSpec, t0: float,
                            timeout_s: float) -> RequestResult:
    """The same measurements over headwise's gRPC Generate (proto/headwise/v1; `pb` its
    messages): a message that carries token ids is a token chunk; the last one carries the
    usage."""
    import grpc

    res = RequestResult(index=spec.index, prompt_len_sent=spec.prompt_len)
    req = pb.GenerateRequest(model=model, max_tokens=spec.output_len,
                             temperature=args.temperature)
    if args.ignore_eos:
        req.ignore_eos = True
    if isinstance(spec.prompt, list):
        req.token_ids.ids.extend(spec.prompt)
    else:
        req.text = spec.prompt
    start = time.perf_counter()
    res.send_time = start - t0
    last = start
    try:
        async for m in stub.Generate(req, timeout=timeout_s):
            now = time.perf_counter()
            if m.HasField("usage"):
                res.usage_reported = True
                res.prompt_tokens = m.usage.prompt_tokens
                res.output_tokens = m.usage.completion_tokens
            if m.finish_reason:
                res.finish_reason = m.finish_reason
            if not m.token_ids:
                continue
            last = res.add_token_chunk(now, start, last)
        end = time.perf_counter()
    except grpc.aio.AioRpcError as e:
        res.error = f"gRPC {e.code().name}: {e.details()}"
        return res
    res.e2e = end - start
    if res.chunks == 0:
        res.error = "stream ended without a token"
        return res
    if not res.usage_reported:
        res.error = "stream ended without usage"
        return res
    res.success = True
    return res


def grpc_stubs():
    """headwise's gRPC messages and stubs, generated from proto/ (proto/headwise_stubs.py)."""
    sys.path.insert(0, str(REPO_ROOT / "proto"))
    import headwise_stubs

    return headwise_stubs.load()


# ----------------------------------------------------------------------------------------------
# Prompts


def sample_lengths(rng: random.Random, n: int, mean: int, ratio: float) -> list[int]:
    """Uniform integers in [mean*(1-ratio), mean*(1+ratio)], at least 1; exactly `mean` when
    ratio is 0."""
    lo = max(1, int(math.floor(mean * (1.0 - ratio))))
    hi = max(lo, int(math.ceil(mean * (1.0 + ratio))))
    return [rng.randint(lo, hi) for _ in range(n)]


class Tokenizer:
    """Token counting for text prompts: the server's /tokenize or a local tokenizer.json."""

    def __init__(self, kind: str, count):
        self.kind = kind
        self._count = count

    async def count(self, text: str) -> int:
        return await self._count(text)


async def server_tokenize(session, base_url: str, model: str, text: str) -> list | None:
    """The server's /tokenize (vLLM's shape: {"model", "prompt"} -> {"tokens": [...]});
    None when there is none."""
    body = {"model": model, "prompt": text, "add_special_tokens": False}
    for path in ("/tokenize", "/v1/tokenize"):
        try:
            async with session.post(base_url + path, json=body,
                                    timeout=aiohttp.ClientTimeout(total=30)) as resp:
                if resp.status != 200:
                    continue
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, ValueError):
            continue
        for key in ("tokens", "token_ids", "ids"):
            if isinstance(data.get(key), list):
                return data[key]
    return None


async def make_tokenizer(session, args, model: str) -> Tokenizer | None:
    if args.tokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        tok = HFTokenizer.from_file(args.tokenizer)

        async def count_local(text):
            return len(tok.encode(text, add_special_tokens=False).ids)

        return Tokenizer(f"local {args.tokenizer}", count_local)
    if await server_tokenize(session, args.base_url, model, "hello world") is not None:
        async def count_server(text):
            ids = await server_tokenize(session, args.base_url, model, text)
            if ids is None:
                raise RuntimeError("/tokenize stopped answering")
            return len(ids)

        return Tokenizer("server /tokenize", count_server)
    return None


async def one_token_words(tok: Tokenizer | None) -> list[str]:
    words = sorted(set(WORDS))
    if tok is None:
        return words
    good = [w for w in words if await tok.count(" " + w) == 1]
    if len(good) < 20:
        raise SystemExit(f"benchmark_serving: only {len(good)} one-token words for this "
                         "tokenizer; use --prompt-format ids")
    return good


async def build_prompts(session, args, model: str, prompt_format: str,
                        tok: Tokenizer | None) -> tuple[list[RequestSpec], dict]:
    # Every run gets its own prompts (the server's prefix cache would serve a repeated prompt
    # from cache): n = runs x (warm-up + measured), drawn from one seeded generator.
    rng = random.Random(args.seed)
    n = (args.num_prompts + args.num_warmup) * len(args.request_rate)
    in_lens = sample_lengths(rng, n, args.input_len, args.random_range_ratio)
    out_lens = sample_lengths(rng, n, args.output_len, args.random_range_ratio)
    info: dict = {"prompt_format": prompt_format}
    specs = []
    if prompt_format == "ids":
        lo, hi = args.token_id_range
        info["token_id_range"] = [lo, hi]
        for i in range(n):
            ids = [rng.randrange(lo, hi) for _ in range(in_lens[i])]
            specs.append(RequestSpec(i, ids, in_lens[i], out_lens[i]))
        return specs, info

    words = await one_token_words(tok)
    info["tokenizer"] = tok.kind if tok else "none (prompt lengths estimated as one token a word)"
    info["word_pool"] = len(words)
    mismatches = 0
    for i in range(n):
        # A leading space on every word keeps each word its own pre-token, so the count of a
        # joined prompt is the sum of its words'; checked below when a tokenizer is at hand.
        target = in_lens[i]
        text_words = [rng.choice(words) for _ in range(target)]
        text = "".join(" " + w for w in text_words)
        if tok is not None:
            got = await tok.count(text)
            for _ in range(8):  # bounded fix-up: drop or add words until the count matches
                if got == target:
                    break
                if got > target and len(text_words) > 1:
                    text_words.pop()
                else:
                    text_words.append(rng.choice(words))
                text = "".join(" " + w for w in text_words)
                got = await tok.count(text)
            if got != target:
                mismatches += 1
        specs.append(RequestSpec(i, text, target, out_lens[i]))
    info["prompt_length_mismatches"] = mismatches
    return specs, info


# ----------------------------------------------------------------------------------------------
# One run at one request rate


def _busy_jiffies() -> int | None:
    """Busy CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    return sum(f[:8]) - f[3] - f[4]


def _proc_jiffies(pid: int) -> int:
    """utime + stime of a process (its threads included), in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return 0


class CpuMeter:
    """CPU seconds used during a run by the server, by this client, and by everything else on
    the machine (a build or tests running beside the benchmark skew its numbers)."""

    def __init__(self, server_pid: int | None):
        self.pids = {"server": server_pid, "client": os.getpid()}
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self):
        return (_busy_jiffies(), {k: _proc_jiffies(p) if p else 0 for k, p in self.pids.items()})

    def stop(self, duration: float) -> dict:
        total1, procs1 = self._sample()
        total0, procs0 = self.start
        out = {f"{k}_cpu_s": round((procs1[k] - procs0[k]) / self.hz, 2) for k in self.pids}
        if total0 is not None and total1 is not None:
            others = (total1 - total0) - sum(procs1[k] - procs0[k] for k in self.pids)
            out["other_cpu_s"] = round(max(0, others) / self.hz, 2)
            out["other_cpu_cores"] = round(max(0, others) / self.hz / max(duration, 1e-9), 2)
        return out


async def run_rate(args, model: str, specs: list[RequestSpec], rate: float,
                   run_index: int, server_pid: int | None = None) -> dict:
    # --no-keepalive: a connection per request. llama-server closes the connection after every
    # streamed response while announcing keep-alive, so a reused connection fails the next
    # request ("Server disconnected"); with it, both servers pay the same loopback connect.
    connector = aiohttp.TCPConnector(limit=0, force_close=args.no_keepalive)
    per_run = args.num_warmup + args.num_prompts
    specs = specs[run_index * per_run:(run_index + 1) * per_run]
    warm, specs = specs[: args.num_warmup], specs[args.num_warmup:]
    grpc_channel = None
    if args.endpoint == "grpc":
        import grpc

        pb, pb_grpc = grpc_stubs()
        grpc_channel = grpc.aio.insecure_channel(args.grpc_target)
        stub = pb_grpc.HeadwiseStub(grpc_channel)

        async def send(session, args, model, spec, t0, timeout_s):
            return await send_request_grpc(pb, stub, args, model, spec, t0, timeout_s)
    else:
        send = send_request
    async with aiohttp.ClientSession(connector=connector) as session:
        for w in warm:
            r = await send(session, args, model, w, time.perf_counter(), args.request_timeout)
            if not r.success:
                raise SystemExit(f"benchmark_serving: warm-up request failed: {r.error}")

        rng = np.random.default_rng(args.seed)
        sem = asyncio.Semaphore(args.max_concurrency or len(specs))
        in_flight = 0
        max_in_flight = 0

        async def limited(spec, t0):
            nonlocal in_flight, max_in_flight
            async with sem:
                in_flight += 1
                max_in_flight = max(max_in_flight, in_flight)
                try:
                    return await send(session, args, model, spec, t0, args.request_timeout)
                finally:
                    in_flight -= 1

        if args.start_at:
            # Several client processes share one server: each sends its warm-up, then all
            # start their timed runs at the same wall-clock moment, so their windows align.
            await asyncio.sleep(max(0.0, args.start_at - time.time()))
        load_before = os.getloadavg()
        meter = CpuMeter(server_pid)
        start_unix = time.time()
        t0 = time.perf_counter()
        tasks = []
        next_t = 0.0
        for k, spec in enumerate(specs):
            if k > 0 and not math.isinf(rate):
                next_t += float(rng.exponential(1.0 / rate))
                delay = next_t - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(limited(spec, t0)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - t0
        load_after = os.getloadavg()
        cpu = meter.stop(duration)
    if grpc_channel is not None:
        await grpc_channel.close()

    summary = summarize(results, duration, args.percentiles)
    summary.update({
        "request_rate": "inf" if math.isinf(rate) else f"{rate:g}",
        "max_concurrency": args.max_concurrency,
        "max_in_flight": max_in_flight,
        "start_unix": start_unix,
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
        **cpu,
    })
    return {"summary": summary, "requests": [request_record(r) for r in results]}


def request_record(r: RequestResult) -> dict:
    d = {
        "index": r.index, "success": r.success, "send_s": round(r.send_time, 4),
        "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
        "chunks": r.chunks, "ttft_ms": round(r.ttft * 1e3, 3), "e2e_ms": round(r.e2e * 1e3, 3),
        "itl_ms": [round(x * 1e3, 3) for x in r.itl],
    }
    if r.error:
        d["error"] = r.error
    return d


def stats(values_ms: list, percentiles: list[float]) -> dict:
    if not values_ms:
        return {"n": 0, "mean": None, "std": None, "max": None,
                **{f"p{p:g}": None for p in percentiles}}
    a = np.asarray(values_ms, dtype=np.float64)
    out = {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()),
           "max": float(a.max())}
    for p in percentiles:
        out[f"p{p:g}"] = float(np.percentile(a, p))
    return out


def summarize(results: list[RequestResult], duration: float, percentiles: list[float]) -> dict:
    ok = [r for r in results if r.success]
    failed = [r for r in results if not r.success]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    ttft = [r.ttft * 1e3 for r in ok]
    e2e = [r.e2e * 1e3 for r in ok]
    tpot = [(r.e2e - r.ttft) * 1e3 / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itl = [x * 1e3 for r in ok for x in r.itl]
    errors: dict[str, int] = {}
    for r in failed:
        key = r.error[:120]
        errors[key] = errors.get(key, 0) + 1
    return {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": len(failed),
        "errors": errors,
        "duration_s": duration,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "usage_reported": all(r.usage_reported for r in ok),
        "output_tokens_per_chunk": (total_out / max(1, sum(r.chunks for r in ok))),
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "mean_concurrency": sum(r.e2e for r in ok) / duration,
        "ttft_ms": stats(ttft, percentiles),
        "tpot_ms": stats(tpot, percentiles),
        "itl_ms": stats(itl, percentiles),
        "e2e_ms": stats(e2e, percentiles),
    }


# ----------------------------------------------------------------------------------------------
# Server management (--start-server)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """Runs a server command on a free loopback port; stdout+stderr go to a log file."""

    READY = re.compile(r"listening on http://")

    def __init__(self, cmd: str, log_path: Path, timeout_s: float):
        argv = shlex.split(cmd)
        self.port = free_port()
        if "{port}" in cmd:
            argv = [a.replace("{port}", str(self.port)) for a in argv]
        else:
            if any(a == "--port" or a.startswith("--port=") for a in argv):
                raise SystemExit("benchmark_serving: --start-server picks the port itself; "
                                 "drop --port (or write {port} where it goes)")
            if not any(a == "--host" or a.startswith("--host=") for a in argv):
                argv += ["--host", "127.0.0.1"]
            argv += ["--port", str(self.port)]
        self.argv = argv
        self.cmdline = shlex.join(argv)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self._ready_line = threading.Event()

    def _pump(self, log):
        assert self.proc and self.proc.stdout
        for line in iter(self.proc.stdout.readline, b""):
            log.write(line)
            log.flush()
            if self.READY.search(line.decode(errors="replace")):
                self._ready_line.set()

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        print(f"benchmark_serving: starting server: {self.cmdline}", file=sys.stderr)
        print(f"benchmark_serving: server log: {self.log_path}", file=sys.stderr)
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        threading.Thread(target=self._pump, args=(self._log,), daemon=True).start()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"benchmark_serving: server exited with code "
                                 f"{self.proc.returncode} before it was ready:\n"
                                 f"{self.log_tail()}")
            if self._ready_line.is_set() and self._health_ok():
                return
            if self._health_ok():
                return
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"benchmark_serving: server not ready after {self.timeout_s:g} s:\n"
                         f"{self.log_tail()}")

    def _health_ok(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        print(f"benchmark_serving: server stopped (exit code {self.proc.returncode})",
              file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Metadata and reports


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def git_commit() -> str:
    commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    # Dirty: tracked files differ from HEAD, results files aside (a run writes those).
    try:
        rc = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!bench/results"],
                            cwd=REPO_ROOT, capture_output=True, timeout=30).returncode
    except (OSError, subprocess.TimeoutExpired):
        return commit  # no git here (a copy of the tree on another machine)
    return commit + ("-dirty" if rc != 0 else "")


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "memory_gib": mem_gib,
            "os": platform.platform()}


def command_line() -> str:
    """The command as typed, with the script path relative to the repository root."""
    argv = list(sys.argv)
    try:
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO_ROOT))
    except ValueError:
        pass
    return shlex.join(["python3"] + argv)


async def get_model_name(base_url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(base_url + "/v1/models",
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
                if r.status != 200:
                    return None
                data = await r.json(content_type=None)
        return data["data"][0]["id"]
    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError, ValueError):
        return None


async def ids_accepted(base_url: str, model: str, lo: int) -> bool:
    body = {"model": model, "prompt": [lo, lo + 1, lo + 2, lo + 3], "max_tokens": 1,
            "temperature": 0.0}
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(base_url + "/v1/completions", json=body,
                              timeout=aiohttp.ClientTimeout(total=120)) as r:
                return r.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def results_json(meta: dict, runs: list[dict]) -> str:
    """Metadata and summaries indented; one line per request."""
    doc = {**meta, "runs": [{"summary": r["summary"], "requests": f"@@REQUESTS{k}@@"}
                            for k, r in enumerate(runs)]}
    text = json.dumps(doc, indent=1)
    for k, r in enumerate(runs):
        reqs = "[\n" + ",\n".join("   " + json.dumps(q) for q in r["requests"]) + "\n  ]"
        text = text.replace(f'"@@REQUESTS{k}@@"', reqs)
    return text + "\n"


def fmt(v, digits=2) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return f"{v:.{digits}f}"


def throughput_table(runs: list[dict]) -> list[str]:
    rows = ["| rate (req/s) | done | failed | duration (s) | req/s | output tok/s "
            "| total tok/s | mean in / out tokens | mean concurrency |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        s = run["summary"]
        n = max(1, s["completed"])
        rows.append(
            f"| {s['request_rate']} | {s['completed']} | {s['failed']} | "
            f"{fmt(s['duration_s'], 1)} | {fmt(s['request_throughput'], 3)} | "
            f"{fmt(s['output_throughput'], 1)} | {fmt(s['total_token_throughput'], 1)} | "
            f"{s['total_input_tokens'] / n:.0f} / {s['total_output_tokens'] / n:.0f} | "
            f"{fmt(s['mean_concurrency'], 2)} |")
    return rows


def latency_table(runs: list[dict], percentiles: list[float]) -> list[str]:
    pcols = [f"p{p:g}" for p in percentiles]
    rows = ["| rate (req/s) | metric (ms) | mean | " + " | ".join(pcols) + " | max |",
            "| ---: | --- | ---: | " + " | ".join("---:" for _ in pcols) + " | ---: |"]
    for run in runs:
        s = run["summary"]
        for key, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"),
                           ("e2e_ms", "E2E")):
            st = s[key]
            rows.append(f"| {s['request_rate']} | {label} | {fmt(st['mean'])} | "
                        + " | ".join(fmt(st[c]) for c in pcols) + f" | {fmt(st['max'])} |")
    return rows


def markdown_report(meta: dict, runs: list[dict], percentiles: list[float]) -> str:
    cfg = meta["config"]
    lines = [
        f"# Serving benchmark: {meta['tag']}",
        "",
        f"- date (UTC): {meta['date_utc']}",
        f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']} GiB",
        f"- commit: {meta['commit']}",
        f"- command: `{meta['command']}`",
        f"- server command: `{meta['server_command'] or 'not given'}`",
        f"- model: {meta['model']}",
        f"- endpoint: {meta['endpoint']} (streaming), prompts: {meta['prompts']['prompt_format']}"
        + (f", tokenizer: {meta['prompts'].get('tokenizer')}"
           if meta['prompts']['prompt_format'] == 'text' else ""),
        f"- requests per rate: {cfg['num_prompts']} (+{cfg['num_warmup']} warm-up), input "
        f"{cfg['input_len']} and output {cfg['output_len']} tokens, range ratio "
        f"{cfg['random_range_ratio']}, seed {cfg['seed']}, max concurrency "
        f"{cfg['max_concurrency'] or 'unlimited'}, temperature {cfg['temperature']}, "
        f"ignore_eos {cfg['ignore_eos']}",
        "- CPU seconds during each run, server / client / all other processes (the last "
        "should be near 0 on an idle machine): " + ", ".join(
            f"{r['summary']['request_rate']} req/s: {r['summary'].get('server_cpu_s', '-')} / "
            f"{r['summary'].get('client_cpu_s', '-')} / {r['summary'].get('other_cpu_s', '-')}"
            for r in runs),
        "- load average (1 min, this benchmark's own server and client included) before/after "
        "each run: " + ", ".join(
            f"{r['summary']['request_rate']}: {r['summary']['loadavg_1m_before']}/"
            f"{r['summary']['loadavg_1m_after']}" for r in runs),
        "",
        "TTFT: send to first token-carrying chunk. ITL: gaps between token-carrying chunks. "
        "TPOT: (E2E - TTFT) / (output tokens - 1). Token counts from the server's usage "
        "chunk. Throughputs over the wall time of the run (first send to last completion).",
        "",
        "## Throughput",
        "",
        *throughput_table(runs),
        "",
        "## Latency",
        "",
        *latency_table(runs, percentiles),
    ]
    errs = {}
    for r in runs:
        for k, v in r["summary"]["errors"].items():
            errs[f"{r['summary']['request_rate']}: {k}"] = v
    if errs:
        lines += ["", "## Failures", ""] + [f"- {k} ({v}x)" for k, v in errs.items()]
    if meta.get("notes"):
        lines += ["", "## Notes", "", meta["notes"]]
    return "\n".join(lines) + "\n"


def print_run(summary: dict, percentiles: list[float]):
    w = 44
    print("=" * (w + 16))
    print(f"{'Request rate (req/s):':<{w}}{summary['request_rate']}")
    for label, key, d in (("Successful requests:", "completed", 0),
                          ("Failed requests:", "failed", 0),
                          ("Duration (s):", "duration_s", 2),
                          ("Total input tokens:", "total_input_tokens", 0),
                          ("Total output tokens:", "total_output_tokens", 0),
                          ("Request throughput (req/s):", "request_throughput", 3),
                          ("Output token throughput (tok/s):", "output_throughput", 2),
                          ("Total token throughput (tok/s):", "total_token_throughput", 2),
                          ("Mean concurrency:", "mean_concurrency", 2),
                          ("Max requests in flight:", "max_in_flight", 0)):
        v = summary[key]
        print(f"{label:<{w}}{v:.{d}f}" if isinstance(v, float) else f"{label:<{w}}{v}")
    print(f"{'CPU s server / client / other processes:':<{w}}"
          f"{summary.get('server_cpu_s', '-')} / {summary.get('client_cpu_s', '-')} / "
          f"{summary.get('other_cpu_s', '-')}")
    for key, label in (("ttft_ms", "Time to first token"), ("tpot_ms", "Time per output token "
                       "(excl. 1st)"), ("itl_ms", "Inter-token latency"),
                       ("e2e_ms", "End-to-end latency")):
        print(f"{'-' * 8} {label} {'-' * max(2, w + 6 - len(label))}")
        st = summary[key]
        print(f"{'Mean (ms):':<{w}}{fmt(st['mean'])}")
        for p in percentiles:
            print(f"{f'P{p:g} (ms):':<{w}}{fmt(st[f'p{p:g}'])}")
    for err, n in summary["errors"].items():
        print(f"error ({n}x): {err}")
    print("=" * (w + 16), flush=True)


# ----------------------------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        v = math.inf if part in ("inf", "infinity") else float(part)
        if not (v > 0):
            raise argparse.ArgumentTypeError(f"request rate must be > 0: {part}")
        rates.append(v)
    return rates


def parse_range(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split(":"))
    if not 0 <= lo < hi:
        raise argparse.ArgumentTypeError("want LO:HI with 0 <= LO < HI")
    return lo, hi


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("server")
    g.add_argument("--base-url", default="http://127.0.0.1:8000",
                   help="server to benchmark (ignored with --start-server)")
    g.add_argument("--start-server", metavar="CMD",
                   help="launch this server command on a free 127.0.0.1 port (--host/--port "
                        "are appended, or write {port}), wait until ready, stop it at the end")
    g.add_argument("--server-cmd", metavar="TEXT",
                   help="the command line the server was started with, for the results file")
    g.add_argument("--server-timeout", type=float, default=300.0,
                   help="seconds to wait for a started server to become ready")
    g.add_argument("--server-log", default="/tmp/headwise-bench-server.log",
                   help="where a started server's output goes")
    g.add_argument("--model", help="model name for requests (default: first of /v1/models)")
    g = p.add_argument_group("workload")
    g.add_argument("--endpoint", choices=["completions", "chat", "grpc"], default="completions",
                   help="grpc: headwise's gRPC Generate at --grpc-target (the REST API at "
                   "--base-url still names the model and counts prompt tokens)")
    g.add_argument("--grpc-target", default="127.0.0.1:50051", metavar="HOST:PORT")
    g.add_argument("--num-prompts", type=int, default=100, help="requests per rate")
    g.add_argument("--request-rate", type=parse_rates, default=[math.inf],
                   help="req/s, Poisson arrivals; 'inf' = all at once; comma-separated list "
                        "for several runs")
    g.add_argument("--max-concurrency", type=int, default=None,
                   help="at most this many requests in flight (arrivals queue behind it)")
    g.add_argument("--input-len", type=int, default=128, help="prompt tokens")
    g.add_argument("--output-len", type=int, default=64, help="output tokens (max_tokens)")
    g.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len*(1-r), len*(1+r)]; 0 = fixed")
    g.add_argument("--prompt-format", choices=["auto", "ids", "text"], default="auto",
                   help="ids: token-id lists (completions only); text: one-token words; "
                        "auto: ids for completions when the server accepts them, else text")
    g.add_argument("--token-id-range", type=parse_range, default=(1000, 10000),
                   metavar="LO:HI", help="random prompt token ids are drawn from [LO, HI)")
    g.add_argument("--tokenizer", help="local tokenizer.json to count text prompt tokens "
                                       "(default: the server's /tokenize if it has one)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let requests stop at EOS (output lengths are then not exact)")
    g.add_argument("--extra-body", type=json.loads, default=None, metavar="JSON",
                   help="extra fields merged into every request body")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num-warmup", type=int, default=1,
                   help="requests sent one by one before each run, not measured")
    g.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    g.add_argument("--no-keepalive", action="store_true",
                   help="open a connection per request (llama-server closes streamed ones)")
    g.add_argument("--start-at", type=float, default=None, metavar="UNIX_TIME",
                   help="after the warm-up, wait until this wall-clock time (time.time()) "
                        "before each timed run: lines up several client processes")
    g = p.add_argument_group("results")
    g.add_argument("--percentiles", default="50,90,99",
                   type=lambda s: [float(x) for x in s.split(",")])
    g.add_argument("--tag", default="run", help="names the results file")
    g.add_argument("--result-dir", default=str(REPO_ROOT / "bench" / "results"))
    g.add_argument("--result-name", help="file name without extension (default: "
                                         "serving-<tag>-<date>)")
    g.add_argument("--notes", default="", help="text for the Notes section of the report")
    g.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = p.parse_args(argv)
    if args.num_prompts < 1:
        p.error("--num-prompts must be >= 1")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        p.error("--max-concurrency must be >= 1")
    if not 0.0 <= args.random_range_ratio < 1.0:
        p.error("--random-range-ratio must be in [0, 1)")
    if args.input_len < 1 or args.output_len < 1:
        p.error("--input-len and --output-len must be >= 1")
    if args.endpoint == "chat" and args.prompt_format == "ids":
        p.error("--prompt-format ids needs --endpoint completions")
    if args.endpoint == "grpc" and args.extra_body:
        p.error("--extra-body is for the REST endpoints")
    args.base_url = args.base_url.rstrip("/")
    return args


async def main_async(args, server: ManagedServer | None) -> int:
    model = args.model or await get_model_name(args.base_url)
    if not model:
        raise SystemExit(f"benchmark_serving: no --model and {args.base_url}/v1/models gave none")
    prompt_format = args.prompt_format
    if prompt_format == "auto":
        prompt_format = ("ids" if args.endpoint in ("completions", "grpc")
                         and await ids_accepted(args.base_url, model, args.token_id_range[0])
                         else "text")
    async with aiohttp.ClientSession() as session:
        tok = (await make_tokenizer(session, args, model)) if prompt_format == "text" else None
        if prompt_format == "text" and tok is None:
            print("benchmark_serving: warning: no tokenizer (server has no /tokenize, no "
                  "--tokenizer); prompt lengths are estimates, counts come from usage",
                  file=sys.stderr)
        specs, prompt_info = await build_prompts(session, args, model, prompt_format, tok)

    date = dt.datetime.now(dt.timezone.utc)
    meta = {
        "tag": args.tag,
        "date_utc": date.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "commit": git_commit(),
        "command": command_line(),
        "server_command": server.cmdline if server else args.server_cmd,
        "model": model,
        "endpoint": args.endpoint,
        "base_url": args.base_url,
        "prompts": prompt_info,
        "client": {"python": platform.python_version(), "aiohttp": aiohttp.__version__},
        "config": {k: getattr(args, k) for k in (
            "num_prompts", "num_warmup", "input_len", "output_len", "random_range_ratio",
            "seed", "max_concurrency", "temperature", "ignore_eos", "request_timeout",
            "token_id_range", "extra_body")},
        "notes": args.notes,
    }
    print(f"benchmark_serving: model {model}, endpoint {args.endpoint}, prompts "
          f"{prompt_format}, {args.num_prompts} requests per rate", file=sys.stderr)

    runs = []
    for k, rate in enumerate(args.request_rate):
        print(f"benchmark_serving: rate {rate} req/s ...", file=sys.stderr, flush=True)
        run = await run_rate(args, model, specs, rate, k,
                             server.proc.pid if server and server.proc else None)
        print_run(run["summary"], args.percentiles)
        runs.append(run)

    md = markdown_report(meta, runs, args.percentiles)
    print()
    print("\n".join(throughput_table(runs)))
    print()
    print("\n".join(latency_table(runs, args.percentiles)))
    if not args.no_save:
        out_dir = Path(args.result_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        name = args.result_name or f"serving-{args.tag}-{date.strftime('%Y-%m-%d')}"
        (out_dir / f"{name}.json").write_text(results_json(meta, runs))
        (out_dir / f"{name}.md").write_text(md)
        print(f"benchmark_serving: wrote {out_dir / name}.md and .json", file=sys.stderr)
    failed = sum(r["summary"]["failed"] for r in runs)
    return 1 if failed == sum(r["summary"]["num_requests"] for r in runs) else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    # A TERM (a wrapper script stopped) unwinds like an exception, so a started server stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = None
    if args.start_server:
        server = ManagedServer(args.start_server, Path(args.server_log), args.server_timeout)
        args.base_url = server.base_url
    try:
        if server:
            server.start()
        return asyncio.run(main_async(args, server))
    except KeyboardInterrupt:
        return 130
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
