"""Package boundaries (gsplat's import test): checked in a fresh interpreter and by reading the sources."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUR_PACKAGES = {"world", "model", "server", "client", "proto"}


def test_import_world_loads_no_network_ui_or_model_code():
    code = (
        "import sys, spatia.world, spatia.world.memory, spatia.world.engine, spatia.world.state, "
        "spatia.world.retrieval, spatia.world.update, spatia.world.history\n"
        "top = ('grpc', 'pygame', 'torch', 'diffusers', 'transformers', 'open3d', 'ray')\n"
        "ours = ('spatia.model', 'spatia.server', 'spatia.client', 'spatia.proto')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in top or m.startswith(ours)]\n"
        "print(','.join(sorted(bad)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import spatia.world loaded: {out.stdout.strip()}"


def _imported_names(package: str, module_level_only: bool = False) -> set[str]:
    """Top-level names a package's sources import; ``spatia.X`` counts as ``X`` (our own packages)."""
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules: list[str] = []
        for node in tree.body if module_level_only else ast.walk(tree):
            if isinstance(node, ast.Import):
                modules += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.append(node.module)
        for m in modules:
            parts = m.split(".")
            names.add(parts[1] if parts[0] == "spatia" and len(parts) > 1 and parts[1] in OUR_PACKAGES else parts[0])
    return names


def test_world_imports_none_of_the_other_packages():
    assert not _imported_names("world") & {"model", "server", "client", "proto", "spatia", "grpc", "pygame"}
    # a local depth model (world.depth) may use torch, inside the function that loads it
    assert not _imported_names("world", module_level_only=True) & {"torch", "transformers", "open3d"}


def test_model_does_not_import_server_or_client():
    assert not _imported_names("model") & {"server", "client", "grpc", "pygame"}


def test_sources_import_our_packages_only_by_their_spatia_names():
    for package in sorted(OUR_PACKAGES | {"spatia", "tests", "benchmarks"}):
        for path in (ROOT / package).rglob("*.py"):
            if path.name.endswith("_pb2.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                for m in mods:
                    assert m.split(".")[0] not in OUR_PACKAGES, f"{path.relative_to(ROOT)} imports {m}"


def test_outside_the_repository_only_the_spatia_names_import(tmp_path):
    """From a folder outside the checkout: the generic names are not ours, ``spatia.*`` is, and the
    Gymnasium entry point resolves."""
    code = (
        "import importlib, json\n"
        "generic = {}\n"
        "for n in ('world', 'model', 'server', 'client', 'proto'):\n"
        "    try:\n"
        "        m = importlib.import_module(n)\n"
        "        generic[n] = getattr(m, '__file__', None) or 'namespace'\n"
        "    except ImportError:\n"
        "        pass\n"
        "import spatia.world, spatia.model, spatia.server, spatia.client, spatia.proto\n"
        "from spatia.proto.spatia.v1 import world_pb2_grpc\n"
        "import gymnasium\n"
        "spec = gymnasium.spec('SpatiaWorld-v0')\n"
        "cls = gymnasium.envs.registration.load_env_creator(spec.entry_point)\n"
        "print(json.dumps({'generic': generic, 'entry_point': spec.entry_point, 'cls': cls.__module__}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["generic"] == {}, f"generic names importable: {result['generic']}"
    assert result["entry_point"] == "spatia.client.env:SpatiaWorldEnv"
    assert result["cls"] == "spatia.client.env"


def test_model_knows_no_scene():
    """Issue 10: no generator in ``model/`` may depend on knowing the scene: no procedural scene or texture
    modules, no scene builders, no world source string. (Evaluation and training data, ``model/eval`` and
    ``model/spatia/{data,train}.py``, need the procedural truth by design.)"""
    allowed = {"eval", "data.py", "train.py"}
    for path in (ROOT / "model").rglob("*.py"):
        if allowed & set(path.relative_to(ROOT / "model").parts):
            continue
        text = path.read_text()
        tree = ast.parse(text)
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if isinstance(node, ast.ImportFrom) and node.module in ("spatia.world", "world"):
                mods += [f"{node.module}.{a.name}" for a in node.names]
            for m in mods:
                assert not m.endswith((".scenes", ".textures")), f"{path.relative_to(ROOT)} imports {m}"
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("source", "make_scene"), f"{path.relative_to(ROOT)} reads .{node.attr}"


def test_the_embedded_server_never_imports_ray():
    """Without --ray the server stays light (issue 12): building and starting an in-process server (and the
    serve command's module) loads no Ray."""
    code = (
        "import asyncio, sys, tempfile\n"
        "import spatia.cmd_serve, spatia.server.store\n"
        "from spatia.server.config import ServerConfig\n"
        "from spatia.server.service import WorldServer\n"
        "async def main():\n"
        "    s = WorldServer(ServerConfig(data_dir=tempfile.mkdtemp(), port=0))\n"
        "    await s.start()\n"
        "    await s.stop(0)\n"
        "asyncio.run(main())\n"
        "print('RAY:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'ray')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = [line for line in out.stdout.splitlines() if line.startswith("RAY:")]
    assert loaded == ["RAY:"], f"ray loaded: {loaded}"
