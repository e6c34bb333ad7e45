#!/usr/bin/env python3
"""Checks headwise's GGUF dequantization against gguf-py's reference (gguf.quants).

Writes quantized.gguf holding random tensors of every type headwise dequantizes, and
reference.gguf holding gguf-py's f32 dequantization of each under the same name; then runs the
C++ checker (tests/models/gguf_quants_check.cc), which dequantizes the first with headwise's code
and compares with the second. Types gguf-py can quantize are quantized from random f32 values;
for the others (the K-quants) the blocks are random bytes whose fp16 scale fields are replaced
by finite random values, which exercises every bit of the packed scales and quants.

Usage: models_gguf_quants.py CHECKER [WORKDIR]
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

# Byte offsets of the fp16 scale fields inside one block, per type (ggml-common.h).
HALF_FIELDS = {
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]
RAW = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def random_blocks(rng, qtype, rows, cols):
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        # Finite scales of either sign spanning several binades, including fp16 subnormals.
        h = (rng.standard_normal(n_blocks) * np.exp2(rng.integers(-16, 2, n_blocks))).astype(
            np.float16
        )
        blocks[:, off : off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // block_size * type_size)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    checker = sys.argv[1]
    workdir = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="hw_quants_")
    os.makedirs(workdir, exist_ok=True)
    qpath = os.path.join(workdir, "quantized.gguf")
    rpath = os.path.join(workdir, "reference.gguf")

    rng = np.random.default_rng(1234)
    qw = GGUFWriter(qpath, "llama")
    rw = GGUFWriter(rpath, "llama")
    names = []
    # Three shapes per type: a single block row, a multi-row tensor, and one large enough
    # that the checker's dequantization is split over threads.
    for qtype in QUANTIZABLE + RAW:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        for rows, cols in [(1, max(block_size, 32)), (7, 1024), (130, 4096)]:
            name = f"{qtype.name.lower()}_{rows}x{cols}"
            if qtype in RAW:
                raw = random_blocks(rng, qtype, rows, cols)
            else:
                values = (rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3.0)).astype(
                    np.float32
                )
                values[0, :4] = [0.0, -0.0, 1e-3, -65000.0 if qtype == T.F16 else 123.5]
                raw = quantize(values, qtype)
            ref = dequantize(raw, qtype).astype(np.float32)
            assert ref.shape == (rows, cols), (name, ref.shape)
            assert np.all(np.isfinite(ref)), name
            if qtype == T.F32:
                qw.add_tensor(name, raw)
            else:
                qw.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
            rw.add_tensor(name, ref)
            names.append(name)
    for w in (qw, rw):
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    # Our type-size table must agree with gguf-py's for every type both know.
    sizes = subprocess.run([checker, "--type-sizes"], capture_output=True, text=True)
    if sizes.returncode != 0:
        print(sizes.stdout, sizes.stderr)
        return 1
    ours = {}
    for line in sizes.stdout.split():
        tid, bs, ts = (int(x) for x in line.split(":"))
        ours[tid] = (bs, ts)
    # gguf-py 0.16.3 still lists Q8_1 with f32 d/s (40 bytes); ggml has used fp16 d/s (36
    # bytes, static_assert in ggml-common.h) for years. Q8_1 is an activation type, never
    # stored in model files.
    exempt = {T.Q8_1}
    bad_sizes = [
        (q.name, ours.get(int(q)), v)
        for q, v in GGML_QUANT_SIZES.items()
        if q not in exempt and ours.get(int(q)) != v
    ]
    if bad_sizes:
        print("type size mismatches (ours vs gguf-py):", bad_sizes)
        return 1

    res = subprocess.run([checker, qpath, rpath], capture_output=True, text=True)
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    if res.returncode != 0:
        return 1
    checked = {line.split()[1] for line in res.stdout.splitlines() if line.startswith("OK ")}
    missing = sorted(set(names) - checked)
    if missing:
        print("tensors the checker did not confirm:", missing)
        return 1
    print(f"all {len(names)} tensors match gguf-py's dequantization")
    return 0


if __name__ == "__main__":
    sys.exit(main())
