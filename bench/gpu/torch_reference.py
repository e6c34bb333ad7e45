#!/usr/bin/env python3
"""PyTorch / Hugging Face transformers reference numbers for the H100 benchmark.

Measures, at the shapes of one model config, what stock PyTorch and transformers reach on
the same GPU that headwise is benchmarked on, so our kernels and engine have a baseline:

  roofline   device-to-device copy bandwidth and bf16 GEMM rate at the prefill GEMM shapes
  attention  scaled_dot_product_attention alone, decode (q of one token vs a long KV) and
             causal prefill
  prefill    a randomly initialised LlamaForCausalLM forward over a whole prompt, batch 1
  decode     per-step decode latency of that model with StaticCache (eager and
             torch.compile) and DynamicCache, after prefilling a context

One JSON object per line on stdout (and in --out). The weights are random (from the
config, fixed seed): timing does not depend on their values and the GPU machine has no
network. Everything runs inside --budget-s; the most important decode points run first
and whatever the budget did not reach is reported as skipped, never silently dropped.

  python3 bench/gpu/torch_reference.py --out $OUT/torch.jsonl --budget-s 420
  python3 bench/gpu/torch_reference.py --device cpu --tiny          # smoke run, no GPU
"""

import time

# The budget covers the whole process, imports included, because the caller's limit does.
_T_START = time.monotonic()

import argparse
import gc
import json
import math
import os
import platform
import signal
import statistics
import sys
from pathlib import Path

# Nothing may reach for the hub: the GPU machine has no network, and a lookup would only
# stall until it times out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig, StaticCache

GIB = 2**30
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "models" / "llama-3-8b"


class BudgetExceeded(BaseException):
    """Raised from SIGALRM; a BaseException so library code catching Exception lets it through."""


class Budget:
    def __init__(self, seconds):
        self.seconds = seconds
        self.deadline = _T_START + seconds
        self.spent = False
        self._critical = 0
        self._pending = False

    def remaining(self):
        return self.deadline - time.monotonic()

    def arm(self):
        # The pre-checks before each point use estimates; a compile that runs long could still
        # overrun them, and the caller kills the whole process at its own limit, losing the
        # summary. The alarm turns that into a clean stop.
        if not hasattr(signal, "SIGALRM"):
            return
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.remaining()))

    def _on_alarm(self, signum, frame):
        self.spent = True
        if self._critical:
            self._pending = True
        else:
            raise BudgetExceeded()

    def critical(self):
        budget = self

        class _Ctx:
            def __enter__(self):
                budget._critical += 1

            def __exit__(self, *exc):
                budget._critical -= 1
                if not budget._critical and budget._pending:
                    budget._pending = False
                    raise BudgetExceeded()
                return False

        return _Ctx()


class Emitter:
    def __init__(self, common, out_path, budget):
        self.common = common
        self.budget = budget
        self.out = None
        self.not_run = []
        if out_path:
            Path(out_path).parent.mkdir(parents=True, exist_ok=True)
            self.out = open(out_path, "w")

    def __call__(self, record):
        if "skipped" in record:
            what = "/".join(str(record[k]) for k in ("kind", "op", "impl") if k in record)
            where = " ".join(f"{k}={record[k]}" for k in ("batch", "context", "tokens") if k in record)
            self.not_run.append(f"{what} {where}: {record['skipped']}")
        line = json.dumps({**record, **self.common})
        # A line cut in half by the alarm would make the whole file unparseable.
        with self.budget.critical():
            print(line, flush=True)
            if self.out:
                self.out.write(line + "\n")
                self.out.flush()


def rnd(x, digits=4):
    if x is None or isinstance(x, (int, str)):
        return x
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - int(math.floor(math.log10(abs(x))))))


def short_error(e, limit=300):
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text[:limit]


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Device:
    def __init__(self, name):
        self.name = name
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"
        self.max_peak = 0.0

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        if not self.cuda:
            return None
        peak = torch.cuda.max_memory_allocated() / GIB
        self.max_peak = max(self.max_peak, peak)
        return rnd(peak)

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def description(self):
        if self.cuda:
            return torch.cuda.get_device_name()
        return platform.processor() or platform.machine() or "cpu"


def time_calls(dev, fn, warmup, reps, inner=1):
    """Seconds per call of fn, one sample per group of `inner` back-to-back calls.

    Ops of a few microseconds are timed in groups so that the event resolution and the
    per-sample synchronisation do not dominate; `fn(i)` gets the call index so callers can
    rotate through buffers.
    """
    for i in range(warmup):
        fn(i)
    dev.sync()
    samples = []
    k = 0
    for _ in range(reps):
        if dev.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn(k)
                k += 1
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn(k)
                k += 1
            samples.append((time.perf_counter() - t0) / inner)
    return samples


