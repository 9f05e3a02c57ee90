"""Package boundaries (gsplat's import test): checked in a fresh interpreter and by reading the sources."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_world_loads_no_network_ui_or_model_code():
    code = (
        "import sys, world, world.memory, world.engine, world.state, world.retrieval, world.update, world.history\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'pygame', 'torch', 'diffusers', 'transformers', 'model', 'server', 'client', 'open3d')]\n"
        "print(','.join(sorted(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import world loaded: {out.stdout.strip()}"


def _imported_top_levels(package: str, module_level_only: bool = False) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body if module_level_only else ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_world_imports_none_of_the_other_packages():
    assert not _imported_top_levels("world") & {"model", "server", "client", "spatia", "grpc", "pygame"}
    # a local depth model (world.depth) may use torch, inside the function that loads it
    assert not _imported_top_levels("world", module_level_only=True) & {"torch", "transformers", "open3d"}


def test_model_does_not_import_server_or_client():
    assert not _imported_top_levels("model") & {"server", "client", "grpc", "pygame"}
