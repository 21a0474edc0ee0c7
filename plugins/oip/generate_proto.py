"""Regenerate the gRPC stubs in kernel_oip/proto from Triton's .proto files.

Run with a Python that has `grpcio-tools==1.81.1`: its protoc emits protobuf 6.33 gencode,
which protobuf 6.33+ and 7.x both run, so the plugin installs beside tritonclient's
`protobuf<7`; its grpc stubs need grpcio>=1.81.1, tritonclient's own floor.

    python plugins/oip/generate_proto.py

protoc names an imported .proto's module as a top-level module (`import model_config_pb2`);
the stubs live inside a package, so those imports are rewritten to relative ones.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "kernel_oip" / "proto"
PROTOS = ("model_config.proto", "grpc_service.proto")


def main() -> int:
    from grpc_tools import protoc

    for proto in PROTOS:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={PROTO_DIR}", f"--grpc_python_out={PROTO_DIR}", proto]
        if protoc.main(args) != 0:
            print(f"protoc failed on {proto}", file=sys.stderr)
            return 1
    for generated in PROTO_DIR.glob("*_pb2*.py"):
        text = generated.read_text()
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.MULTILINE)
        generated.write_text(text)
    # model_config.proto declares no service, so its grpc module would be empty.
    (PROTO_DIR / "model_config_pb2_grpc.py").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