# ----------------------------------------------------------------------------- model shapes


class Shapes:
    def __init__(self, cfg):
        self.hidden = cfg.hidden_size
        self.layers = cfg.num_hidden_layers
        self.q_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.q_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.q_heads
        self.inter = cfg.intermediate_size
        self.vocab = cfg.vocab_size
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False))

    def projections(self):
        """(name, K, N) of each GEMM a token goes through in one layer, fused as engines fuse them."""
        h, d = self.hidden, self.head_dim
        return [
            ("qkv", h, (self.q_heads + 2 * self.kv_heads) * d),
            ("o", self.q_heads * d, h),
            ("gate_up", h, 2 * self.inter),
            ("down", self.inter, h),
        ]

    def weight_bytes(self, elem=2):
        per_layer = sum(k * n for _, k, n in self.projections()) + 2 * self.hidden
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return elem * (self.layers * per_layer + embed + self.hidden)

    def kv_bytes(self, batch, tokens, elem=2):
        return 2 * self.layers * batch * tokens * self.kv_heads * self.head_dim * elem


def tiny_config():
    return LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def load_config(args):
    if args.tiny:
        return tiny_config(), "tiny-llama"
    path = Path(args.config)
    if path.is_file():
        path = path.parent
    return AutoConfig.from_pretrained(str(path)), path.name


# ----------------------------------------------------------------------------- roofline


def run_roofline(args, dev, shapes, emit):
    nbytes = int(args.copy_mib * 2**20)
    src = torch.ones(nbytes, dtype=torch.uint8, device=dev.torch)
    dst = torch.empty_like(src)
    t = time_calls(dev, lambda i: dst.copy_(src), warmup=3, reps=args.reps)
    med = statistics.median(t)
    del src, dst
    dev.free()

    gemms = []
    total_flops = 0.0
    total_time = 0.0
    m = args.gemm_m
    for name, k, n in shapes.projections():
        a = torch.randn(m, k, dtype=torch.bfloat16, device=dev.torch)
        # nn.Linear stores W as [N, K] and multiplies by its transpose; measure that layout.
        w = torch.randn(n, k, dtype=torch.bfloat16, device=dev.torch)
        c = torch.empty(m, n, dtype=torch.bfloat16, device=dev.torch)
        wt = w.t()
        ts = time_calls(dev, lambda i: torch.matmul(a, wt, out=c), warmup=3, reps=args.reps)
        g = statistics.median(ts)
        flops = 2.0 * m * k * n
        total_flops += flops
        total_time += g
        gemms.append({"name": name, "m": m, "k": k, "n": n, "ms": rnd(g * 1e3),
                      "tflops": rnd(flops / g / 1e12)})
        del a, w, c, wt
    dev.free()
    emit({
        "kind": "roofline",
        "copy_bytes": nbytes,
        "copy_gb_per_s": rnd(2 * nbytes / med / 1e9),
        "copy_ms": rnd(med * 1e3),
        "gemm_dtype": "bfloat16",
        "gemm_layout": "x[M,K] @ W[N,K]^T",
        "gemm": gemms,
        "gemm_tflops_overall": rnd(total_flops / total_time / 1e12),
    })


# ----------------------------------------------------------------------------- attention


