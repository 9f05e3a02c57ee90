"""``spatia play``: play a world in a pygame window (client/player.py).

Without ``--server`` an embedded server (server.testing.ServerThread on a loopback ephemeral port, data in
``--data-dir``) runs for the length of the game and is stopped on exit, which saves the world and closes the
recording; with ``--server`` the remote server keeps both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spatia.argtypes import at_least, positive_float


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("play", help="play a world in a window (keyboard / mouse / gamepad)")
    p.add_argument("--server", help="host:port of a running `spatia serve`; default: start an embedded one")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--world", help="play an existing world by id")
    src.add_argument("--scene", help="a new procedural scene: room, house, courtyard (default room)")
    src.add_argument("--image", type=Path, help="a new world from a photograph")
    p.add_argument("--depth", type=Path, help="with --image: depth (.npy metres or 16-bit PNG millimetres)")
    p.add_argument("--seed", type=at_least(0), default=0, help="procedural scene seed")
    p.add_argument("--prompt", default="", help="text instruction")
    p.add_argument("--width", type=at_least(8), default=256, help="stream width for a new scene (px)")
    p.add_argument("--height", type=at_least(8), default=144, help="stream height for a new scene (px)")
    p.add_argument("--window", default="960x540", help="window size WxH")
    p.add_argument("--fps", type=positive_float, default=30.0, help="the session's frame rate (default 30)")
    p.add_argument("--keys", type=Path, help="key config (JSON or TOML), see docs/PLAY.md")
    p.add_argument("--data-dir", type=Path, default=Path("spatia-data"), help="embedded server: worlds live here")
    p.add_argument("--token", help="bearer token for --server")
    p.add_argument("--no-record", action="store_true", help="do not record the session")
    p.add_argument("--screenshots", type=Path, default=Path("screenshots"), help="F12 saves here")
    p.add_argument("--seconds", type=at_least(0.0, float), help="quit after this many seconds (demos, smoke tests)")


def _window(text: str) -> tuple[int, int]:
    from spatia.world.errors import InvalidInputError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidInputError(f"--window must be WxH, e.g. 960x540, got {text!r}") from None
    if w < 64 or h < 64:
        raise InvalidInputError(f"--window must be at least 64x64, got {text!r}")
    return w, h


def create_world(client, args: argparse.Namespace) -> str:
    """The id of the world to play: --world, else a new one from --image or --scene."""
    from spatia.proto.spatia.v1 import world_pb2 as pb
    from spatia.world.errors import InvalidInputError, NotFoundError

    if args.depth is not None and args.image is None:
        raise InvalidInputError("--depth needs --image")
    if args.world:
        return client.get_world(args.world).world_id
    if args.image is not None:
        if not args.image.is_file():
            raise NotFoundError(f"image not found: {args.image}")
        source = pb.ImageSource(image=args.image.read_bytes())
        if args.depth is not None:
            if not args.depth.is_file():
                raise NotFoundError(f"depth not found: {args.depth}")
            source.depth = args.depth.read_bytes()
        return client.create_world(pb.CreateWorldRequest(prompt=args.prompt, image=source)).world_id
    return client.create_scene(args.scene or "room", args.seed, args.width, args.height, prompt=args.prompt).world_id


def run(args: argparse.Namespace) -> int:
    import contextlib

    from spatia.client.api import WorldClient
    from spatia.client.keymap import load_keymap
    from spatia.client.player import Player, PlayerConfig

    keymap = load_keymap(args.keys)
    window = _window(args.window)
    with contextlib.ExitStack() as stack:
        target = args.server
        if target is None:
            from spatia.server.config import ServerConfig
            from spatia.server.testing import running_server

            st = stack.enter_context(running_server(ServerConfig(data_dir=args.data_dir, port=0)))
            target = st.target
        client = stack.enter_context(WorldClient(target, token=args.token if args.server else None))
        world_id = create_world(client, args)
        player = Player(client, world_id, PlayerConfig(window=window, fps=args.fps, prompt=args.prompt,
                                                       record=not args.no_record, screenshot_dir=args.screenshots),
                        keymap)
        try:
            player.run(max_seconds=args.seconds)
        finally:
            import pygame

            pygame.quit()
        print(f"world {world_id}  frames shown {player.frames_shown}  recording "
              f"{player.session.started.recording_id or '-'}")
    return 0
