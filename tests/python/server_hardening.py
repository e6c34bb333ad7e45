"""`headwise serve` under hostile and heavy HTTP traffic: body and header limits (chunked,
gzip, header floods, duplicate Content-Length, Expect: 100-continue, truncated bodies),
pipelining, keep-alive latency (no Nagle/delayed-ACK stall), 1,000 idle plus 200 slowloris
connections, a 1,000-connection burst and --max-connections, header/keep-alive timeouts,
SIGTERM with a client that stopped reading, long token-id prompts, stop_token_ids, and JSON
nested 100,000 deep. Prints "N passed, M failed".

Every case talks to 127.0.0.1 only, every loop is bounded in count and time, and each group
of cases starts its own server: a server that cannot start (e.g. an unknown flag) fails the
cases of its group only. The timeouts and limits used here are the targets, not margins:

  --max-body-bytes 1M, --header-timeout 2, --body-timeout 2, --keep-alive-timeout 2,
  --max-connections 64, --shutdown-timeout 2."""

import errno
import gzip
import json
import os
import resource
import select
import selectors
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time

from server_util import HOST, TINY, Runner, Server, check_error_shape, sse_events

# Sanitized builds (scripts/sanitize.sh sets this) run several times slower and hold freed memory
# in ASan's quarantine: their time and memory bounds are this many times looser. The functional
# assertions (statuses, order, answers, exits) are the same in every build.
SLOWDOWN = float(os.environ.get("HEADWISE_TEST_SLOWDOWN", "1"))
LIMIT = 1 << 20  # --max-body-bytes 1M
HEADER_TIMEOUT = 2  # seconds
BODY_TIMEOUT = 2
KEEP_ALIVE_TIMEOUT = 2
SHUTDOWN_TIMEOUT = 2
MAX_CONNECTIONS = 64
COMP = "/v1/completions"
CHAT = "/v1/chat/completions"
SHORT = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}


# --- raw HTTP over sockets ---------------------------------------------------------------


class Closed(Exception):
    """The server closed (or reset) the connection before a complete response."""


def request_bytes(method, path, body=None, headers=None):
    """An HTTP/1.1 request; `body` a dict (JSON) or bytes."""
    hdrs = {"Host": f"{HOST}"}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    if body is not None:
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    return head.encode() + (body or b"")


def dechunk(buf, pos=0):
    """(body, end) of a chunked body starting at buf[pos:]; end is None while incomplete."""
    body = b""
    while True:
        le = buf.find(b"\r\n", pos)
        if le < 0:
            return body, None
        size = int(buf[pos:le].split(b";")[0] or b"0", 16)
        pos = le + 2
        if size == 0:
            if buf[pos:pos + 2] == b"\r\n":
                return body, pos + 2
            te = buf.find(b"\r\n\r\n", pos)  # trailers
            return body, (te + 4 if te >= 0 else None)
        if len(buf) < pos + size + 2:
            return body + buf[pos:pos + size], None
        body += buf[pos:pos + size]
        pos += size + 2


def parse_response(buf, eof=False):
    """(status, headers, body, consumed) of the first complete response in buf, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k, v = k.strip().lower(), v.strip()
        headers[k] = headers[k] + "," + v if k in headers else v
    pos = end + 4
    if 100 <= status < 200 or status in (204, 304):
        return status, headers, b"", pos
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body, used = dechunk(buf, pos)
        return None if used is None else (status, headers, body, used)
    if "content-length" in headers:
        n = int(headers["content-length"].split(",")[0])
        return None if len(buf) < pos + n else (status, headers, buf[pos:pos + n], pos + n)
    return (status, headers, buf[pos:], len(buf)) if eof else None


class RawConn:
    """One blocking client connection with a receive buffer; every read has a deadline."""

    def __init__(self, port, timeout=10.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((HOST, port))
        self.buf = b""
        self.eof = False
        self.first_byte_at = None

    def send(self, data):
        self.sock.sendall(data)

    def recv_some(self, deadline):
        """Appends what arrives before `deadline`; False at EOF. Raises TimeoutError."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError as e:
            raise Closed(f"connection reset after {len(self.buf)} bytes: {self.buf[:200]!r}") from e
        if not chunk:
            self.eof = True
            return False
        if self.first_byte_at is None:
            self.first_byte_at = time.monotonic()
        self.buf += chunk
        return True

    def read_response(self, timeout=10.0, skip_1xx=True):
        deadline = time.monotonic() + timeout
        while True:
            r = parse_response(self.buf, self.eof)
            if r:
                status, headers, body, used = r
                self.buf = self.buf[used:]
                if skip_1xx and 100 <= status < 200:
                    continue
                return status, headers, body
            if self.eof:
                raise Closed(f"closed after {len(self.buf)} bytes: {self.buf[:200]!r}")
            self.recv_some(deadline)

    def wait_closed(self, timeout):
        """Seconds until the server closes (EOF or reset), discarding data; None if still open."""
        start = time.monotonic()
        deadline = start + timeout
        while not self.eof:
            try:
                self.recv_some(deadline)
            except Closed:
                break
            except TimeoutError:
                return None
        return time.monotonic() - start

    def close(self):
        self.sock.close()


