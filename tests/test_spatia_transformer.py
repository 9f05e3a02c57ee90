"""CPU proofs for the Spatia transformer (tiny configs of the real classes; nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from spatia.model.spatia.transformer import (
    TINY_CONFIG,
    WAN22_TI2V_5B_CONFIG,
    SpatiaTransformer3DModel,
    main_lora_target_modules,
    rope_axis_dims,
    rope_positions,
    rotary_embedding,
)
from spatia.world.errors import InvalidInputError

WAN_KEYS = [k for k in TINY_CONFIG if k not in ("control_layers", "control_in_channels")]


def tiny_wan(seed: int = 0, **overrides) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**{k: TINY_CONFIG[k] for k in WAN_KEYS}, **overrides}).eval()


def inputs(num_ref: int = 0, frames: int = 3, h: int = 4, w: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 48, num_ref + frames, h, w, generator=g)
    text = torch.randn(1, 5, 32, generator=g)
    control = torch.randn(1, 96, frames, h, w, generator=g)
    return x, text, control


def randomize_projections(model: SpatiaTransformer3DModel, seed: int = 2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for linear in [model.control_proj_in, *model.control_proj_out]:
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.1)
            linear.bias.copy_(torch.randn(linear.bias.shape, generator=g) * 0.1)


def reference_rope(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Slow reference: the official complex rotary table (DiffSynth ``precompute_freqs_cis``) per token, [S, D/2]."""
    dims = rope_axis_dims(head_dim)
    out = []
    for s in range(positions.shape[0]):
        row = []
        for axis, dim in enumerate(dims):
            freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
            row.append(torch.polar(torch.ones_like(freqs), float(positions[s, axis]) * freqs))
        out.append(torch.cat(row))
    return torch.stack(out)


def test_rope_positions_follow_official_layout():
    pos = rope_positions(num_ref_frames=2, num_frames=3, height=2, width=3)
    assert pos.shape == ((2 + 3) * 2 * 3, 3)
    ref, main = pos[: 2 * 6], pos[2 * 6:]
    assert sorted(set(ref[:, 0].tolist())) == [-2, -1]  # negative temporal indices -K..-1
    assert sorted(set(ref[:, 1].tolist())) == [2, 3]  # heights shifted by +h
    assert sorted(set(ref[:, 2].tolist())) == [0, 1, 2]  # widths unchanged
    assert sorted(set(main[:, 0].tolist())) == [0, 1, 2]
    assert main[:6, 1].tolist() == [0, 0, 0, 1, 1, 1] and main[:6, 2].tolist() == [0, 1, 2, 0, 1, 2]


def test_rotary_embedding_matches_complex_reference():
    pos = rope_positions(num_ref_frames=2, num_frames=2, height=2, width=2)
    cos, sin = rotary_embedding(pos, attention_head_dim=12)
    ref = reference_rope(pos, 12)
    # diffusers' real layout repeats each frequency for the (even, odd) pair
    torch.testing.assert_close(cos[0, :, 0, 0::2].double(), ref.real, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[0, :, 0, 1::2].double(), ref.imag, atol=1e-6, rtol=0)


def test_rotary_embedding_equals_diffusers_for_main_frames():
    wan = tiny_wan()
    x, _, _ = inputs()
    cos_w, sin_w = wan.rope(x)
    cos, sin = rotary_embedding(rope_positions(0, 3, 2, 2), 12)
    torch.testing.assert_close(cos, cos_w.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, sin_w.float(), atol=1e-6, rtol=0)


def test_output_shape_includes_reference_frames():
    model = SpatiaTransformer3DModel(**TINY_CONFIG).eval()
    x, text, control = inputs(num_ref=2)
    with torch.no_grad():
        out = model(x, torch.tensor([700.0]), text, control_latents=control, num_ref_frames=2)
    assert out.shape == x.shape


def test_zero_init_projectors_reproduce_plain_wan():
    wan = tiny_wan()
    model = SpatiaTransformer3DModel.from_wan_transformer(wan, control_layers=(0, 1)).eval()
    x, text, control = inputs()
    t = torch.tensor([[0.0, 0.0, 800.0]])  # per latent frame, TI2V-style
    with torch.no_grad():
        plain = wan(x, t.repeat_interleave(4, dim=1), text).sample
        no_control = model(x, t, text)
        with_control = model(x, t, text, control_latents=control)
    torch.testing.assert_close(no_control, plain, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_control, plain, atol=1e-5, rtol=0)
    # control blocks start as copies of their main blocks
    for k, layer in enumerate((0, 1)):
        for (_, a), (_, b) in zip(model.control_blocks[k].state_dict().items(), wan.blocks[layer].state_dict().items()):
            assert torch.equal(a, b)


