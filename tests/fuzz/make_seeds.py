#!/usr/bin/env python3
"""Writes the generated seed inputs of tests/fuzz/corpus/ (the binary formats, and small
tokenizer.json files cut down from the real tokenizers in ../shared). Hand-written seeds live
beside them; rerun this only to change the generated ones:
    python3 tests/fuzz/make_seeds.py [--shared ../shared]
Standard library only. Every file stays a few KB."""
import argparse
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- safetensors ---

def safetensors(header, data=b"", pad_to=8):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % pad_to)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
    f16 = struct.pack("<4e", 1.0, -2.0, 0.5, 65504.0)
    bf16 = b"\x80\x3f\x00\xc0\x00\x3f\x80\x7f"  # 1, -2, 0.5, inf
    write("safetensors", "valid_f32", safetensors(
        {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
         "__metadata__": {"format": "pt"}}, f32))
    write("safetensors", "valid_mixed", safetensors(
        {"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
         "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]},
         "c": {"dtype": "I8", "shape": [2], "data_offsets": [16, 18]},
         "s": {"dtype": "F32", "shape": [], "data_offsets": [20, 24]}},
        f16 + bf16 + b"\x01\xff\x00\x00" + struct.pack("<f", 7.0)))
    write("safetensors", "empty_tensor", safetensors(
        {"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}}))
    write("safetensors", "bad_offsets", safetensors(
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 40]}}, f32))
    write("safetensors", "bad_shape", safetensors(
        {"w": {"dtype": "F32", "shape": [3, -1], "data_offsets": [0, 16]}}, f32))
    write("safetensors", "huge_header_len", struct.pack("<Q", 1 << 62) + b"{}")
    write("safetensors", "truncated", struct.pack("<Q", 100) + b'{"w": {"dtype"')
    write("safetensors", "not_json", struct.pack("<Q", 4) + b"\xff\xfe{[")


