"""The Spatia network: a Wan2.2-TI2V-5B main stream plus a ControlNet stream, all of it in this one file.

Paper Sec. 3.1.3 / Fig. 3: 8 network blocks, each one ControlNet block running beside four main blocks. The main
blocks are diffusers' ``WanTransformerBlock`` (self-attention, cross-attention to the text, FFN); each ControlNet
block is the same architecture followed by a projector, and its projected output is added to the preceding and
target tokens of the corresponding main block's output.

Token layout (official ``model_fn_wan_video``), one latent frame = ``h * w`` tokens after the (1, 2, 2) patch::

    main:    [ ref_1 .. ref_K | preceding latents | noisy target latents ]     K = num_ref_frames
    control: [                  scene projection + hole-mask latents      ]     96 channels, no reference part

Where the paper is vague we follow the official code (``ZhaoJingjing713/Spatia``, DiffSynth's VACE); each such place
says so. Module names of the main stream equal diffusers' ``WanTransformer3DModel`` so that a diffusers-format
Wan2.2-TI2V-5B ``transformer/`` state dict loads into it unchanged (``from_wan_transformer``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanTimeTextImageEmbedding,
    WanTransformer3DModel,
    WanTransformerBlock,
)

from spatia.world.errors import InvalidInputError

# The Wan2.2-TI2V-5B transformer (diffusers config; research notes B) and the official ControlNet layout.
WAN22_TI2V_5B_CONFIG: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=24,
    attention_head_dim=128,
    in_channels=48,
    out_channels=48,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=14336,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
    # Official inference.py line 166: VaceWanModel(vace_layers=[0, 4, ..., 28], vace_in_dim=96).
    control_layers=(0, 4, 8, 12, 16, 20, 24, 28),
    control_in_channels=96,
)

# A tiny configuration of the same classes for CPU tests (diffusers' tiny Wan test config, 48 latent channels).
TINY_CONFIG: dict[str, Any] = {
    **WAN22_TI2V_5B_CONFIG,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "text_dim": 32,
    "ffn_dim": 32,
    "num_layers": 2,
    "control_layers": (0,),
}

# Keys of the ControlNet stream's modules, used to split and export its weights.
CONTROL_MODULE_PREFIXES = ("control_patch_embedding.", "control_proj_in.", "control_blocks.", "control_proj_out.")


def rope_axis_dims(attention_head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) rotary dims: diffusers' ``WanRotaryPosEmbed`` split, identical to DiffSynth's complex split."""
    h_dim = w_dim = 2 * (attention_head_dim // 6)
    return attention_head_dim - h_dim - w_dim, h_dim, w_dim


def rope_positions(num_ref_frames: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """Per-token (t, h, w) rotary positions, int64 [S, 3], tokens in (frame, row, column) order.

    Main frames get t = 0..F-1, h = 0..H-1, w = 0..W-1 (as diffusers' ``WanRotaryPosEmbed``). Reference frames
    follow the official code (``model_fn_wan_video``: ``dit.ref_freqs[0][-num_ref_frames:]`` of a table that
    starts at -1024, ``ref_freqs[1][h:2*h]``): negative temporal positions -K..-1 and heights shifted by +H, widths
    unchanged. The paper does not say how references are positioned.
    """
    f_idx = torch.arange(num_frames, dtype=torch.int64)
    t_parts = [torch.arange(-num_ref_frames, 0, dtype=torch.int64), f_idx]
    h_parts = [torch.arange(height, 2 * height, dtype=torch.int64), torch.arange(height, dtype=torch.int64)]
    rows = []
    for t_pos, h_pos in zip(t_parts, h_parts):
        if t_pos.numel() == 0:
            continue
        t, h, w = torch.meshgrid(t_pos, h_pos, torch.arange(width, dtype=torch.int64), indexing="ij")
        rows.append(torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=1))
    return torch.cat(rows, dim=0)


def rotary_embedding(
    positions: torch.Tensor, attention_head_dim: int, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [1, S, 1, head_dim] float32 for per-token (t, h, w) positions [S, 3] (diffusers' layout)."""
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(rope_axis_dims(attention_head_dim)):
        cos, sin = get_1d_rotary_pos_embed(
            dim, positions[:, axis].to(torch.float64), theta, use_real=True, repeat_interleave_real=True,
            freqs_dtype=torch.float64,
        )
        cos_parts.append(cos)
        sin_parts.append(sin)
    cos = torch.cat(cos_parts, dim=1).to(torch.float32)[None, :, None, :]
    sin = torch.cat(sin_parts, dim=1).to(torch.float32)[None, :, None, :]
    return cos.to(device), sin.to(device)


def _copy_block(block: WanTransformerBlock) -> WanTransformerBlock:
    clone = WanTransformerBlock(
        dim=block.scale_shift_table.shape[-1],
        ffn_dim=block.ffn.net[2].in_features,
        num_heads=block.attn1.heads,
        cross_attn_norm=not isinstance(block.norm2, nn.Identity),
        eps=block.norm1.eps,
    )
    clone.load_state_dict(block.state_dict())
    return clone.to(device=block.scale_shift_table.device, dtype=block.attn1.to_q.weight.dtype)


class SpatiaTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Wan main stream + ControlNet stream. The constructor arguments are the config (``save_pretrained`` /
    ``from_pretrained`` round-trip); the first 13 equal ``WanTransformer3DModel``'s.

    Args:
        control_layers: main block indices after which a ControlNet hint is added; must start with 0 (block 0 of
            the control stream sees the main tokens, as the official ``before_proj(c) + x``), be strictly increasing
            and lie in ``[0, num_layers)``. Official / paper: ``[0, 4, ..., 28]`` of 30.
        control_in_channels: channels of the control latents: 48 VAE latents of the scene projection video plus 48
            VAE latents of the hole-mask video (official ``torch.concat((control_latent, control_score_latent))``).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["WanTransformerBlock"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        patch_size: Sequence[int] = (1, 2, 2),
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        in_channels: int = 48,
        out_channels: int = 48,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 14336,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        control_layers: Sequence[int] = (0, 4, 8, 12, 16, 20, 24, 28),
        control_in_channels: int = 96,
    ) -> None:
        super().__init__()
        layers = [int(i) for i in control_layers]
        if not layers or layers[0] != 0:
            raise InvalidInputError(f"control_layers must start with 0 (the control input block), got {layers}")
        if any(b <= a for a, b in zip(layers, layers[1:])):
            raise InvalidInputError(f"control_layers must be strictly increasing, got {layers}")
        if layers[-1] >= num_layers:
            raise InvalidInputError(f"control_layers {layers} must lie in [0, num_layers={num_layers})")
        if attention_head_dim % 2:
            raise InvalidInputError(f"attention_head_dim must be even for rotary embeddings, got {attention_head_dim}")
        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim
        self.control_layer_index = {layer: k for k, layer in enumerate(layers)}  # main block -> control block

        # 1. Main stream (names as WanTransformer3DModel; its rope is replaced by ``rotary_embedding``).
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=inner_dim, time_freq_dim=freq_dim, time_proj_dim=inner_dim * 6, text_embed_dim=text_dim
        )
        self.blocks = nn.ModuleList(
            [WanTransformerBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps)
             for _ in range(num_layers)]
        )
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)

        # 2. ControlNet stream (official VaceWanModel: vace_patch_embedding, before_proj, blocks, after_proj).
        self.control_patch_embedding = nn.Conv3d(control_in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.control_proj_in = nn.Linear(inner_dim, inner_dim)
        self.control_blocks = nn.ModuleList(
            [WanTransformerBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps)
             for _ in layers]
        )
        self.control_proj_out = nn.ModuleList([nn.Linear(inner_dim, inner_dim) for _ in layers])
        self.init_control_from_main()

        self.gradient_checkpointing = False
        # (num_ref, frames, h, w, device) -> rotary tables; at 5B sizes (~100k tokens) rebuilding them every call of
        # every sampling step would cost more than it should.
        self._rotary_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def init_control_from_main(self) -> None:
        """Initialise control block k from main block ``control_layers[k]`` (paper Sec. 4: "Each ControlNet block is
        initialized from its corresponding main block") and zero both projections, so the stream is a no-op.

        Zeroing the input projection too is the ControlNet recipe (zero convolution on the condition; diffusers'
        ``SD3ControlNetModel.from_transformer`` zeroes its input embedding the same way): at init the control stream
        computes exactly the main block on the main tokens.
        """
        for k, layer in enumerate(self.config.control_layers):
            self.control_blocks[k].load_state_dict(self.blocks[layer].state_dict())
        for linear in [self.control_proj_in, *self.control_proj_out]:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    @classmethod
    def from_wan_transformer(
        cls,
        wan: WanTransformer3DModel,
        control_layers: Sequence[int] = WAN22_TI2V_5B_CONFIG["control_layers"],
        control_in_channels: int = 96,
    ) -> "SpatiaTransformer3DModel":
        """Build from a diffusers ``WanTransformer3DModel``: main stream = wan's tensors, control stream from its blocks.

        The main-stream parameters *share storage* with ``wan`` (no second copy of 5B weights): discard ``wan``
        afterwards, or pass a copy if it must stay independent.
        """
        c = wan.config
        if c.image_dim is not None or c.added_kv_proj_dim is not None:
            raise InvalidInputError("Spatia builds on the text-only Wan (TI2V-5B); image_dim/added_kv_proj_dim must be None")
        # Built on the meta device and filled with ``assign=True``: no second full-size copy of a 5B model, and
        # every main tensor keeps wan's dtype (its fp32-kept norms/tables stay fp32 under a bf16 load).
        with torch.device("meta"):
            model = cls(
                patch_size=tuple(c.patch_size), num_attention_heads=c.num_attention_heads,
                attention_head_dim=c.attention_head_dim, in_channels=c.in_channels, out_channels=c.out_channels,
                text_dim=c.text_dim, freq_dim=c.freq_dim, ffn_dim=c.ffn_dim, num_layers=c.num_layers,
                cross_attn_norm=c.cross_attn_norm, qk_norm=c.qk_norm, eps=c.eps, rope_max_seq_len=c.rope_max_seq_len,
                control_layers=tuple(control_layers), control_in_channels=control_in_channels,
            )
        state = dict(wan.state_dict())
        weight = wan.patch_embedding.weight
        embed = nn.Conv3d(control_in_channels, model.inner_dim, kernel_size=tuple(c.patch_size), stride=tuple(c.patch_size))
        state.update({f"control_patch_embedding.{k}": v.to(weight) for k, v in embed.state_dict().items()})
        for k, layer in enumerate(model.config.control_layers):
            state.update({f"control_blocks.{k}.{n}": v.clone() for n, v in wan.blocks[layer].state_dict().items()})
        projections = ["control_proj_in"] + [f"control_proj_out.{k}" for k in range(len(model.control_blocks))]
        for name in projections:
            state[f"{name}.weight"] = torch.zeros(model.inner_dim, model.inner_dim, dtype=weight.dtype, device=weight.device)
            state[f"{name}.bias"] = torch.zeros(model.inner_dim, dtype=weight.dtype, device=weight.device)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise InvalidInputError(f"Wan transformer does not fit the Spatia layout: {exc}") from exc
        model.train(wan.training)
        return model

    @classmethod
    def from_transformer(cls, wan: WanTransformer3DModel, **kwargs: Any) -> "SpatiaTransformer3DModel":
        """Alias of ``from_wan_transformer`` (diffusers' ControlNet naming)."""
        return cls.from_wan_transformer(wan, **kwargs)

    def main_state_dict(self) -> dict[str, torch.Tensor]:
        """The main-stream weights under ``WanTransformer3DModel`` names."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(CONTROL_MODULE_PREFIXES)}

    def control_state_dict(self) -> dict[str, torch.Tensor]:
        """The ControlNet-stream weights (everything the main Wan model lacks)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(CONTROL_MODULE_PREFIXES)}

    def control_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(CONTROL_MODULE_PREFIXES)]

    # ------------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------------

    def _run_block(self, block: nn.Module, *args: Any) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        control_latents: torch.Tensor | None = None,
        num_ref_frames: int = 0,
        control_scale: float = 1.0,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity for every latent frame.

        Args:
            hidden_states: [B, C, K + F, H, W] latents: K reference frames (each encoded alone), then the preceding
                and target latent frames.
            timestep: flow-matching time in [0, 1000]: [B] (one per sample), [B, K + F] (one per latent frame) or
                [B, S] (one per token, S = (K + F) * H/2 * W/2). Clean references / preceding frames get 0.
            encoder_hidden_states: [B, L, text_dim] text embeddings (UMT5 for the real model).
            control_latents: [B, control_in_channels, F, H, W]: latents of the scene projection video and of the
                hole-mask video over preceding + target frames; None runs the plain Wan stream.
            num_ref_frames: K.
            control_scale: weight of the hints (official ``vace_scale``, default 1).
        Returns:
            [B, out_channels, K + F, H, W] velocity (reference frames included, as the official model returns).
        """
        cfg = self.config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != cfg.in_channels:
            raise InvalidInputError(f"hidden_states must be [B, {cfg.in_channels}, T, H, W], got {tuple(hidden_states.shape)}")
        batch, _, num_all, height, width = hidden_states.shape
        p_t, p_h, p_w = cfg.patch_size
        if num_all % p_t or height % p_h or width % p_w:
            raise InvalidInputError(f"latent size {num_all}x{height}x{width} is not divisible by the patch {cfg.patch_size}")
        if not 0 <= num_ref_frames <= num_all:
            raise InvalidInputError(f"num_ref_frames={num_ref_frames} must lie in [0, {num_all}]")
        ppf, pph, ppw = num_all // p_t, height // p_h, width // p_w
        frame_tokens = pph * ppw
        ref_tokens = (num_ref_frames // p_t) * frame_tokens
        seq_len = ppf * frame_tokens

        # 1. Patch embedding and rotary positions (references: official negative-time / shifted-height positions).
        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # [B, S, D]
        rotary = self._rotary(num_ref_frames // p_t, ppf - num_ref_frames // p_t, pph, ppw, x.device)

        # 2. Time and text conditioning; per-token timesteps use diffusers' TI2V branch (temb.ndim == 4 in blocks).
        timestep = self._per_token_timestep(timestep, batch, ppf, frame_tokens, seq_len).to(x.device)
        temb, timestep_proj, text, _ = self.condition_embedder(
            timestep.flatten(), encoder_hidden_states, None, timestep_seq_len=seq_len
        )
        timestep_proj = timestep_proj.unflatten(2, (6, -1))  # [B, S, 6, D]

        # 3. ControlNet stream, run first (official VaceWanModel.forward): it sees only the non-reference tokens.
        hints: list[torch.Tensor] = []
        if control_latents is not None:
            expected = (batch, cfg.control_in_channels, num_all - num_ref_frames, height, width)
            if tuple(control_latents.shape) != expected:
                raise InvalidInputError(f"control_latents must be {expected}, got {tuple(control_latents.shape)}")
            c = self.control_patch_embedding(control_latents.to(x.dtype)).flatten(2).transpose(1, 2)
            # Official block 0: ``c = before_proj(c) + x`` with x the patch-embedded main tokens minus references.
            c = self.control_proj_in(c) + x[:, ref_tokens:]
            c_temb = timestep_proj[:, ref_tokens:]
            c_rotary = (rotary[0][:, ref_tokens:], rotary[1][:, ref_tokens:])
            for block, proj in zip(self.control_blocks, self.control_proj_out):
                c = self._run_block(block, c, text, c_temb, c_rotary)
                hints.append(proj(c))

        # 4. Main blocks; hints go to preceding + target tokens only (official ``x[:, ref_token_num:] += hint``).
        for i, block in enumerate(self.blocks):
            x = self._run_block(block, x, text, timestep_proj, rotary)
            k = self.control_layer_index.get(i)
            if hints and k is not None:
                x = torch.cat([x[:, :ref_tokens], x[:, ref_tokens:] + hints[k] * control_scale], dim=1)

        # 5. Output norm (per-token modulation), projection, unpatchify (as WanTransformer3DModel).
        shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
        x = (self.norm_out(x.float()) * (1 + scale.squeeze(2)) + shift.squeeze(2)).type_as(x)
        x = self.proj_out(x)
        x = x.reshape(batch, ppf, pph, ppw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _rotary(self, num_ref: int, frames: int, height: int, width: int, device: torch.device):
        key = (num_ref, frames, height, width, str(device))
        if key not in self._rotary_cache:
            if len(self._rotary_cache) >= 8:
                self._rotary_cache.clear()
            positions = rope_positions(num_ref, frames, height, width)
            self._rotary_cache[key] = rotary_embedding(positions, self.config.attention_head_dim, device=device)
        return self._rotary_cache[key]

    @staticmethod
    def _per_token_timestep(
        timestep: torch.Tensor, batch: int, num_frames: int, frame_tokens: int, seq_len: int
    ) -> torch.Tensor:
        """[B], [B, frames] or [B, S] -> [B, S] float32 (official ``seperated_timestep``: one value per token)."""
        t = torch.as_tensor(timestep, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim == 1:
            if t.shape[0] != batch:
                raise InvalidInputError(f"timestep [B] must have B={batch} entries, got {t.shape[0]}")
            return t[:, None].expand(batch, seq_len)
        if t.ndim == 2 and t.shape == (batch, num_frames):
            return t.repeat_interleave(frame_tokens, dim=1)
        if t.ndim == 2 and t.shape == (batch, seq_len):
            return t
        raise InvalidInputError(
            f"timestep must be [B], [B, frames={num_frames}] or [B, tokens={seq_len}] with B={batch}, got {tuple(t.shape)}"
        )


def main_lora_target_modules() -> str:
    """peft ``target_modules`` regex for the main blocks' attention projections (paper: LoRA on the main blocks;
    the control blocks are frozen in stage 2 and must not receive adapters)."""
    return r"blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
