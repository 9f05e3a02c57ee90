"""client package: ``WorldClient`` / ``AsyncWorldClient`` (client/api.py) speak to a server through ``proto/``."""

from client.api import AsyncWorldClient, DecodedFrame, PlaySession, WorldClient, WorldServiceError

__all__ = ["AsyncWorldClient", "DecodedFrame", "PlaySession", "WorldClient", "WorldServiceError"]