# --- GGUF ---

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
SCALAR = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
          T_F32: "<f", T_BOOL: "<?", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gvalue(t, v):
    if t == T_STR:
        return gstr(v)
    if t == T_ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(gvalue(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors=(), version=3, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, t, v in kvs:
        out += gstr(key) + struct.pack("<I", t) + gvalue(t, v)
    data = b""
    infos = b""
    for name, dims, ttype, blob in tensors:
        data += b"\x00" * (-len(data) % alignment)
        infos += gstr(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", ttype, len(data))
        data += blob
    out += infos
    out += b"\x00" * (-len(out) % alignment)
    return out + data


def gguf_seeds():
    every_type = [
        ("general.architecture", T_STR, "llama"), ("u8", T_U8, 255), ("i8", T_I8, -128),
        ("u16", T_U16, 65535), ("i16", T_I16, -1), ("u32", T_U32, 1 << 31), ("i32", T_I32, -7),
        ("f32", T_F32, 0.5), ("bool", T_BOOL, True), ("u64", T_U64, (1 << 64) - 1),
        ("i64", T_I64, -(1 << 63)), ("f64", T_F64, 1e300),
        ("arr.i32", T_ARR, (T_I32, [1, 2, 3])), ("arr.str", T_ARR, (T_STR, ["a", "", "c"])),
        ("arr.f32", T_ARR, (T_F32, [1.5, -0.0])), ("arr.bool", T_ARR, (T_BOOL, [True, False])),
        ("arr.arr", T_ARR, (T_ARR, [(T_U8, [1]), (T_U8, [])])),
    ]
    write("gguf", "metadata_types", gguf(every_type))
    q8_0 = struct.pack("<e", 0.5) + bytes(range(32))  # one Q8_0 block of 32 elements
    tensors = [("token_embd.weight", [4, 2], 0, struct.pack("<8f", *range(8))),
               ("blk.0.attn_q.weight", [32, 1], 8, q8_0),
               ("f16", [2], 1, struct.pack("<2e", 1.0, 2.0))]
    write("gguf", "tensors", gguf([("general.alignment", T_U32, 32)], tensors))
    llama = [
        ("general.architecture", T_STR, "llama"), ("llama.context_length", T_U32, 128),
        ("llama.embedding_length", T_U32, 8), ("llama.block_count", T_U32, 1),
        ("llama.feed_forward_length", T_U32, 16), ("llama.attention.head_count", T_U32, 2),
        ("llama.attention.head_count_kv", T_U32, 1), ("llama.rope.freq_base", T_F32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", T_F32, 1e-5), ("llama.vocab_size", T_U32, 8),
        ("llama.rope.dimension_count", T_U32, 4),
        ("llama.rope.scaling.type", T_STR, "linear"), ("llama.rope.scaling.factor", T_F32, 2.0),
    ]
    spm_vocab = [
        ("tokenizer.ggml.model", T_STR, "llama"),
        ("tokenizer.ggml.tokens", T_ARR, (T_STR, ["<unk>", "<s>", "</s>", "<0x0A>", "\u2581",
                                                   "\u2581a", "b", "\u2581ab"])),
        ("tokenizer.ggml.scores", T_ARR, (T_F32, [0, 0, 0, 0, -1, -2, -3, -1.5])),
        ("tokenizer.ggml.token_type", T_ARR, (T_I32, [2, 3, 3, 6, 1, 1, 1, 1])),
        ("tokenizer.ggml.bos_token_id", T_U32, 1), ("tokenizer.ggml.eos_token_id", T_U32, 2),
        ("tokenizer.ggml.add_bos_token", T_BOOL, True),
    ]
    write("gguf", "llama_spm_vocab", gguf(llama + spm_vocab))
    bpe_vocab = [
        ("tokenizer.ggml.model", T_STR, "gpt2"), ("tokenizer.ggml.pre", T_STR, "llama-bpe"),
        ("tokenizer.ggml.tokens", T_ARR, (T_STR, ["H", "e", "l", "o", "\u0120", "w", "r", "d",
                                                   "He", "ll", "Hell", "Hello",
                                                   "<|end_of_text|>"])),
        ("tokenizer.ggml.merges", T_ARR, (T_STR, ["H e", "l l", "He ll", "Hell o"])),
        ("tokenizer.ggml.token_type", T_ARR, (T_I32, [1] * 12 + [3])),
        ("tokenizer.ggml.eos_token_id", T_U32, 12),
        ("tokenizer.chat_template", T_STR, "{% for m in messages %}{{ m.content }}{% endfor %}"),
    ]
    write("gguf", "gpt2_bpe_vocab", gguf(llama + bpe_vocab))
    write("gguf", "v2_empty", gguf([], version=2))
    write("gguf", "bad_magic", b"GGUX" + struct.pack("<IQQ", 3, 0, 0))
    write("gguf", "huge_counts", b"GGUF" + struct.pack("<IQQ", 3, 1 << 60, 1 << 60))
    write("gguf", "huge_string", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62))
    write("gguf", "truncated_array", gguf(every_type)[:200])


# --- tokenizer.json ---

def cut_tokenizer(path, keep):
    """The tokenizer at `path` with the vocabulary cut to ids < keep (merges within it) and
    its added tokens renumbered after it."""
    with open(path, encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    vocab = {tok: i for tok, i in model["vocab"].items() if i < keep}
    merges = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    added = []
    for n, t in enumerate(tj["added_tokens"][:4]):
        old = t["id"]
        t["id"] = keep + n
        added.append(t)
        # The post-processor names special tokens by id too.
        pp = json.dumps(tj.get("post_processor"))
        tj["post_processor"] = json.loads(pp.replace(f'"ids": [{old}]', f'"ids": [{keep + n}]'))
    tj["added_tokens"] = added
    return json.dumps(tj, ensure_ascii=False, separators=(",", ":"))


def tokenizer_json_seeds(shared):
    d = os.path.join(shared, "tokenizers")
    llama2 = cut_tokenizer(os.path.join(d, "llama2-hf", "tokenizer.json"), 300)
    write("tokenizer_json", "llama2_cut", llama2)
    config = json.dumps({"add_bos_token": True, "add_eos_token": True, "bos_token": "<s>",
                         "eos_token": {"content": "</s>", "special": True}})
    write("tokenizer_json", "llama2_cut_with_config", llama2.encode() + b"\0" + config.encode())
    write("tokenizer_json", "llama3_cut", cut_tokenizer(os.path.join(d, "llama3-hf", "tokenizer.json"), 300))
    write("tokenizer_json", "qwen3_cut", cut_tokenizer(os.path.join(d, "qwen3-hf", "tokenizer.json"), 300))


# --- tokenize: selector byte (tokenizer << 2 | mode), then text or int32 ids ---

def tokenize_seeds():
    texts = ["Hello world", "caf\u00e9 \u4f60\u597d \U0001F44D\u200d", "tabs\tand\r\n  spaces ",
             "<s>x</s><|begin_of_text|><|eot_id|>", "def f(x):\n    return x // 2\n"]
    for tok in range(4):
        for n, text in enumerate(texts[:3] if tok else texts):
            write("tokenize", f"encode_{tok}_{n}", bytes([tok << 2]) + text.encode())
    write("tokenize", "encode_ill_formed", b"\x04ill \xc3 \xff\xfe \xed\xa0\x80 formed")
    ids = struct.pack("<8i", 1, 15043, 3186, 29871, 13, 0, 2, 32000)
    odd = struct.pack("<5i", -1, 1 << 30, 128000, 128009, 2 ** 31 - 1)
    for tok in range(4):
        write("tokenize", f"decode_{tok}", bytes([tok << 2 | 1]) + ids + odd)
        write("tokenize", f"incremental_{tok}", bytes([tok << 2 | 2]) + ids)
    # Byte-fallback pieces of one multi-byte character, split across tokens (llama2: <0xE4>...).
    write("tokenize", "incremental_bytes", bytes([2]) + struct.pack("<4i", 231, 192, 163, 29871))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.environ.get(
        "HEADWISE_SHARED", os.path.join(HERE, "..", "..", "..", "shared")))
    args = ap.parse_args()
    safetensors_seeds()
    gguf_seeds()
    tokenizer_json_seeds(args.shared)
    tokenize_seeds()


if __name__ == "__main__":
    main()
