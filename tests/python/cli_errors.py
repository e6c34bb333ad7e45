"""Bad model input and bad attention-policy files through the `headwise` CLI: each case must end with exit code 2 and exactly
one line on stderr that names the problem — never a crash, a hang or a stack trace.

usage: cli_errors.py CASE   (CASE from CASES below; `all` runs every case)
Needs HEADWISE_BIN (the headwise binary) and HEADWISE_SHARED (default ../shared)."""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(os.environ["HEADWISE_SOURCE_DIR"], "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")
GGUF = os.path.join(SHARED, "models", "stories260k-gguf", "stories260K.gguf")


def copy_tiny(tmp):
    d = os.path.join(tmp, "model")
    shutil.copytree(TINY, d)
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)
    return d


def rewrite_safetensors(path, edit_header):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit_header(header)
    raw = json.dumps(header).encode()
    open(path, "wb").write(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def case_missing_path(tmp):
    return os.path.join(tmp, "no-such-model"), "no such"


def case_truncated_safetensors(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "model.safetensors")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.truncate(size // 2)
    return d, "beyond"


def case_truncated_safetensors_header(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "model.safetensors")
    with open(p, "r+b") as f:
        f.truncate(100)
    return d, "header"


def case_garbled_safetensors(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "model.safetensors")
    junk = b"{this is not json"
    open(p, "wb").write(struct.pack("<Q", len(junk)) + junk)
    return d, "json"


def case_truncated_gguf(tmp):
    p = os.path.join(tmp, "model.gguf")
    data = open(GGUF, "rb").read()
    open(p, "wb").write(data[: len(data) * 3 // 5])
    return p, "beyond"


def case_truncated_gguf_metadata(tmp):
    p = os.path.join(tmp, "model.gguf")
    open(p, "wb").write(open(GGUF, "rb").read()[:200])
    return p, "truncated"


def case_garbled_gguf(tmp):
    p = os.path.join(tmp, "model.gguf")
    data = bytearray(open(GGUF, "rb").read())
    data[0:4] = b"XXXX"
    open(p, "wb").write(bytes(data))
    return p, "magic"


def case_unknown_architecture(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    json.dump(cfg, open(p, "w"))
    return d, "GPTNeoXForCausalLM"


def case_unknown_tensor_type(tmp):
    d = copy_tiny(tmp)

    def edit(header):
        # I32 has the size of F32, so only the type itself is wrong.
        header["model.norm.weight"]["dtype"] = "I32"

    rewrite_safetensors(os.path.join(d, "model.safetensors"), edit)
    return d, "I32"


def case_shape_contradicts_config(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    cfg["intermediate_size"] = 512
    json.dump(cfg, open(p, "w"))
    return d, "shape"


def case_bad_flag_value(tmp):
    return TINY, "--max-tokens"


def write_policy(tmp, policies, default):
    p = os.path.join(tmp, "policy.json")
    json.dump({"schema": "attn-policy/v1", "policies": policies, "assignment": {"default": default}},
              open(p, "w"))
    return p


def case_policy_unknown_field(tmp):
    p = write_policy(tmp, {"dense": {"storage": {"kind": "full", "sinks": 4}}}, "dense")
    return TINY, "policies.dense.storage.sinks: unknown field", ["--attention-policy", p]


def case_policy_other_model(tmp):
    # TinyStories has 2 layers: layer 8 does not exist.
    p = os.path.join(tmp, "policy.json")
    json.dump({"schema": "attn-policy/v1", "policies": {"dense": {}},
               "assignment": {"default": "dense", "layers": [{"layers": [8], "policy": "dense"}]}},
              open(p, "w"))
    return TINY, "8 is not a layer of this model", ["--attention-policy", p]


def case_policy_profile_other_model(tmp):
    # A head profile (headwise profile-heads) made for TinyStories' shape but other weights.
    prof = os.path.join(tmp, "razor.json")
    json.dump({"schema": "headwise-head-profile/v1", "method": "razor", "heads": {"0": [1]},
               "identity": {"num_layers": 2, "num_heads": 8, "num_kv_heads": 4, "weights_hash": "0123456789abcdef"}},
              open(prof, "w"))
    p = os.path.join(tmp, "policy.json")
    json.dump({"schema": "attn-policy/v1", "policies": {"dense": {}, "full": {}},
               "assignment": {"default": "dense",
                              "head_list": {"format": "razor_json", "path": "razor.json", "policy": "full"}}},
              open(p, "w"))
    return TINY, "computed for another model (2 layers, 8 heads, 4 KV heads, weights 0123456789abcdef)", \
        ["--attention-policy", p]


def case_policy_from_model_dir(tmp):
    # The model's own attention-policy.json applies without the flag (and is refused here).
    d = copy_tiny(tmp)
    ring = {"storage": {"kind": "ring", "sink": 4, "window": 60}, "decode": {"mode": "retained"},
            "prefill": {"mode": "dense"}}
    json.dump({"schema": "attn-policy/v1", "policies": {"streaming": ring}, "assignment": {"default": "streaming"}},
              open(os.path.join(d, "attention-policy.json"), "w"))
    return d, "attention-policy.json", []


def case_policy_reindex_full_storage(tmp):
    # Re-indexing positions needs a ring (StreamingLLM); full storage keeps original positions.
    full = {"storage": {"kind": "full"}, "positions": "reindex"}
    p = write_policy(tmp, {"dense": full}, "dense")
    return TINY, "reindex applies to ring storage", ["--attention-policy", p]


def case_policy_ring_dense_prefill(tmp):
    ring = {"storage": {"kind": "ring", "sink": 4, "window": 60}, "decode": {"mode": "retained"},
            "prefill": {"mode": "dense"}}
    p = write_policy(tmp, {"streaming": ring}, "streaming")
    return TINY, "dense prefill", ["--attention-policy", p]


def case_policy_ring_dense_if_len(tmp):
    ring = {"storage": {"kind": "ring", "sink": 4, "window": 60}, "decode": {"mode": "retained"},
            "dense_if_len_le": 100}
    p = write_policy(tmp, {"streaming": ring}, "streaming")
    return TINY, "dense_if_len_le 100", ["--attention-policy", p]


DEEP = 100000


def deep_json():
    return "[" * DEEP + "]" * DEEP


def case_deep_config_json(tmp):
    # nlohmann copies and dumps recursively: a value nested 100,000 deep where the loader copies
    # it used to overflow the stack (exit 139).
    d = copy_tiny(tmp)
    p = os.path.join(d, "config.json")
    cfg = json.load(open(p))
    cfg["architectures"] = "DEEP"
    open(p, "w").write(json.dumps(cfg).replace('"DEEP"', deep_json()))
    return d, "config.json: JSON nested deeper than the limit of 128"


def case_deep_generation_config_json(tmp):
    d = copy_tiny(tmp)
    open(os.path.join(d, "generation_config.json"), "w").write('{"eos_token_id": ' + deep_json() + "}")
    return d, "generation_config.json: JSON nested deeper than the limit of 128"


def case_deep_tokenizer_json(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "tokenizer.json")
    tok = json.load(open(p))
    tok["model"]["merges"].append("DEEP")  # a bad merge is dumped into its error message
    open(p, "w").write(json.dumps(tok).replace('"DEEP"', deep_json()))
    return d, "tokenizer.json: JSON nested deeper than the limit of 128"


def case_deep_tokenizer_config_json(tmp):
    d = copy_tiny(tmp)
    open(os.path.join(d, "tokenizer_config.json"), "w").write('{"x": ' + deep_json() + "}")
    return d, "tokenizer_config.json: JSON nested deeper than the limit of 128"


def case_deep_safetensors_header(tmp):
    d = copy_tiny(tmp)
    p = os.path.join(d, "model.safetensors")
    data = open(p, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["model.norm.weight"]["shape"] = "DEEP"  # a bad shape is dumped into its error message
    raw = json.dumps(header).replace('"DEEP"', deep_json()).encode()
    open(p, "wb").write(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return d, "header: JSON nested deeper than the limit of 128"


# Paths that are not small regular files, given where a policy or its head matrix goes: a clear
# error at once, not gigabytes of /dev/zero read nor a FIFO waited on.
def not_regular(tmp, kind):
    if kind == "dev_zero":
        return "/dev/zero", "is a character device"
    if kind == "fifo":
        p = os.path.join(tmp, "fifo")
        os.mkfifo(p)
        return p, "is a FIFO"
    if kind == "directory":
        p = os.path.join(tmp, "dir")
        os.mkdir(p)
        return p, "is a directory"
    p = os.path.join(tmp, "big")
    with open(p, "wb") as f:
        f.truncate((16 << 20) + 1)
    return p, "16777217 bytes is over the limit of 16777216 for "


def policy_case(kind):
    def case(tmp):
        path, keyword = not_regular(tmp, kind)
        return TINY, keyword, ["--attention-policy", path], 1.0

    return case


def head_matrix_case(kind):
    def case(tmp):
        path, keyword = not_regular(tmp, kind)
        ring = {"storage": {"kind": "ring", "sink": 4, "window": 60}, "decode": {"mode": "retained"},
                "prefill": {"mode": "retained", "first_chunk_dense": True}}
        p = os.path.join(tmp, "policy.json")
        json.dump({"schema": "attn-policy/v1", "policies": {"dense": {}, "streaming": ring},
                   "assignment": {"default": "dense",
                                  "head_matrix": {"format": "duo_tsv", "path": path,
                                                  "binarize": {"sparsity": 0.5},
                                                  "map": {"1": "dense", "0": "streaming"}}}},
                  open(p, "w"))
        return TINY, keyword, ["--attention-policy", p], 1.0

    return case


for _kind in ("dev_zero", "fifo", "directory", "oversized"):
    globals()[f"case_policy_{_kind}"] = policy_case(_kind)
    globals()[f"case_head_matrix_{_kind}"] = head_matrix_case(_kind)


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


def run_case(name):
    with tempfile.TemporaryDirectory() as tmp:
        model, keyword, *extra = CASES[name](tmp)
        cmd = [os.environ["HEADWISE_BIN"], "generate", "--model", model, "--prompt", "hello", "--max-tokens", "4"]
        cmd += extra[0] if extra else []
        max_seconds = extra[1] if len(extra) > 1 else None  # for errors that must come at once
        if name == "bad_flag_value":
            cmd[-1] = "four"
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return f"{name}: hung (no exit within 60 s)"
        seconds = time.monotonic() - t0
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        problems = []
        if max_seconds is not None and seconds > max_seconds:
            problems.append(f"took {seconds:.2f} s, want under {max_seconds} s")
        if r.returncode != 2:
            problems.append(f"exit code {r.returncode}, want 2")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines, want 1")
        elif not lines[0].startswith("headwise: error: "):
            problems.append("stderr does not start with 'headwise: error: '")
        elif keyword.lower() not in lines[0].lower():
            problems.append(f"error does not mention {keyword!r}")
        if problems:
            return f"{name}: {'; '.join(problems)}\n  stderr: {r.stderr.strip()!r}"
        print(f"ok   {name}: {lines[0]}")
        return None


def main():
    names = list(CASES) if sys.argv[1:] == ["all"] else sys.argv[1:]
    failures = [f for f in (run_case(n) for n in names) if f]
    for f in failures:
        print("FAIL", f)
    print(f"{len(names) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures or not names else 0


if __name__ == "__main__":
    sys.exit(main())
