"""Regenerates gossip_agent/v1/ from proto/gossip_agent/v1/*.proto.

The .proto declares `package gossip_agent.v1`, so protoc run from proto/ writes the modules at
gossip_agent/v1/ with imports that need no rewriting. tests/unit/test_docs_and_manifests.py runs
`generate(tmpdir)` and fails when the committed files differ from a fresh run.
"""

from __future__ import annotations

import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[pathlib.Path]:
    return sorted((PROTO_ROOT / "gossip_agent" / "v1").glob("*.proto"))


def generate(out_dir: pathlib.Path) -> None:
    """Writes gossip_agent/v1/*_pb2*.py(i) under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(path.relative_to(PROTO_ROOT)) for path in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(ROOT)
    sys.exit(0)
