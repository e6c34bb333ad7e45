"""Generation defaults (`--generation-config`, `--override-generation-config`) through `headwise
serve` and the official openai client, on TinyStories with a generation_config.json of the test's
own beside it: a default reaches a request that omits the field and not one that sends it, the
override wins over the file, `vllm` ignores the file's sampling keys (not its eos_token_id), a
folder's max_new_tokens caps max_tokens, `headwise generate` takes the same defaults, and bad
files and values stop the server at startup with the file or flag and the key named.
Prints "N passed, M failed"."""

import json
import os
import subprocess
import tempfile

from server_util import CHATML, TINY, Runner, Server

NAME = "tiny"
MESSAGES = [{"role": "user", "content": "Tell me about a dog."}]
SEEDS = [1, 2, 3, 4]


def model_dir(tmp, name, generation_config):
    """TinyStories' files (symlinked) with `generation_config` (a dict, or raw text) beside them."""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in os.listdir(TINY):
        if f != "generation_config.json":
            os.symlink(os.path.join(TINY, f), os.path.join(d, f))
    if generation_config is not None:
        text = generation_config if isinstance(generation_config, str) else json.dumps(generation_config)
        with open(os.path.join(d, "generation_config.json"), "w") as f:
            f.write(text)
    return d


def folder(tmp, name, generation_config):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump(generation_config, f)
    return d


def chat(client, **kw):
    kw.setdefault("extra_body", {"ignore_eos": True})
    return client.chat.completions.create(model=NAME, messages=MESSAGES, **kw)


def chat_tokens(client, **kw):
    r = chat(client, **kw)
    return r.usage.completion_tokens, r.choices[0].finish_reason


def texts_by_seed(client, **kw):
    return [chat(client, max_tokens=12, seed=s, **kw).choices[0].message.content for s in SEEDS]


