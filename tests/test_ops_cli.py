"""Operations of the command line (issue 14 section 3): layered serve settings, token file, log formats without
locals, --version, one-line environment errors naming flags, replay of a non-MCAP file, health checks, mp4s with
the index first (+faststart), snapshot file modes."""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import stat
from pathlib import Path

import numpy as np
import pytest

from spatia import cli, cmd_serve
from spatia.server.config import ServerConfig
from spatia.server.testing import running_server
from spatia.world.errors import InvalidInputError

FIXTURES = Path(__file__).parent / "fixtures" / "v0"


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd_serve.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(list(argv))
    except SystemExit as exc:  # argparse errors and --version
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_version(capsys):
    rc, out, _ = run_cli(capsys, "--version")
    # the last line: in this test process, earlier tests' fill threads may still be logging to stdout
    last = out.strip().splitlines()[-1]
    assert rc == 0 and last.startswith("spatia ") and last.split()[1][0].isdigit()


def test_settings_layers_flags_win_over_env_over_file(tmp_path):
    config = tmp_path / "spatia.toml"
    config.write_text('[serve]\nport = 6000\nmax-worlds = 5\nmax_sessions = 3\nlog-format = "json"\n'
                      'data-dir = "/srv/worlds"\n')
    env = {"SPATIA_MAX_WORLDS": "7", "SPATIA_METRICS_PORT": "9100"}
    s = cmd_serve.resolve(serve_args("--config", str(config), "--max-sessions", "9"), env)
    assert s["port"] == 6000  # file
    assert s["max_worlds"] == 7  # env over file
    assert s["max_sessions"] == 9  # flag over file
    assert s["metrics_port"] == 9100 and s["log_format"] == "json" and s["data_dir"] == Path("/srv/worlds")
    assert s["host"] == "127.0.0.1"  # default
    # SPATIA_CONFIG names the file when --config does not
    assert cmd_serve.resolve(serve_args(), {"SPATIA_CONFIG": str(config)})["port"] == 6000


def test_play_clip_slots_is_a_setting_one_per_core_by_default(tmp_path):
    from spatia.server.config import ServerConfig

    assert cmd_serve.resolve(serve_args(), {})["play_clip_slots"] is None
    assert cmd_serve.resolve(serve_args("--play-clip-slots", "0"), {})["play_clip_slots"] == 0
    assert cmd_serve.resolve(serve_args(), {"SPATIA_PLAY_CLIP_SLOTS": "3"})["play_clip_slots"] == 3
    with pytest.raises(InvalidInputError, match="--play-clip-slots from SPATIA_PLAY_CLIP_SLOTS: must be an integer >= 0"):
        cmd_serve.resolve(serve_args(), {"SPATIA_PLAY_CLIP_SLOTS": "-1"})
    assert ServerConfig(data_dir=tmp_path).clip_slot_count() >= 1  # None: the cores this process may use
    assert ServerConfig(data_dir=tmp_path, play_clip_slots=0).clip_slot_count() == 0
    with pytest.raises(InvalidInputError, match="play_clip_slots must be >= 0"):
        ServerConfig(data_dir=tmp_path, play_clip_slots=-2)


def test_play_collision_is_a_setting_on_by_default(tmp_path):
    assert cmd_serve.resolve(serve_args(), {})["play_collision"] is True
    assert cmd_serve.resolve(serve_args("--play-collision", "off"), {})["play_collision"] is False
    assert cmd_serve.resolve(serve_args(), {"SPATIA_PLAY_COLLISION": "0"})["play_collision"] is False
    config = tmp_path / "c.toml"
    config.write_text("play-collision = false\n")
    assert cmd_serve.resolve(serve_args("--config", str(config)), {})["play_collision"] is False
    with pytest.raises(InvalidInputError, match="--play-collision from SPATIA_PLAY_COLLISION: must be on or off"):
        cmd_serve.resolve(serve_args(), {"SPATIA_PLAY_COLLISION": "maybe"})


