"""Checkpoint conversion: synthetic state dicts with the official (DiffSynth) key names at tiny shapes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanTransformerBlock

from spatia.model.spatia import convert
from spatia.model.spatia.transformer import TINY_CONFIG, SpatiaTransformer3DModel, rope_positions, rotary_embedding
from spatia.world.errors import InvalidInputError

DIM, HEADS, FFN, TEXT, FREQ = 24, 2, 32, 32, 256


def official_block(prefix: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A DiffSynth ``DiTBlock`` state dict (wan_video_dit.py), written out from its module tree."""
    sd = {}
    for attn in ("self_attn", "cross_attn"):
        for lin in ("q", "k", "v", "o"):
            sd[f"{prefix}{attn}.{lin}.weight"] = torch.randn(DIM, DIM, generator=g) * 0.2
            sd[f"{prefix}{attn}.{lin}.bias"] = torch.randn(DIM, generator=g) * 0.1
        sd[f"{prefix}{attn}.norm_q.weight"] = 1 + 0.1 * torch.randn(DIM, generator=g)
        sd[f"{prefix}{attn}.norm_k.weight"] = 1 + 0.1 * torch.randn(DIM, generator=g)
    sd[f"{prefix}norm3.weight"] = 1 + 0.1 * torch.randn(DIM, generator=g)
    sd[f"{prefix}norm3.bias"] = 0.1 * torch.randn(DIM, generator=g)
    sd[f"{prefix}ffn.0.weight"] = torch.randn(FFN, DIM, generator=g) * 0.2
    sd[f"{prefix}ffn.0.bias"] = torch.randn(FFN, generator=g) * 0.1
    sd[f"{prefix}ffn.2.weight"] = torch.randn(DIM, FFN, generator=g) * 0.2
    sd[f"{prefix}ffn.2.bias"] = torch.randn(DIM, generator=g) * 0.1
    sd[f"{prefix}modulation"] = torch.randn(1, 6, DIM, generator=g) / DIM**0.5
    return sd


def official_control(num_blocks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ``VaceWanModel`` state dict (wan_video_vace.py) for ``num_blocks`` control blocks."""
    g = torch.Generator().manual_seed(seed)
    sd = {"vace_patch_embedding.weight": torch.randn(DIM, 96, 1, 2, 2, generator=g) * 0.1,
          "vace_patch_embedding.bias": torch.randn(DIM, generator=g) * 0.1,
          "vace_blocks.0.before_proj.weight": torch.randn(DIM, DIM, generator=g) * 0.1,
          "vace_blocks.0.before_proj.bias": torch.randn(DIM, generator=g) * 0.1}
    for k in range(num_blocks):
        sd.update(official_block(f"vace_blocks.{k}.", g))
        sd[f"vace_blocks.{k}.after_proj.weight"] = torch.randn(DIM, DIM, generator=g) * 0.1
        sd[f"vace_blocks.{k}.after_proj.bias"] = torch.randn(DIM, generator=g) * 0.1
    return sd


def official_dit(num_layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A DiffSynth ``WanModel`` state dict (text-only TI2V layout)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"patch_embedding.weight": torch.randn(DIM, 48, 1, 2, 2, generator=g), "patch_embedding.bias": torch.randn(DIM, generator=g),
          "text_embedding.0.weight": torch.randn(DIM, TEXT, generator=g), "text_embedding.0.bias": torch.randn(DIM, generator=g),
          "text_embedding.2.weight": torch.randn(DIM, DIM, generator=g), "text_embedding.2.bias": torch.randn(DIM, generator=g),
          "time_embedding.0.weight": torch.randn(DIM, FREQ, generator=g), "time_embedding.0.bias": torch.randn(DIM, generator=g),
          "time_embedding.2.weight": torch.randn(DIM, DIM, generator=g), "time_embedding.2.bias": torch.randn(DIM, generator=g),
          "time_projection.1.weight": torch.randn(6 * DIM, DIM, generator=g), "time_projection.1.bias": torch.randn(6 * DIM, generator=g),
          "head.head.weight": torch.randn(48 * 4, DIM, generator=g), "head.head.bias": torch.randn(48 * 4, generator=g),
          "head.modulation": torch.randn(1, 2, DIM, generator=g)}
    for i in range(num_layers):
        sd.update(official_block(f"blocks.{i}.", g))
    return sd


def reference_rope(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The official complex rotary table per token (DiffSynth ``precompute_freqs_cis`` per axis), [S, D/2]."""
    dims = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    parts = []
    for axis, dim in enumerate(dims):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].double() / dim))
        parts.append(torch.polar(torch.ones(positions.shape[0], freqs.shape[0], dtype=torch.float64),
                                 positions[:, axis].double()[:, None] * freqs[None]))
    return torch.cat(parts, dim=1)


