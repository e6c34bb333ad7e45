"""Shared pieces of the `headwise serve` integration tests: start a server on a free loopback
port (always stopped at the end), raw HTTP helpers, Prometheus parsing, and a tiny runner that
prints "N passed, M failed".

Needs HEADWISE_BIN (the headwise binary) and HEADWISE_SHARED (default ../shared beside the
checkout) holding models/tinystories-656k."""

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("HEADWISE_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("HEADWISE_SHARED") or os.path.join(SOURCE, "..", "shared")
TINY = os.path.join(SHARED, "models", "tinystories-656k")
# TinyStories ships no chat template; chat tests use this ChatML one.
CHATML = os.path.join(HERE, "server_chatml.jinja")
STARTUP_TIMEOUT_S = 60
HOST = "127.0.0.1"


class Server:
    """A `headwise serve` process on 127.0.0.1 with --port 0. Use as a context manager."""

    def __init__(self, *args, model=TINY, chat_template=CHATML, env=None, startup_timeout=STARTUP_TIMEOUT_S):
        self.binary = os.environ["HEADWISE_BIN"]
        self.log = tempfile.NamedTemporaryFile(prefix="headwise-serve-", suffix=".log", delete=False)
        cmd = [self.binary, "serve", model, "--host", HOST, "--port", "0"]
        if chat_template:
            cmd += ["--chat-template", chat_template]
        cmd += list(args)
        self.cmd = cmd
        full_env = dict(os.environ)
        full_env.pop("HEADWISE_API_KEY", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=full_env)
        self.port = None
        self.grpc_port = None  # with --grpc-port: the port it printed
        self.returncode = None
        self.startup_timeout = startup_timeout
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        # Keep draining stdout so that the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _wait_listening(self):
        deadline = time.monotonic() + self.startup_timeout
        buf = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    prefix = "headwise: listening on http://"
                    if line.startswith(prefix):
                        self.port = int(line.rsplit(":", 1)[1])
                        self.base = f"http://{HOST}:{self.port}"
                    if line.startswith("headwise: gRPC listening on "):
                        self.grpc_port = int(line.rsplit(":", 1)[1])
                if self.port and (self.grpc_port or "--grpc-port" not in self.cmd):
                    return
            elif self.proc.poll() is not None:
                break
        raise RuntimeError(f"server did not start: {self.cmd}\nstdout: {buf!r}\nlog:\n{self.log_text()}")

    def _drain(self):
        try:
            while self.proc.stdout.read(4096):
                pass
        except (OSError, ValueError):
            pass

    def log_text(self):
        try:
            with open(self.log.name, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def client(self, api_key="unused", timeout=60.0):
        import openai

        return openai.OpenAI(base_url=self.base + "/v1", api_key=api_key, max_retries=0, timeout=timeout)

    def stop(self, timeout=15.0):
        """SIGINT, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass
        return False

    # --- raw HTTP ---

    def request(self, method, path, body=None, headers=None, timeout=60.0):
        """(status, headers dict, body bytes). `body`: dict/list (sent as JSON), str or bytes."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            elif isinstance(body, str):
                body = body.encode()
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def post(self, path, body, **kw):
        status, _, data = self.request("POST", path, body, **kw)
        return status, parse_json(data)

    def get_json(self, path):
        status, _, data = self.request("GET", path)
        return status, parse_json(data)

    def metrics(self):
        status, headers, data = self.request("GET", "/metrics")
        assert status == 200, status
        return parse_prometheus(data.decode())

    def metric(self, name, **labels):
        return metric_value(self.metrics(), name, **labels)

    def wait_metric(self, name, predicate, timeout=5.0, **labels):
        """Polls until predicate(value) holds; returns the last value (bounded in time)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.metric(name, **labels)
            if predicate(value):
                return value
            time.sleep(0.05)
        return value


def parse_json(data):
    try:
        return json.loads(data)
    except ValueError:
        return None


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): value} for every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        labels = {}
        name = head
        if "{" in head:
            name, _, rest = head.partition("{")
            for part in rest.rstrip("}").split(","):
                if part:
                    k, _, v = part.partition("=")
                    labels[k] = v.strip('"')
        out[(name, frozenset(labels.items()))] = float(value)
    return out


def metric_value(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def check_error_shape(body, status=None):
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}}."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    return err


def sse_events(raw):
    """The JSON payloads of an SSE body and whether it ended with [DONE]."""
    events, done = [], False
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        if payload == "[DONE]":
            done = True
        else:
            assert not done, "event after [DONE]"
            events.append(json.loads(payload))
    return events, done


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn, *args):
        start = time.monotonic()
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a test failure of any kind
            self.failed += 1
            print(f"FAIL {name} ({time.monotonic() - start:.1f}s)")
            traceback.print_exc()
        else:
            self.passed += 1
            print(f"PASS {name} ({time.monotonic() - start:.1f}s)")
        sys.stdout.flush()

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed or not self.passed else 0)
