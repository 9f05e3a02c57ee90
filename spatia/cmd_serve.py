"""``spatia serve``: the gRPC world service (server/service.py) until SIGTERM / SIGINT.

Settings come from four layers, the later winning: built-in defaults, a TOML file (``--config FILE``, or
``SPATIA_CONFIG``), ``SPATIA_*`` environment variables, command-line flags. Every flag has the same name in the
other layers: ``--max-worlds 8`` = ``max-worlds = 8`` (or ``max_worlds``) in the file = ``SPATIA_MAX_WORLDS=8``.
A token belongs in ``--token-file`` (or the file / environment): a token in argv shows in ``ps``.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ENV_PREFIX = "SPATIA_"


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"must be an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"must be a number, got {text!r}") from None


def _non_negative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise ValueError(f"must be an integer >= 0, got {text}")
    return v


def _positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise ValueError(f"must be >= 1, got {v}")
    return v


def _port(text: str) -> int:
    v = _int(text)
    if not 0 <= v <= 65535:
        raise ValueError(f"must be a port in 0..65535, got {v}")
    return v


def _non_negative_float(text: str) -> float:
    v = _float(text)
    if not (v >= 0 and v != float("inf")):
        raise ValueError(f"must be a finite number >= 0, got {text}")
    return v


def _duty(text: str) -> float:
    v = _float(text)
    if not 0 < v <= 1:
        raise ValueError(f"must be in (0, 1], got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _float(text)
    if not (v > 0 and v != float("inf")):
        raise ValueError(f"must be a finite number > 0, got {text}")
    return v


def _ray_address(text: str) -> str:
    """``local`` (``--ray`` alone), ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (a GCS address)."""
    if text in ("local", "auto") or text.startswith("ray://") or (":" in text and text.rsplit(":", 1)[1].isdigit()):
        return text
    raise ValueError(f"must be local, auto, ray://HOST:PORT or HOST:PORT, got {text!r}")


def _on_off(text: str) -> bool:
    t = text.strip().lower()  # a TOML true / false arrives as "True" / "False"
    if t in ("on", "1", "true", "yes"):
        return True
    if t in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"must be on or off, got {text!r}")


def _choice(*names: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(f"must be one of {', '.join(names)}, got {text!r}")
        return text

    return parse


@dataclass(frozen=True)
class Option:
    name: str  # the flag without "--"; the TOML key; SPATIA_<NAME with _> in the environment
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


OPTIONS = (
    Option("host", str, "127.0.0.1", "address to bind (0.0.0.0 for remote clients)"),
    Option("port", _port, 50051, "port; 0 = an ephemeral port (see --port-file)"),
    Option("port-file", Path, None, "write the bound port to this file once serving"),
    Option("data-dir", Path, Path("spatia-data"), "worlds and recordings live here"),
    Option("generator", str, "geometric", "geometric (default), spatia-tiny, spatia"),
    Option("weights", Path, None, "weights directory for --generator spatia"),
    Option("fill", _choice("layout", "legacy"), None, "geometric generator's fill of unseen space (default layout)"),
    Option("token", str, None, "require 'authorization: Bearer TOKEN' on every RPC but health (visible in ps: "
                               "prefer --token-file or SPATIA_TOKEN)"),
    Option("token-file", Path, None, "read the bearer token from this file (surrounding whitespace ignored)"),
    Option("tls-cert", Path, None, "PEM certificate chain (with --tls-key: TLS)"),
    Option("tls-key", Path, None, "PEM private key"),
    Option("save-every-clips", _positive_int, 1, "save a played world after this many clips ..."),
    Option("save-interval-s", _non_negative_float, 10.0,
           "... and at least this many seconds since its last save (0: every --save-every-clips clips); a kill -9 "
           "loses at most this much play (or --save-max-duty's wait, if longer)"),
    Option("save-max-duty", _duty, 0.05, "saves take at most this fraction of a played world's time (1: no limit)"),
    Option("play-collision", _on_off, True, "on (default): the walking camera of Play sessions collides with the "
                                             "world's surfaces; off: it walks through walls"),
    Option("play-commit-beside", _on_off, True, "on (default): an interactive Play clip's memory update runs beside "
                                                 "the next clip, which shows the memory one update late; off: each "
                                                 "update before the next clip"),
    Option("play-clip-slots", _non_negative_int, None, "interactive Play clips that run at once (default: one per "
                                                       "core this process may use; 0: no limit)"),
    Option("max-worlds", _positive_int, 64, "worlds in the data dir"),
    Option("max-sessions", _positive_int, 16, "concurrent Play + Generate calls"),
    Option("max-image-pixels", _positive_int, 1920 * 1080, "width x height of any image in or out"),
    Option("max-trajectory-frames", _positive_int, 4096, "poses in one Generate call"),
    Option("max-message-mb", _positive_int, 64, "gRPC message size limit, MiB"),
    Option("metrics-port", _port, None, "serve Prometheus metrics on http://HOST:PORT/metrics (0 = ephemeral)"),
    Option("log-format", _choice("console", "json"), "console", "console (default) or json: one JSON object a line"),
    Option("ray", _ray_address, None, "each world in a Ray actor (docs/SCALE.md): --ray alone starts a local Ray; "
                                      "--ray auto joins this node's cluster; --ray ray://HOST:PORT via Ray Client"),
    Option("world-cpus", _positive_float, 0.5, "with --ray: CPUs each world actor reserves (numba threads follow)"),
    Option("world-gpus", _non_negative_float, None, "with --ray: GPUs each world actor reserves (default 1 for "
                                                    "--generator spatia, else 0)"),
    Option("lease-ttl-s", _positive_float, 10.0, "with --ray: a controller lease not renewed this long is free"),
    Option("idle-exit-s", _non_negative_float, 600.0, "with --ray: an idle world actor saves and exits after this "
                                                      "long (0: never)"),
    Option("placement-timeout-s", _positive_float, 30.0, "with --ray: a world not placed within this long answers "
                                                         "RESOURCE_EXHAUSTED"),
)
BY_KEY = {o.name: o for o in OPTIONS} | {o.dest: o for o in OPTIONS}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC world service",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="TOML file of settings (keys = flag names); also SPATIA_CONFIG")
    for o in OPTIONS:
        default = f" (default {o.default})" if o.default is not None else ""

        def typed(text: str, o=o):  # argparse names the flag when this raises ArgumentTypeError
            try:
                return o.parse(text)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        extra = {"nargs": "?", "const": "local"} if o.name == "ray" else {}  # --ray alone: a local Ray
        p.add_argument(f"--{o.name}", type=typed, default=None, help=o.help + default, **extra)


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The settings: defaults < config file < SPATIA_* environment < flags. Bad values name where they came from."""
    import tomllib

    from spatia.world.errors import InvalidInputError

    environ = os.environ if environ is None else environ
    settings = {o.dest: o.default for o in OPTIONS}
    config_path = args.config or (Path(environ["SPATIA_CONFIG"]) if environ.get("SPATIA_CONFIG") else None)
    if config_path is not None:
        where = "--config" if args.config else "SPATIA_CONFIG"
        try:
            table = tomllib.loads(Path(config_path).read_text())
        except FileNotFoundError:
            raise InvalidInputError(f"{where} {config_path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInputError(f"{where} {config_path}: not valid TOML: {exc}") from None
        table = table.get("serve", table)  # a [serve] table, or the settings at the top level
        for key, raw in table.items():
            o = BY_KEY.get(key)
            if o is None:
                raise InvalidInputError(f"{where} {config_path}: unknown setting {key!r}; "
                                        f"known: {', '.join(o.name for o in OPTIONS)}")
            settings[o.dest] = _parse(o, raw, f"{key} in {config_path}")
    for o in OPTIONS:
        if o.env in environ and environ[o.env] != "":
            settings[o.dest] = _parse(o, environ[o.env], o.env)
    for o in OPTIONS:
        value = getattr(args, o.dest, None)
        if value is not None:
            settings[o.dest] = value
    if settings["token_file"] is not None:
        path = Path(settings["token_file"])
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise InvalidInputError(f"--token-file {path}: {exc.strerror}") from None
        if not token:
            raise InvalidInputError(f"--token-file {path} is empty")
        settings["token"] = token
    return settings


def _parse(o: Option, raw: Any, where: str) -> Any:
    from spatia.world.errors import InvalidInputError

    try:
        return o.parse(str(raw) if not isinstance(raw, str) else raw)
    except ValueError as exc:
        raise InvalidInputError(f"--{o.name} from {where}: {exc}") from None


def preflight(s: dict[str, Any]) -> None:
    """Environment problems the server would otherwise hit mid-start with a traceback: one line each, naming the
    flag."""
    from spatia.world.errors import InvalidInputError

    if (s["tls_cert"] is None) != (s["tls_key"] is None):
        raise InvalidInputError("TLS needs both --tls-cert and --tls-key")
    for flag in ("tls_cert", "tls_key"):
        path = s[flag]
        if path is not None:
            name = "--" + flag.replace("_", "-")
            if not Path(path).is_file():
                raise InvalidInputError(f"{name} {path}: no such file")
            if not os.access(path, os.R_OK):
                raise InvalidInputError(f"{name} {path}: not readable")
    data_dir = Path(s["data_dir"])
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"--data-dir {data_dir}: cannot create it: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK):
        raise InvalidInputError(f"--data-dir {data_dir}: not writable")
    for flag, port in (("--port", s["port"]), ("--metrics-port", s["metrics_port"])):
        if port:  # 0 / unset: nothing to collide with
            _check_port_free(s["host"], port, flag)


def _check_port_free(host: str, port: int, flag: str) -> None:
    from spatia.world.errors import InvalidInputError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInputError(f"--host {host}: cannot resolve it: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: only a listener collides
        try:
            sock.bind(addr)
        except OSError as exc:
            raise InvalidInputError(f"{flag} {port}: cannot listen on {host}:{port}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    import asyncio

    from spatia.cli import configure_logging

    s = resolve(args)
    configure_logging(getattr(args, "verbose", False), s["log_format"])
    preflight(s)

    from spatia.server.config import Limits, ServerConfig
    from spatia.server.service import serve

    kwargs = (("weights_dir", str(s["weights"])),) if s["weights"] else ()
    kwargs += (("fill", s["fill"]),) if s["fill"] else ()
    config = ServerConfig(
        data_dir=s["data_dir"], host=s["host"], port=s["port"], generator=s["generator"], generator_kwargs=kwargs,
        token=s["token"], tls_cert=s["tls_cert"], tls_key=s["tls_key"], save_every_clips=s["save_every_clips"],
        save_interval_s=s["save_interval_s"], save_max_duty=s["save_max_duty"], metrics_port=s["metrics_port"],
        warm_kernels=True, play_collision=s["play_collision"], play_clip_slots=s["play_clip_slots"],
        play_commit_beside_next_clip=s["play_commit_beside"],
        limits=Limits(max_worlds=s["max_worlds"], max_sessions=s["max_sessions"],
                      max_image_pixels=s["max_image_pixels"], max_trajectory_frames=s["max_trajectory_frames"],
                      max_message_bytes=s["max_message_mb"] * 1024 * 1024),
    )
    if s["ray"] is not None:  # only now is Ray imported (server/ray_host.py, through the store)
        from dataclasses import replace

        from spatia.server.cluster import ClusterOptions

        config = replace(config, cluster=ClusterOptions(
            address=None if s["ray"] == "local" else s["ray"], world_cpus=s["world_cpus"],
            world_gpus=s["world_gpus"], lease_ttl_s=s["lease_ttl_s"], idle_exit_s=s["idle_exit_s"] or None,
            placement_timeout_s=s["placement_timeout_s"]))
    asyncio.run(serve(config, port_file=s["port_file"]))
    return 0
