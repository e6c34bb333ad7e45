"""Python messages and stubs of the gRPC API, generated from proto/headwise/v1/*.proto with
grpcio-tools (in the test venv) into a temporary folder at import: nothing generated is kept in
the tree. Used by the tests (tests/python/server_grpc.py) and the serving benchmark.

    import headwise_stubs            # with proto/ on sys.path
    pb, pb_grpc = headwise_stubs.load()
"""
import importlib
import os
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_loaded = None


def load():
    """(headwise_pb2, headwise_pb2_grpc) of headwise.v1, generated once per process."""
    global _loaded
    if _loaded is None:
        import grpc_tools
        from grpc_tools import protoc

        out = tempfile.mkdtemp(prefix="headwise-grpc-")
        well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")  # struct.proto
        rc = protoc.main(["protoc", f"-I{_HERE}", f"-I{well_known}", f"--python_out={out}",
                          f"--grpc_python_out={out}",
                          os.path.join(_HERE, "headwise", "v1", "headwise.proto")])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {_HERE}/headwise/v1/headwise.proto ({rc})")
        sys.path.insert(0, out)
        _loaded = (importlib.import_module("headwise.v1.headwise_pb2"),
                   importlib.import_module("headwise.v1.headwise_pb2_grpc"))
    return _loaded
