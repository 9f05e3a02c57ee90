"""The slim install (issue 14 section 2): the client, the proto modules and the remote Gymnasium envs import and
work with only the core dependencies, and ``spatia serve --generator geometric`` runs without torch. Each check runs
in a fresh interpreter whose import system refuses the heavy modules (a meta-path blocker), as if they were not
installed. Also: every declared dependency is imported by something."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from spatia.client.api import WorldClient
from spatia.server.config import Limits, ServerConfig
from spatia.server.testing import running_server

ROOT = Path(__file__).resolve().parents[1]

# Not in the slim set: everything of the [server], [neural], [train] and [play] extras.
HEAVY = ("torch", "diffusers", "transformers", "safetensors", "peft", "open3d", "pygame", "scipy", "numba", "cv2",
         "matplotlib", "mcap", "mcap_protobuf", "msgpack", "zstandard", "imageio", "tqdm", "skimage",
         "grpc_reflection", "grpc_tools", "prometheus_client")
# Not needed by `spatia serve --generator geometric` (the [server] extra has none of them).
NEURAL = ("torch", "diffusers", "transformers", "safetensors", "peft", "pygame")


def blocker(blocked: tuple[str, ...]) -> str:
    """Python source that makes importing any of ``blocked`` (or a submodule) raise ModuleNotFoundError."""
    return textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {set(blocked)!r}
        class _Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in the slim set)", name=name)
        sys.meta_path.insert(0, _Blocker())
    """)