def reference_block(sd, x, context, t_mod, freqs, eps=1e-6):
    """Slow reference of DiffSynth's ``DiTBlock.forward`` (per-token ``t_mod`` [B, S, 6, D], complex ``freqs``)."""
    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(v, name):
        return v @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def attention(q, k, v):
        b, s, _ = q.shape
        q, k, v = (t.reshape(b, t.shape[1], HEADS, -1).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, DIM)

    def rope(v):
        b, s, _ = v.shape
        c = torch.view_as_complex(v.double().reshape(b, s, HEADS, -1, 2))
        return torch.view_as_real(c * freqs[None, :, None, :]).reshape(b, s, DIM).float()

    mod = (sd["modulation"][None] + t_mod).unbind(2)  # 6 x [B, S, D]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
    h = F.layer_norm(x, (DIM,), eps=eps) * (1 + scale_msa) + shift_msa
    q = rope(rms(lin(h, "self_attn.q"), sd["self_attn.norm_q.weight"]))
    k = rope(rms(lin(h, "self_attn.k"), sd["self_attn.norm_k.weight"]))
    x = x + gate_msa * lin(attention(q, k, lin(h, "self_attn.v")), "self_attn.o")
    h = F.layer_norm(x, (DIM,), sd["norm3.weight"], sd["norm3.bias"], eps)
    q = rms(lin(h, "cross_attn.q"), sd["cross_attn.norm_q.weight"])
    k = rms(lin(context, "cross_attn.k"), sd["cross_attn.norm_k.weight"])
    x = x + lin(attention(q, k, lin(context, "cross_attn.v")), "cross_attn.o")
    h = F.layer_norm(x, (DIM,), eps=eps) * (1 + scale_mlp) + shift_mlp
    return x + gate_mlp * lin(F.gelu(lin(h, "ffn.0"), approximate="tanh"), "ffn.2")


