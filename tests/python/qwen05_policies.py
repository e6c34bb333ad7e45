"""The attention policies shipped for Qwen2.5-Coder-0.5B-Instruct
(configs/policies/qwen2.5-coder-0.5b-instruct/) load against the model they were made for (their
head profiles carry its weights hash, which the loader checks) and answer a short chat question:
a prompt shorter than every ring and window is attended densely, so each policy must give the
dense answer, the same text for all. Fails without the model (scripts/test.sh fetches it)."""

import glob
import json
import os
import subprocess
import sys

root = os.environ["HEADWISE_SOURCE_DIR"]
cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
model = os.environ.get("HEADWISE_QWEN05_GGUF") or os.path.join(
    cache, "headwise/models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
if not os.path.exists(model):
    print("FAIL: Qwen2.5-Coder-0.5B GGUF not found; run scripts/get-model.sh "
          "qwen2.5-coder-0.5b-instruct and set HEADWISE_QWEN05_GGUF (scripts/test.sh does both)")
    sys.exit(1)

policy_dir = os.path.join(root, "configs/policies/qwen2.5-coder-0.5b-instruct")
policies = sorted(p for p in glob.glob(os.path.join(policy_dir, "*.json"))
                  if json.load(open(p)).get("schema") == "attn-policy/v1")
names = [os.path.basename(p) for p in policies]
passed = failed = 0


def check(ok, what):
    global passed, failed
    print(("ok   " if ok else "FAIL ") + what)
    passed += ok
    failed += not ok


check({"streaming.json", "duo.json", "razor.json"} <= set(names), f"policy files: {names}")
answers = {}
for name, path in [("dense", None)] + list(zip(names, policies)):
    cmd = [os.environ["HEADWISE_BIN"], "generate", "--model", model, "--chat", "--temperature",
           "0", "--max-tokens", "12", "--prompt", "What is the capital of France?"]
    if path:
        cmd += ["--attention-policy", path]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    answers[name] = r.stdout.strip()
    check(r.returncode == 0 and "Paris" in answers[name],
          f"{name}: {answers[name]!r} {r.stderr.strip()[-300:] if r.returncode else ''}")
check(len(set(answers.values())) == 1, f"every policy gives the dense answer: {answers}")
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
