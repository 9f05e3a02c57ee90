"""Flow-matching sampler: exactness on a known velocity field, known frames, CFG, determinism."""

from __future__ import annotations

import pytest
import torch

from spatia.model.spatia.sampler import FlowMatchingSampler, SamplerConfig, make_noise, shift_sigmas
from spatia.world.errors import InvalidInputError

SHAPE = (1, 4, 3, 2, 2)


def exact_velocity(x0: torch.Tensor, noise: torch.Tensor):
    """The true velocity of the straight path x = (1 - s) x0 + s noise is noise - x0 everywhere."""
    def fn(latents, frame_timesteps, conditional):
        return noise - x0
    return fn


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_exact_velocity_recovers_data(scheduler):
    x0, noise = make_noise(SHAPE, 1), make_noise(SHAPE, 2)
    sampler = FlowMatchingSampler(SamplerConfig(scheduler=scheduler, num_steps=8, guidance_scale=1.0))
    out = sampler.sample(exact_velocity(x0, noise), noise)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_known_frames_are_clean_and_get_timestep_zero():
    noise, clean = make_noise(SHAPE, 3), make_noise(SHAPE, 4)
    known = torch.tensor([True, False, False])
    seen = []

    def fn(latents, frame_timesteps, conditional):
        seen.append(frame_timesteps.clone())
        assert torch.equal(latents[:, :, 0], clean[:, :, 0])  # re-imposed before every call
        return torch.ones_like(latents)

    sampler = FlowMatchingSampler(SamplerConfig(scheduler="unipc", num_steps=5, guidance_scale=1.0))
    out = sampler.sample(fn, noise, clean, known)
    assert torch.equal(out[:, :, 0], clean[:, :, 0])
    assert len(seen) == 5
    expected_t = sampler.timesteps()
    for step, ts in enumerate(seen):
        assert ts[0, 0] == 0.0
        torch.testing.assert_close(ts[0, 1:], expected_t[step].repeat(2), atol=1e-3, rtol=0)
    with pytest.raises(InvalidInputError):
        sampler.sample(fn, noise, None, known)


def test_classifier_free_guidance_combination():
    noise = make_noise(SHAPE, 5)
    a, b = make_noise(SHAPE, 6), make_noise(SHAPE, 7)
    calls = []

    def fn(latents, frame_timesteps, conditional):
        calls.append(conditional)
        return a if conditional else b

    g = 3.5
    out = FlowMatchingSampler(SamplerConfig(scheduler="euler", num_steps=1, guidance_scale=g)).sample(fn, noise)
    # one Euler step from sigma 1 to 0: x = noise - v with v = b + g (a - b)
    torch.testing.assert_close(out, noise - (b + g * (a - b)), atol=1e-6, rtol=0)
    assert calls == [True, False]
    calls.clear()
    FlowMatchingSampler(SamplerConfig(scheduler="euler", num_steps=2, guidance_scale=1.0)).sample(fn, noise)
    assert calls == [True, True]  # no unconditional pass without guidance


def test_same_seed_same_latents():
    assert torch.equal(make_noise(SHAPE, 11), make_noise(SHAPE, 11))
    assert not torch.equal(make_noise(SHAPE, 11), make_noise(SHAPE, 12))

    def fn(latents, frame_timesteps, conditional):  # a nonlinear field, so the multistep history matters
        return torch.tanh(latents) * (1.0 + frame_timesteps[:, None, :, None, None] / 1000.0)

    sampler = FlowMatchingSampler(SamplerConfig(num_steps=6))
    runs = [sampler.sample(fn, make_noise(SHAPE, 9)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_euler_schedule_is_the_shifted_linear_schedule():
    sampler = FlowMatchingSampler(SamplerConfig(scheduler="euler", num_steps=4, flow_shift=5.0))
    sigmas = sampler.euler_sigmas()
    for i, s in enumerate([1.0, 0.75, 0.5, 0.25, 0.0]):
        assert float(sigmas[i]) == pytest.approx(5.0 * s / (1.0 + 4.0 * s))
    assert float(shift_sigmas(torch.tensor(0.5), 1.0)) == 0.5
    ts = FlowMatchingSampler(SamplerConfig(num_steps=10)).timesteps()
    assert ts.shape == (10,) and bool((ts[1:] < ts[:-1]).all()) and 900 < float(ts[0]) <= 1000


@pytest.mark.parametrize("kwargs", [dict(scheduler="ddim"), dict(num_steps=0), dict(guidance_scale=-1.0),
                                    dict(flow_shift=0.0)])
def test_config_is_validated(kwargs):
    with pytest.raises(InvalidInputError):
        SamplerConfig(**kwargs)