def run_blocked(blocked: tuple[str, ...], code: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    src = blocker(blocked) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", src], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0, limits=Limits(max_image_pixels=320 * 240))
    with running_server(config) as st:
        yield st


def test_slim_client_and_remote_envs_work_without_heavy_modules(server):
    code = f"""
        import sys
        import gymnasium as gym
        import numpy as np
        import spatia.client, spatia.proto.spatia.v1.world_pb2, spatia.proto.spatia.v1.convert
        from spatia.client.api import WorldClient
        with WorldClient({server.target!r}) as c:
            assert c.health() == 1  # SERVING
        # both registered ids are slim when they talk to a server
        for env_id, action in (("SpatiaWorld-v0", np.array([1, 0, 0, 0.2, 0], np.float32)),
                               ("SpatiaWorldDiscrete-v0", 1)):
            env = gym.make(env_id, server={server.target!r}, width=48, height=32, max_episode_steps=3)
            obs, info = env.reset(seed=0)
            obs, reward, terminated, truncated, info = env.step(action)
            assert obs.shape == (32, 48, 3) and obs.dtype == np.uint8 and info["memory_points"] > 0
            env.close()
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})
        print("LOADED", loaded)
    """
    out = run_blocked(HEAVY, code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LOADED []" in out.stdout


def test_in_process_env_names_the_missing_extra():
    """Without the [server] extra the in-process env cannot work; it says which extra to install."""
    code = """
        import gymnasium as gym, spatia.client
        try:
            gym.make("SpatiaWorld-v0")
        except ModuleNotFoundError as exc:
            print("ERR", exc)
    """
    out = run_blocked(HEAVY, code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERR" in out.stdout and "spatia-world[server]" in out.stdout


def dockerfile_runtime() -> tuple[dict[str, str], list[str], list[str]]:
    """The final stage's ENV, ENTRYPOINT + CMD and HEALTHCHECK command of the Dockerfile."""
    import json
    import shlex

    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = text[text.rindex("\nFROM "):]
    env: dict[str, str] = {}
    entry: list[str] = []
    cmd: list[str] = []
    health: list[str] = []
    for line in final.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(rest))
        elif word == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "HEALTHCHECK":
            health = json.loads(rest[rest.index("CMD ") + 4:])
    return env, entry + cmd, health


def test_container_command_and_health_check_without_torch(tmp_path):
    """No Docker daemon runs here: the image's entry command and HEALTHCHECK, read from the Dockerfile, run with
    its environment in an interpreter where torch and the other neural / UI modules cannot be imported. Only the
    data dir and the ports differ (a temp dir and free ports: tests share the machine)."""
    env, command, health = dockerfile_runtime()
    assert command == ["spatia", "serve"] and health[:2] == ["spatia", "health"]
    assert env["SPATIA_GENERATOR"] == "geometric" and env["SPATIA_HOST"] == "0.0.0.0"
    ports = {}
    for name in ("SPATIA_PORT", "SPATIA_METRICS_PORT"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
    run_env = {**os.environ, **{k: v for k, v in env.items() if k != "PATH"},
               "SPATIA_DATA_DIR": str(tmp_path / "data"), **{k: str(v) for k, v in ports.items()}}
    run_env.pop("NUMBA_CACHE_DIR")  # this checkout's own numba cache: an empty one would compile for a minute
    health = [a.replace("50051", str(ports["SPATIA_PORT"])) for a in health]

    def spatia(argv: list[str]) -> str:
        return (blocker(NEURAL) + "import sys\nfrom spatia.cli import main\n"
                f"sys.exit(main({argv[1:]!r}))\n")

    unhealthy = subprocess.run([sys.executable, "-c", spatia(health)], cwd=ROOT, env=run_env, capture_output=True,
                               text=True, timeout=60)
    assert unhealthy.returncode == 1 and "UNREACHABLE" in unhealthy.stdout
    proc = subprocess.Popen([sys.executable, "-c", spatia(command)], cwd=ROOT, env=run_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run([sys.executable, "-c", spatia(health)], cwd=ROOT, env=run_env,
                                   capture_output=True, text=True, timeout=60)
            if check.returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.5)
        assert "SERVING" in check.stdout
        target = f"127.0.0.1:{ports['SPATIA_PORT']}"
        with WorldClient(target) as c:
            from spatia.proto.spatia.v1.convert import pose_array

            info = c.create_scene("room", 0, 64, 48)
            frames = list(c.generate(info.world_id, pose_array(info.origin)[None], clip=(1, 2, 1)))
            assert frames and frames[-1].rgb.shape == (48, 64, 3)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{ports['SPATIA_METRICS_PORT']}/metrics", timeout=10) as r:
            assert b"spatia_worlds 1.0" in r.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(rec.get("event") == "serving" for rec in logs), err[-2000:]  # SPATIA_LOG_FORMAT=json


# Distributions that work without being imported by name: plugins found by entry point or by their host package.
NOT_IMPORTED_BY_NAME = {
    "imageio-ffmpeg": "imageio's ffmpeg plugin finds it (mp4 writing)",
    "grpcio-status": "brings googleapis-common-protos, whose google.rpc messages carry the AIP-193 error details",
    "pytest-timeout": "pytest plugin",
    "pytest-xdist": "pytest plugin",
}


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower()


def test_every_dependency_is_imported_somewhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        if extra == "cluster":  # issue 12's Ray back end; not installed by `make` until code imports it
            continue
        reqs += [r for r in items if not r.startswith("spatia-world")]
    sources = "\n".join(p.read_text() for d in ("world", "model", "server", "client", "spatia", "proto", "tests",
                                                "benchmarks") if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))
    imported = set(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_][A-Za-z0-9_]*)", sources, re.M))
    by_dist: dict[str, set[str]] = {}
    for top, dists in importlib.metadata.packages_distributions().items():
        for d in dists:
            by_dist.setdefault(d.lower().replace("_", "-"), set()).add(top)
    unused = []
    for req in reqs:
        name = _requirement_name(req)
        if name in NOT_IMPORTED_BY_NAME:
            continue
        tops = by_dist.get(name)
        if tops is None:
            pytest.skip(f"{name} is not installed here")
        if not tops & imported and not ({"google"} & tops and "google" in imported):
            unused.append(name)
    assert not unused, f"declared but never imported: {unused}"
