"""Regenerate the Python modules of ``proto/spatia/v1/*.proto`` with grpcio-tools.

The generated ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` are committed next to the ``.proto`` files;
``tests/test_proto.py`` regenerates them into a temporary directory and fails when they differ, so a ``.proto``
edit without a regeneration cannot land. The proto path root is the repository root, so the generated imports
read ``from proto.spatia.v1 import world_pb2`` (a root of ``proto/`` would give ``spatia.v1``, which clashes with
the ``spatia`` CLI package).

    python -m proto.generate            # rewrite the committed modules
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto" / "spatia" / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path = ROOT) -> list[Path]:
    """Run protoc on every ``.proto``; outputs go under ``out_root/proto/spatia/v1``. Returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    out_root = Path(out_root)
    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    rels = [str(p.relative_to(ROOT)) for p in proto_files()]
    (out_root / "proto" / "spatia" / "v1").mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *rels]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
    return sorted(p for p in (out_root / "proto" / "spatia" / "v1").iterdir() if p.name.endswith((".py", ".pyi"))
                  and "_pb2" in p.name)


if __name__ == "__main__":
    for path in generate():
        print(path, file=sys.stderr)
