#!/usr/bin/env python3
"""Checks that headwise serves GGUF tensors in Hugging Face names and layout.

Builds tiny random Llama and Qwen2 models in HF layout, writes them as GGUF the way
llama.cpp's convert_hf_to_gguf.py does (GGUF names, gguf-py's reversed dims, and for Llama the
Q/K rows permuted by the converter's own `permute`, copied below), in a mix of tensor types,
plus a reference GGUF holding the HF tensors as f32 under their HF names. The C++ checker
(tests/models/gguf_quants_check.cc --model) opens the first with OpenModel and compares every
weight with the reference, bit for bit.

Usage: models_gguf_layout.py CHECKER [WORKDIR]
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

HIDDEN, HEADS, KV_HEADS, INTER, VOCAB, LAYERS = 256, 8, 2, 512, 64, 2
HEAD_DIM = HIDDEN // HEADS


# convert_hf_to_gguf.py, LlamaModel.permute (verbatim apart from the numpy type).
def permute(weights: np.ndarray, n_head: int, n_head_kv: int | None):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def random_k_blocks(rng, qtype, rows, cols):
    """Random but valid K-quant blocks: random bytes with finite fp16 scales."""
    half_fields = {T.Q4_K: [0, 2], T.Q6_K: [208]}[qtype]
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n, type_size), dtype=np.uint8)
    for off in half_fields:
        h = (rng.standard_normal(n) * 0.01).astype(np.float16)
        blocks[:, off : off + 2] = h.view(np.uint8).reshape(n, 2)
    return blocks.reshape(rows, cols // block_size * type_size)


def write_model(arch, model_path, ref_path, rng):
    w = GGUFWriter(model_path, arch)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HEAD_DIM)
    ref = GGUFWriter(ref_path, arch)
    llama = arch == "llama"

    def add(hf_name, gguf_name, shape, qtype, permute_heads=None):
        if qtype in (T.Q4_K, T.Q6_K):
            raw = random_k_blocks(rng, qtype, *shape)
            hf = dequantize(raw, qtype).astype(np.float32)
            stored = raw
        elif permute_heads is None:
            stored = quantize((rng.standard_normal(shape) * 0.05).astype(np.float32), qtype)
            hf = dequantize(stored, qtype).astype(np.float32).reshape(shape)
        else:
            # Permuted tensors use element-wise types (F32/F16), where rounding commutes with
            # the permutation: the HF values are the rounded ones.
            assert qtype in (T.F32, T.F16)
            orig = (rng.standard_normal(shape) * 0.05).astype(np.float32)
            hf = dequantize(quantize(orig, qtype), qtype).astype(np.float32).reshape(shape)
            stored = quantize(np.ascontiguousarray(permute(hf, *permute_heads)), qtype)
        if qtype == T.F32:
            w.add_tensor(gguf_name, stored)
        else:
            w.add_tensor(gguf_name, stored, raw_shape=stored.shape, raw_dtype=qtype)
        ref.add_tensor(hf_name, np.ascontiguousarray(hf))

    add("model.embed_tokens.weight", "token_embd.weight", (VOCAB, HIDDEN), T.BF16)
    for layer in range(LAYERS):
        p, b = f"model.layers.{layer}.", f"blk.{layer}."
        q_perm = (HEADS, HEADS) if llama else None
        k_perm = (HEADS, KV_HEADS) if llama else None
        add(p + "input_layernorm.weight", b + "attn_norm.weight", (HIDDEN,), T.F32)
        add(p + "self_attn.q_proj.weight", b + "attn_q.weight", (HIDDEN, HIDDEN), T.F16, q_perm)
        add(p + "self_attn.k_proj.weight", b + "attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN),
            T.F32, k_perm)
        add(p + "self_attn.v_proj.weight", b + "attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN),
            T.Q8_0)
        # Llama here carries q/k/v biases too (attention_bias), to cover their permutation.
        add(p + "self_attn.q_proj.bias", b + "attn_q.bias", (HIDDEN,), T.F32, q_perm)
        add(p + "self_attn.k_proj.bias", b + "attn_k.bias", (KV_HEADS * HEAD_DIM,), T.F32, k_perm)
        add(p + "self_attn.v_proj.bias", b + "attn_v.bias", (KV_HEADS * HEAD_DIM,), T.F32)
        add(p + "self_attn.o_proj.weight", b + "attn_output.weight", (HIDDEN, HIDDEN), T.Q4_0)
        add(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", (HIDDEN,), T.F32)
        add(p + "mlp.gate_proj.weight", b + "ffn_gate.weight", (INTER, HIDDEN), T.Q4_1)
        add(p + "mlp.up_proj.weight", b + "ffn_up.weight", (INTER, HIDDEN), T.Q4_K)
        add(p + "mlp.down_proj.weight", b + "ffn_down.weight", (HIDDEN, INTER), T.Q6_K)
    add("model.norm.weight", "output_norm.weight", (HIDDEN,), T.F32)
    add("lm_head.weight", "output.weight", (VOCAB, HIDDEN), T.Q8_0)
    for f in (w, ref):
        f.write_header_to_file()
        f.write_kv_data_to_file()
        f.write_tensors_to_file()
        f.close()


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    checker = sys.argv[1]
    workdir = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="hw_layout_")
    os.makedirs(workdir, exist_ok=True)
    rng = np.random.default_rng(99)
    failed = False
    for arch in ("llama", "qwen2"):
        model = os.path.join(workdir, f"{arch}.gguf")
        ref = os.path.join(workdir, f"{arch}.reference.gguf")
        write_model(arch, model, ref, rng)
        res = subprocess.run([checker, "--model", model, ref], capture_output=True, text=True)
        ok_lines = [line for line in res.stdout.splitlines() if line.startswith("OK ")]
        expected = 1 + LAYERS * 12 + 2
        print(f"{arch}: {len(ok_lines)} of {expected} weights match")
        if res.returncode != 0 or len(ok_lines) != expected:
            sys.stdout.write(res.stdout)
            sys.stderr.write(res.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
