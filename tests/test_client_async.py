"""AsyncWorldClient against a real server: four worlds played at once, Generate, errors as exceptions."""

import asyncio

import grpc
import numpy as np
import pytest

from spatia.client.api import AsyncWorldClient, WorldServiceError
from spatia.server.config import ServerConfig
from spatia.server.testing import running_server

W, H = 64, 48


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(ServerConfig(data_dir=tmp_path_factory.mktemp("data"), port=0)) as st:
        yield st


async def _play(client: AsyncWorldClient, world_id: str, n_frames: int) -> list:
    session = await client.play(world_id, clip=(2, 4, 2), max_pending_frames=32, record=False)
    await session.send(move_forward=0.5, yaw_rate_rad_s=0.3, dt_s=n_frames / 16)
    frames = [await session.next_frame() for _ in range(n_frames)]
    frames += await session.close()
    return frames, session


def test_four_worlds_play_concurrently(server):
    async def main():
        async with AsyncWorldClient(server.target) as c:
            names = [f"w{i}" for i in range(4)]
            await asyncio.gather(*(c.create_scene(("room", "house", "courtyard", "room")[i], seed=i, width=W,
                                                  height=H, world_id=n) for i, n in enumerate(names)))
            results = await asyncio.gather(*(_play(c, n, 6) for n in names))
            infos = await asyncio.gather(*(c.get_world(n) for n in names))
            return results, infos

    results, infos = asyncio.run(main())
    for (frames, session), info in zip(results, infos):
        assert len(frames) == 6 and all(f.rgb.shape == (H, W, 3) for f in frames)
        assert [f.frame_index for f in frames] == list(range(1, 7))
        assert session.stats and info.stats.history_frames == 7 and not info.controlled
    # different worlds, different pictures
    assert not np.array_equal(results[0][0][0].rgb, results[1][0][0].rgb)


def test_async_generate_and_errors(server):
    async def main():
        async with AsyncWorldClient(server.target) as c:
            info = await c.create_scene("room", seed=5, width=W, height=H, world_id="gen")
            origin = np.asarray(info.origin.c2w).reshape(4, 4)
            poses = np.repeat(origin[None], 3, 0)
            frames = [f async for f in c.generate("gen", poses, clip=(3, 3, 0))]
            with pytest.raises(WorldServiceError) as exc:
                await c.get_world("missing")
            session = await c.play("gen", record=False)
            with pytest.raises(WorldServiceError) as second:
                await c.play("gen")
            await session.close()
            return frames, exc.value.code, second.value.code

    frames, code, second = asyncio.run(main())
    assert len(frames) == 3 and code == grpc.StatusCode.NOT_FOUND
    assert second == grpc.StatusCode.FAILED_PRECONDITION
