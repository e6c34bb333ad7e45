"""With a KV pool too small for every running request, `headwise serve` preempts (recompute)
and still gives every request the text it gives alone; all pages come back afterwards. The same
with the model and its KV heads split over 2 CPU ranks (--tensor-parallel-size 2), whose texts
equal one rank's. Prints "N passed, M failed"."""

import threading

from server_util import Runner, Server

# 2 layers x 4 KV heads = 8 pages per 16-token block: 160 pages hold 320 tokens, while six
# requests of ~190 tokens need ~1150.
FLAGS = ["--served-model-name", "tiny", "--max-model-len", "256", "--num-kv-pages", "160", "--threads", "2"]
PROMPTS = [f"Once upon a time, there was a {w} who" for w in ["cat", "dog", "king", "frog", "girl", "boy"]]
MAX_TOKENS = 180


def run(client, prompt, stream):
    kwargs = dict(model="tiny", prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True})
    if not stream:
        r = client.completions.create(**kwargs)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text += c.text
            finish = c.finish_reason or finish
    return text, finish


ONE_RANK = []  # the texts alone on one rank, for the tensor-parallel server


def test_preemption(srv):
    client = srv.client()
    alone = [run(client, p, False) for p in PROMPTS]
    assert all(f == "length" for _, f in alone), alone
    if ONE_RANK:
        bad = [i for i in range(len(PROMPTS)) if alone[i] != ONE_RANK[i]]
        assert not bad, f"prompts {bad} differ from one rank's text"
    else:
        ONE_RANK.extend(alone)
    before = srv.metric("headwise_preemptions_total")
    results, errors = [None] * len(PROMPTS), []

    def worker(i):
        try:
            results[i] = run(srv.client(), PROMPTS[i], stream=i % 2 == 0)
        except Exception as e:  # noqa: BLE001
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "requests did not finish in time"
    assert not errors, errors
    preemptions = srv.metric("headwise_preemptions_total") - before
    print(f"  preemptions: {preemptions:.0f}")
    assert preemptions > 0, "the pool should have been too small for all requests"
    bad = [(i, alone[i], results[i]) for i in range(len(PROMPTS)) if results[i] != alone[i]]
    assert not bad, bad[:2]
    used = srv.wait_metric("headwise_kv_pages_used", lambda v: v == 0, timeout=5)
    assert used == 0, used


def main():
    runner = Runner()
    with Server(*FLAGS) as srv:
        runner.run("preemption_keeps_outputs", test_preemption, srv)
    with Server(*FLAGS, "--tensor-parallel-size", "2") as srv:
        runner.run("tensor_parallel_2_ranks_same_texts", test_preemption, srv)
    runner.finish()


if __name__ == "__main__":
    main()
