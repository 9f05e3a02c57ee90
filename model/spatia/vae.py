"""A thin wrapper around diffusers' Wan2.2 ``AutoencoderKLWan``: uint8 frames <-> normalised latents.

Normalisation lives in the pipeline, not in the VAE (research notes B): ``z = (mode - mean) / std`` on encode and the
inverse before decode. DiffSynth's Wan2.2 VAE folds the same normalisation into its encode/decode, so latents here
match the official ones.
"""

from __future__ import annotations

import numpy as np
import torch

from spatia.world.errors import InvalidInputError

# The Wan2.2 VAE of diffusers' tiny TI2V-5B pipeline test (research notes B): 48 latent channels, x16 spatial and
# x4 temporal compression like the real one, 34k parameters.
TINY_VAE_CONFIG = dict(
    base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
    latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
    scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True],
)


def tiny_vae(seed: int = 0):
    """A tiny random ``AutoencoderKLWan`` with the Wan2.2 layout (for tests and ``spatia-tiny`` runs)."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(**TINY_VAE_CONFIG).eval()


def latent_frames(num_frames: int, temporal_factor: int = 4) -> int:
    """Latent frames of a ``num_frames`` video: the first frame alone, then groups of ``temporal_factor``."""
    if num_frames < 1 or (num_frames - 1) % temporal_factor:
        raise InvalidInputError(f"a video for the VAE needs 1 + {temporal_factor}k frames, got {num_frames}")
    return (num_frames - 1) // temporal_factor + 1


class SpatiaVAE:
    """Encodes uint8 videos / masks to normalised latents [1, z, t, h, w] and decodes them back."""

    def __init__(self, vae, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        # Cast only when needed: diffusers warns on a same-dtype .to(dtype) of models with fp32-kept modules.
        self.vae = (vae.to(device=device) if vae.dtype == dtype else vae.to(device=device, dtype=dtype)).eval()
        self.device = torch.device(device)
        self.dtype = dtype
        cfg = vae.config
        self.z_dim = int(cfg.z_dim)
        self.spatial_factor = int(cfg.scale_factor_spatial)
        self.temporal_factor = int(cfg.scale_factor_temporal)
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        if self.mean.shape[1] != self.z_dim or self.std.shape[1] != self.z_dim:
            raise InvalidInputError(f"latents_mean/std must have z_dim={self.z_dim} entries")

    def _check_video(self, video: np.ndarray, name: str) -> tuple[int, int, int]:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise InvalidInputError(f"{name} must be [T, H, W, 3], got shape {video.shape}")
        t, h, w = video.shape[:3]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise InvalidInputError(f"{name} size {w}x{h} must be a multiple of {self.spatial_factor}")
        latent_frames(t, self.temporal_factor)
        return t, h, w

    @torch.no_grad()
    def encode_pixels(self, video: torch.Tensor) -> torch.Tensor:
        """[1, 3, T, H, W] float in the VAE's input range -> [1, z, t, h, w] float32 normalised latents."""
        dist = self.vae.encode(video.to(device=self.device, dtype=self.dtype)).latent_dist
        z = dist.mode().float()  # official: the posterior mean, no sampling
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 [T, H, W, 3] RGB (T = 1 + 4k) -> [1, z, t, h, w]; pixels mapped to [-1, 1]."""
        self._check_video(frames, "frames")
        if frames.dtype != np.uint8:
            raise InvalidInputError(f"frames must be uint8, got {frames.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
        return self.encode_pixels(x.permute(3, 0, 1, 2)[None])

    def encode_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Each uint8 [H, W, 3] image encoded alone as one latent frame (paper Sec. 3.1.3), concatenated on time."""
        if not images:
            raise InvalidInputError("encode_images needs at least one image")
        return torch.cat([self.encode_video(img[None]) for img in images], dim=2)

    def encode_hole_mask(self, valid: np.ndarray) -> torch.Tensor:
        """bool [T, H, W] (True where the memory projected) -> latents of the hole-mask video.

        Official: the coverage render is inverted (``255 - frame``: white where no point lands) and preprocessed with
        ``min_value=0, max_value=1``, i.e. a 3-channel video in [0, 1] (not [-1, 1]) goes through the VAE.
        """
        if valid.ndim != 3 or valid.dtype != np.bool_:
            raise InvalidInputError(f"valid must be bool [T, H, W], got {valid.dtype} {valid.shape}")
        hole = torch.from_numpy(~valid).float()  # 1.0 = hole
        video = hole[None, None].expand(1, 3, *hole.shape)
        self._check_video(np.empty((*valid.shape, 3), dtype=np.uint8), "valid")
        return self.encode_pixels(video)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """[1, z, t, h, w] normalised latents -> uint8 [T, H, W, 3] (T = 1 + 4 (t - 1))."""
        if latents.ndim != 5 or latents.shape[:2] != (1, self.z_dim):
            raise InvalidInputError(f"latents must be [1, {self.z_dim}, t, h, w], got {tuple(latents.shape)}")
        z = latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)
        video = self.vae.decode(z.to(device=self.device, dtype=self.dtype)).sample  # [1, 3, T, H, W] in [-1, 1]
        video = ((video.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return video[0].permute(1, 2, 3, 0).cpu().numpy()
