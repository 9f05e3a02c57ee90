"""``spatia web --server ADDR``: the browser player (client/web), an aiohttp app in its own process that is a gRPC
client of the world server at ADDR (local or remote)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="serve the browser player (play, watch, replay) for a world server")
    p.add_argument("--server", default="127.0.0.1:50051", help="the world server's gRPC address host:port")
    p.add_argument("--host", default="127.0.0.1", help="address the web app listens on (0.0.0.0 for a LAN)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS (pointer lock and the Gamepad "
                                                 "API need a secure context off localhost)")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--server-ca", type=Path, help="PEM CA of a TLS world server (gRPC over TLS)")
    p.add_argument("--allowed-origin", action="append", default=[],
                   help="another origin allowed to call the app (e.g. https://play.example.org behind a proxy)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds a dropped player may reconnect to the same session (default 10)")
    p.add_argument("--server-frames", choices=("auto", "raw", "jpeg"), default="auto",
                   help="frames a WebRTC player's session asks the server for: raw RGB (no JPEG encode / decode; "
                        "0.7 MB a 640x360 frame), jpeg, or auto = raw when --server is on loopback and the session "
                        "does not record (default)")
    p.add_argument("--video-codec", choices=("vp8", "h264"), default="vp8",
                   help="WebRTC video codec (when the browser offers it; default vp8)")
    p.add_argument("--playout-delay-ms", default="0,0", metavar="MIN,MAX|off",
                   help="the playout delay WebRTC video asks the browser for (default 0,0: each frame shown as soon "
                        "as it is decoded); off: the browser's jitter buffer and smoothing decide")


def _playout_delay(text: str) -> tuple[int, int] | None:
    from spatia.world.errors import InvalidInputError

    if text.strip().lower() == "off":
        return None
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise InvalidInputError(f"--playout-delay-ms takes MIN,MAX in ms or off, got {text!r}") from None
    if not 0 <= lo <= hi <= 40_950:
        raise InvalidInputError(f"--playout-delay-ms needs 0 <= MIN <= MAX <= 40950, got {text!r}")
    return lo, hi


def run(args: argparse.Namespace) -> int:
    from spatia.client.web.app import WebConfig, run_app, server_ssl_context
    from spatia.world.errors import InvalidInputError

    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInputError("HTTPS needs both --tls-cert and --tls-key")
    for f in (args.tls_cert, args.tls_key, args.server_ca):
        if f is not None and not f.is_file():
            raise InvalidInputError(f"file not found: {f}")
    if not 0 < args.port < 65536:
        raise InvalidInputError(f"--port must be in 1..65535, got {args.port}")
    ssl_context = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert is not None else None
    config = WebConfig(server=args.server, host=args.host, port=args.port, tls=ssl_context is not None,
                       server_root_certificates=args.server_ca.read_bytes() if args.server_ca else None,
                       allowed_origins=tuple(args.allowed_origin), grace_s=args.grace,
                       server_frames=args.server_frames, video_codec=args.video_codec,
                       playout_delay_ms=_playout_delay(args.playout_delay_ms))
    run_app(config, ssl_context)
    return 0
