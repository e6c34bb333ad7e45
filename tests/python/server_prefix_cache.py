"""A repeated prompt is a prefix-cache hit in `headwise serve` (headwise_prefix_cache_hits_total
grows, usage reports cached tokens) and gives the same output; --no-prefix-caching turns hits
off. Prints "N passed, M failed"."""

from server_util import Runner, Server

PROMPT = ("Once upon a time, in a small town near the sea, there lived a little girl named Mia. "
          "Every morning she walked to the beach with her dog Max to look for shells. One day "
          "they found a big shiny shell that")


def complete(client):
    return client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, temperature=0)


def test_hit(srv):
    client = srv.client()
    first = complete(client)
    assert first.usage.prompt_tokens >= 33, first.usage  # more than two 16-token pages
    hits = srv.metric("headwise_prefix_cache_hits_total")
    hit_tokens = srv.metric("headwise_prefix_cache_hit_tokens_total")
    second = complete(client)
    assert second.choices[0].text == first.choices[0].text
    assert srv.metric("headwise_prefix_cache_hits_total") > hits
    assert srv.metric("headwise_prefix_cache_hit_tokens_total") > hit_tokens
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= 16, second.usage
    assert second.usage.prompt_tokens == first.usage.prompt_tokens


def test_chat_hit(srv):
    client = srv.client()
    msgs = [{"role": "system", "content": PROMPT}, {"role": "user", "content": "Go on."}]
    a = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=0)
    hits = srv.metric("headwise_prefix_cache_hits_total")
    b = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert srv.metric("headwise_prefix_cache_hits_total") > hits


def test_disabled(srv):
    client = srv.client()
    first = complete(client)
    second = complete(client)
    assert first.choices[0].text == second.choices[0].text
    assert srv.metric("headwise_prefix_cache_hits_total") == 0
    details = second.usage.prompt_tokens_details
    assert details is None or not details.cached_tokens, second.usage


def main():
    runner = Runner()
    with Server("--served-model-name", "tiny") as srv:
        runner.run("repeated_prompt_hits", test_hit, srv)
        runner.run("repeated_chat_hits", test_chat_hit, srv)
    with Server("--served-model-name", "tiny", "--no-prefix-caching") as srv:
        runner.run("no_prefix_caching", test_disabled, srv)
    runner.finish()


if __name__ == "__main__":
    main()
