#!/usr/bin/env python3
"""Reference ("golden") logits from Hugging Face transformers, for headwise's model tests.

This script is the only producer of the files under tests/golden/: nothing in them is
edited by hand. It needs torch, transformers and (for the GGUF cases) the `gguf` package;
it ran on the device machine (see scripts/goldens/run-on-device.md). Everything is computed
in float32 on the CPU with eager attention and TF32 off.

For each case NAME it writes into --out:
  NAME.json         metadata (format below)
  NAME.logits.f32   raw little-endian float32 [rows, vocab]: the logits of the prompt
                    positions listed in NAME.json's logits_positions
and, for the seeded random models, the checkpoint itself under --out/models/<dir>/.

NAME.json:
  {"name", "model", "architecture", "prompt", "prompt_ids", "logits_file", "logits_shape",
   "logits_positions", "greedy_ids", "greedy_text", "versions", "command", ...extra keys}
  model: where the C++ test finds the model:
    "shared:<path under /work/shared>"  |  "smollm2-135m-instruct" (scripts/get-model.sh)
    |  "repo:tests/golden/models/<dir>"
  greedy_ids: the ids generate(do_sample=False) produced after the prompt (EOS included
    when it stopped there), [] where no greedy run was made.

Cases: tinystories-656k, stories260k, smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct,
qwen2.5-coder-1.5b-instruct, llama-gqa-rope3, qwen2-bias-bf16, mistral-mqa-f16, llama-sharded.
The Qwen cases also record the GGUF chat template rendered with tools (chat_with_tools).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_default_dtype(torch.float32)

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ATTN = "eager"
DEVICE = torch.device("cpu")

TINYSTORIES_PROMPT = "Once upon a time, there was a little"
STORIES260K_PROMPT = "Once upon a time"
SMOLLM2_MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM2_FALLBACK_TEXT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def log(*a):
    print("[make_goldens]", *a, file=sys.stderr, flush=True)


def versions() -> dict:
    def ver(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": ver("gguf"),
        "tokenizers": ver("tokenizers"),
        "safetensors": ver("safetensors"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


COMMAND = " ".join(shlex.quote(a) for a in ["python3", *sys.argv])


# ----------------------------------------------------------------------------- helpers


@torch.no_grad()
def prompt_logits(model, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] of one forward pass over the whole sequence, float32."""
    x = torch.tensor([ids], dtype=torch.long, device=DEVICE)
    out = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)
    return out.logits[0].to(torch.float32).cpu().numpy()


@torch.no_grad()
def greedy(model, ids: list[int], max_new_tokens: int) -> tuple[list[int], dict]:
    """Greedy generate() (no sampling, no penalties), default EOS stopping. Also checks the
    result against the argmax of one teacher-forced forward pass over prompt + output."""
    x = torch.tensor([ids], dtype=torch.long, device=DEVICE)
    gen_cfg = transformers.GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=model.generation_config.eos_token_id
        if model.generation_config.pad_token_id is None
        else model.generation_config.pad_token_id,
        bos_token_id=model.generation_config.bos_token_id,
    )
    out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gen_cfg)
    new = out[0, len(ids):].tolist()
    eos = gen_cfg.eos_token_id
    eos = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    info = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": gen_cfg.eos_token_id,
        "stopped_at_eos": bool(new) and new[-1] in eos,
    }
    if new:
        full = prompt_logits(model, ids + new)
        steps = full[len(ids) - 1 : len(ids) - 1 + len(new)]
        arg = steps.argmax(axis=-1).tolist()
        top2 = np.sort(steps, axis=-1)[:, -2:]
        info["teacher_forced_argmax_matches"] = arg == new
        info["min_top1_top2_margin"] = float((top2[:, 1] - top2[:, 0]).min())
    return new, info