def test_auto_defaults(tmp):
    d = model_dir(tmp, "auto", {"temperature": 0, "max_new_tokens": 5, "do_sample": True, "bos_token_id": 1})
    with Server("--served-model-name", NAME, model=d) as srv:
        client = srv.client()
        # max_new_tokens: the default max_tokens of chat, not a cap; completions keep 16.
        assert chat_tokens(client) == (5, "length")
        assert chat_tokens(client, max_tokens=9) == (9, "length")
        r = client.completions.create(model=NAME, prompt="Once upon a time", extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 16, r.usage
        # temperature 0 from the file: every seed gives the greedy text...
        greedy = texts_by_seed(client)
        assert len(set(greedy)) == 1, greedy
        assert greedy[0] == chat(client, max_tokens=12, temperature=0).choices[0].message.content
        # ...unless the request sends its own temperature.
        sampled = texts_by_seed(client, temperature=1.0)
        assert len(set(sampled)) > 1, sampled
        log = srv.log_text()
    want = ("default sampling parameters from " + os.path.join(d, "generation_config.json") +
            ': {"max_tokens":5,"temperature":0.0}')
    assert want in log, log


def test_override_wins(tmp):
    d = model_dir(tmp, "override", {"temperature": 0, "max_new_tokens": 5})
    with Server("--served-model-name", NAME, "--override-generation-config",
                '{"temperature": 1.0, "max_new_tokens": 3}', model=d) as srv:
        client = srv.client()
        assert chat_tokens(client) == (3, "length")
        # The override's max_new_tokens caps what a request asks for (vLLM's override_max_tokens).
        assert chat_tokens(client, max_tokens=9) == (3, "length")
        sampled = texts_by_seed(client)
        assert len(set(sampled)) > 1, sampled
        assert "and --override-generation-config" in srv.log_text()
    # null removes the file's default: back to the engine's temperature 1.
    with Server("--served-model-name", NAME, "--override-generation-config", '{"temperature": null}',
                model=d) as srv:
        sampled = texts_by_seed(srv.client())
        assert len(set(sampled)) > 1, sampled


def test_vllm_ignores_file(tmp):
    d = model_dir(tmp, "vllm", {"temperature": 0, "max_new_tokens": 5})
    with Server("--served-model-name", NAME, "--generation-config", "vllm", "--max-model-len", "64",
                model=d) as srv:
        client = srv.client()
        r = chat(client)
        # No max_new_tokens: chat fills the context.
        assert r.usage.completion_tokens == 64 - r.usage.prompt_tokens, r.usage
        sampled = texts_by_seed(client)
        assert len(set(sampled)) > 1, sampled
        assert "no default sampling parameters (--generation-config vllm)" in srv.log_text()


def test_folder_caps(tmp):
    f = folder(tmp, "folder", {"temperature": 0, "max_new_tokens": 4})
    with Server("--served-model-name", NAME, "--generation-config", f) as srv:
        client = srv.client()
        assert chat_tokens(client) == (4, "length")
        assert chat_tokens(client, max_tokens=9) == (4, "length")
        greedy = texts_by_seed(client)
        assert len(set(greedy)) == 1, greedy


def test_eos_token_id_stops(tmp):
    """The file's eos_token_id ends generation, also under `vllm`, unless ignore_eos."""
    with Server("--served-model-name", NAME) as srv:
        client = srv.client()
        r = chat(client, max_tokens=12, temperature=0, extra_body={})
        assert r.choices[0].finish_reason == "length", r
        status, tok = srv.post("/tokenize", {"prompt": r.choices[0].message.content,
                                             "add_special_tokens": False})
        assert status == 200, tok
        stop_id = tok["tokens"][3]
    d = model_dir(tmp, "eos", {"eos_token_id": [2, stop_id]})
    for mode in ("auto", "vllm"):
        with Server("--served-model-name", NAME, "--generation-config", mode, model=d) as srv:
            client = srv.client()
            r = chat(client, max_tokens=12, temperature=0, extra_body={})
            assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens <= 4, (mode, r)
            assert chat_tokens(client, max_tokens=12, temperature=0) == (12, "length")  # ignore_eos
            assert f"end-of-generation tokens: 2, {stop_id}" in srv.log_text(), srv.log_text()


def test_generate_cli(tmp):
    d = model_dir(tmp, "generate", {"max_new_tokens": 5, "temperature": 0})
    binary = os.environ["HEADWISE_BIN"]

    def generated(*flags):
        r = subprocess.run([binary, "generate", "--model", d, "--prompt", "Once upon a time", "--ignore-eos",
                            *flags], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return int(r.stderr.split("generation: ")[1].split(" tokens")[0]), r.stdout

    assert generated()[0] == 5
    assert generated("--max-tokens", "7")[0] == 7
    assert generated("--generation-config", "vllm")[0] == 64  # the tool's own default
    # The file's temperature 0 is greedy whatever the seed; the flag's 1.0 wins over it.
    assert generated("--seed", "1")[1] == generated("--seed", "2")[1]
    outs = {generated("--seed", str(s), "--temperature", "1.0", "--max-tokens", "12")[1] for s in SEEDS}
    assert len(outs) > 1, outs


def refused(tmp, name, generation_config, *flags):
    """Starts `headwise serve` on a model dir with this file; returns (exit code, stderr)."""
    d = model_dir(tmp, name, generation_config)
    r = subprocess.run([os.environ["HEADWISE_BIN"], "serve", d, "--port", "0", "--chat-template", CHATML,
                        *flags], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stderr, os.path.join(d, "generation_config.json")


def test_bad_files_refused(tmp):
    cases = [
        ("not_json", '{"temperature": ', "invalid JSON"),
        ("not_object", "[1, 2]", "a generation config must be a JSON object, got [1,2]"),
        ("temperature_type", {"temperature": "hot"}, 'temperature must be a number, got "hot"'),
        ("temperature_range", {"temperature": 2.5}, "temperature must be in [0, 2], got 2.5"),
        ("top_k_type", {"top_k": 2.5}, "top_k must be an integer, got 2.5"),
        ("top_p_range", {"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ("max_new_tokens", {"max_new_tokens": 0}, "max_new_tokens must be an integer in [1, "),
        ("eos_type", {"eos_token_id": ["</s>"]}, "eos_token_id must be a token id or a list of them"),
        ("eos_vocab", {"eos_token_id": 5000}, "eos_token_id 5000 is outside the vocabulary of 2048"),
    ]
    for name, text, message in cases:
        code, err, path = refused(tmp, name, text)
        assert code == 2 and f"{path}: {message}" in err, (name, code, err)
    # Unknown keys are ignored, as transformers does.
    with Server("--served-model-name", NAME,
                model=model_dir(tmp, "unknown_keys", {"foo": 1, "do_sample": False, "num_beams": 4})) as srv:
        assert srv.get_json("/v1/models")[0] == 200


def test_bad_flags_refused(tmp):
    f = "--override-generation-config"
    cases = [
        ([f, "{temperature: 1}"], f + ": invalid JSON"),
        ([f, "[0.5]"], f + ": expects a JSON object"),
        ([f, '{"temprature": 0.5}'], f + ": unknown key 'temprature'; the keys taken are temperature, top_p"),
        ([f, '{"top_k": "5"}'], f + ': top_k must be an integer, got "5"'),
        ([f, '{"min_p": -0.1}'], f + ": min_p must be in [0, 1], got -0.1"),
        (["--generation-config", tmp], f"--generation-config: {tmp} holds no generation_config.json"),
        (["--generation-config", os.path.join(tmp, "nope")], "is not a folder"),
    ]
    for i, (flags, message) in enumerate(cases):
        code, err, _ = refused(tmp, f"flags{i}", None, *flags)
        assert code == 2 and message in err, (flags, code, err)


def main():
    runner = Runner()
    with tempfile.TemporaryDirectory(prefix="hw-genconfig-") as tmp:
        for name, fn in [("auto_defaults", test_auto_defaults), ("override_wins", test_override_wins),
                         ("vllm_ignores_file", test_vllm_ignores_file), ("folder_caps", test_folder_caps),
                         ("eos_token_id_stops", test_eos_token_id_stops), ("generate_cli", test_generate_cli),
                         ("bad_files_refused", test_bad_files_refused),
                         ("bad_flags_refused", test_bad_flags_refused)]:
            sub = os.path.join(tmp, name)
            os.makedirs(sub)
            runner.run(name, fn, sub)
    runner.finish()


if __name__ == "__main__":
    main()
