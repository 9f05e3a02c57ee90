"""The world core: cameras, actions, spatial memory, frame history, retrieval, memory update, engine.

Imports no network, UI or neural-network code (checked by ``tests/test_imports.py``); heavy optional pieces
(open3d, transformers) are imported inside the functions that need them.
"""

from spatia.world.actions import Action, ActionIntegrator, ClipConfig, ClipSpan, ControlConfig, chunk_clips
from spatia.world.camera import Intrinsics, interpolate_pose, invert_pose, look_at, validate_pose, validate_trajectory
from spatia.world.errors import (
    AlreadyExistsError,
    ImageDecodeError,
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
    PreconditionError,
    SnapshotError,
    SpatiaError,
)
from spatia.world.generator import ClipRequest, ClipResult, Generator, ReferenceFrame, SceneProjection

__all__ = [
    "Action", "ActionIntegrator", "ClipConfig", "ClipSpan", "ControlConfig", "chunk_clips",
    "Intrinsics", "interpolate_pose", "invert_pose", "look_at", "validate_pose", "validate_trajectory",
    "AlreadyExistsError", "ImageDecodeError", "InvalidInputError", "LimitExceededError", "NotFoundError",
    "PreconditionError", "SnapshotError", "SpatiaError",
    "ClipRequest", "ClipResult", "Generator", "ReferenceFrame", "SceneProjection",
]
