"""Server configuration: where worlds live, which generator, limits, timing. Frozen: one config per server."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from spatia.world.errors import InvalidInputError


@dataclass(frozen=True)
class Limits:
    """Every limit answers RESOURCE_EXHAUSTED (counts) or INVALID_ARGUMENT (sizes) with a message naming it."""

    max_worlds: int = 64  # worlds in the data dir
    max_sessions: int = 16  # concurrent Play + Generate calls over all worlds
    max_image_pixels: int = 1920 * 1080  # width * height of any image in or out (world, frame, render)
    max_trajectory_frames: int = 4096  # poses in one Generate call
    max_message_bytes: int = 64 * 1024 * 1024  # gRPC send / receive limit (a raw 1080p frame is ~6.2 MB)
    max_pending_frames: int = 32  # Play: integrated poses waiting for generation; beyond, the oldest are dropped
    frame_queue: int = 8  # Play / Generate: frames waiting to be written to a client; beyond, the oldest are dropped
    max_import_bytes: int = 1 << 30  # ImportWorld: total bytes of one upload
    action_queue: int = 256  # Play: actions read but not integrated yet (reading blocks beyond: HTTP/2 backpressure)

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value < 1:
                raise InvalidInputError(f"limit {name} must be >= 1, got {value}")


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path = Path("spatia-data")
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = an ephemeral port (the bound port is reported by ``WorldServer.port``)
    generator: str = "geometric"  # model.make_generator name
    generator_kwargs: tuple[tuple[str, object], ...] = ()  # e.g. (("weights_dir", "/w"),)
    token: str | None = None  # with a token, every RPC but health needs "authorization: Bearer <token>"
    tls_cert: Path | None = None  # PEM server certificate chain; with tls_key enables TLS
    tls_key: Path | None = None  # PEM private key
    limits: Limits = field(default_factory=Limits)
    # A played world is saved after a clip's memory update once both this many clips and this many seconds have
    # passed since its last save (and always when the session ends and at shutdown). Each save serialises the
    # whole world on the saver thread (~1 s of CPU per 1 M points), so saving after every clip of a 30 fps session
    # keeps a core busy; a kill -9 loses at most max(``save_interval_s``, last save time / ``save_max_duty``) of play
    # plus the write in progress. ``save_interval_s = 0`` (with ``save_max_duty = 1``): saved after every
    # ``save_every_clips`` clips and written before the next clip starts (strict durability, slower play).
    save_every_clips: int = 1
    save_interval_s: float = 10.0
    # ... and saving takes at most this fraction of a played world's wall time: after a save that took s seconds
    # the next waits at least s / save_max_duty. A world grows by ~10^5 points per second of exploring, and each
    # save serialises all of it, so at a fixed interval long sessions would spend ever more CPU on snapshots.
    save_max_duty: float = 0.05
    # Play integrates and indexes every this many frames (``EngineConfig.keyframe_stride``): at 30 fps frames are a
    # few cm apart. Generate (explicit trajectories, evaluation) keeps every frame, as the paper does.
    play_keyframe_stride: int = 4
    # Play keeps a clip's retrieved references while the camera stays within (degrees, metres) of where they were
    # retrieved (``EngineConfig.reuse_references_within``); short play clips would otherwise retrieve ~30 times a
    # second for nearly the same view. None: retrieve for every clip.
    play_reuse_references_within: tuple[float, float] | None = (5.0, 0.10)
    # ... and keeps them for this many clips after a retrieval whatever the distance
    # (``EngineConfig.reuse_references_clips``): at four sessions' ~10 fps each clip moves past the distance above,
    # and retrieving every other clip kept every frame a fresh retrieval chose. 0: by distance only.
    play_reuse_references_clips: int = 1
    # Play (interactive, not lock-step): a clip's memory update runs beside the next clip, which reads the memory
    # as it was before that update (``EngineConfig.commit_beside_next_clip``), where the generator allows it (reads
    # no preceding frames, gives exact poses: the geometric one) and while the world is the only one in play in
    # this process (``WorldHost.clip_work``); False: each update before the next clip begins.
    # ``spatia serve --play-commit-beside off`` (or ``SPATIA_PLAY_COMMIT_BESIDE=off``)
    play_commit_beside_next_clip: bool = True
    metrics_port: int | None = None  # Prometheus /metrics on host:metrics_port (0 = ephemeral); None: off
    shutdown_grace_s: float = 5.0  # running RPCs get this long to end at shutdown
    keepalive_time_s: float = 60.0  # server pings idle connections this often (keepalive guide: >= 1 min)
    keepalive_timeout_s: float = 20.0
    min_client_ping_interval_s: float = 30.0  # clients may ping this often without GOAWAY too_many_pings
    # ``spatia serve --ray``: each world in a Ray actor (a server.cluster.ClusterOptions); None: in-process hosts
    cluster: object | None = None
    # once serving, load the world core's numba kernels into this process (server.host.KernelWarmUp; a cold
    # cache is first compiled in a low-priority child process), so no session compiles or loads one mid-play;
    # ``spatia serve`` turns it on
    warm_kernels: bool = False
    # diagnostics: each interactive Play session writes its per-frame timestamps (action received, pose
    # integrated, clip started, frame generated, encoded, handed to gRPC) to ``<dir>/<session id>.jsonl`` when it
    # ends (``server.session.PlayTrace``; ``benchmarks/play.py --trace``). None (default): nothing is recorded.
    # Default from the environment variable ``SPATIA_PLAY_TRACE_DIR`` (a benchmark's server subprocess).
    play_trace_dir: Path | None = field(default_factory=lambda: _env_path("SPATIA_PLAY_TRACE_DIR"))
    # Play: the camera collides with the world's surfaces (``world.collision``, ``ControlConfig.collision``);
    # ``spatia serve --play-collision off`` (or ``SPATIA_PLAY_COLLISION=off``) walks through walls
    play_collision: bool = True
    # Play: interactive clips that run at once in this server (``server.session.PlaySession.drive``): a clip waits
    # for a slot, then takes the newest poses. None: one per core this process may use; 0: no limit (every
    # session's clip at once: four sessions on two cores each took ~2x their CPU time; docs/BENCHMARKS.md, "Four
    # sessions on two cores"). ``spatia serve --play-clip-slots N`` / ``SPATIA_PLAY_CLIP_SLOTS``
    play_clip_slots: int | None = None

    def clip_slot_count(self) -> int:
        """``play_clip_slots`` resolved: None -> the cores this process may use."""
        if self.play_clip_slots is not None:
            return self.play_clip_slots
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))  # accept a str path too (frozen dataclass)
        if self.play_trace_dir is not None:
            object.__setattr__(self, "play_trace_dir", Path(self.play_trace_dir))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInputError("TLS needs both --tls-cert and --tls-key")
        if self.save_every_clips < 1:
            raise InvalidInputError(f"save_every_clips must be >= 1, got {self.save_every_clips}")
        if self.play_clip_slots is not None and self.play_clip_slots < 0:
            raise InvalidInputError(f"play_clip_slots must be >= 0 (0: no limit), got {self.play_clip_slots}")
        if not 0.0 < self.save_max_duty <= 1.0:
            raise InvalidInputError(f"save_max_duty must be in (0, 1], got {self.save_max_duty}")
        if self.play_reuse_references_clips < 0:
            raise InvalidInputError(f"play_reuse_references_clips must be >= 0, got {self.play_reuse_references_clips}")
        if self.play_keyframe_stride < 1:
            raise InvalidInputError(f"play_keyframe_stride must be >= 1, got {self.play_keyframe_stride}")
        if not (self.save_interval_s >= 0 and self.save_interval_s != float("inf")):
            raise InvalidInputError(f"save_interval_s must be a finite number >= 0, got {self.save_interval_s}")
        if self.token is not None and not self.token:
            raise InvalidInputError("token must not be empty")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None
