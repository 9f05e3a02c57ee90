"""Generators implementing ``world.generator.Generator``: the geometric one (CPU, real time) and the Spatia network.

``make_generator(name)`` is the one place names map to classes, for the CLI, the server and the evaluation.
Torch is imported only when a neural generator is asked for.
"""

from __future__ import annotations

from typing import Any

from world.errors import InvalidInputError

GENERATOR_NAMES = ("geometric",)


def make_generator(name: str = "geometric", **kwargs: Any):
    """Build a generator by name. ``kwargs`` go to its constructor (e.g. ``weights_dir`` for the network)."""
    if name == "geometric":
        from model.geometric import GeometricConfig, GeometricGenerator

        return GeometricGenerator(GeometricConfig(**kwargs))
    raise InvalidInputError(f"unknown generator {name!r}; known: {', '.join(GENERATOR_NAMES)}")
