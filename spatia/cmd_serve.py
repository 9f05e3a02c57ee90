"""``spatia serve``: the gRPC world service (server/service.py) until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC world service")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for remote clients)")
    p.add_argument("--port", type=int, default=50051, help="port; 0 = an ephemeral port (see --port-file)")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once serving")
    p.add_argument("--data-dir", type=Path, default=Path("spatia-data"), help="worlds and recordings live here")
    p.add_argument("--generator", default="geometric", help="geometric (default), spatia-tiny, spatia")
    p.add_argument("--weights", type=Path, help="weights directory for --generator spatia")
    p.add_argument("--fill", choices=("layout", "legacy"), help="geometric generator's fill of unseen space")
    p.add_argument("--token", help="require 'authorization: Bearer TOKEN' on every RPC but health")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key: TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--save-every-clips", type=int, default=1, help="save a played world after this many clips ...")
    p.add_argument("--save-interval-s", type=float, default=10.0,
                   help="... and at least this many seconds since its last save (0: every --save-every-clips clips);"
                        " a kill -9 loses at most this much play (or --save-max-duty's wait, if longer)")
    p.add_argument("--save-max-duty", type=float, default=0.05,
                   help="saves take at most this fraction of a played world's time (1: no limit)")
    p.add_argument("--max-worlds", type=int, default=64)
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--max-image-pixels", type=int, default=1920 * 1080)
    p.add_argument("--max-trajectory-frames", type=int, default=4096)
    p.add_argument("--max-message-mb", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from spatia.server.config import Limits, ServerConfig
    from spatia.server.service import serve

    kwargs = (("weights_dir", str(args.weights)),) if args.weights else ()
    kwargs += (("fill", args.fill),) if args.fill else ()
    config = ServerConfig(
        data_dir=args.data_dir, host=args.host, port=args.port, generator=args.generator, generator_kwargs=kwargs,
        token=args.token, tls_cert=args.tls_cert, tls_key=args.tls_key, save_every_clips=args.save_every_clips,
        save_interval_s=args.save_interval_s, save_max_duty=args.save_max_duty,
        limits=Limits(max_worlds=args.max_worlds, max_sessions=args.max_sessions,
                      max_image_pixels=args.max_image_pixels, max_trajectory_frames=args.max_trajectory_frames,
                      max_message_bytes=args.max_message_mb * 1024 * 1024),
    )
    asyncio.run(serve(config, port_file=args.port_file))
    return 0
