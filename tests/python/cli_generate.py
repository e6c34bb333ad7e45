"""`headwise generate --chat` on SmolLM2-135M-Instruct answers like transformers does: its
stdout equals the greedy answer in tests/golden/smollm2-135m-instruct.json, which
transformers produced from the same question through the model's own chat template. So does the
model sharded over 3 CPU ranks (--tensor-parallel-size 3: its 3 KV heads allow no other split)."""

import json
import os
import subprocess
import sys

root = os.environ["HEADWISE_SOURCE_DIR"]
golden = json.load(open(os.path.join(root, "tests/golden/smollm2-135m-instruct.json")))
cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
model = os.environ.get("HEADWISE_SMOLLM2_GGUF") or os.path.join(
    cache, "headwise/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
if not model or not os.path.exists(model):
    print("FAIL: SmolLM2 GGUF not found; run scripts/get-model.sh smollm2-135m-instruct "
          "and set HEADWISE_SMOLLM2_GGUF (scripts/test.sh does both)")
    sys.exit(1)

question = "What is the capital of France?"
assert question in golden["prompt"], "golden made from another question"
passed = failed = 0
for ranks in ("1", "3"):
    r = subprocess.run([os.environ["HEADWISE_BIN"], "generate", "--model", model, "--chat", "--prompt",
                        question, "--max-tokens", "32", "--tensor-parallel-size", ranks],
                       capture_output=True, text=True, timeout=120)
    answer = r.stdout.strip()
    # The rendered prompt must be transformers' too, not just the answer.
    want_prompt = f"prompt: {len(golden['prompt_ids'])} tokens"
    ok = r.returncode == 0 and answer == golden["greedy_text"].strip() and want_prompt in r.stderr
    print(f"ranks {ranks}: answer: {answer!r}\nwant:   {golden['greedy_text']!r} and {want_prompt!r}\n"
          f"stderr: {r.stderr.strip()}")
    passed += ok
    failed += not ok
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 else 1)
