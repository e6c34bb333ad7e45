"""32 concurrent greedy streaming requests through `headwise serve` each produce exactly the text
they produce alone (run one at a time first): batching must not change greedy output.
Prints "N passed, M failed"."""

import threading
import time

from server_util import Runner, Server

NUM = 32
SUBJECTS = ["a cat", "a dog", "a bird", "a boy", "a girl", "a tree", "a ball", "a fish", "the sun", "a car",
            "a frog", "a cake", "a bear", "a ship", "a king", "a duck"]


def prompts():
    out = []
    for i in range(NUM):
        subject = SUBJECTS[i % len(SUBJECTS)]
        lead = "Once upon a time" if i < len(SUBJECTS) else "One day"
        out.append(f"{lead}, there was {subject} who")
    return out


def stream_text(client, prompt, max_tokens):
    parts, finish = [], None
    stream = client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                       stream=True)
    for chunk in stream:
        for c in chunk.choices:
            parts.append(c.text)
            finish = c.finish_reason or finish
    return "".join(parts), finish


def test_concurrent_equals_alone(srv):
    ps = prompts()
    # Different lengths, so requests join and leave the batch at different steps.
    lengths = [40 + 7 * (i % 5) for i in range(NUM)]
    client = srv.client()
    alone = [stream_text(client, p, n) for p, n in zip(ps, lengths)]
    assert len(set(t for t, _ in alone)) > NUM // 2, "prompts should give different texts"

    results = [None] * NUM
    errors = []
    peak = {"running": 0}
    done = threading.Event()

    def worker(i):
        try:
            results[i] = stream_text(srv.client(), ps[i], lengths[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    def watch():
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            peak["running"] = max(peak["running"], srv.metric("headwise_num_requests_running"))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(NUM)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    done.set()
    watcher.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "requests did not finish in time"
    assert not errors, errors
    mismatches = [(i, alone[i], results[i]) for i in range(NUM) if results[i] != alone[i]]
    assert not mismatches, mismatches[:3]
    print(f"  peak running sequences seen in /metrics: {peak['running']:.0f}")


def main():
    runner = Runner()
    with Server("--served-model-name", "tiny", "--threads", "2") as srv:
        runner.run("concurrent_equals_alone", test_concurrent_equals_alone, srv)
    runner.finish()


if __name__ == "__main__":
    main()
