"""A stand-in for a GPU generator, for measuring scheduling only (benchmarks/cluster.py, docs/SCALE.md).

``GpuStandinHost`` is a ``WorldHost`` whose ``play_clip`` skips the engine: for each pose it waits a fixed
``FRAME_S`` (100 ms, a sleep: no CPU, as a process waiting on its GPU) and hands the session one prepared JPEG
frame (the world's first view, encoded once per output format). The world's memory and history do not change.
It stands for the neural generator on a GPU, where one world needs one device and the host process mostly waits:
with it, a 2-core machine shows what Ray's scheduling adds and how sessions scale with worker processes, which the
CPU-bound geometric generator cannot show there. Never used by ``spatia serve``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from spatia.server.host import WorldHost
from spatia.world.engine import ClipStats

FRAME_S = 0.100  # the stand-in's fixed time per frame


class StandinFrame:
    """A prepared frame (``data`` already encoded: the Play session sends it as is)."""

    __slots__ = ("frame_index", "clip_id", "c2w", "width", "height", "data", "rgb")

    def __init__(self, frame_index: int, clip_id: int, c2w: np.ndarray, width: int, height: int, data: bytes):
        self.frame_index, self.clip_id, self.c2w = frame_index, clip_id, c2w
        self.width, self.height, self.data, self.rgb = width, height, data, None


class GpuStandinMixin:
    """``play_clip`` without the engine (see the module docstring); mixed into ``WorldHost`` subclasses."""

    _prepared: dict

    def _frame_bytes(self, frame_format) -> bytes:
        import cv2

        from spatia.proto.spatia.v1.convert import encode_image

        prepared = self.__dict__.setdefault("_prepared", {})
        if frame_format not in prepared:
            (w, h), encoding, quality = frame_format
            rgb = self.world.memory.render(self.world.intrinsics, self.world.origin_c2w).rgb  # the first view
            rgb = cv2.resize(np.ascontiguousarray(rgb), (w, h), interpolation=cv2.INTER_AREA)
            prepared[frame_format] = encode_image(rgb, encoding, quality)
        return prepared[frame_format]

    async def play_clip(self, engine, poses: np.ndarray, prompt: str | None, seed: int,
                        sink: Callable[[int, Any], None], autosave=None, frame_format=None):
        return await self.call(self.clip_work(engine, poses, prompt, seed, sink, autosave, frame_format))

    def clip_work(self, engine, poses: np.ndarray, prompt: str | None, seed: int,
                  sink: Callable[[int, Any], None], autosave=None, frame_format=None) -> Callable[[], Any]:
        if frame_format is None:
            frame_format = ((self.world.intrinsics.width, self.world.intrinsics.height), 1, 85)
        (w, h), _, _ = frame_format

        def _clip():  # on the worker: the prepared frame is looked up (made once) in the same hand-off
            data = self._frame_bytes(frame_format)
            clip_id = self.clips_generated
            t0 = time.perf_counter()
            for i, c2w in enumerate(poses):
                time.sleep(FRAME_S)  # the GPU's time: the host process waits without using the CPU
                self.frames_generated += 1
                sink(i, StandinFrame(len(self.world.history) - 1, clip_id, c2w, w, h, data))
            self.clips_generated += 1
            return ClipStats(clip_id, len(poses), [], time.perf_counter() - t0, 0.0, self.world.memory.num_points)

        return _clip


class GpuStandinHost(GpuStandinMixin, WorldHost):
    """The in-process host with the stand-in (benchmarks/cluster.py puts it in ``server.store`` for its run)."""
