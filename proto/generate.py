"""Regenerate the Python modules of ``proto/spatia/v1/*.proto`` with grpcio-tools.

The generated ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` are committed next to the ``.proto`` files;
``tests/test_proto.py`` regenerates them into a temporary directory and fails when they differ, so a ``.proto``
edit without a regeneration cannot land.

The repository folder ``proto/`` is installed as ``spatia.proto`` (see ``pyproject.toml``), so protoc runs on a
temporary tree where that folder appears as ``spatia/proto``: the generated modules then import each other as
``spatia.proto.spatia.v1.world_pb2``, the name they are installed under. The ``.proto`` package stays
``spatia.v1``, so message full names (which recordings and snapshots store) do not change.

    python -m spatia.proto.generate            # rewrite the committed modules
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto" / "spatia" / "v1"
INSTALLED_AS = Path("spatia") / "proto"  # the import path of the repository folder proto/


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc on every ``.proto`` and write the modules into ``out_dir``. Returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        tree, gen_out = Path(tmp) / "tree", Path(tmp) / "out"
        (tree / INSTALLED_AS).parent.mkdir(parents=True)
        (tree / INSTALLED_AS).symlink_to(ROOT / "proto", target_is_directory=True)
        gen_out.mkdir()
        rels = [str(INSTALLED_AS / p.relative_to(ROOT / "proto")) for p in proto_files()]
        args = ["grpc_tools.protoc", f"-I{tree}", f"-I{include}", f"--python_out={gen_out}", f"--pyi_out={gen_out}",
                f"--grpc_python_out={gen_out}", *rels]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        produced = gen_out / INSTALLED_AS / PROTO_DIR.relative_to(ROOT / "proto")
        written = []
        for p in sorted(produced.iterdir()):
            if "_pb2" in p.name and p.name.endswith((".py", ".pyi")):
                written.append(Path(shutil.copyfile(p, out_dir / p.name)))
    return written


if __name__ == "__main__":
    for path in generate():
        print(path, file=sys.stderr)