def write_case(out: Path, meta: dict, logits: np.ndarray, positions: list[int]) -> None:
    name = meta["name"]
    logits = np.ascontiguousarray(logits, dtype="<f4")
    assert logits.ndim == 2 and logits.shape[0] == len(positions)
    assert np.isfinite(logits).all(), f"{name}: non-finite logits"
    (out / f"{name}.logits.f32").write_bytes(logits.tobytes())
    ordered = {
        "name": name,
        "model": meta.pop("model"),
        "architecture": meta.pop("architecture"),
        "prompt": meta.pop("prompt"),
        "prompt_ids": meta.pop("prompt_ids"),
        "logits_file": f"{name}.logits.f32",
        "logits_shape": list(logits.shape),
        "logits_positions": positions,
        "greedy_ids": meta.pop("greedy_ids", []),
        "greedy_text": meta.pop("greedy_text", None),
        "versions": versions(),
        "command": COMMAND,
        "logits_stats": {
            "min": float(logits.min()),
            "max": float(logits.max()),
            "std": float(logits.std()),
            "sha256": hashlib.sha256(logits.tobytes()).hexdigest(),
        },
    }
    meta.pop("name")
    ordered.update(meta)  # extra keys last
    (out / f"{name}.json").write_text(json.dumps(ordered, indent=1, ensure_ascii=False) + "\n")
    log(f"{name}: wrote {logits.shape} logits, range [{logits.min():.3f}, {logits.max():.3f}]")


def config_summary(cfg) -> dict:
    keys = [
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
        "max_position_embeddings", "tie_word_embeddings", "rope_theta", "rope_scaling",
        "rope_parameters", "sliding_window", "attention_bias", "bos_token_id",
        "eos_token_id", "pad_token_id",
    ]
    d = cfg.to_dict()
    return {k: d[k] for k in keys if k in d}


def check_tied(model) -> None:
    if model.config.tie_word_embeddings:
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        assert torch.equal(emb, head), "tied config but lm_head != embed_tokens"


def tokenizer_json_ids(model_dir: Path, text: str) -> list[int] | None:
    """The same text through the `tokenizers` library straight from tokenizer.json (the file
    the C++ tokenizer reads): a cross-check of the transformers tokenizer class."""
    path = model_dir / "tokenizer.json"
    if not path.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).encode(text, add_special_tokens=True).ids


# ----------------------------------------------------------------------------- HF dir


def case_tinystories(args, out: Path) -> None:
    d = Path(args.tinystories)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation=ATTN)
    model.to(DEVICE).eval()
    check_tied(model)
    ids = tok(TINYSTORIES_PROMPT)["input_ids"]
    logits = prompt_logits(model, ids)
    gen, ginfo = greedy(model, ids, 64)
    tj = tokenizer_json_ids(d, TINYSTORIES_PROMPT)
    write_case(out, {
        "name": "tinystories-656k",
        "model": "shared:models/tinystories-656k",
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "prompt": TINYSTORIES_PROMPT,
        "prompt_ids": ids,
        "greedy_ids": gen,
        "greedy_text": tok.decode(gen, skip_special_tokens=True),
        "add_special_tokens": True,
        "tokenizer_class": type(tok).__name__,
        "tokenizer_json_ids": tj,
        "tokenizer_json_ids_match": tj == ids if tj is not None else None,
        "generation": ginfo,
        "hf_config": config_summary(model.config),
        "compute": {"dtype": "float32", "device": str(DEVICE), "attn_implementation": ATTN},
    }, logits, list(range(len(ids))))


# ----------------------------------------------------------------------------- GGUF


def load_gguf(path: Path):
    folder, fname = str(path.parent), path.name
    notes = []
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    cfg = AutoConfig.from_pretrained(folder, gguf_file=fname)
    # A GGUF may say "no padding token" with id 0xFFFFFFFF (stories260K does); an out-of-range
    # pad id only feeds nn.Embedding's padding_idx (init and gradients, not the forward pass).
    if cfg.pad_token_id is not None and not (0 <= cfg.pad_token_id < cfg.vocab_size):
        notes.append(f"config pad_token_id {cfg.pad_token_id} out of range: set to None")
        cfg.pad_token_id = None
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=fname, config=cfg, dtype=torch.float32, attn_implementation=ATTN)
    model.to(DEVICE).eval()
    if model.generation_config.pad_token_id is not None and not (
            0 <= model.generation_config.pad_token_id < cfg.vocab_size):
        model.generation_config.pad_token_id = None
    check_tied(model)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), n
    return tok, model, notes


