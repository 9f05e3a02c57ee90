"""A small jitter buffer between the network thread and the render loop.

Frames arrive in bursts (a clip's frames come together, then nothing while the next clip is generated). The
buffer holds up to ``capacity`` frames and releases them at the stream's frame rate once ``target_depth`` frames
are queued (or the oldest has waited ``max_delay_s``), so motion looks even; the render loop only ever calls
``pop`` (never blocks). When no frame has arrived for ``stale_after_s`` the player keeps showing the last frame
and marks it stale. Thread-safe: one producer (network thread), one consumer (render loop).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from spatia.world.errors import InvalidInputError


@dataclass(frozen=True)
class JitterConfig:
    fps: float = 16.0  # release rate (the session's frame rate)
    target_depth: int = 2  # start releasing once this many frames wait (absorbs arrival jitter)
    capacity: int = 32  # beyond, the oldest frames are dropped (latest wins: we are behind)
    max_delay_s: float = 0.25  # release a lone frame once it has waited this long (never hold a frame forever)
    stale_after_s: float = 1.0  # no arrival for this long -> the displayed frame is stale

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.target_depth < 1 or self.capacity < self.target_depth or self.max_delay_s < 0:
            raise InvalidInputError(f"bad jitter buffer config {self}")


class JitterBuffer:
    def __init__(self, config: JitterConfig = JitterConfig(), clock=time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._items: deque[tuple[float, Any]] = deque()  # (arrival time s, frame)
        self._lock = threading.Lock()
        self._last_arrival: float | None = None
        self._next_release = 0.0
        self.dropped = 0
        self.closed = False  # the producer saw the end of the stream

    def push(self, frame: Any) -> None:
        now = self._clock()
        with self._lock:
            self._items.append((now, frame))
            self._last_arrival = now
            while len(self._items) > self.config.capacity:
                self._items.popleft()
                self.dropped += 1

    def close(self) -> None:
        self.closed = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def pop(self) -> Any | None:
        """The frame due now, or None (keep showing the current one). Never blocks."""
        now = self._clock()
        c = self.config
        with self._lock:
            if not self._items or now < self._next_release:
                return None
            oldest_wait = now - self._items[0][0]
            if len(self._items) < c.target_depth and oldest_wait < c.max_delay_s and not self.closed:
                return None
            _, frame = self._items.popleft()
            period = 1.0 / c.fps
            # Pace at the stream rate; when far behind (more than capacity/2 queued) catch up a little faster.
            if len(self._items) > c.capacity // 2:
                period *= 0.5
            self._next_release = max(self._next_release + period, now - period) if self._next_release else now + period
            return frame

    def stale(self) -> bool:
        """No frame has arrived for ``stale_after_s`` (or none ever did)."""
        with self._lock:
            if self._last_arrival is None:
                return True
            return self._clock() - self._last_arrival > self.config.stale_after_s