def send_until_answered(conn, pieces):
    """Sends `pieces` one by one, stopping early once the server has answered (readable) or
    closed; returns the number of bytes sent."""
    sent = 0
    for piece in pieces:
        readable, _, _ = select.select([conn.sock], [], [], 0)
        if readable:
            break
        try:
            conn.sock.settimeout(10)
            conn.sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return sent


def swarm(port, n, request, timeout, keep_open=False):
    """Opens n non-blocking connections at once, sends `request` on each and reads one response
    each. Returns (results, socks): results[i] is (status, headers, body), or "reset", "eof",
    "timeout", "connect: ..."; socks are left open when keep_open (the caller closes them)."""
    sel = selectors.DefaultSelector()
    states = []
    deadline = time.monotonic() + timeout
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        st = {"sock": s, "out": request, "buf": b"", "result": None, "i": i}
        err = s.connect_ex((HOST, port))
        if err not in (0, errno.EINPROGRESS):
            st["result"] = f"connect: {os.strerror(err)}"
        else:
            sel.register(s, selectors.EVENT_WRITE, st)
        states.append(st)
    pending = sum(1 for st in states if st["result"] is None)

    def finish(st, result):
        nonlocal pending
        st["result"] = result
        sel.unregister(st["sock"])
        pending -= 1

    while pending and time.monotonic() < deadline:
        for key, events in sel.select(timeout=max(0.0, min(0.1, deadline - time.monotonic()))):
            st = key.data
            s = st["sock"]
            if st["out"]:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(st, f"connect: {os.strerror(err)}")
                    continue
                try:
                    st["out"] = st["out"][s.send(st["out"]):]
                except BlockingIOError:
                    continue
                except OSError:
                    finish(st, "reset")
                    continue
                if not st["out"]:
                    sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                chunk = s.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError:
                finish(st, "reset")
                continue
            st["buf"] += chunk
            r = parse_response(st["buf"], eof=not chunk)
            if r:
                finish(st, r[:3])
            elif not chunk:
                finish(st, "eof")
    for st in states:
        if st["result"] is None:
            st["result"] = "timeout"
    sel.close()
    socks = [st["sock"] for st in states]
    if not keep_open:
        for s in socks:
            s.close()
    return [st["result"] for st in states], socks


