"""client package: ``WorldClient`` / ``AsyncWorldClient`` (client/api.py) speak to a server through ``proto/``."""

from spatia.client.api import AsyncWorldClient, DecodedFrame, PlaySession, WorldClient, WorldServiceError

__all__ = ["AsyncWorldClient", "DecodedFrame", "PlaySession", "WorldClient", "WorldServiceError"]

from spatia.client.env import register_envs as _register_envs  # noqa: E402  (gymnasium ids SpatiaWorld-v0, ...Discrete-v0)

_register_envs()
