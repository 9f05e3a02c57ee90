"""SpatiaGenerator end to end on a tiny random model (CPU, 32x32 frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatia.model.spatia.generator import SpatiaGenerator, SpatiaGeneratorConfig, padded_length, usable_preceding
from spatia.model.spatia.sampler import SamplerConfig
from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError
from spatia.world.generator import ClipRequest, Generator, ReferenceFrame, SceneProjection

H = W = 32


@pytest.fixture(scope="module")
def generator() -> SpatiaGenerator:
    return SpatiaGenerator.tiny(seed=0)


def make_request(num_preceding: int, num_target: int, num_refs: int = 1, seed: int = 0, first_frame: bool = False,
                 size: int = H) -> ClipRequest:
    rng = np.random.default_rng(100 + num_preceding + num_target)
    k = Intrinsics.from_fov(60.0, size, size)
    total = num_preceding + num_target
    projection = SceneProjection(rng.integers(0, 256, (total, size, size, 3), dtype=np.uint8),
                                 rng.random((total, size, size)).astype(np.float32) + 1.0,
                                 rng.random((total, size, size)) > 0.3)
    refs = [ReferenceFrame(i, rng.integers(0, 256, (size, size, 3), dtype=np.uint8), np.eye(4), k) for i in range(num_refs)]
    return ClipRequest(
        clip_id=1, target_c2w=np.repeat(np.eye(4)[None], num_target, 0), intrinsics=k, projection=projection,
        preceding_frames=rng.integers(0, 256, (num_preceding, size, size, 3), dtype=np.uint8),
        preceding_c2w=np.repeat(np.eye(4)[None], num_preceding, 0), references=refs, prompt="a quiet room", seed=seed,
        first_frame=rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if first_frame else None,
    )


def test_frame_count_helpers():
    assert [usable_preceding(m, 9) for m in (0, 1, 4, 5, 9, 12)] == [0, 1, 1, 5, 9, 9]
    assert [padded_length(n) for n in (1, 2, 5, 8, 81)] == [1, 5, 5, 9, 81]


def test_generate_later_clip_shapes_and_determinism(generator):
    assert isinstance(generator, Generator)
    request = make_request(num_preceding=5, num_target=4, num_refs=2, seed=7)
    result = generator.generate(request)
    assert result.frames.shape == (4, H, W, 3) and result.frames.dtype == np.uint8
    again = generator.generate(request)
    assert np.array_equal(result.frames, again.frames)  # same seed, same frames
    other = generator.generate(make_request(num_preceding=5, num_target=4, num_refs=2, seed=8))
    assert not np.array_equal(result.frames, other.frames)


def test_generate_first_clip_with_first_frame_and_padding(generator):
    result = generator.generate(make_request(num_preceding=0, num_target=6, num_refs=0, first_frame=True))
    assert result.frames.shape == (6, H, W, 3)  # 6 frames are padded to 9 for the VAE, then cut


def test_token_layout_of_inputs(generator):
    request = make_request(num_preceding=5, num_target=4, num_refs=2)
    inputs = generator.build_inputs(request)
    # [2 refs | 2 preceding latents (5 frames) | 1 more for 4 target frames (9 frames -> 3 latents)]
    assert inputs["noise"].shape == (1, 48, 2 + 3, 2, 2)  # 32 px / 16 (VAE) = 2 latent px
    assert inputs["control"].shape == (1, 96, 3, 2, 2)
    assert inputs["known"].tolist() == [True, True, True, True, False]
    first = generator.build_inputs(make_request(num_preceding=0, num_target=5, num_refs=0, first_frame=True))
    assert first["known"].tolist() == [True, False]  # TI2V: latent frame 0 is the encoded first image
    short = generator.build_inputs(make_request(num_preceding=6, num_target=4, num_refs=0))
    assert short["num_preceding_used"] == 5 and short["known"].tolist() == [True, True, False]


def test_scene_projection_conditions_the_output(generator):
    request = make_request(num_preceding=1, num_target=4, num_refs=0, seed=3)
    base = generator.generate(request).frames
    request.projection.rgb[:] = 255 - request.projection.rgb
    request.projection.valid[:] = ~request.projection.valid
    assert not np.array_equal(generator.generate(request).frames, base)


def test_resolution_and_shapes_are_checked(generator):
    with pytest.raises(InvalidInputError, match="multiples of 32"):
        generator.generate(make_request(num_preceding=1, num_target=4, size=48))
    bad = make_request(num_preceding=1, num_target=4)
    bad.projection = bad.projection.slice(0, 3)
    with pytest.raises(InvalidInputError, match="projection"):
        generator.generate(bad)


def test_lora_is_off_for_the_first_clip_and_on_later():
    from spatia.model.spatia import convert

    gen = SpatiaGenerator.tiny(seed=1, config=SpatiaGeneratorConfig(sampler=SamplerConfig.fast()))
    names = [f"blocks.{i}.attn1.to_q" for i in range(2)]
    lora = convert.LoraWeights({n: torch.randn(2, 24) for n in names}, {n: torch.randn(24, 2) for n in names}, alpha=2.0)
    states = []
    original = gen.transformer.forward

    def spy(*args, **kwargs):
        states.append(not gen.transformer.blocks[0].attn1.to_q.disable_adapters)
        return original(*args, **kwargs)

    convert.attach_lora(gen.transformer, lora)
    gen.transformer.forward = spy
    gen.generate(make_request(num_preceding=0, num_target=4, num_refs=0, first_frame=True))
    assert states and not any(states)
    states.clear()
    gen.generate(make_request(num_preceding=5, num_target=4, num_refs=1))
    assert states and all(states)