def outcome_counts(results):
    counts = {}
    for r in results:
        key = r if isinstance(r, str) else r[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def is_clean_503(r):
    if isinstance(r, str) or r[0] != 503:
        return False
    try:
        check_error_shape(json.loads(r[2]))
    except (ValueError, AssertionError):
        return False
    return True


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak_rss(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def median_ms(xs):
    return statistics.median(xs) * 1e3


# --- 1. body and header limits -----------------------------------------------------------


def test_chunked_over_limit(srv):
    """A chunked body of 3x the limit: 413, and the server does not buffer it."""
    pid = srv.proc.pid
    srv.request("GET", "/health")
    reset_peak_rss(pid)
    hwm0 = proc_kib(pid, "VmHWM")
    conn = RawConn(srv.port)
    head = (f"POST {COMP} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    # Not valid JSON even if it were accepted whole, so that a server that buffers it answers at
    # once (a 400) instead of tokenizing megabytes.
    body = b'{"model": "tiny", "prompt": "' + b"a" * (3 * LIMIT)
    step = 64 << 10
    pieces = [head] + [b"%x\r\n" % len(body[i:i + step]) + body[i:i + step] + b"\r\n"
                       for i in range(0, len(body), step)] + [b"0\r\n\r\n"]
    start = time.monotonic()
    sent = send_until_answered(conn, pieces)
    status, _, data = conn.read_response(timeout=10)
    elapsed = time.monotonic() - start
    conn.close()
    grown = (proc_kib(pid, "VmHWM") - hwm0) * 1024
    print(f"  sent {sent} bytes, got {status} after {elapsed:.2f}s, peak RSS grew {grown / LIMIT:.1f} x limit")
    assert status == 413, (status, data[:300])
    check_error_shape(json.loads(data))
    assert grown <= 4 * LIMIT * SLOWDOWN, f"peak RSS grew by {grown} bytes for a {3 * LIMIT}-byte chunked body"


def test_gzip_bomb(srv):
    """~50 KB of gzip that inflates to 48 MiB: 413 (or 415 if encodings are refused), fast,
    without inflating it all."""
    pid = srv.proc.pid
    bomb = gzip.compress(b"a" * (48 << 20), 9)
    srv.request("GET", "/health")
    reset_peak_rss(pid)
    hwm0 = proc_kib(pid, "VmHWM")
    conn = RawConn(srv.port)
    start = time.monotonic()
    conn.send(request_bytes("POST", "/tokenize", bomb,
                            {"Content-Type": "application/json", "Content-Encoding": "gzip"}))
    status, _, data = conn.read_response(timeout=10)
    elapsed = time.monotonic() - start
    conn.close()
    grown = (proc_kib(pid, "VmHWM") - hwm0) * 1024
    print(f"  {len(bomb)} gzip bytes: {status} after {elapsed:.2f}s, peak RSS grew {grown / LIMIT:.1f} x limit")
    assert status in (413, 415), (status, data[:300])
    check_error_shape(json.loads(data))
    assert elapsed < 2.0, elapsed
    assert grown <= 4 * LIMIT * SLOWDOWN, f"peak RSS grew by {grown} bytes inflating a gzip bomb"


def test_gzip_small(srv):
    """A small gzip /tokenize: either inflated correctly (200, same tokens) or refused (415)."""
    req = {"prompt": "Hello world, once upon a time", "add_special_tokens": False}
    status, plain = srv.post("/tokenize", req)
    assert status == 200, (status, plain)
    status, headers, data = srv.request("POST", "/tokenize", gzip.compress(json.dumps(req).encode()),
                                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert status in (200, 415), (status, data[:300])
    if status == 200:
        assert json.loads(data)["tokens"] == plain["tokens"], (data, plain)
    else:
        check_error_shape(json.loads(data))


def header_flood(srv, pieces, what):
    conn = RawConn(srv.port)
    start = time.monotonic()
    sent = send_until_answered(conn, pieces)
    try:
        status, _, data = conn.read_response(timeout=5)
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    print(f"  {what}: sent {sent} bytes, got {status} after {elapsed:.2f}s")
    assert status == 431, (status, data[:200])
    assert elapsed < 2.0, elapsed


def test_header_line_flood(srv):
    lines = [f"X-Flood-{i}: {i}\r\n".encode() for i in range(100_000)]
    pieces = [f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n".encode()]
    pieces += [b"".join(lines[i:i + 2000]) for i in range(0, len(lines), 2000)]
    header_flood(srv, pieces + [b"\r\n"], "100,000 header lines")


def test_header_line_100k(srv):
    value = b"v" * (100 << 10)
    pieces = [f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode()]
    pieces += [value[i:i + 8192] for i in range(0, len(value), 8192)] + [b"\r\n\r\n"]
    header_flood(srv, pieces, "one 100 KB header line")


def test_conflicting_content_length(srv):
    body = json.dumps({"prompt": "Hello"}).encode()
    head = (f"POST /tokenize HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nContent-Length: {len(body) + 5}\r\n\r\n").encode()
    conn = RawConn(srv.port)
    try:
        conn.send(head + body)
        status, _, data = conn.read_response(timeout=5)
    finally:
        conn.close()
    assert status == 400, (status, data[:200])


def test_expect_continue_over_limit(srv):
    """Expect: 100-continue with a Content-Length over the limit: a 413 at once, no body sent."""
    head = (f"POST {COMP} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {2 * LIMIT}\r\nExpect: 100-continue\r\n\r\n").encode()
    conn = RawConn(srv.port)
    start = time.monotonic()
    try:
        conn.send(head)
        status, _, data = conn.read_response(timeout=3, skip_1xx=False)
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    print(f"  {status} after {elapsed:.2f}s")
    assert status == 413, (status, data[:200])
    assert elapsed < 1.0, elapsed


def test_truncated_body(srv):
    """Content-Length 1000 with 10 bytes sent: answered (400/408) or closed within the body
    timeout."""
    head = (f"POST /tokenize HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n").encode()
    conn = RawConn(srv.port)
    start = time.monotonic()
    try:
        conn.send(head + b'{"prompt":')
        try:
            status, _, _ = conn.read_response(timeout=BODY_TIMEOUT + 1.5)
        except Closed:
            status = "closed"
    finally:
        conn.close()
    elapsed = time.monotonic() - start
    print(f"  {status} after {elapsed:.2f}s")
    assert status in (400, 408, "closed"), status
    assert elapsed <= BODY_TIMEOUT + 1.5 * SLOWDOWN, elapsed


# --- 2. pipelining -----------------------------------------------------------------------


def test_pipelining(srv):
    reqs = [request_bytes("GET", "/v1/models/tiny"), request_bytes("GET", "/v1/models/nope"),
            request_bytes("GET", "/health")]
    conn = RawConn(srv.port)
    try:
        conn.send(b"".join(reqs))
        got = []
        for _ in reqs:
            status, _, data = conn.read_response(timeout=5)
            got.append(status)
            if len(got) == 1:
                assert json.loads(data)["id"] == "tiny", data
    finally:
        conn.close()
    assert got == [200, 404, 200], got


# --- 3. keep-alive latency ---------------------------------------------------------------


def timed_get(conn, path):
    """(time to first byte, time to the whole response, response headers) of one GET."""
    conn.first_byte_at = None
    start = time.monotonic()
    conn.send(request_bytes("GET", path))
    status, headers, _ = conn.read_response(timeout=5)
    assert status == 200, status
    return conn.first_byte_at - start, time.monotonic() - start, headers


def test_keep_alive_latency(srv):
    n = 50
    new_first, new_total = [], []
    for _ in range(n):
        conn = RawConn(srv.port)
        try:
            first, total, _ = timed_get(conn, "/v1/models")
        finally:
            conn.close()
        new_first.append(first)
        new_total.append(total)
    reused_first, reused_total, reconnects = [], [], 0
    conn = RawConn(srv.port)
    try:
        timed_get(conn, "/v1/models")  # the connection's first request is not a reuse
        for _ in range(4 * n):
            if len(reused_first) == n:
                break
            first, total, headers = timed_get(conn, "/v1/models")
            reused_first.append(first)
            reused_total.append(total)
            if "close" in headers.get("connection", "").lower():
                conn.close()
                reconnects += 1
                conn = RawConn(srv.port)
                timed_get(conn, "/v1/models")
    finally:
        conn.close()
    print(f"  first byte: new {median_ms(new_first):.2f} ms, reused {median_ms(reused_first):.2f} ms; "
          f"whole response: new {median_ms(new_total):.2f} ms, reused {median_ms(reused_total):.2f} ms; "
          f"{reconnects} reconnects (server closed the keep-alive connection)")
    assert median_ms(reused_first) <= median_ms(new_first) + 2.0 * SLOWDOWN
    assert median_ms(reused_total) <= median_ms(new_total) + 2.0 * SLOWDOWN


def test_openai_client_latency(srv):
    """Through the openai client (it reuses its connection), one-token completions: the whole
    non-streamed answer, the first SSE event and the end of a stream ([DONE]) each take under
    20 ms (median of 10, after two warm-ups)."""
    client = srv.client(timeout=10)
    plain, first, whole = [], [], []
    for i in range(12):
        start = time.monotonic()
        client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=1, temperature=0)
        t_plain = time.monotonic() - start
        start = time.monotonic()
        stream = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=1,
                                           temperature=0, stream=True)
        it = iter(stream)
        next(it)
        t_first = time.monotonic() - start
        for _ in it:
            pass
        if i >= 2:  # warm-ups: the client opens its connection
            plain.append(t_plain)
            first.append(t_first)
            whole.append(time.monotonic() - start)
    print(f"  openai client, max_tokens 1, median (max): non-streamed {median_ms(plain):.1f} "
          f"({max(plain) * 1e3:.1f}) ms; first SSE event {median_ms(first):.1f} ({max(first) * 1e3:.1f}) ms; "
          f"whole stream {median_ms(whole):.1f} ({max(whole) * 1e3:.1f}) ms")
    assert median_ms(plain) < 20.0 * SLOWDOWN
    assert median_ms(first) < 20.0 * SLOWDOWN
    assert median_ms(whole) < 20.0 * SLOWDOWN


# --- 4, 5. many connections --------------------------------------------------------------


def timed_completion(port, timeout):
    conn = RawConn(port, timeout=timeout)
    start = time.monotonic()
    try:
        conn.send(request_bytes("POST", COMP, SHORT))
        status, _, _ = conn.read_response(timeout=timeout)
    finally:
        conn.close()
    assert status == 200, status
    return time.monotonic() - start


def test_idle_and_slowloris(srv):
    before = [timed_completion(srv.port, 10) for _ in range(5)]
    problems = []
    results, idle = swarm(srv.port, 1000, request_bytes("GET", "/health"), timeout=8, keep_open=True)
    counts = outcome_counts(results)
    print(f"  1,000 idle connections, their /health: {counts}")
    if counts.get(200) != 1000:
        problems.append(f"idle connections' /health: {counts}")
    slow = []
    stop = threading.Event()
    try:
        for _ in range(200):
            s = socket.create_connection((HOST, srv.port), timeout=2)
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
            s.setblocking(False)
            slow.append(s)

        def drip():  # one header byte per connection per second, at most 30 s
            end = time.monotonic() + 30
            while not stop.wait(1.0) and time.monotonic() < end:
                for s in slow:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        time.sleep(1.5)
        during = []
        health = None
        try:
            for _ in range(5):
                during.append(timed_completion(srv.port, 5))
            health = srv.request("GET", "/health", timeout=5)[0]
        except (TimeoutError, Closed, OSError) as e:
            problems.append(f"a request during the load failed: {e!r}")
        print(f"  completion alone: median {median_ms(before):.1f} ms; with the idle and slowloris "
              f"connections: {[round(t * 1e3, 1) for t in during]} ms; /health {health}")
        if health != 200:
            problems.append(f"/health during the load: {health}")
        if len(during) == 5 and median_ms(during) > median_ms(before) + 50 * SLOWDOWN:
            problems.append(f"completion latency {median_ms(during):.1f} ms under load vs "
                            f"{median_ms(before):.1f} ms alone")
    finally:
        stop.set()
        for s in slow + idle:
            s.close()
    assert not problems, problems


def test_burst(srv):
    req = request_bytes("POST", COMP, dict(SHORT, max_tokens=1))
    start = time.monotonic()
    results, _ = swarm(srv.port, 1000, req, timeout=5 * SLOWDOWN)
    counts = outcome_counts(results)
    print(f"  1,000 connections at once: {counts} in {time.monotonic() - start:.2f}s")
    bad = [r for r in results if isinstance(r, str) or (r[0] != 200 and not is_clean_503(r))]
    assert not bad, counts
    assert srv.request("GET", "/health", timeout=5)[0] == 200


def test_max_connections(srv):
    held_results, held = swarm(srv.port, MAX_CONNECTIONS, request_bytes("GET", "/health"), timeout=5,
                               keep_open=True)
    try:
        assert outcome_counts(held_results) == {200: MAX_CONNECTIONS}, outcome_counts(held_results)
        results, _ = swarm(srv.port, 100, request_bytes("GET", "/health"), timeout=5)
        counts = outcome_counts(results)
        evicted = 0
        for s in held:
            try:
                if s.recv(1 << 16) == b"":
                    evicted += 1
            except BlockingIOError:
                pass
            except OSError:
                evicted += 1
        print(f"  {MAX_CONNECTIONS} held, 100 more: {counts}; {evicted} held connections closed by the server")
        bad = [r for r in results if isinstance(r, str) or (r[0] != 200 and not is_clean_503(r))]
        assert not bad, counts
        # The limit did something: beyond it a clean 503, or idle ones closed to make room.
        assert counts.get(503, 0) > 0 or evicted > 0, (counts, evicted)
    finally:
        for s in held:
            s.close()


# --- 6. header and keep-alive timeouts ---------------------------------------------------


def test_slowloris_closed(srv):
    conn = RawConn(srv.port)
    start = time.monotonic()
    closed = None
    try:
        conn.send(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
        while time.monotonic() - start < HEADER_TIMEOUT + 3:
            try:
                conn.sock.sendall(b"a")
            except OSError:
                closed = time.monotonic() - start
                break
            if conn.wait_closed(0.25) is not None:
                closed = time.monotonic() - start
                break
    finally:
        conn.close()
    print(f"  slowloris closed after {closed:.2f}s" if closed else "  slowloris still open")
    assert closed is not None and closed <= HEADER_TIMEOUT + 1.0 * SLOWDOWN, closed


def test_idle_keep_alive_closed(srv):
    conn = RawConn(srv.port)
    try:
        conn.send(request_bytes("GET", "/health"))
        assert conn.read_response(timeout=5)[0] == 200
        closed = conn.wait_closed(KEEP_ALIVE_TIMEOUT + 3)
    finally:
        conn.close()
    print(f"  idle keep-alive closed after {closed:.2f}s" if closed else "  idle keep-alive still open")
    assert closed is not None and KEEP_ALIVE_TIMEOUT * 0.5 <= closed <= KEEP_ALIVE_TIMEOUT + 1.0 * SLOWDOWN, closed


# --- 7. shutdown -------------------------------------------------------------------------


LONG_STREAM = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 490, "temperature": 0,
               "ignore_eos": True, "stream": True}


def server_tx_queue(server_port, client_port):
    """Bytes the server has queued to the client but the client has not taken (/proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            local, remote = parts[1], parts[2]
            if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
                return int(parts[4].split(":")[0], 16)
    return 0


def stuck_reader(srv):
    """A streaming client with a tiny receive buffer that never reads, once the server's send
    queue to it has stopped growing: the server is blocked writing to it."""
    conn = RawConn(srv.port, rcvbuf=4096)
    # n=16 with 20 top logprobs makes the stream ~8 MB, past the largest send buffer (4 MB).
    conn.send(request_bytes("POST", COMP, dict(LONG_STREAM, n=16, logprobs=20)))
    client_port = conn.sock.getsockname()[1]
    deadline = time.monotonic() + 20 * SLOWDOWN
    queued, stable_since = 0, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = server_tx_queue(srv.port, client_port)
        if now != queued:
            queued, stable_since = now, time.monotonic()
        elif queued >= 65536 and time.monotonic() - stable_since >= 0.5:
            print(f"  the server has {queued} bytes queued to the stuck client")
            return conn
    conn.close()
    raise AssertionError(f"the server's send queue to the stuck client did not fill ({queued} bytes)")


def wait_exit(proc, timeout):
    """Seconds until the process exits; None if it is still running after `timeout`."""
    start = time.monotonic()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - start


def shutdown_with_stuck_reader(args):
    """SIGTERM with a stuck reader and a normal streaming client: how long the process took to
    exit and what the normal client received."""
    out = {}
    with Server("--served-model-name", "tiny", *args) as srv:
        stuck = stuck_reader(srv)
        normal = RawConn(srv.port)
        normal.send(request_bytes("POST", COMP, LONG_STREAM))
        deadline = time.monotonic() + 10
        while normal.buf.count(b"data: ") < 3 and normal.recv_some(deadline):
            pass
        srv.proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        try:
            while normal.recv_some(start + 10):
                pass
        except (Closed, TimeoutError) as e:
            out["normal_error"] = repr(e)
        exited = wait_exit(srv.proc, max(0.1, start + SHUTDOWN_TIMEOUT + 6 - time.monotonic()))
        out["exit_after"] = None if exited is None else time.monotonic() - start
        out["code"] = srv.proc.returncode
        out["normal"] = normal.buf
        stuck.close()
        normal.close()
    return out


def check_stuck_exit(out):
    after = out["exit_after"]
    if after is None:
        print("  still running after SIGTERM")
    else:
        print(f"  exit {out['code']} {after:.2f}s after SIGTERM")
    assert after is not None and after <= SHUTDOWN_TIMEOUT + 1.0 * SLOWDOWN, after


def check_normal_stream_ended(out):
    raw = out["normal"]
    status, headers, _, _ = parse_response(raw, eof=True) or (None, {}, b"", 0)
    assert status == 200, raw[:300]
    body, end = dechunk(raw, raw.find(b"\r\n\r\n") + 4)
    assert end is not None, f"the chunked stream was cut without its last chunk: {raw[-300:]!r}"
    events, done = sse_events(body)
    reasons = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    print(f"  normal stream: {len(events)} events, finish_reason {reasons}, [DONE] {done}")
    assert done and reasons in (["abort"], ["length"]), (reasons, done, out.get("normal_error"))


def check_shutdown(out, check):
    if isinstance(out, Exception):
        raise out
    check(out)


def test_second_sigterm(srv):
    stuck = stuck_reader(srv)
    try:
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        if srv.proc.poll() is not None:
            return
        srv.proc.send_signal(signal.SIGTERM)
        elapsed = wait_exit(srv.proc, 5)
        print(f"  {'still running' if elapsed is None else f'exited {elapsed:.2f}s'} after the second SIGTERM")
        assert elapsed is not None and elapsed <= 0.5 * SLOWDOWN, elapsed
    finally:
        stuck.close()


# --- 8, 9. token-id prompts and stop_token_ids -------------------------------------------


def long_context_tiny(tmp):
    """TinyStories with max_position_embeddings 4096 (RoPE; same weights) so that a
    2,000-token prompt fits; SmolLM2 would take minutes per prompt on a CPU."""
    model = os.path.join(tmp, "tiny-4k")
    os.mkdir(model)
    for name in os.listdir(TINY):
        if name != "config.json":
            os.symlink(os.path.join(TINY, name), os.path.join(model, name))
    with open(os.path.join(TINY, "config.json")) as f:
        config = json.load(f)
    config["max_position_embeddings"] = 4096
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(config, f)
    return model


def test_token_id_prompt_2000(srv):
    ids = [(i * 7) % 2000 + 3 for i in range(2000)]
    status, body = srv.post(COMP, {"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0})
    assert status == 200, (status, body)
    assert body["usage"]["prompt_tokens"] == 2000, body["usage"]


def test_token_id_prompt_over_context(srv):
    ids = [(i * 7) % 2000 + 3 for i in range(2000)]
    status, body = srv.post(COMP, {"model": "tiny", "prompt": ids, "max_tokens": 1})
    assert status == 400, (status, body)
    err = check_error_shape(body)
    assert "1024 prompts" not in err["message"] and "context length is 512" in err["message"], err
    assert err["param"] == "prompt", err


def greedy_tokens(srv, k_max=8):
    """[(id, text)] of the first greedy tokens after SHORT's prompt, found one max_tokens at a
    time; an id is the single token whose /detokenize is that text."""
    out, prev = [], ""
    for k in range(1, k_max + 1):
        status, body = srv.post(COMP, dict(SHORT, max_tokens=k))
        assert status == 200, body
        text = body["choices"][0]["text"]
        piece = text[len(prev):]
        prev = text
        status, tok = srv.post("/tokenize", {"prompt": piece, "add_special_tokens": False})
        ids = [i for i in tok["tokens"] if srv.post("/detokenize", {"tokens": [i]})[1]["prompt"] == piece]
        out.append((ids[0] if len(ids) == 1 else None, piece))
    return out


def test_stop_token_ids(srv):
    tokens = greedy_tokens(srv)
    # The first token after the second that is known and did not come earlier.
    k = next(i for i in range(2, len(tokens)) if tokens[i][0] is not None
             and tokens[i][0] not in [t for t, _ in tokens[:i]])
    stop_id, stop_text = tokens[k]
    want = "".join(t for _, t in tokens[:k])
    status, body = srv.post(COMP, dict(SHORT, max_tokens=16, stop_token_ids=[stop_id]))
    assert status == 200, body
    choice = body["choices"][0]
    print(f"  stop token {stop_id} {stop_text!r}: got {choice['text']!r} ({choice['finish_reason']})")
    assert choice["finish_reason"] == "stop", choice
    assert choice["text"] == want, (choice["text"], want, stop_text)
    # Streamed, the same.
    status, _, raw = srv.request("POST", COMP, dict(SHORT, max_tokens=16, stop_token_ids=[stop_id], stream=True))
    events, done = sse_events(raw)
    text = "".join(c["text"] for e in events for c in e["choices"])
    reasons = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert done and reasons == ["stop"] and text == want, (text, want, reasons)


# --- 10. deep JSON -----------------------------------------------------------------------


def deep_kwargs_body(path):
    depth = 100_000
    deep = '{"a": ' * depth + "1" + "}" * depth
    msgs = json.dumps([{"role": "user", "content": "Hi"}])
    extra = ', "model": "tiny", "max_tokens": 1' if path == CHAT else ""
    return f'{{"messages": {msgs}, "chat_template_kwargs": {deep}{extra}}}'.encode()


def test_deep_json(srv, path):
    try:
        status, _, data = srv.request("POST", path, deep_kwargs_body(path), timeout=20,
                                      headers={"Content-Type": "application/json"})
    except OSError as e:
        status, data = repr(e), b""
    time.sleep(0.2)  # a crash may come just after the answer
    health = None
    if srv.proc.poll() is None:
        try:
            health = srv.request("GET", "/health", timeout=5)[0]
        except OSError as e:
            health = repr(e)
    time.sleep(0.1)
    print(f"  {status}; /health {health}; exit code {srv.proc.poll()}")
    assert status == 400, (status, data[:200])
    check_error_shape(json.loads(data))
    assert health == 200 and srv.proc.poll() is None, (health, srv.proc.poll())


# --- the run -----------------------------------------------------------------------------


def test_huge_prompt(srv):
    """A 16 MiB text prompt for an 8K context: a 400 at once, without the hundreds of MB and
    seconds that tokenizing it costs (350 MB and 6 s before the check)."""
    pid = srv.proc.pid
    srv.request("GET", "/health")
    reset_peak_rss(pid)
    hwm0 = proc_kib(pid, "VmHWM")
    body = json.dumps({"model": "tiny", "prompt": "hello world " * ((16 << 20) // 12 - 10),
                       "max_tokens": 1}).encode()
    start = time.monotonic()
    status, _, data = srv.request("POST", COMP, body, headers={"Content-Type": "application/json"})
    elapsed = time.monotonic() - start
    grown = (proc_kib(pid, "VmHWM") - hwm0) / 1024
    print(f"  16 MiB prompt: {status} after {elapsed:.2f}s, peak RSS grew {grown:.0f} MiB")
    assert status == 400, (status, data[:300])
    err = check_error_shape(json.loads(data))
    assert "at least" in err["message"] and err["param"] == "prompt", err
    assert elapsed < 2.0 * SLOWDOWN, elapsed
    assert grown < 150 * SLOWDOWN, f"peak RSS grew by {grown:.0f} MiB"


def group(runner, args, cases, model=TINY, stop_timeout=10):
    """Runs `cases` [(name, fn)] against one server; if it cannot start, they all fail."""
    try:
        srv = Server("--served-model-name", "tiny", *args, model=model)
    except RuntimeError as e:
        reason = str(e).splitlines()
        log = [line for line in reason if "error" in line.lower()]
        for name, _ in cases:
            runner.run(name, fail_start, (log or reason)[-1])
        return
    with srv:
        for name, fn in cases:
            runner.run(name, fn, srv)
        srv.stop(timeout=stop_timeout)


def fail_start(reason):
    raise AssertionError(f"the server did not start: {reason}") from None


def main():
    start = time.monotonic()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The servers inherit this too: 1,200 connections at once need the descriptors on both sides.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 16384)), hard))
    runner = Runner()
    group(runner, ["--max-body-bytes", "1M"], [
        ("body_chunked_over_limit_413", test_chunked_over_limit),
        ("body_gzip_bomb_413", test_gzip_bomb),
        ("body_gzip_small_200_or_415", test_gzip_small),
        ("header_100k_lines_431", test_header_line_flood),
        ("header_100kb_line_431", test_header_line_100k),
        ("conflicting_content_length_400", test_conflicting_content_length),
        ("expect_continue_over_limit_413", test_expect_continue_over_limit),
        ("pipelining_in_order", test_pipelining),
        ("keep_alive_latency", test_keep_alive_latency),
        ("openai_client_latency", test_openai_client_latency),
        ("token_id_prompt_over_context", test_token_id_prompt_over_context),
        ("stop_token_ids", test_stop_token_ids),
    ])
    group(runner, ["--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                   "--keep-alive-timeout", str(KEEP_ALIVE_TIMEOUT)], [
        ("body_truncated_timeout", test_truncated_body),
        ("header_timeout_slowloris", test_slowloris_closed),
        ("keep_alive_timeout_idle", test_idle_keep_alive_closed),
    ])
    group(runner, [], [("idle_and_slowloris_latency", test_idle_and_slowloris)], stop_timeout=5)
    group(runner, [], [("burst_1000_connections", test_burst)], stop_timeout=5)
    group(runner, ["--max-connections", str(MAX_CONNECTIONS)],
          [("max_connections_clean_503", test_max_connections)], stop_timeout=5)
    with tempfile.TemporaryDirectory() as tmp:
        group(runner, [], [("token_id_prompt_2000", test_token_id_prompt_2000)], model=long_context_tiny(tmp))

    # 7. SIGTERM: the drain deadline holds with a stuck reader, and a normal stream still ends.
    try:
        out = shutdown_with_stuck_reader(["--shutdown-timeout", str(SHUTDOWN_TIMEOUT)])
    except Exception as e:  # noqa: BLE001 - reported by both cases below
        out = e
    runner.run("shutdown_deadline_stuck_reader", check_shutdown, out, check_stuck_exit)
    runner.run("shutdown_normal_stream_done", check_shutdown, out, check_normal_stream_ended)
    group(runner, [], [("second_sigterm_exits_at_once", test_second_sigterm)], stop_timeout=5)

    # A prompt that cannot fit is refused before it is tokenized (SmolLM2's byte-level BPE gives a
    # bound; TinyStories' sentencepiece model gives none).
    smollm2 = os.environ.get("HEADWISE_SMOLLM2_GGUF")
    if smollm2:
        group(runner, [], [("huge_prompt_refused_cheaply", test_huge_prompt)], model=smollm2)
    else:
        runner.run("huge_prompt_refused_cheaply", fail_start, "HEADWISE_SMOLLM2_GGUF is not set")

    # 10. One server per request: a crash in the first must not fail the second.
    group(runner, [], [("deep_json_tokenize_400", lambda srv: test_deep_json(srv, "/tokenize"))])
    group(runner, [], [("deep_json_chat_400", lambda srv: test_deep_json(srv, CHAT))])
    print(f"total {time.monotonic() - start:.1f}s")
    runner.finish()


if __name__ == "__main__":
    main()