def test_block_key_mapping_is_numerically_faithful():
    g = torch.Generator().manual_seed(3)
    sd = official_block("", g)
    block = WanTransformerBlock(DIM, FFN, HEADS, "rms_norm_across_heads", True, 1e-6).eval()
    block.load_state_dict({convert.convert_dit_block_key(k): v for k, v in sd.items()}, strict=True)
    pos = rope_positions(1, 2, 2, 2)
    x = torch.randn(1, pos.shape[0], DIM, generator=g)
    context = torch.randn(1, 5, DIM, generator=g)
    t_mod = torch.randn(1, pos.shape[0], 6, DIM, generator=g) * 0.1
    expected = reference_block(sd, x, context, t_mod, reference_rope(pos, DIM // HEADS))
    with torch.no_grad():
        got = block(x, context, t_mod, rotary_embedding(pos, DIM // HEADS))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def tiny_model(**overrides) -> SpatiaTransformer3DModel:
    torch.manual_seed(0)
    return SpatiaTransformer3DModel(**{**TINY_CONFIG, "control_layers": (0, 1), **overrides}).eval()


def test_official_control_loads_strictly():
    model = tiny_model()
    sd = official_control(num_blocks=2)
    convert.load_official_control(model, sd)
    ours = model.state_dict()
    assert torch.equal(ours["control_patch_embedding.weight"], sd["vace_patch_embedding.weight"])
    assert torch.equal(ours["control_proj_in.bias"], sd["vace_blocks.0.before_proj.bias"])
    assert torch.equal(ours["control_proj_out.1.weight"], sd["vace_blocks.1.after_proj.weight"])
    assert torch.equal(ours["control_blocks.1.attn1.to_out.0.weight"], sd["vace_blocks.1.self_attn.o.weight"])
    assert torch.equal(ours["control_blocks.0.norm2.weight"], sd["vace_blocks.0.norm3.weight"])
    assert torch.equal(ours["control_blocks.0.ffn.net.0.proj.bias"], sd["vace_blocks.0.ffn.0.bias"])
    assert torch.equal(ours["control_blocks.0.scale_shift_table"], sd["vace_blocks.0.modulation"])

    missing = dict(sd)
    missing.pop("vace_blocks.1.cross_attn.norm_k.weight")
    with pytest.raises(InvalidInputError, match="missing"):
        convert.load_official_control(tiny_model(), missing)
    with pytest.raises(InvalidInputError, match="unexpected"):
        convert.load_official_control(tiny_model(), official_control(num_blocks=3))
    with pytest.raises(InvalidInputError, match="unknown DiffSynth"):
        convert.load_official_control(tiny_model(), {**sd, "vace_blocks.0.gate.weight": torch.zeros(1)})
    wrong = {**sd, "vace_patch_embedding.weight": torch.zeros(DIM, 64, 1, 2, 2)}
    with pytest.raises(InvalidInputError, match="shape"):
        convert.load_official_control(tiny_model(), wrong)


def test_official_control_from_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    sd = official_control(num_blocks=2, seed=4)
    save_file(sd, str(tmp_path / "step-8500.safetensors"))
    model = tiny_model()
    convert.load_official_control(model, tmp_path / "step-8500.safetensors")
    assert torch.equal(model.state_dict()["control_blocks.1.attn2.to_k.weight"], sd["vace_blocks.1.cross_attn.k.weight"])


def test_official_dit_loads_strictly():
    model = tiny_model()
    sd = official_dit(num_layers=2)
    convert.load_official_dit(model, {f"model.diffusion_model.{k}": v for k, v in sd.items()})
    ours = model.state_dict()
    assert torch.equal(ours["condition_embedder.time_proj.weight"], sd["time_projection.1.weight"])
    assert torch.equal(ours["scale_shift_table"], sd["head.modulation"])
    assert torch.equal(ours["proj_out.weight"], sd["head.head.weight"])
    assert torch.equal(ours["blocks.1.attn2.norm_q.weight"], sd["blocks.1.cross_attn.norm_q.weight"])
    sd.pop("head.head.bias")
    with pytest.raises(InvalidInputError, match="missing"):
        convert.load_official_dit(tiny_model(), sd)


def official_lora(rank: int = 4, seed: int = 5, prefix: str = "pipe.dit.") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(2):
        for attn in ("self_attn", "cross_attn"):
            for lin in ("q", "k", "v", "o"):
                sd[f"{prefix}blocks.{i}.{attn}.{lin}.lora_A.default.weight"] = torch.randn(rank, DIM, generator=g) * 0.1
                sd[f"{prefix}blocks.{i}.{attn}.{lin}.lora_B.default.weight"] = torch.randn(DIM, rank, generator=g) * 0.1
    return sd


def run(model):
    g = torch.Generator().manual_seed(8)
    x, text, control = torch.randn(1, 48, 3, 4, 4, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 96, 2, 4, 4, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([[0.0, 0.0, 600.0]]), text, control, num_ref_frames=1)


def test_official_lora_convert_merge_attach_unmerge():
    sd = official_lora()
    lora = convert.convert_official_lora(sd)
    assert lora.rank == 4 and lora.scale == 1.0 and len(lora.modules) == 16
    assert "blocks.1.attn2.to_out.0" in lora.modules
    base = tiny_model()
    original = base.state_dict()["blocks.0.attn1.to_q.weight"].clone()
    y0 = run(base)

    merged = tiny_model()
    convert.merge_lora(merged, lora)
    a = sd["pipe.dit.blocks.0.self_attn.q.lora_A.default.weight"]
    b = sd["pipe.dit.blocks.0.self_attn.q.lora_B.default.weight"]
    torch.testing.assert_close(merged.state_dict()["blocks.0.attn1.to_q.weight"], original + b @ a)
    y_merged = run(merged)
    assert (y_merged - y0).abs().max() > 1e-4

    attached = tiny_model()
    convert.attach_lora(attached, lora)
    torch.testing.assert_close(run(attached), y_merged, atol=1e-5, rtol=0)
    attached.disable_adapters()  # official round 0 runs without the LoRA
    torch.testing.assert_close(run(attached), y0, atol=1e-6, rtol=0)

    convert.merge_lora(merged, lora, sign=-1.0)  # official unload_lora
    torch.testing.assert_close(run(merged), y0, atol=1e-5, rtol=0)

    no_prefix = convert.convert_official_lora({k.replace("pipe.dit.", "").replace(".default", ""): v for k, v in sd.items()})
    assert no_prefix.modules == lora.modules
    with pytest.raises(InvalidInputError):
        convert.convert_official_lora({"pipe.dit.blocks.0.self_attn.q.lora_A.default.weight": a})
    bad = tiny_model(num_layers=1, control_layers=(0,))
    with pytest.raises(InvalidInputError, match="does not have"):
        convert.merge_lora(bad, lora)


def test_export_import_round_trip(tmp_path):
    model = tiny_model()
    convert.load_official_control(model, official_control(num_blocks=2, seed=9))
    convert.attach_lora(model, convert.convert_official_lora(official_lora(seed=10)))
    y = run(model)
    convert.save_spatia_weights(model, tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / convert.MANIFEST).read_text())
    assert manifest["format"] == "spatia-weights" and manifest["lora"]["rank"] == 4
    assert manifest["transformer_config"]["control_layers"] == [0, 1]

    fresh = tiny_model()  # same seed -> same main weights, control re-initialised
    assert (run(fresh) - y).abs().max() > 1e-4
    lora = convert.load_spatia_weights(fresh, tmp_path / "export")
    assert lora is not None and lora.alpha == 4.0
    torch.testing.assert_close(run(fresh), y, atol=1e-6, rtol=0)

    merged = tiny_model()
    convert.load_spatia_weights(merged, tmp_path / "export", merge=True)
    torch.testing.assert_close(run(merged), y, atol=1e-5, rtol=0)

    other = tiny_model(num_layers=3, control_layers=(0, 2))
    with pytest.raises(InvalidInputError, match="different transformer config"):
        convert.load_spatia_weights(other, tmp_path / "export")


def test_export_with_main_weights(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[1].attn1.to_v.weight.add_(0.5)  # a full fine-tune changed the main stream
    y = run(model)
    convert.save_spatia_weights(model, tmp_path / "full", include_main=True)
    fresh = tiny_model()
    convert.load_spatia_weights(fresh, tmp_path / "full")
    torch.testing.assert_close(run(fresh), y, atol=0, rtol=0)