def test_hints_change_only_non_reference_tokens():
    # One main block with its hint added after it: reference tokens must come out exactly as without control.
    model = SpatiaTransformer3DModel(**{**TINY_CONFIG, "num_layers": 1, "control_layers": (0,)}).eval()
    randomize_projections(model)
    x, text, control = inputs(num_ref=2)
    t = torch.tensor([[0.0, 0.0, 0.0, 500.0, 500.0]])
    with torch.no_grad():
        without = model(x, t, text, num_ref_frames=2)
        with_control = model(x, t, text, control_latents=control, num_ref_frames=2)
    assert torch.equal(with_control[:, :, :2], without[:, :, :2])
    assert (with_control[:, :, 2:] - without[:, :, 2:]).abs().max() > 1e-3
    with torch.no_grad():
        scaled_off = model(x, t, text, control_latents=control, num_ref_frames=2, control_scale=0.0)
    torch.testing.assert_close(scaled_off, without, atol=1e-6, rtol=0)


def test_per_token_timesteps():
    model = SpatiaTransformer3DModel(**TINY_CONFIG).eval()
    x, text, _ = inputs()
    with torch.no_grad():
        scalar = model(x, torch.tensor([300.0]), text)
        per_frame = model(x, torch.tensor([[300.0, 300.0, 300.0]]), text)
        per_token = model(x, torch.full((1, 3 * 4), 300.0), text)
        mixed = model(x, torch.tensor([[0.0, 300.0, 300.0]]), text)
    torch.testing.assert_close(per_frame, scalar, atol=1e-6, rtol=0)
    torch.testing.assert_close(per_token, scalar, atol=1e-6, rtol=0)
    assert (mixed - scalar).abs().max() > 1e-4
    with pytest.raises(InvalidInputError):
        model(x, torch.zeros(1, 5), text)


@pytest.mark.parametrize("layers", [(1,), (0, 0), (0, 2), ()])
def test_control_layers_are_validated(layers):
    with pytest.raises(InvalidInputError):
        SpatiaTransformer3DModel(**{**TINY_CONFIG, "control_layers": layers})


def test_bad_inputs_raise_named_errors():
    model = SpatiaTransformer3DModel(**TINY_CONFIG).eval()
    x, text, control = inputs()
    with pytest.raises(InvalidInputError, match="control_latents"):
        model(x, torch.tensor([1.0]), text, control_latents=control[:, :48])
    with pytest.raises(InvalidInputError, match="hidden_states"):
        model(x[:, :16], torch.tensor([1.0]), text)


def test_save_pretrained_round_trip(tmp_path):
    model = SpatiaTransformer3DModel(**TINY_CONFIG).eval()
    randomize_projections(model)
    model.save_pretrained(tmp_path)
    loaded = SpatiaTransformer3DModel.from_pretrained(tmp_path).eval()
    assert tuple(loaded.config.control_layers) == tuple(TINY_CONFIG["control_layers"])
    x, text, control = inputs(num_ref=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([10.0]), text, control, 1),
                                   model(x, torch.tensor([10.0]), text, control, 1), atol=0, rtol=0)


def test_main_lora_targets_main_blocks_only():
    from spatia.model.spatia.convert import main_lora_config

    model = SpatiaTransformer3DModel(**TINY_CONFIG).eval()
    x, text, control = inputs()
    with torch.no_grad():
        before = model(x, torch.tensor([500.0]), text, control)
    model.add_adapter(main_lora_config(rank=4))
    names = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert len(names) == 2 * 2 * 4  # 2 blocks x (attn1, attn2) x (q, k, v, out)
    assert all(n.startswith("blocks.") for n in names)
    with torch.no_grad():
        after = model(x, torch.tensor([500.0]), text, control)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)  # lora_B starts at zero
    assert main_lora_target_modules().startswith("blocks")


def test_gradient_checkpointing_matches_plain_backward():
    model = SpatiaTransformer3DModel(**TINY_CONFIG)
    randomize_projections(model)
    x, text, control = inputs()
    t = torch.tensor([400.0])
    model(x, t, text, control).square().mean().backward()
    plain = [p.grad.clone() for p in model.control_parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x, t, text, control).square().mean().backward()
    for a, p in zip(plain, model.control_parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)


def test_wan22_5b_layout_on_meta_device():
    with torch.device("meta"):
        model = SpatiaTransformer3DModel(**WAN22_TI2V_5B_CONFIG)
    assert len(model.blocks) == 30 and len(model.control_blocks) == 8 and model.inner_dim == 3072
    assert model.control_layer_index == {layer: k for k, layer in enumerate(range(0, 29, 4))}
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("control"))
    control = sum(p.numel() for p in model.control_parameters())
    assert 4.9e9 < main < 5.1e9  # Wan2.2-TI2V-5B
    assert control == 8 * sum(p.numel() for p in model.blocks[0].parameters()) + 96 * 3072 * 4 + 3072 + 9 * (3072 * 3072 + 3072)
