"""Loading paths: VAE / prompt wrappers and ``SpatiaGenerator.from_pretrained`` on a tiny diffusers-format folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from spatia.model.spatia import convert
from spatia.model.spatia.generator import SpatiaGenerator, SpatiaGeneratorConfig
from spatia.model.spatia.sampler import SamplerConfig
from spatia.model.spatia.text import ByteTokenizer, PrecomputedPromptEmbeddings, tiny_prompt_encoder
from spatia.model.spatia.transformer import TINY_CONFIG, SpatiaTransformer3DModel
from spatia.model.spatia.vae import SpatiaVAE, latent_frames, tiny_vae
from spatia.world.camera import Intrinsics
from spatia.world.errors import InvalidInputError, NotFoundError
from spatia.world.generator import ClipRequest, SceneProjection


def test_vae_wrapper_shapes_normalisation_and_checks():
    vae = tiny_vae(0)
    vae.config.latents_mean[:] = [0.5] * 48  # non-trivial statistics exercise the normalisation
    vae.config.latents_std[:] = [2.0] * 48
    wrapper = SpatiaVAE(vae)
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    z = wrapper.encode_video(frames)
    assert z.shape == (1, 48, 2, 2, 2)
    raw = vae.encode(torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]).latent_dist.mode()
    torch.testing.assert_close(z, (raw - 0.5) / 2.0)
    assert wrapper.decode(z).shape == (5, 32, 32, 3)
    assert wrapper.encode_images([frames[0], frames[1]]).shape == (1, 48, 2, 2, 2)
    assert wrapper.encode_hole_mask(np.ones((5, 32, 32), dtype=bool)).shape == (1, 48, 2, 2, 2)
    assert [latent_frames(n) for n in (1, 5, 81)] == [1, 2, 21]
    with pytest.raises(InvalidInputError):
        wrapper.encode_video(frames[:4])  # 4 is not 1 + 4k
    with pytest.raises(InvalidInputError):
        wrapper.encode_video(np.zeros((1, 24, 32, 3), dtype=np.uint8))


def test_prompt_encoders():
    encoder = tiny_prompt_encoder(text_dim=32, max_length=16)
    a, b = encoder.encode("a red door"), encoder.encode("a blue door")
    assert a.shape == (1, 16, 32) and not torch.equal(a, b)
    length = int(ByteTokenizer()(["a red door"], max_length=16)["attention_mask"].sum())
    assert length == len("a red door") + 1
    assert torch.count_nonzero(a[0, length:]) == 0  # padding zeroed, as diffusers' WanPipeline


def test_precomputed_prompt_embeddings_round_trip(tmp_path):
    encoder = tiny_prompt_encoder()
    table = PrecomputedPromptEmbeddings.from_encoder(encoder, ["a room", ""])
    table.save(tmp_path / "prompts.safetensors")
    loaded = PrecomputedPromptEmbeddings.load(tmp_path / "prompts.safetensors")
    assert torch.equal(loaded.encode("a room"), encoder.encode("a room"))
    assert loaded.text_dim == 32
    with pytest.raises(NotFoundError):
        loaded.encode("a garden")


def test_from_pretrained_on_a_tiny_diffusers_folder(tmp_path):
    """The real loading path: Wan transformer + VAE folders, official control and LoRA files, cached prompts."""
    torch.manual_seed(0)
    wan = WanTransformer3DModel(**{k: v for k, v in TINY_CONFIG.items() if not k.startswith("control")})
    wan.save_pretrained(tmp_path / "wan" / "transformer")
    tiny_vae(0).save_pretrained(tmp_path / "wan" / "vae")
    # official-named control checkpoint for 2 control blocks at main layers 0 and 1
    reference = SpatiaTransformer3DModel.from_wan_transformer(wan, control_layers=(0, 1))
    inverse = {v: k for k, v in convert.DIT_BLOCK_MODULES.items()}
    official = {}
    for key, value in reference.control_state_dict().items():
        value = value + 0.01 * torch.randn_like(value)
        if key.startswith("control_patch_embedding."):
            official["vace_patch_embedding." + key.split(".")[-1]] = value
        elif key.startswith("control_proj_in."):
            official["vace_blocks.0.before_proj." + key.split(".")[-1]] = value
        elif key.startswith("control_proj_out."):
            _, k, param = key.split(".")
            official[f"vace_blocks.{k}.after_proj.{param}"] = value
        else:
            _, k, rest = key.split(".", 2)
            module, _, param = rest.rpartition(".")
            name = "modulation" if rest == "scale_shift_table" else f"{inverse[module]}.{param}"
            official[f"vace_blocks.{k}.{name}"] = value
    save_file({k: v.contiguous() for k, v in official.items()}, str(tmp_path / "step-8500.safetensors"))
    shapes = {"A": (4, 24), "B": (24, 4)}  # rank 4, inner dim 24
    lora = {f"pipe.dit.blocks.{i}.self_attn.{p}.lora_{ab}.default.weight": torch.randn(*shapes[ab]) * 0.1
            for i in range(2) for p in "qkvo" for ab in "AB"}
    save_file(lora, str(tmp_path / "lora_weights_10000.safetensors"))
    config = SpatiaGeneratorConfig(sampler=SamplerConfig(scheduler="unipc", num_steps=2, guidance_scale=3.5))
    PrecomputedPromptEmbeddings.from_encoder(tiny_prompt_encoder(), ["a hall" + config.prompt_suffix, ""]).save(
        tmp_path / "prompts.safetensors")

    gen = SpatiaGenerator.from_pretrained(
        tmp_path / "wan", control=tmp_path / "step-8500.safetensors", lora=tmp_path / "lora_weights_10000.safetensors",
        prompt_embeddings=tmp_path / "prompts.safetensors", control_layers=(0, 1), config=config, device="cpu",
        dtype=torch.float32)
    state = gen.transformer.state_dict()
    assert torch.equal(state["control_blocks.1.attn1.to_q.weight"], official["vace_blocks.1.self_attn.q.weight"])
    assert "blocks.0.attn1.to_q.lora_A.spatia.weight" in state

    k = Intrinsics.from_fov(60.0, 32, 32)
    rng = np.random.default_rng(1)
    request = ClipRequest(
        clip_id=0, target_c2w=np.repeat(np.eye(4)[None], 5, 0), intrinsics=k,
        projection=SceneProjection(rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
                                   np.ones((5, 32, 32), np.float32), np.ones((5, 32, 32), bool)),
        preceding_frames=np.zeros((0, 32, 32, 3), np.uint8), preceding_c2w=np.zeros((0, 4, 4)), prompt="a hall",
        seed=1, first_frame=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert gen.generate(request).frames.shape == (5, 32, 32, 3)
    with pytest.raises(NotFoundError):
        SpatiaGenerator.from_pretrained(tmp_path / "missing", control=tmp_path / "step-8500.safetensors")