def sdpa_backends(dev):
    if not dev.cuda:
        return []
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:
        return []
    names = [("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
             ("cudnn", "CUDNN_ATTENTION"), ("math", "MATH")]
    return [(label, getattr(SDPBackend, attr)) for label, attr in names if hasattr(SDPBackend, attr)]


def time_sdpa(dev, call, backend, warmup, reps, inner):
    if backend is None:
        return time_calls(dev, call, warmup, reps, inner)
    import warnings
    from torch.nn.attention import sdpa_kernel
    # A backend that cannot take these inputs warns at length before it raises; the error
    # string in the record says enough.
    with warnings.catch_warnings(), sdpa_kernel([backend]):
        warnings.simplefilter("ignore")
        return time_calls(dev, call, warmup, reps, inner)


def run_attention(args, dev, shapes, emit, budget):
    hq, hkv, d = shapes.q_heads, shapes.kv_heads, shapes.head_dim
    backends = sdpa_backends(dev)

    for b in args.attn_batches:
        for c in args.attn_contexts:
            if budget.remaining() < 5:
                emit({"kind": "attention", "op": "sdpa-decode", "batch": b, "context": c,
                      "skipped": "budget"})
                continue
            kv_bytes = 2 * b * hkv * c * d * 2
            # K/V that fit in L2 would flatter the bandwidth; in a model each layer's KV comes
            # from HBM, so rotate through enough copies to exceed the cache.
            copies = max(1, min(32, math.ceil(args.rotate_mib * 2**20 / kv_bytes)))
            need = copies * kv_bytes + b * hq * d * 4 * 2
            if need > args.mem_gib * GIB:
                emit({"kind": "attention", "op": "sdpa-decode", "batch": b, "context": c,
                      "skipped": f"does not fit: needs {need / GIB:.1f} GiB"})
                continue
            dev.reset_peak()
            q = torch.randn(b, hq, 1, d, dtype=torch.bfloat16, device=dev.torch)
            ks = [torch.randn(b, hkv, c, d, dtype=torch.bfloat16, device=dev.torch) for _ in range(copies)]
            vs = [torch.randn(b, hkv, c, d, dtype=torch.bfloat16, device=dev.torch) for _ in range(copies)]

            def call(i):
                j = i % copies
                return F.scaled_dot_product_attention(q, ks[j], vs[j], enable_gqa=True)

            inner = max(copies, 8)
            rec = {"kind": "attention", "op": "sdpa-decode", "batch": b, "context": c,
                   "q_heads": hq, "kv_heads": hkv, "head_dim": d, "gqa": "enable_gqa",
                   "kv_bytes": kv_bytes, "rotated_copies": copies}
            try:
                t = statistics.median(time_sdpa(dev, call, None, 3, args.reps, inner))
                rec.update(us=rnd(t * 1e6), gb_per_s=rnd(kv_bytes / t / 1e9))
                by = {}
                for label, be in backends:
                    try:
                        tb = statistics.median(time_sdpa(dev, call, be, 2, max(3, args.reps // 2), inner))
                        by[label] = {"us": rnd(tb * 1e6), "gb_per_s": rnd(kv_bytes / tb / 1e9)}
                    except Exception as e:  # noqa: BLE001 - an unsupported backend is a result
                        by[label] = {"error": short_error(e, 160)}
                if by:
                    rec["by_backend"] = by
            except RuntimeError as e:
                rec["error"] = short_error(e)
            rec["peak_mem_gib"] = dev.peak_gib()
            emit(rec)
            del q, ks, vs
            dev.free()

    for t_len in args.attn_prefill_tokens:
        if budget.remaining() < 5:
            emit({"kind": "attention", "op": "sdpa-prefill", "batch": 1, "tokens": t_len,
                  "skipped": "budget"})
            continue
        dev.reset_peak()
        q = torch.randn(1, hq, t_len, d, dtype=torch.bfloat16, device=dev.torch)
        k = torch.randn(1, hkv, t_len, d, dtype=torch.bfloat16, device=dev.torch)
        v = torch.randn(1, hkv, t_len, d, dtype=torch.bfloat16, device=dev.torch)
        flops = 4.0 * t_len * (t_len + 1) / 2 * d * hq

        def call(i):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        inner = 4 if t_len <= 2048 else 1
        rec = {"kind": "attention", "op": "sdpa-prefill", "batch": 1, "tokens": t_len,
               "q_heads": hq, "kv_heads": hkv, "head_dim": d, "gqa": "enable_gqa",
               "causal_flops": flops}
        try:
            t = statistics.median(time_sdpa(dev, call, None, 3, args.reps, inner))
            rec.update(us=rnd(t * 1e6), tflops=rnd(flops / t / 1e12))
            by = {}
            for label, be in backends:
                if label == "math" and t_len > 4096:
                    # Math materialises the T x T scores per head: slow and large, and no one
                    # would serve a long prompt with it.
                    by[label] = {"skipped": "math backend at this length"}
                    continue
                try:
                    tb = statistics.median(time_sdpa(dev, call, be, 2, max(3, args.reps // 2), inner))
                    by[label] = {"us": rnd(tb * 1e6), "tflops": rnd(flops / tb / 1e12)}
                except Exception as e:  # noqa: BLE001 - an unsupported backend is a result
                    by[label] = {"error": short_error(e, 160)}
            if by:
                rec["by_backend"] = by
        except RuntimeError as e:
            rec["error"] = short_error(e)
        rec["peak_mem_gib"] = dev.peak_gib()
        emit(rec)
        del q, k, v
        dev.free()


# ----------------------------------------------------------------------------- model


def build_model(cfg, dev, seed):
    torch.manual_seed(seed)
    try:
        # Built directly on the device: initialising 8B parameters on the host first would
        # take longer than most of the measurements.
        with torch.device(dev.torch):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
    except TypeError:
        # transformers 4.x spells it torch_dtype.
        with torch.device(dev.torch):
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", torch_dtype=torch.bfloat16)
    p = next(model.parameters())
    if p.device.type != dev.torch.type or p.dtype != torch.bfloat16:
        model = model.to(device=dev.torch, dtype=torch.bfloat16)
    model.eval()
    attn = getattr(model.config, "_attn_implementation", None)
    n_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    return model, attn, n_bytes


def forward_kwargs(model):
    import inspect
    params = inspect.signature(model.forward).parameters
    if "logits_to_keep" in params:
        return {"logits_to_keep": 1}
    if "num_logits_to_keep" in params:
        return {"num_logits_to_keep": 1}
    return {}


def make_static_cache(cfg, batch, max_len, dev):
    import inspect
    params = inspect.signature(StaticCache.__init__).parameters
    kw = {"config": cfg, "max_cache_len": max_len}
    # Older releases size the cache up front; newer ones infer batch, device and dtype from
    # the first update.
    if "max_batch_size" in params:
        kw["max_batch_size"] = batch
    if "batch_size" in params:
        kw["batch_size"] = batch
    if "device" in params:
        kw["device"] = dev.torch
    if "dtype" in params:
        kw["dtype"] = torch.bfloat16
    return StaticCache(**kw)


def run_prefill(args, dev, model, emit, budget, extra):
    logits_kw = forward_kwargs(model)
    tps = None
    for t_len in args.prefill_tokens:
        if budget.remaining() < 10:
            emit({"kind": "prefill", "impl": "transformers", "batch": 1, "tokens": t_len, "skipped": "budget"})
            continue
        ids = torch.randint(0, model.config.vocab_size, (1, t_len), device=dev.torch)
        dev.reset_peak()
        rec = {"kind": "prefill", "impl": "transformers", "batch": 1, "tokens": t_len, **extra}
        try:
            def call(i):
                return model(input_ids=ids, use_cache=True, **logits_kw)

            ts = time_calls(dev, call, warmup=2, reps=max(3, args.reps // 2))
            t = statistics.median(ts)
            tps = t_len / t
            rec.update(ms=rnd(t * 1e3), tokens_per_s=rnd(tps), logits=("last" if logits_kw else "all"))
        except RuntimeError as e:
            rec["error"] = "oom" if is_oom(e) else short_error(e)
        rec["peak_mem_gib"] = dev.peak_gib()
        emit(rec)
        del ids
        dev.free()
    return tps


class DecodeRunner:
    """Times decode steps of one model at several (batch, context) points."""

    def __init__(self, args, dev, cfg, model, shapes, emit, budget, extra, prefill_tps):
        self.args = args
        self.dev = dev
        self.cfg = cfg
        self.model = model
        self.shapes = shapes
        self.emit = emit
        self.budget = budget
        self.extra = extra
        self.logits_kw = forward_kwargs(model)
        self.prefill_tps = prefill_tps or args.prefill_tps_guess
        self.compile_enabled = args.compile == "on" or (args.compile == "auto" and dev.cuda)
        self.compile_broken = None
        self.last_compile_s = None
        self.weights_bytes = sum(t.numel() * t.element_size() for t in model.parameters())

    # -- sizing

    def max_cache_len(self, context):
        steps = self.args.warmup + self.args.steps
        # Eager and compiled runs share one prefill and keep appending: room for both and
        # for a second compile attempt.
        need = context + 3 * steps + 1
        return ((need + 63) // 64) * 64

    def chunk_rows(self, batch, context):
        return max(1, min(context, self.args.prefill_chunk // batch))

    def need_bytes(self, batch, context):
        s = self.shapes
        max_len = self.max_cache_len(context)
        chunk = self.chunk_rows(batch, context) * batch
        kv = s.kv_bytes(batch, max_len)
        # transformers repeats K/V to all query heads when it passes a mask to SDPA, which
        # it does for a static cache; one layer's copy is alive at a time.
        repeat = 2 * batch * s.q_heads * max_len * s.head_dim * 2
        mask = batch * self.chunk_rows(batch, context) * max_len * 2
        acts = chunk * (s.hidden * 2 * 8 + s.inter * 2 * 3)
        logits = batch * s.vocab * 4 * 2
        overhead = self.args.overhead_gib * GIB
        return self.weights_bytes + kv + repeat + mask + acts + logits + overhead, kv

    def impls(self, batch):
        names = ["transformers-static"]
        if self.compile_enabled:
            names.append("transformers-static-compile")
        if batch in self.args.dynamic_batches:
            names.append("transformers-dynamic")
        return names

    def estimate_s(self, batch, context):
        tokens = batch * context
        # Static-cache prefill attends over the whole preallocated length, so the attention
        # share grows with the context; a rough factor is enough to decide what to skip.
        prefill = tokens / self.prefill_tps * (1.0 + context / 16384)
        steps = 2 * (self.args.warmup + self.args.steps) * (0.05 + batch * context * 2e-9)
        return prefill + steps + 2.0

    # -- pieces

    def base(self, impl, batch, context):
        return {"kind": "decode", "impl": impl, "batch": batch, "context": context}

    def skip(self, impl, batch, context, why):
        self.emit({**self.base(impl, batch, context), "skipped": why, **self.extra})

    def prefill(self, cache, batch, context):
        dev = self.dev
        ids = torch.randint(0, self.cfg.vocab_size, (batch, context), device=dev.torch)
        rows = self.chunk_rows(batch, context)
        dev.sync()
        t0 = time.perf_counter()
        for start in range(0, context, rows):
            end = min(context, start + rows)
            pos = torch.arange(start, end, device=dev.torch)
            self.model(input_ids=ids[:, start:end], past_key_values=cache, cache_position=pos,
                       use_cache=True, **self.logits_kw)
        dev.sync()
        del ids
        return time.perf_counter() - t0

    def steps(self, fwd, cache, tok, pos, n, graphs):
        """Runs n decode steps; returns per-step seconds, next token and position.

        Each step ends in a synchronisation because a server must see the sampled token
        before it can stream it or stop, so that wait is part of the latency we compare with.
        """
        times = []
        for _ in range(n):
            cp = torch.full((1,), pos, dtype=torch.long, device=self.dev.torch)
            t0 = time.perf_counter()
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            out = fwd(input_ids=tok, past_key_values=cache, cache_position=cp, use_cache=True)
            # A new tensor, so a later graph replay cannot overwrite it.
            tok = out.logits[:, -1, :].argmax(-1, keepdim=True)
            self.dev.sync()
            times.append(time.perf_counter() - t0)
            pos += 1
            del out
        return times, tok, pos

    def summarise(self, rec, times, batch):
        med = statistics.median(times)
        srt = sorted(times)
        rec.update(
            steps=len(times),
            warmup=self.args.warmup,
            ms_per_token=rnd(med * 1e3),
            ms_mean=rnd(statistics.fmean(times) * 1e3),
            ms_min=rnd(srt[0] * 1e3),
            ms_p90=rnd(srt[min(len(srt) - 1, int(0.9 * len(srt)))] * 1e3),
            tokens_per_s=rnd(batch / med),
        )

    # -- one point

    def run_point(self, batch, context):
        args = self.args
        impls = self.impls(batch)
        need, kv = self.need_bytes(batch, context)
        if need > args.mem_gib * GIB:
            for impl in impls:
                self.skip(impl, batch, context, f"does not fit: needs {need / GIB:.1f} GiB")
            return
        est = self.estimate_s(batch, context)
        remaining = self.budget.remaining()
        if remaining < est:
            for impl in impls:
                self.skip(impl, batch, context, f"budget: ~{est:.0f} s needed, {max(0, remaining):.0f} s left")
            return

        max_len = self.max_cache_len(context)
        common = {"max_cache_len": max_len, "kv_cache_gib": rnd(kv / GIB),
                  "weights_gib": rnd(self.weights_bytes / GIB), "need_estimate_gib": rnd(need / GIB),
                  "prefill_chunk_rows": self.chunk_rows(batch, context)}
        done = set()
        try:
            self._static(batch, context, max_len, common, impls, est, done)
            if "transformers-dynamic" in impls:
                self._dynamic(batch, context, common, done)
        except BudgetExceeded:
            for impl in impls:
                if impl not in done:
                    self.skip(impl, batch, context, "budget: spent while this point ran")
            raise
        finally:
            self._cleanup()

    def _cleanup(self):
        if self.compile_enabled:
            # Compiled graphs (and their CUDA graph pools) keep the old cache alive; drop them
            # so the next point has the memory. The next shape would recompile anyway.
            torch._dynamo.reset()
        self.dev.free()

    def _static(self, batch, context, max_len, common, impls, est, done):
        args, dev = self.args, self.dev
        dev.reset_peak()
        cache = make_static_cache(self.cfg, batch, max_len, dev)
        try:
            prefill_s = self.prefill(cache, batch, context)
        except RuntimeError as e:
            why = "oom in prefill" if is_oom(e) else short_error(e)
            for impl in impls:
                if impl != "transformers-dynamic":
                    done.add(impl)
                    self.emit({**self.base(impl, batch, context), **common, "error": why, **self.extra})
            del cache
            self.dev.free()
            return
        # Measured rate replaces the guess, so later points are estimated from this machine.
        self.prefill_tps = batch * context / prefill_s / (1.0 + context / 16384)
        tok = torch.randint(0, self.cfg.vocab_size, (batch, 1), device=dev.torch)
        pos = context

        rec = {**self.base("transformers-static", batch, context), **common, "prefill_s": rnd(prefill_s)}
        try:
            _, tok, pos = self.steps(self.model, cache, tok, pos, args.warmup, graphs=False)
            times, tok, pos = self.steps(self.model, cache, tok, pos, args.steps, graphs=False)
            self.summarise(rec, times, batch)
        except RuntimeError as e:
            rec["error"] = "oom" if is_oom(e) else short_error(e)
        rec["peak_mem_gib"] = dev.peak_gib()
        done.add("transformers-static")
        self.emit({**rec, **self.extra})

        if "transformers-static-compile" in impls:
            self._compiled(cache, tok, pos, batch, context, common, est, done)
        del cache, tok

    def _compiled(self, cache, tok, pos, batch, context, common, est, done):
        args, dev = self.args, self.dev
        impl = "transformers-static-compile"
        rec = {**self.base(impl, batch, context), **common, "compile_mode": args.compile_mode}
        if self.compile_broken:
            done.add(impl)
            self.skip(impl, batch, context, f"compile failed earlier: {self.compile_broken}")
            return
        guess = self.last_compile_s or args.compile_guess_s
        remaining = self.budget.remaining()
        if remaining < guess + 5:
            done.add(impl)
            self.skip(impl, batch, context,
                      f"budget: compile ~{guess:.0f} s, {max(0, remaining):.0f} s left")
            return
        graphs = dev.cuda and "reduce-overhead" in args.compile_mode
        attempts = [True, False] if args.fullgraph else [False]
        errors = []
        for fullgraph in attempts:
            # A failed attempt may have written some steps; the cache decides where we are.
            pos = int(cache.get_seq_length())
            if pos + args.warmup + args.steps > self.max_cache_len(context):
                errors.append(f"fullgraph={fullgraph}: no room left in the cache")
                break
            counters = torch._dynamo.utils.counters
            skips0 = counters["inductor"]["cudagraph_skips"]
            graphs0 = counters["stats"]["unique_graphs"]
            compiled = torch.compile(self.model, mode=args.compile_mode, fullgraph=fullgraph, dynamic=False)
            try:
                # The first calls trace, compile and (with CUDA graphs) record; their time is
                # the compile cost a server would pay per shape.
                warm, tok2, pos2 = self.steps(compiled, cache, tok, pos, args.warmup, graphs)
                times, tok2, pos2 = self.steps(compiled, cache, tok2, pos2, args.steps, graphs)
            except BudgetExceeded:
                raise
            except Exception as e:  # noqa: BLE001 - any compiler failure falls back to eager
                errors.append(f"fullgraph={fullgraph}: " + ("oom" if is_oom(e) else short_error(e, 200)))
                del compiled
                torch._dynamo.reset()
                if is_oom(e):
                    break
                continue
            # Warmup steps minus what the same steps cost once compiled: the compile itself.
            compile_s = max(0.0, sum(warm) - len(warm) * statistics.median(times))
            self.last_compile_s = compile_s
            self.summarise(rec, times, batch)
            # Asking for CUDA graphs does not mean they ran: inductor silently skips them on
            # some inputs, and then this line measures something else.
            skips = counters["inductor"]["cudagraph_skips"] - skips0
            rec.update(fullgraph=fullgraph, cuda_graphs=graphs and skips == 0, cudagraph_skips=skips,
                       dynamo_graphs=counters["stats"]["unique_graphs"] - graphs0, compile_s=rnd(compile_s),
                       warmup_ms=[rnd(x * 1e3) for x in warm], peak_mem_gib=dev.peak_gib())
            if errors:
                rec["compile_errors"] = errors
            done.add(impl)
            self.emit({**rec, **self.extra})
            del compiled
            return
        if not any("oom" in e for e in errors):
            self.compile_broken = errors[-1] if errors else "unknown"
        rec.update(error="compile failed; the eager static line is the fallback", compile_errors=errors,
                   peak_mem_gib=dev.peak_gib())
        done.add(impl)
        self.emit({**rec, **self.extra})

    def _dynamic(self, batch, context, common, done):
        args, dev = self.args, self.dev
        impl = "transformers-dynamic"
        if self.budget.remaining() < self.estimate_s(batch, context):
            done.add(impl)
            self.skip(impl, batch, context, "budget")
            return
        dev.reset_peak()
        rec = {**self.base(impl, batch, context), "weights_gib": common["weights_gib"],
               "kv_cache_gib": rnd(self.shapes.kv_bytes(batch, context) / GIB),
               "prefill_chunk_rows": common["prefill_chunk_rows"]}
        cache = DynamicCache()
        try:
            rec["prefill_s"] = rnd(self.prefill(cache, batch, context))
            tok = torch.randint(0, self.cfg.vocab_size, (batch, 1), device=dev.torch)
            _, tok, pos = self.steps(self.model, cache, tok, context, args.warmup, graphs=False)
            times, tok, pos = self.steps(self.model, cache, tok, pos, args.steps, graphs=False)
            self.summarise(rec, times, batch)
        except RuntimeError as e:
            rec["error"] = "oom" if is_oom(e) else short_error(e)
        rec["peak_mem_gib"] = dev.peak_gib()
        done.add(impl)
        self.emit({**rec, **self.extra})
        del cache


def decode_order(batches, contexts):
    """Batch 1 at every context, the second batch at the two shortest, then the rest cheapest first."""
    batches = list(batches)
    contexts = sorted(contexts)
    first = [(batches[0], c) for c in contexts] if batches else []
    if len(batches) > 1:
        first += [(batches[1], c) for c in contexts[:2]]
    rest = [(b, c) for b in batches for c in contexts if (b, c) not in first]
    rest.sort(key=lambda p: (p[0] * p[1], p[0]))
    return first + rest


# ----------------------------------------------------------------------------- main


def parse_int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="model config directory (config.json)")
    p.add_argument("--out", help="also write the JSON lines to this file")
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget for the whole run")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--tiny", action="store_true", help="2-layer toy config and small shapes (smoke run)")
    p.add_argument("--sections", default="roofline,attention,prefill,decode")
    p.add_argument("--batches", type=parse_int_list, help="decode batches (default 1,8,32,64)")
    p.add_argument("--contexts", type=parse_int_list, help="decode contexts (default 1024,8192,32768)")
    p.add_argument("--dynamic-batches", type=parse_int_list, default=[1],
                   help="batches that also run with DynamicCache")
    p.add_argument("--prefill-tokens", type=parse_int_list, help="prefill lengths (default 1024,8192)")
    p.add_argument("--attn-batches", type=parse_int_list, help="SDPA decode batches (default 1,8,32)")
    p.add_argument("--attn-contexts", type=parse_int_list, help="SDPA decode contexts (default = --contexts)")
    p.add_argument("--attn-prefill-tokens", type=parse_int_list, help="SDPA prefill lengths (default = --prefill-tokens)")
    p.add_argument("--steps", type=int, default=16, help="timed decode steps")
    p.add_argument("--warmup", type=int, default=3, help="decode warmup steps (compile and graph capture happen here)")
    p.add_argument("--reps", type=int, default=10, help="samples for the micro-benchmarks")
    p.add_argument("--gemm-m", type=int, help="tokens of the roofline GEMMs (default 8192)")
    p.add_argument("--copy-mib", type=float, help="copy buffer size (default 2048)")
    p.add_argument("--rotate-mib", type=float, default=256.0, help="K/V bytes rotated through to defeat L2")
    p.add_argument("--prefill-chunk", type=int, default=4096, help="prefill tokens per forward, all rows together")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the decode step (auto: on for cuda)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default reduce-overhead on cuda)")
    p.add_argument("--no-fullgraph", dest="fullgraph", action="store_false",
                   help="compile with graph breaks allowed from the start")
    p.add_argument("--compile-guess-s", type=float, default=90.0,
                   help="compile time assumed before the first one is measured")
    p.add_argument("--prefill-tps-guess", type=float, default=8000.0,
                   help="prefill tokens/s assumed if the prefill section did not run")
    p.add_argument("--mem-gib", type=float, default=78.0, help="GPU memory a point may need")
    p.add_argument("--overhead-gib", type=float, default=3.0, help="allowance for workspaces and fragmentation")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny
    args.batches = args.batches or ([1, 2] if tiny else [1, 8, 32, 64])
    args.contexts = args.contexts or ([64, 256] if tiny else [1024, 8192, 32768])
    args.prefill_tokens = args.prefill_tokens or ([64, 256] if tiny else [1024, 8192])
    args.attn_batches = args.attn_batches or ([1, 2] if tiny else [1, 8, 32])
    args.attn_contexts = args.attn_contexts or args.contexts
    args.attn_prefill_tokens = args.attn_prefill_tokens or args.prefill_tokens
    args.gemm_m = args.gemm_m or (256 if tiny else 8192)
    args.copy_mib = args.copy_mib or (64.0 if tiny else 2048.0)
    if tiny:
        args.rotate_mib = min(args.rotate_mib, 8.0)
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if args.device.startswith("cuda") else "default"
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    return args


def main(argv=None):
    args = parse_args(argv)
    dev = Device(args.device)
    if dev.cuda and not torch.cuda.is_available():
        sys.exit("cuda requested but not available; use --device cpu --tiny for a smoke run")
    budget = Budget(args.budget_s)
    cfg, cfg_name = load_config(args)
    shapes = Shapes(cfg)

    common = {"device": dev.description(), "torch": torch.__version__,
              "transformers": transformers.__version__, "model": cfg_name}
    emit = Emitter(common, args.out, budget)
    emit({"kind": "run", "argv": sys.argv[1:], "budget_s": args.budget_s, "device_type": dev.torch.type,
          "python": platform.python_version(), "cuda": torch.version.cuda,
          "gpu_mem_gib": rnd(torch.cuda.get_device_properties(0).total_memory / GIB) if dev.cuda else None,
          "shapes": vars(shapes), "weights_gib_estimate": rnd(shapes.weight_bytes() / GIB)})

    if dev.cuda:
        # Every point is its own shape and we recompile freely; the default limit would make
        # dynamo silently fall back to eager after a handful of points.
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 256)

    budget.arm()
    pending = list(args.sections)
    model = None
    torch.set_grad_enabled(False)
    try:
        if "roofline" in args.sections:
            run_roofline(args, dev, shapes, emit)
            pending.remove("roofline")
        if "attention" in args.sections:
            run_attention(args, dev, shapes, emit, budget)
            pending.remove("attention")

        prefill_tps = None
        if "prefill" in args.sections or "decode" in args.sections:
            # Prompts and caches below reach positions past the config's limit.
            longest = max(args.contexts + args.prefill_tokens) + 2 * (args.steps + args.warmup) + 64
            cfg.max_position_embeddings = max(cfg.max_position_embeddings, longest)
            t0 = time.perf_counter()
            model, attn, n_bytes = build_model(cfg, dev, args.seed)
            dev.sync()
            extra = {"attn_implementation": attn}
            emit({"kind": "model", "build_s": rnd(time.perf_counter() - t0), "weights_gib": rnd(n_bytes / GIB),
                  "attn_implementation": attn, "dtype": "bfloat16", "init": f"random, seed {args.seed}",
                  "max_position_embeddings": cfg.max_position_embeddings})
            if "prefill" in args.sections:
                prefill_tps = run_prefill(args, dev, model, emit, budget, extra)
                pending.remove("prefill")
            if "decode" in args.sections:
                runner = DecodeRunner(args, dev, cfg, model, shapes, emit, budget, extra, prefill_tps)
                points = decode_order(args.batches, args.contexts)
                i = -1
                try:
                    for i, (b, c) in enumerate(points):
                        runner.run_point(b, c)
                    pending.remove("decode")
                except BudgetExceeded:
                    pending.remove("decode")
                    budget.spent = True
                    # Still one line per point, so a table built from the file has no holes.
                    for b, c in points[i + 1:]:
                        need, _ = runner.need_bytes(b, c)
                        for impl in runner.impls(b):
                            if need > args.mem_gib * GIB:
                                runner.skip(impl, b, c, f"does not fit: needs {need / GIB:.1f} GiB")
                            else:
                                runner.skip(impl, b, c, "budget")
    except BudgetExceeded:
        budget.spent = True
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.setitimer(signal.ITIMER_REAL, 0)

    not_run = [f"section {name}: budget" for name in pending] + emit.not_run
    emit({"kind": "summary", "elapsed_s": rnd(time.monotonic() - _T_START), "budget_s": args.budget_s,
          "budget_spent": budget.spent, "not_run": not_run, "max_peak_mem_gib": rnd(dev.max_peak) if dev.cuda else None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
