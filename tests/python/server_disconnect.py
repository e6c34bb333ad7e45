"""A client that goes away aborts its request in `headwise serve`: a streaming client closing
mid-stream, and a non-streaming client timing out, both free their KV pages (kv_pages_used
back to the baseline within 2 s) and count as finish_reason="abort". Prints "N passed, M failed"."""

import json
import socket
import time

import openai

from server_util import HOST, Runner, Server

# Long enough (~490 tokens) that the request is still running when the client leaves.
LONG = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 490, "temperature": 0, "ignore_eos": True}


def open_request(srv, path, body):
    data = json.dumps(body).encode()
    sock = socket.create_connection((HOST, srv.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def baseline(srv):
    used = srv.wait_metric("headwise_kv_pages_used", lambda v: v == 0, timeout=5)
    assert used == 0, used
    return (srv.metric("headwise_request_finished_total", finish_reason="abort"),
            srv.metric("headwise_client_disconnects_total"))


def check_freed(srv, aborts, disconnects, start):
    used = srv.wait_metric("headwise_kv_pages_used", lambda v: v == 0, timeout=2)
    elapsed = time.monotonic() - start
    assert used == 0, f"{used} pages still held {elapsed:.1f}s after the client left"
    assert srv.metric("headwise_num_requests_running") == 0
    got = srv.wait_metric("headwise_request_finished_total", lambda v: v > aborts, timeout=2, finish_reason="abort")
    assert got == aborts + 1, (got, aborts)
    assert srv.metric("headwise_client_disconnects_total") == disconnects + 1
    print(f"  pages back after {elapsed:.2f}s")


def test_stream_disconnect(srv, path, body):
    aborts, disconnects = baseline(srv)
    sock = open_request(srv, path, dict(body, stream=True))
    buf = b""
    deadline = time.monotonic() + 10
    while buf.count(b"data: ") < 3 and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        assert chunk, "server closed the stream"
        buf += chunk
    assert b"HTTP/1.1 200" in buf, buf[:200]
    assert srv.metric("headwise_kv_pages_used") > 0, "the request should hold pages while running"
    start = time.monotonic()
    sock.close()
    check_freed(srv, aborts, disconnects, start)


def test_nonstream_timeout(srv):
    args = {k: v for k, v in LONG.items() if k != "ignore_eos"}
    # The client gives up after a quarter of the time the request takes on this machine: the
    # faster of two runs, since one run beside other tests' load can take several times longer.
    durations = []
    for _ in range(2):
        start = time.monotonic()
        srv.client().completions.create(**args, extra_body={"ignore_eos": True})
        durations.append(time.monotonic() - start)
    duration = min(durations)
    aborts, disconnects = baseline(srv)
    client = srv.client(timeout=max(0.05, duration / 4))
    start = time.monotonic()
    try:
        client.completions.create(**args, extra_body={"ignore_eos": True})
    except openai.APITimeoutError:
        pass
    else:
        raise AssertionError("the request finished before the client timed out; make it longer")
    check_freed(srv, aborts, disconnects, start)


def test_nonstream_close(srv):
    aborts, disconnects = baseline(srv)
    sock = open_request(srv, "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400, "temperature": 0, "ignore_eos": True})
    deadline = time.monotonic() + 5
    while srv.metric("headwise_kv_pages_used") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    sock.close()
    check_freed(srv, aborts, disconnects, start)


def test_still_serving(srv):
    status, _, _ = srv.request("GET", "/health")
    assert status == 200
    r = srv.client().completions.create(model="tiny", prompt="Once upon a time", max_tokens=5)
    assert r.choices[0].text


def main():
    runner = Runner()
    with Server("--served-model-name", "tiny") as srv:
        runner.run("stream_disconnect_completions", test_stream_disconnect, srv, "/v1/completions", LONG)
        chat = {k: v for k, v in LONG.items() if k != "prompt"}
        chat["messages"] = [{"role": "user", "content": "Tell me a long story."}]
        chat["max_tokens"] = 400
        runner.run("stream_disconnect_chat", test_stream_disconnect, srv, "/v1/chat/completions", chat)
        runner.run("nonstream_client_timeout", test_nonstream_timeout, srv)
        runner.run("nonstream_client_close", test_nonstream_close, srv)
        runner.run("still_serving", test_still_serving, srv)
    runner.finish()


if __name__ == "__main__":
    main()
