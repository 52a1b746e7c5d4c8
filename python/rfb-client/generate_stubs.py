#!/usr/bin/env python3
"""Regenerates the gRPC stubs of rfb_client from the contract, proto/proto/rfb/v1/evaluator.proto.

    .venv/bin/python python/rfb-client/generate_stubs.py            # rewrite the checked-in stubs
    .venv/bin/python python/rfb-client/generate_stubs.py --out DIR  # write them to DIR instead

Runs grpc_tools.protoc (the grpcio-tools of python/requirements.txt) and keeps the stubs inside
the package's own namespace: the generated service module's absolute `from rfb.v1 import
evaluator_pb2` becomes a relative import, so no top-level `rfb` package is installed that could
clash with a user's own stubs. The proto keeps its file name (rfb/v1/evaluator.proto) in the
descriptor pool, so that stubs generated elsewhere from the same contract can be loaded next to
these. `tests/test_offline.py` regenerates them into a temporary directory and checks that they
equal the checked-in ones.
"""

import argparse
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "proto"))
DEFAULT_OUT = os.path.join(HERE, "src", "rfb_client", "_generated")
PROTO = "rfb/v1/evaluator.proto"
# What protoc writes (relative to its output directory) and the name each gets in the package.
FILES = {
    "rfb/v1/evaluator_pb2.py": "evaluator_pb2.py",
    "rfb/v1/evaluator_pb2.pyi": "evaluator_pb2.pyi",
    "rfb/v1/evaluator_pb2_grpc.py": "evaluator_pb2_grpc.py",
}
HEADER = "# Generated from proto/proto/rfb/v1/evaluator.proto by python/rfb-client/generate_stubs.py; do not edit.\n"


def generate(out_dir, proto_dir=DEFAULT_PROTO_DIR):
    """Writes the three stub files into out_dir; returns their paths."""
    from grpc_tools import protoc
    import grpc_tools

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                "-I" + proto_dir,
                "-I" + include,
                "--python_out=" + raw,
                "--pyi_out=" + raw,
                "--grpc_python_out=" + raw,
                PROTO,
            ]
        )
        if code != 0:
            raise RuntimeError("protoc failed with exit code %d on %s" % (code, os.path.join(proto_dir, PROTO)))
        written = []
        for source, name in FILES.items():
            with open(os.path.join(raw, source), encoding="utf-8") as f:
                text = f.read()
            if name == "evaluator_pb2_grpc.py":
                absolute = "from rfb.v1 import evaluator_pb2 as"
                if absolute not in text:
                    raise RuntimeError("grpc_tools no longer writes %r; update generate_stubs.py" % absolute)
                text = text.replace(absolute, "from . import evaluator_pb2 as")
            path = os.path.join(out_dir, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(HEADER + text)
            written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proto-dir", default=DEFAULT_PROTO_DIR, help="directory holding rfb/v1/evaluator.proto")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the stubs [default: the package's _generated/]")
    args = parser.parse_args()
    for path in generate(args.out, args.proto_dir):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