def gguf_case(path: Path, name: str, model_ref: str, text: str, add_special: bool,
              n_last: int | None, n_greedy: int, extra: dict, out: Path, tok=None, model=None,
              notes=None, prepend_bos: bool = False) -> None:
    if model is None:
        tok, model, notes = load_gguf(path)
    ids = tok(text, add_special_tokens=add_special)["input_ids"]
    extra = dict(extra)
    if prepend_bos:
        # llama.cpp (and llama2.c) start a prompt with BOS for an SPM ("llama") GGUF vocabulary
        # that does not say tokenizer.ggml.add_bos_token=false; transformers' GGUF tokenizer
        # does not add it, so the script does.
        bos = model.config.bos_token_id
        extra["tokenizer_ids"] = list(ids)
        extra["bos_prepended_by_script"] = not ids or ids[0] != bos
        if extra["bos_prepended_by_script"]:
            ids = [bos] + ids
    logits = prompt_logits(model, ids)
    positions = list(range(len(ids)))
    if n_last is not None:
        positions = positions[-n_last:]
        logits = logits[-n_last:]
    gen, ginfo = greedy(model, ids, n_greedy) if n_greedy else ([], None)
    meta = {
        "name": name,
        "model": model_ref,
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "prompt": text,
        "prompt_ids": ids,
        "greedy_ids": gen,
        "greedy_text": tok.decode(gen, skip_special_tokens=True) if n_greedy else None,
        "add_special_tokens": add_special,
        "tokenizer_class": type(tok).__name__,
        "gguf_file": path.name,
        "gguf_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "generation": ginfo,
        "hf_config": config_summary(model.config),
        "compute": {"dtype": "float32", "device": str(DEVICE), "attn_implementation": ATTN,
                    "weights": "GGUF dequantized by transformers/gguf-py to float32"},
        "notes": notes or [],
    }
    meta.update(extra)
    write_case(out, meta, logits, positions)


def case_stories260k(args, out: Path) -> None:
    gguf_case(Path(args.stories260k), "stories260k", "shared:models/stories260k-gguf/stories260K.gguf",
              STORIES260K_PROMPT, True, None, 64, {}, out, prepend_bos=True)


def case_smollm2(args, out: Path) -> None:
    path = Path(args.smollm2)
    tok, model, notes = load_gguf(path)
    extra = {"chat_messages": SMOLLM2_MESSAGES}
    try:
        text = tok.apply_chat_template(SMOLLM2_MESSAGES, add_generation_prompt=True, tokenize=False)
        extra["prompt_source"] = "tokenizer.apply_chat_template(chat_messages, add_generation_prompt=True) with the GGUF's chat template"
    except Exception as e:  # no template in the tokenizer: the fixed ChatML text
        text = SMOLLM2_FALLBACK_TEXT
        extra["prompt_source"] = f"fixed ChatML text (apply_chat_template failed: {type(e).__name__}: {e})"
    extra["prompt_matches_fixed_chatml"] = text == SMOLLM2_FALLBACK_TEXT
    gguf_case(path, "smollm2-135m-instruct", "smollm2-135m-instruct", text, False, 4, 32, extra,
              out, tok, model, notes)


