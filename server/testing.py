"""A real server on a loopback ephemeral port, in a background thread with its own event loop (for tests,
benchmarks and notebooks that use the blocking client)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from spatia.server.config import ServerConfig
from spatia.server.service import WorldServer


class ServerThread:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server: WorldServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="spatia-server")

    def start(self) -> int:
        self._thread.start()
        self.server = WorldServer(self.config)
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=120)

    @property
    def target(self) -> str:
        return f"{self.config.host}:{self.server.port}"

    def stop(self, grace_s: float | None = None) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop).result(timeout=120)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


@contextlib.contextmanager
def running_server(config: ServerConfig) -> Iterator[ServerThread]:
    st = ServerThread(config)
    st.start()
    try:
        yield st
    finally:
        st.stop(grace_s=2.0)
