"""Generators implementing ``world.generator.Generator``: the geometric one (CPU, real time) and the Spatia network.

``make_generator(name)`` is the one place names map to classes, for the CLI, the server and the evaluation.
Torch is imported only when a neural generator is asked for.
"""

from __future__ import annotations

from typing import Any

from spatia.world.errors import InvalidInputError

GENERATOR_NAMES = ("geometric", "spatia", "spatia-tiny")


def make_generator(name: str = "geometric", **kwargs: Any):
    """Build a generator by name. ``kwargs`` go to its constructor (e.g. ``weights_dir`` for the network)."""
    if name == "geometric":
        from spatia.model.geometric import GeometricConfig, GeometricGenerator

        return GeometricGenerator(GeometricConfig(**kwargs))
    if name == "spatia-tiny":  # a tiny random network of the real classes: proves the wiring on CPU
        from spatia.model.spatia import SpatiaGenerator

        return SpatiaGenerator.tiny(seed=int(kwargs.pop("seed", 0)))
    if name == "spatia":
        weights_dir = kwargs.pop("weights_dir", None)
        if weights_dir is None:
            raise InvalidInputError("generator 'spatia' needs a weights directory (--weights DIR); see README, GPU section")
        import torch

        from spatia.model.spatia import SpatiaGenerator

        device = kwargs.pop("device", "cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device != "cpu" else torch.float32
        return SpatiaGenerator.from_pretrained(weights_dir, device=device, dtype=dtype, **kwargs)
    raise InvalidInputError(f"unknown generator {name!r}; known: {', '.join(GENERATOR_NAMES)}")