QWEN_MESSAGES = [{"role": "user", "content": "Write a Python function that tells whether a number is prime."}]
# A conversation with a system prompt, an earlier turn and tools: what the GGUF's ChatML
# template renders for function calling (the tools block inside the system message).
QWEN_TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
}]
QWEN_TOOL_MESSAGES = [
    {"role": "system", "content": "You are a weather assistant."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is the weather in Paris?"},
]


def case_qwen(args, out: Path, name: str, path: str | None) -> None:
    path = Path(path)
    tok, model, notes = load_gguf(path)
    text = tok.apply_chat_template(QWEN_MESSAGES, add_generation_prompt=True, tokenize=False)
    with_tools = tok.apply_chat_template(QWEN_TOOL_MESSAGES, tools=QWEN_TOOLS,
                                         add_generation_prompt=True, tokenize=False)
    extra = {
        "chat_messages": QWEN_MESSAGES,
        "prompt_source": "tokenizer.apply_chat_template(chat_messages, add_generation_prompt=True) with the GGUF's chat template",
        "chat_with_tools": {"messages": QWEN_TOOL_MESSAGES, "tools": QWEN_TOOLS, "text": with_tools},
    }
    gguf_case(path, name, name, text, False, 4, 64, extra, out, tok, model, notes)


# ----------------------------------------------------------------------------- random models


def _rope_kwargs(cls, theta: float, scaling: dict | None) -> dict:
    """transformers 5 takes rope_parameters; 4.x took rope_theta + rope_scaling."""
    fields = getattr(cls, "__dataclass_fields__", None) or {}
    import inspect

    if "rope_parameters" in fields or "rope_parameters" in inspect.signature(cls.__init__).parameters:
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            params = {**scaling, "rope_theta": theta}
        return {"rope_parameters": params}
    return {"rope_theta": theta, "rope_scaling": scaling}


def _normalise_config_json(path: Path, theta: float, scaling: dict | None) -> None:
    """Writes config.json in the layout of published checkpoints (transformers 4.x, which
    transformers 5 still reads): top-level rope_theta and rope_scaling (null or an object
    with rope_type), torch_dtype, instead of transformers 5's rope_parameters / dtype."""
    cfg = json.loads(path.read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = theta
    cfg["rope_scaling"] = dict(scaling) if scaling else None
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _randomise(model, seed: int, std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:  # RMSNorm weights around 1
                p.copy_(1.0 + 0.1 * r)
            elif name.endswith(".bias"):
                p.copy_(0.2 * r)
            elif "embed_tokens" in name:
                p.copy_(0.5 * r)
            else:
                p.copy_(std * r)


RANDOM_MODELS = {
    "llama-gqa-rope3": dict(
        cls="LlamaForCausalLM", cfg="LlamaConfig", seed=1001, save_dtype=torch.float32, n_prompt=100,
        shard=None, std=0.15,
        kw=dict(vocab_size=128, hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                head_dim=8, num_hidden_layers=2, intermediate_size=160, max_position_embeddings=256,
                tie_word_embeddings=False, rms_norm_eps=1e-5),
        theta=10000.0,
        # original_max_position_embeddings 64 (not 32): with head_dim 8 and theta 1e4 the
        # wavelengths are 6.3, 63, 628, 6283, so 64/4=16 .. 64/1=64 puts one frequency in
        # each of llama3's three branches (kept, smoothed, divided by factor).
        scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen2-bias-bf16": dict(
        cls="Qwen2ForCausalLM", cfg="Qwen2Config", seed=2002, save_dtype=torch.bfloat16, n_prompt=40,
        shard=None, std=0.15,
        kw=dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                num_hidden_layers=2, intermediate_size=128, max_position_embeddings=256,
                tie_word_embeddings=True, rms_norm_eps=1e-6, use_sliding_window=False),
        theta=1000000.0, scaling=None),
    "mistral-mqa-f16": dict(
        cls="MistralForCausalLM", cfg="MistralConfig", seed=3003, save_dtype=torch.float16, n_prompt=40,
        shard=None, std=0.15,
        kw=dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                num_hidden_layers=2, intermediate_size=128, max_position_embeddings=256,
                tie_word_embeddings=False, rms_norm_eps=1e-5, sliding_window=None),
        theta=10000.0, scaling=None),
    "llama-sharded": dict(
        cls="LlamaForCausalLM", cfg="LlamaConfig", seed=4004, save_dtype=torch.float32, n_prompt=30,
        shard=48_000, std=0.2,
        kw=dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                num_hidden_layers=3, intermediate_size=88, max_position_embeddings=128,
                tie_word_embeddings=True, rms_norm_eps=1e-6),
        theta=500000.0, scaling=None),
}


