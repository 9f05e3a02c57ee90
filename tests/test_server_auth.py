"""Bearer-token auth (every RPC but health) and TLS with a self-signed certificate made in the test."""

import subprocess

import grpc
import pytest

from spatia.client.api import AsyncWorldClient, WorldClient, WorldServiceError
from spatia.server.config import ServerConfig
from spatia.server.testing import running_server

W, H = 64, 48


def test_token_is_required_on_every_rpc_but_health(tmp_path):
    with running_server(ServerConfig(data_dir=tmp_path, port=0, token="s3cret")) as st:
        with WorldClient(st.target) as anon:
            assert anon.health() == 1
            for call in (anon.list_worlds, lambda: anon.create_scene("room", 0, W, H), lambda: anon.play("x"),
                         lambda: list(anon.generate("x", [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])),
                         lambda: anon.import_world(b"")):
                with pytest.raises(WorldServiceError) as exc:
                    call()
                assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
        with WorldClient(st.target, token="wrong") as bad:
            with pytest.raises(WorldServiceError) as exc:
                bad.list_worlds()
            assert exc.value.code == grpc.StatusCode.UNAUTHENTICATED
        with WorldClient(st.target, token="s3cret") as good:
            good.create_scene("room", 0, W, H, world_id="ok")
            assert [w.world_id for w in good.list_worlds()] == ["ok"]
            with good.play("ok", record=False) as s:
                s.send(move_forward=1.0, dt_s=0.25)
                assert s.next_frame(timeout_s=60).rgb.shape == (H, W, 3)


def _self_signed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return key, cert


def test_tls_with_a_self_signed_certificate(tmp_path):
    import asyncio

    key, cert = _self_signed(tmp_path)
    config = ServerConfig(data_dir=tmp_path / "data", port=0, tls_cert=cert, tls_key=key, token="t")
    with running_server(config) as st:
        target = f"localhost:{st.server.port}"
        with WorldClient(target, root_certificates=cert.read_bytes(), token="t") as c:
            c.create_scene("room", 0, W, H, world_id="tls")
            assert c.get_world("tls").stats.memory_points > 0

        async def aio():
            async with AsyncWorldClient(target, root_certificates=cert.read_bytes(), token="t") as c:
                return [w.world_id for w in await c.list_worlds()]

        assert asyncio.run(aio()) == ["tls"]
        with WorldClient(target, timeout_s=5) as plaintext:  # a plaintext client cannot talk to a TLS server
            with pytest.raises(WorldServiceError) as exc:
                plaintext.list_worlds()
            assert exc.value.code == grpc.StatusCode.UNAVAILABLE