def test_settings_errors_name_the_source(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("max-wrolds = 5\n")
    with pytest.raises(InvalidInputError, match="unknown setting 'max-wrolds'"):
        cmd_serve.resolve(serve_args("--config", str(config)), {})
    config.write_text('port = "http"\n')
    with pytest.raises(InvalidInputError, match=r"--port from port in .*bad.toml: must be an integer"):
        cmd_serve.resolve(serve_args("--config", str(config)), {})
    with pytest.raises(InvalidInputError, match="--max-sessions from SPATIA_MAX_SESSIONS: must be >= 1"):
        cmd_serve.resolve(serve_args(), {"SPATIA_MAX_SESSIONS": "0"})
    with pytest.raises(InvalidInputError, match="--config .*missing.toml: no such file"):
        cmd_serve.resolve(serve_args("--config", str(tmp_path / "missing.toml")), {})


def test_token_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert cmd_serve.resolve(serve_args("--token-file", str(token)), {})["token"] == "s3cret"
    token.write_text("  \n")
    with pytest.raises(InvalidInputError, match="--token-file .* is empty"):
        cmd_serve.resolve(serve_args("--token-file", str(token)), {})
    with pytest.raises(InvalidInputError, match="--token-file .*: No such file"):
        cmd_serve.resolve(serve_args("--token-file", str(tmp_path / "nope")), {})


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_logs_never_render_locals(fmt, capsys):
    import structlog

    cli.configure_logging(False, fmt)
    try:
        secret_token = "TOKEN-abc123"  # noqa: F841  (a local the traceback must not show)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            structlog.get_logger("t").exception("failed", world_id="w1")
        err = capsys.readouterr().err
        assert "boom" in err and "w1" in err and "Traceback" in err
        assert "TOKEN-abc123" not in err
        if fmt == "json":
            line = json.loads(err.strip().splitlines()[-1])
            assert line["event"] == "failed" and line["level"] == "error" and "exception" in line
    finally:
        cli.configure_logging(False, "console")


# a structlog record (timestamp first): in this test process, earlier tests' fill threads may still be finishing a
# plane fit and logging to stderr while a command runs; the command's own error is the one line without a timestamp
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \[")


def one_line_error(rc, out, err, *needles):
    assert rc != 0
    lines = [line for line in err.strip().splitlines() if not LOG_RECORD.match(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_environment_errors_are_one_line(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(*run_cli(capsys, "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")),
                       "--port", "in use")
        one_line_error(*run_cli(capsys, "serve", "--port", "0", "--metrics-port", str(port),
                                "--data-dir", str(tmp_path / "d")), "--metrics-port")
    one_line_error(*run_cli(capsys, "serve", "--tls-cert", str(tmp_path / "c.pem"), "--tls-key",
                            str(tmp_path / "k.pem")), "--tls-cert", "no such file")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_line_error(*run_cli(capsys, "demo", "--out", str(a_file / "out"), "--frames", "2", "--width", "32",
                            "--height", "24"), "Not a directory")
    one_line_error(*run_cli(capsys, "play", "--server", "127.0.0.1:1", "--seconds", "1"), "cannot reach",
                   "--server")
    one_line_error(*run_cli(capsys, "replay", str(a_file)), "not an MCAP recording")


def test_bad_values_name_the_flag(tmp_path, capsys):
    """Errors name flags by their CLI names, not the fields they end up in (fx, num_frames): argparse's usage and
    one error line."""
    for argv, flag in ((("demo", "--out", str(tmp_path / "o"), "--width", "0"), "--width"),
                       (("demo", "--out", str(tmp_path / "o"), "--frames", "1"), "--frames"),
                       (("play", "--fps", "0"), "--fps"),
                       (("serve", "--max-worlds", "0"), "--max-worlds"),
                       (("serve", "--save-max-duty", "2"), "--save-max-duty")):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and "Traceback" not in err
        assert f"argument {flag}: must be" in err.strip().splitlines()[-1]


def test_health_command(tmp_path, capsys):
    with running_server(ServerConfig(data_dir=tmp_path, port=0)) as st:
        rc, out, _ = run_cli(capsys, "health", "--server", st.target)
        assert rc == 0 and "SERVING" in out
    rc, out, _ = run_cli(capsys, "health", "--server", st.target, "--timeout-s", "1")
    assert rc == 1 and "UNREACHABLE" in out


def _top_level_atoms(path: Path) -> list[str]:
    data = path.read_bytes()
    atoms, i = [], 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        atoms.append(data[i + 4:i + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[i + 8:i + 16], "big")
        if size < 8:
            break
        i += size
    return atoms


def test_mp4s_put_the_index_first(tmp_path):
    from spatia.demo import write_video
    from spatia.server.recording import export_video

    frames = [np.full((48, 64, 3), 20 * k, np.uint8) for k in range(6)]
    write_video(tmp_path / "demo.mp4", frames, 8.0)
    export_video(FIXTURES / "session_v0.mcap", tmp_path / "replay.mp4")
    for name in ("demo.mp4", "replay.mp4"):
        atoms = _top_level_atoms(tmp_path / name)
        assert "moov" in atoms and "mdat" in atoms
        assert atoms.index("moov") < atoms.index("mdat"), f"{name}: {atoms}"  # +faststart


def test_snapshots_get_normal_file_modes(tmp_path):
    from spatia.world.snapshot import atomic_write_bytes, default_file_mode

    old = os.umask(0o022)
    os.umask(old)
    atomic_write_bytes(tmp_path / "w.spw", b"data")
    mode = stat.S_IMODE((tmp_path / "w.spw").stat().st_mode)
    assert mode == default_file_mode() == 0o666 & ~old
    if old == 0o022:
        assert mode == 0o644
