"""``SpatiaGenerator``: the Spatia network behind the world core's ``Generator`` protocol.

One clip (official ``call_latent_inference``, one "round"):

1. latents ``[ref_1..ref_K | preceding | target]``: each reference frame VAE-encoded alone, the preceding frames
   (1 + 4k of them, official ``hist_frames=9``) encoded as a video; for the first clip the initial image is encoded
   alone as latent frame 0 (TI2V first-frame fusion, timestep 0 on frame 0);
2. control latents over preceding + target frames: VAE latents of the scene projection video and of the hole-mask
   video (255 where nothing projects), concatenated to 96 channels;
3. flow-matching sampling with classifier-free guidance, known frames re-imposed after every step;
4. the preceding + target video is decoded and the target frames returned.

The LoRA (paper stage 2, trained with references + preceding clip) is switched off for the first clip and on for
later clips, as the official inference does (``unload_lora`` for round 0, ``load_lora`` afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from spatia.model.spatia.sampler import FlowMatchingSampler, SamplerConfig, make_noise
from spatia.model.spatia.text import PromptEncoder
from spatia.model.spatia.transformer import TINY_CONFIG, WAN22_TI2V_5B_CONFIG, SpatiaTransformer3DModel
from spatia.model.spatia.vae import SpatiaVAE
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.generator import ClipRequest, ClipResult, GeneratorCapabilities


@dataclass(frozen=True)
class SpatiaGeneratorConfig:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    control_scale: float = 1.0  # official ``vace_scale``
    max_references: int = 7  # official ``ref_num``; paper Table 5: no gain beyond K = 7
    max_preceding_frames: int = 9  # official ``hist_frames``; the last 1 + 4k <= this many preceding frames are used
    # Official inference appends this to every prompt (inference.py: f"{prompt} 4K, realistic, high quality, HDR.").
    prompt_suffix: str = " 4K, realistic, high quality, HDR."
    # The official code passes Wan's Chinese quality negative prompt; set it here for the real model.
    negative_prompt: str = ""
    lora_on_first_clip: bool = False  # official: LoRA unloaded for round 0

    def __post_init__(self) -> None:
        if self.max_references < 0:
            raise InvalidInputError(f"max_references must be >= 0, got {self.max_references}")
        if self.max_preceding_frames < 0:
            raise InvalidInputError(f"max_preceding_frames must be >= 0, got {self.max_preceding_frames}")


def usable_preceding(num_preceding: int, limit: int) -> int:
    """The most preceding frames of the form 1 + 4k that fit in both ``num_preceding`` and ``limit`` (0 if none)."""
    n = min(num_preceding, limit)
    return 0 if n < 1 else ((n - 1) // 4) * 4 + 1


def padded_length(num_frames: int) -> int:
    """Smallest 1 + 4k >= ``num_frames``: the VAE's temporal compression needs it."""
    return ((max(num_frames, 1) - 1 + 3) // 4) * 4 + 1


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    import cv2

    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


class SpatiaGenerator:
    """Implements ``world.generator.Generator`` with the Spatia network."""

    name = "spatia"
    # a diffusion model denoises a whole clip at once (no streaming), reads the preceding clip, and its frames
    # may drift from the requested poses (the memory update refines them)
    capabilities = GeneratorCapabilities()

    def __init__(self, transformer: SpatiaTransformer3DModel, vae: SpatiaVAE, prompt_encoder: PromptEncoder,
                 config: SpatiaGeneratorConfig = SpatiaGeneratorConfig(), device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if transformer.dtype != dtype or transformer.device != self.device:
            transformer = transformer.to(device=self.device, dtype=dtype)
        self.transformer = transformer.eval()
        self.vae = vae
        self.prompt_encoder = prompt_encoder
        self.config = config
        self.sampler = FlowMatchingSampler(config.sampler)
        if transformer.config.in_channels != vae.z_dim:
            raise InvalidInputError(f"transformer in_channels {transformer.config.in_channels} != VAE z_dim {vae.z_dim}")
        if transformer.config.control_in_channels != 2 * vae.z_dim:
            raise InvalidInputError("control_in_channels must be 2 x VAE z_dim (projection + hole-mask latents)")
        if prompt_encoder.text_dim != transformer.config.text_dim:
            raise InvalidInputError(f"prompt embeddings are {prompt_encoder.text_dim}-d, the transformer wants {transformer.config.text_dim}")
        self._prompt_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------------------------------

    @property
    def resolution_multiple(self) -> int:
        """Frame sizes must be multiples of this: VAE x16 times the transformer's x2 patch (= 32 for Wan2.2)."""
        return self.vae.spatial_factor * int(self.transformer.config.patch_size[1])

    @classmethod
    def tiny(cls, seed: int = 0, config: SpatiaGeneratorConfig | None = None, **overrides) -> "SpatiaGenerator":
        """A tiny random model of the same classes (2 layers, 2 heads x 12, ffn 32, tiny Wan2.2 VAE, tiny UMT5):
        for tests and ``--generator spatia-tiny`` runs on CPU. The control stream gets small random projections
        (instead of the zero init) so that the scene projection visibly conditions the output."""
        from spatia.model.spatia.text import tiny_prompt_encoder
        from spatia.model.spatia.vae import tiny_vae

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = SpatiaTransformer3DModel(**{**TINY_CONFIG, **overrides}).eval()
            with torch.no_grad():
                for linear in [transformer.control_proj_in, *transformer.control_proj_out]:
                    torch.nn.init.normal_(linear.weight, std=0.02)
        config = config or SpatiaGeneratorConfig(sampler=SamplerConfig.fast())
        generator = cls(transformer, SpatiaVAE(tiny_vae(seed)), tiny_prompt_encoder(transformer.config.text_dim, seed=seed), config)
        generator.name = "spatia-tiny"
        return generator

    @classmethod
    def from_pretrained(cls, weights_dir: str | Path, control: str | Path | None = None, lora: str | Path | None = None,
                        prompt_embeddings: str | Path | None = None, control_layers: Sequence[int] | None = None,
                        config: SpatiaGeneratorConfig = SpatiaGeneratorConfig(),
                        device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> "SpatiaGenerator":
        """Load a local diffusers-format Wan2.2-TI2V-5B directory (``transformer/``, ``vae/``, ``text_encoder/``,
        ``tokenizer/``) plus Spatia weights.

        Args:
            control: the official control checkpoint (``step-8500.safetensors``) or a ``save_spatia_weights``
                directory (control + LoRA); default ``weights_dir/spatia`` when it exists.
            lora: the official LoRA file (``lora_weights_10000.safetensors``), attached as a switchable adapter.
            prompt_embeddings: a ``PrecomputedPromptEmbeddings`` file; then ``text_encoder/`` is not loaded.
            control_layers: main blocks that get hints; default: from our export's manifest, else the official
                ``[0, 4, ..., 28]`` (the official checkpoint does not record them).
        """
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        from spatia.model.spatia import convert
        from spatia.model.spatia.text import PrecomputedPromptEmbeddings, UMT5PromptEncoder

        root = Path(weights_dir)
        for sub in ("transformer", "vae"):
            if not (root / sub).is_dir():
                raise NotFoundError(f"{root / sub} not found (expected a diffusers-format Wan2.2-TI2V-5B directory)")
        if control is None and (root / "spatia").is_dir():
            control = root / "spatia"
        if control is None:
            raise NotFoundError("no Spatia control weights: pass control= (official checkpoint or our export)")
        if control_layers is None:
            control_layers = (convert.read_manifest(control)["transformer_config"]["control_layers"]
                              if convert.is_spatia_weights_dir(control) else WAN22_TI2V_5B_CONFIG["control_layers"])
        wan = WanTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=dtype)
        transformer = SpatiaTransformer3DModel.from_wan_transformer(wan, control_layers=tuple(control_layers))
        del wan  # its tensors now belong to ``transformer``
        if convert.is_spatia_weights_dir(control):
            convert.load_spatia_weights(transformer, control)
        else:
            convert.load_official_control(transformer, control)
        if lora is not None:
            convert.attach_lora(transformer, convert.convert_official_lora(convert.load_state_file(lora)))
        vae = SpatiaVAE(AutoencoderKLWan.from_pretrained(root / "vae", torch_dtype=torch.float32), device=device)
        if prompt_embeddings is not None:
            prompts: PromptEncoder = PrecomputedPromptEmbeddings.load(prompt_embeddings)
        else:
            prompts = UMT5PromptEncoder.from_pretrained(root, device=device, dtype=dtype)
        return cls(transformer, vae, prompts, config, device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------

    def prompt_embedding(self, prompt: str) -> torch.Tensor:
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = self.prompt_encoder.encode(prompt).to(self.device, self.dtype)
        return self._prompt_cache[prompt]

    def _set_lora(self, enabled: bool) -> None:
        if not getattr(self.transformer, "_hf_peft_config_loaded", False):
            return
        if enabled:
            self.transformer.enable_adapters()
        else:
            self.transformer.disable_adapters()

    def _check(self, request: ClipRequest) -> tuple[int, int]:
        height, width = int(request.intrinsics.height), int(request.intrinsics.width)
        m = self.resolution_multiple
        if height % m or width % m:
            raise InvalidInputError(f"Spatia needs frame sizes that are multiples of {m}, got {width}x{height}")
        n, p = request.num_target, request.num_preceding
        if n < 1:
            raise InvalidInputError("a clip request needs at least one target pose")
        proj = request.projection
        if len(proj) != p + n or proj.rgb.shape[1:] != (height, width, 3) or proj.valid.shape != (p + n, height, width):
            raise InvalidInputError(f"projection must cover {p} preceding + {n} target frames at {width}x{height}, "
                                    f"got rgb {proj.rgb.shape}, valid {proj.valid.shape}")
        if p and request.preceding_frames.shape[1:] != (height, width, 3):
            raise InvalidInputError(f"preceding frames must be [M, {height}, {width}, 3], got {request.preceding_frames.shape}")
        if request.first_frame is not None and request.first_frame.shape != (height, width, 3):
            raise InvalidInputError(f"first_frame must be [{height}, {width}, 3], got {request.first_frame.shape}")
        return height, width

    def build_inputs(self, request: ClipRequest) -> dict:
        """Latent inputs of one clip: noise, clean latents, known-frame mask, control latents and bookkeeping."""
        height, width = self._check(request)
        p_all, n = request.num_preceding, request.num_target
        p = usable_preceding(p_all, self.config.max_preceding_frames)
        total = p + n
        padded = padded_length(total)
        # Scene projection of the used preceding + target frames; padded with the last frame, as the official code
        # pads the camera path with its last pose (``padding_num``).
        proj = request.projection.slice(p_all - p, p_all + n)
        pad = padded - total
        rgb = np.concatenate([proj.rgb, np.repeat(proj.rgb[-1:], pad, axis=0)]) if pad else proj.rgb
        valid = np.concatenate([proj.valid, np.repeat(proj.valid[-1:], pad, axis=0)]) if pad else proj.valid
        control = torch.cat([self.vae.encode_video(np.ascontiguousarray(rgb, dtype=np.uint8)),
                             self.vae.encode_hole_mask(np.ascontiguousarray(valid, dtype=bool))], dim=1)

        # Departure: the official code renders references at the clip size already; we resize any that are not.
        refs = [_resize(r.rgb, width, height) for r in request.references[: self.config.max_references]]
        ref_latents = self.vae.encode_images(refs) if refs else None
        num_ref = len(refs)
        main_frames = control.shape[2]
        shape = (1, self.vae.z_dim, num_ref + main_frames, control.shape[3], control.shape[4])
        clean = torch.zeros(shape, dtype=torch.float32)
        known = torch.zeros(shape[2], dtype=torch.bool)
        if ref_latents is not None:
            clean[:, :, :num_ref] = ref_latents
            known[:num_ref] = True
        if p > 0:
            hist = self.vae.encode_video(np.ascontiguousarray(request.preceding_frames[p_all - p:]))
            clean[:, :, num_ref: num_ref + hist.shape[2]] = hist
            known[num_ref: num_ref + hist.shape[2]] = True
        elif request.first_frame is not None:
            # TI2V first-frame fusion (official ``latents[:, :, 0:1] = first_frame_latents``).
            clean[:, :, num_ref: num_ref + 1] = self.vae.encode_video(request.first_frame[None])
            known[num_ref] = True
        noise = make_noise(shape, request.seed)
        return dict(noise=noise, clean=clean, known=known, control=control, num_ref=num_ref,
                    num_preceding_used=p, num_target=n)

    @torch.no_grad()
    def generate(self, request: ClipRequest) -> ClipResult:
        inputs = self.build_inputs(request)
        num_ref = inputs["num_ref"]
        p = inputs["num_preceding_used"]
        is_first_clip = request.num_preceding == 0
        self._set_lora(self.config.lora_on_first_clip or not is_first_clip)
        cond = self.prompt_embedding(request.prompt + self.config.prompt_suffix)
        uncond = self.prompt_embedding(self.config.negative_prompt)
        control = inputs["control"].to(self.device, self.dtype)

        def velocity(latents: torch.Tensor, frame_timesteps: torch.Tensor, conditional: bool) -> torch.Tensor:
            out = self.transformer(
                latents.to(self.device, self.dtype), frame_timesteps.to(self.device),
                cond if conditional else uncond, control_latents=control, num_ref_frames=num_ref,
                control_scale=self.config.control_scale,
            )
            return out.float()

        latents = self.sampler.sample(velocity, inputs["noise"].to(self.device), inputs["clean"].to(self.device),
                                      inputs["known"])
        video = self.vae.decode(latents[:, :, num_ref:])  # [1 + 4k, H, W, 3] preceding + target (+ padding)
        frames = video[p: p + inputs["num_target"]]
        return ClipResult(frames=np.ascontiguousarray(frames))
