"""Flow-matching sampling for the Spatia network: UniPC (flow shift 5) or Euler, classifier-free guidance, and
clean latent frames (reference / preceding / TI2V first frame) re-imposed at every step.

Separate from the model (diffusers' philosophy: schedulers know nothing of the network): the sampler calls a
``velocity_fn(latents, frame_timesteps, conditional) -> velocity`` that the generator builds around the transformer.

Convention (diffusers / DiffSynth flow matching): ``x_sigma = (1 - sigma) * x0 + sigma * noise`` with sigma from 1
(noise) to 0 (data); the network predicts ``v = noise - x0`` and is fed the timestep ``sigma * 1000``. The paper
(Sec. 3.1.3) writes the same interpolation with t = 1 - sigma.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from spatia.world.errors import InvalidInputError

SCHEDULERS = ("unipc", "euler")


class VelocityFn(Protocol):
    def __call__(self, latents: torch.Tensor, frame_timesteps: torch.Tensor, conditional: bool) -> torch.Tensor:
        """latents [B, C, F, H, W] float32, frame_timesteps [B, F] in [0, 1000] -> velocity [B, C, F, H, W]."""
        ...


@dataclass(frozen=True)
class SamplerConfig:
    """Official defaults (inference.py): 40 steps, UniPC, sigma_shift 5, cfg_scale 3.5."""

    scheduler: str = "unipc"  # "unipc": diffusers UniPCMultistepScheduler (flow sigmas); "euler": first order
    num_steps: int = 40
    guidance_scale: float = 3.5  # 1.0 disables classifier-free guidance (one network call per step)
    flow_shift: float = 5.0  # sigma' = s * sigma / (1 + (s - 1) * sigma): more steps at high noise
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise InvalidInputError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.num_steps < 1:
            raise InvalidInputError(f"num_steps must be >= 1, got {self.num_steps}")
        if not self.guidance_scale >= 0.0:
            raise InvalidInputError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not self.flow_shift > 0.0:
            raise InvalidInputError(f"flow_shift must be > 0, got {self.flow_shift}")

    @classmethod
    def official(cls) -> "SamplerConfig":
        return cls()

    @classmethod
    def fast(cls) -> "SamplerConfig":
        """A few Euler steps without guidance: for tiny models and smoke runs."""
        return cls(scheduler="euler", num_steps=4, guidance_scale=1.0)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Flow shift of sigmas in [0, 1] (Wan / SD3 time shift)."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def make_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Gaussian noise float32 from a CPU generator, so a seed gives the same noise on every device (official
    ``rand_device="cpu"``)."""
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


class FlowMatchingSampler:
    """Integrates the velocity field from noise to data for latents [B, C, F, H, W]."""

    def __init__(self, config: SamplerConfig = SamplerConfig()) -> None:
        self.config = config

    def _unipc(self):
        from diffusers import UniPCMultistepScheduler

        # Wan2.2 scheduler config (diffusers scripts/convert_wan_to_diffusers.py); official uses DiffSynth's port of
        # the same FlowUniPCMultistepScheduler with sigma_shift 5.
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True,
            num_train_timesteps=self.config.num_train_timesteps, flow_shift=self.config.flow_shift,
        )
        scheduler.set_timesteps(self.config.num_steps, device="cpu")
        return scheduler

    def euler_sigmas(self) -> torch.Tensor:
        """[num_steps + 1] float64 shifted sigmas from 1 to 0.

        DiffSynth's FlowMatchScheduler (official ``sampler="euler"``) uses the same shifted linear schedule but starts
        its last step at a shifted sigma_min = 0.003/1.002 instead of stepping from the linear grid; we keep the
        plain grid (a deliberate, tiny departure: the steps end exactly at sigma 0 either way).
        """
        sigmas = torch.linspace(1.0, 0.0, self.config.num_steps + 1, dtype=torch.float64)
        return shift_sigmas(sigmas, self.config.flow_shift)

    def timesteps(self) -> torch.Tensor:
        """[num_steps] float32 timesteps in [0, num_train_timesteps] fed to the network, one per step."""
        if self.config.scheduler == "unipc":
            return self._unipc().timesteps.to(torch.float32)
        return (self.euler_sigmas()[:-1] * self.config.num_train_timesteps).to(torch.float32)

    def guided_velocity(
        self, velocity_fn: VelocityFn, latents: torch.Tensor, frame_timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Classifier-free guidance (official: ``nega + cfg_scale * (posi - nega)``)."""
        v_cond = velocity_fn(latents, frame_timesteps, True).float()
        if self.config.guidance_scale == 1.0:
            return v_cond
        v_uncond = velocity_fn(latents, frame_timesteps, False).float()
        return v_uncond + self.config.guidance_scale * (v_cond - v_uncond)

    @torch.no_grad()
    def sample(
        self,
        velocity_fn: VelocityFn,
        noise: torch.Tensor,
        clean: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Sample latents.

        Args:
            noise: [B, C, F, H, W] float32 starting noise (``make_noise`` with the request's seed).
            clean: [B, C, F, H, W] clean latents for the ``known`` frames (other frames ignored).
            known: [F] bool, True for latent frames that are given (references, preceding clip, TI2V first frame):
                they get timestep 0 and are overwritten with ``clean`` before the first step and after every step
                (official ``call_latent_inference``; diffusers' TI2V first-frame fusion generalised).
            callback: called as ``callback(step, num_steps)`` after each step (progress bars).
        Returns:
            [B, C, F, H, W] float32 latents, known frames equal to ``clean``.
        """
        if noise.ndim != 5:
            raise InvalidInputError(f"noise must be [B, C, F, H, W], got {tuple(noise.shape)}")
        batch, _, num_frames = noise.shape[:3]
        if known is None:
            known = torch.zeros(num_frames, dtype=torch.bool)
        known = torch.as_tensor(known, dtype=torch.bool).cpu()
        if known.shape != (num_frames,):
            raise InvalidInputError(f"known must be [F={num_frames}] bool, got {tuple(known.shape)}")
        if bool(known.any()) and (clean is None or clean.shape != noise.shape):
            raise InvalidInputError(f"clean latents of shape {tuple(noise.shape)} are required when frames are known")
        known_dev = known.to(noise.device)

        def impose(x: torch.Tensor) -> torch.Tensor:
            if not bool(known.any()):
                return x
            return torch.where(known_dev[None, None, :, None, None], clean.to(x), x)

        def frame_timesteps(t: torch.Tensor) -> torch.Tensor:
            ts = torch.full((batch, num_frames), float(t), dtype=torch.float32, device=noise.device)
            return ts.masked_fill(known_dev[None, :], 0.0)

        latents = impose(noise.float())
        steps = self.config.num_steps
        if self.config.scheduler == "unipc":
            scheduler = self._unipc()
            for i, t in enumerate(scheduler.timesteps):
                v = self.guided_velocity(velocity_fn, latents, frame_timesteps(t))
                latents = impose(scheduler.step(v, t, latents, return_dict=False)[0].float())
                if callback is not None:
                    callback(i + 1, steps)
        else:
            sigmas = self.euler_sigmas()
            for i in range(steps):
                t = sigmas[i] * self.config.num_train_timesteps
                v = self.guided_velocity(velocity_fn, latents, frame_timesteps(t))
                latents = impose(latents + float(sigmas[i + 1] - sigmas[i]) * v)
                if callback is not None:
                    callback(i + 1, steps)
        return latents