def case_random(name: str, out: Path) -> None:
    spec = RANDOM_MODELS[name]
    cfg_cls = getattr(transformers, spec["cfg"])
    model_cls = getattr(transformers, spec["cls"])
    torch.manual_seed(spec["seed"])
    cfg = cfg_cls(**spec["kw"], **_rope_kwargs(cfg_cls, spec["theta"], spec["scaling"]))
    cfg.architectures = [spec["cls"]]
    model = model_cls(cfg).to(torch.float32).eval()
    _randomise(model, spec["seed"], spec["std"])
    if name.startswith("qwen2"):
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                assert proj.bias is not None and proj.bias.abs().min() > 0, "qwen2 q/k/v bias missing or zero"
    model = model.to(spec["save_dtype"])
    mdir = out / "models" / name
    mdir.mkdir(parents=True, exist_ok=True)
    save_kw = {}
    if spec["shard"]:
        save_kw["max_shard_size"] = spec["shard"]
    model.save_pretrained(mdir, **save_kw)
    _normalise_config_json(mdir / "config.json", spec["theta"], spec["scaling"])
    files = sorted(p.name for p in mdir.iterdir())
    if spec["shard"]:
        assert "model.safetensors.index.json" in files, files
        assert sum(f.endswith(".safetensors") for f in files) >= 2, files

    # The reference: the saved checkpoint read back (bf16/f16 weights upcast to float32).
    ref = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32, attn_implementation=ATTN)
    ref.to(DEVICE).eval()
    check_tied(ref)
    mem = model.to(torch.float32)
    assert sorted(mem.state_dict()) == sorted(ref.state_dict()), "reloaded weight names differ"
    for (n1, p1), (n2, p2) in zip(sorted(mem.state_dict().items()), sorted(ref.state_dict().items())):
        assert n1 == n2 and torch.equal(p1, p2), f"reloaded weight differs: {n1} / {n2}"
    want = _rope_kwargs(cfg_cls, spec["theta"], spec["scaling"])
    if "rope_parameters" in want:
        got = dict(ref.config.rope_parameters)
        for k, v in want["rope_parameters"].items():
            assert got.get(k) == v, f"rope {k}: {got.get(k)} != {v}"
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    ids = torch.randint(0, spec["kw"]["vocab_size"], (spec["n_prompt"],), generator=g).tolist()
    logits = prompt_logits(ref, ids)
    # A float32 model built from the in-memory config (before the config.json rewrite), with
    # the same (rounded) weights, must agree. Built afresh so that its rotary buffers are
    # float32 (model.to(bf16) would have rounded the in-memory model's inv_freq as well).
    fresh = model_cls(cfg).to(torch.float32)
    fresh.load_state_dict(mem.state_dict())
    mem_logits = prompt_logits(fresh.to(DEVICE).eval(), ids)
    max_diff = float(np.abs(mem_logits - logits).max())
    assert max_diff < 1e-4, f"reloaded checkpoint disagrees with the in-memory model: {max_diff}"

    write_case(out, {
        "name": name,
        "model": f"repo:tests/golden/models/{name}",
        "architecture": spec["cls"],
        "prompt": None,
        "prompt_ids": ids,
        "greedy_ids": [],
        "greedy_text": None,
        "seed": spec["seed"],
        "saved_dtype": str(spec["save_dtype"]).replace("torch.", ""),
        "model_files": files,
        "reload_vs_in_memory_max_abs_diff": max_diff,
        "hf_config": config_summary(ref.config),
        "compute": {"dtype": "float32", "device": str(DEVICE), "attn_implementation": ATTN},
    }, logits, list(range(len(ids))))


# ----------------------------------------------------------------------------- main

CASES = {
    "tinystories-656k": case_tinystories,
    "stories260k": case_stories260k,
    "smollm2-135m-instruct": case_smollm2,
    "qwen2.5-coder-0.5b-instruct": lambda args, out: case_qwen(
        args, out, "qwen2.5-coder-0.5b-instruct", args.qwen05),
    "qwen2.5-coder-1.5b-instruct": lambda args, out: case_qwen(
        args, out, "qwen2.5-coder-1.5b-instruct", args.qwen15),
    **{n: (lambda args, out, n=n: case_random(n, out)) for n in RANDOM_MODELS},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (tests/golden layout)")
    ap.add_argument("--tinystories", help="HF folder of tinystories-656k")
    ap.add_argument("--stories260k", help="stories260K.gguf")
    ap.add_argument("--smollm2", help="SmolLM2-135M-Instruct.Q4_1.gguf (scripts/get-model.sh)")
    ap.add_argument("--qwen05", help="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (scripts/get-model.sh)")
    ap.add_argument("--qwen15", help="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (scripts/get-model.sh)")
    ap.add_argument("--cases", default="all", help="comma-separated case names, or 'all'")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(CASES) if args.cases == "all" else args.cases.split(",")
    need = {"tinystories-656k": args.tinystories, "stories260k": args.stories260k,
            "smollm2-135m-instruct": args.smollm2, "qwen2.5-coder-0.5b-instruct": args.qwen05,
            "qwen2.5-coder-1.5b-instruct": args.qwen15}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log("versions", versions())
    failed = []
    for n in names:
        if n not in CASES:
            log(f"unknown case {n}")
            failed.append(n)
            continue
        if n in need and not need[n]:
            log(f"{n}: skipped (no model path given)")
            continue
        log(f"--- {n}")
        torch.manual_seed(0)
        try:
            CASES[n](args, out)
        except Exception:
            traceback.print_exc()
            failed.append(n)
    if failed:
        log("FAILED:", ",".join(failed))
        return 1
    log("all done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
