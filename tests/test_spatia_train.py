"""Training the Spatia network on CPU with a tiny random model of the real classes: loss, stages, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spatia.model.spatia import convert
from spatia.model.spatia.data import LatentSample
from spatia.model.spatia.train import (
    Batch,
    TrainConfig,
    Trainer,
    collate,
    draw_noise,
    flow_matching_loss,
    plot_losses,
    reference_flow_matching_loss,
)
from spatia.model.spatia.transformer import CONTROL_MODULE_PREFIXES, TINY_CONFIG, SpatiaTransformer3DModel
from spatia.world.errors import InvalidInputError, PreconditionError


def tiny_model(seed: int = 0) -> SpatiaTransformer3DModel:
    torch.manual_seed(seed)
    return SpatiaTransformer3DModel(**TINY_CONFIG)


def latent_sample(seed: int, num_ref: int = 2, frames: int = 3, num_preceding: int = 1,
                  first_clip: bool = False) -> LatentSample:
    """Structured latents (a smooth pattern per sample plus its control twin), so there is something to learn."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 48, 1, 4, 4, generator=g)
    latents = base + 0.3 * torch.randn(1, 48, frames, 4, 4, generator=g)
    control = torch.cat([latents, torch.zeros_like(latents)], dim=1) + 0.05 * torch.randn(1, 96, frames, 4, 4, generator=g)
    refs = base.expand(1, 48, num_ref, 4, 4).clone()
    text = torch.randn(1, 6, 32, generator=g)
    return LatentSample(latents, control, refs, text, 0 if first_clip else num_preceding, first_clip)


@pytest.mark.parametrize("first_clip", [False, True])
def test_loss_matches_reference(first_clip):
    model = tiny_model().eval()
    samples = [latent_sample(s, first_clip=first_clip) for s in (1, 2)]
    (batch,) = collate(samples)
    assert batch.latents.shape[0] == 2 and batch.num_known == 1
    draw = draw_noise(batch, TrainConfig(aug_max_timestep=50.0), torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = flow_matching_loss(model, batch, draw)
        slow = reference_flow_matching_loss(model, batch, draw)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


def test_noise_draw_distributions():
    (batch,) = collate([latent_sample(0)])
    batch = Batch(batch.latents.expand(4000, -1, -1, -1, -1), batch.control, batch.references, batch.text, 1, 1)
    draw = draw_noise(batch, TrainConfig(), torch.Generator().manual_seed(0))
    logit = torch.log(draw.sigma / (1 - draw.sigma))  # logit-normal: logit(sigma) ~ N(0, 1)
    assert abs(float(logit.mean())) < 0.06 and abs(float(logit.std()) - 1.0) < 0.05
    assert float(draw.aug_sigma.min()) >= 0.0 and float(draw.aug_sigma.max()) <= 0.05  # t_aug in [0, 50] of 1000
    assert float(draw.aug_sigma.max()) > 0.045


def test_collate_groups_by_shape():
    batches = collate([latent_sample(0, num_ref=2), latent_sample(1, num_ref=1), latent_sample(2, num_ref=2)])
    assert sorted(b.latents.shape[0] for b in batches) == [1, 2]
    assert sorted(b.num_references for b in batches) == [1, 2]


def _fast(stage: int, steps: int, **kw) -> TrainConfig:
    kw.setdefault("gradient_checkpointing", False)  # on only where a test checks it: tiny models gain nothing
    return TrainConfig(stage=stage, steps=steps, learning_rate=kw.pop("learning_rate", 3e-3), batch_size=2,
                       progress=False, **kw)


def test_loss_finite_and_decreasing_on_fixed_batch():
    model = tiny_model()
    samples = [latent_sample(1), latent_sample(2)]
    trainer = Trainer(model, samples, _fast(1, 12, val_every=4), val=samples)
    state = trainer.run()
    assert all(math.isfinite(v) for v in state.train_losses)
    steps, losses = zip(*state.val_losses)
    assert steps == (0, 4, 8, 12)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses  # the same batch and noise: falls every time
    assert losses[-1] < 0.95 * losses[0]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_stage1_trains_only_control_parameters():
    model = tiny_model()
    before = _snapshot(model)
    trainer = Trainer(model, [latent_sample(1)], _fast(1, 3, gradient_checkpointing=True))
    assert model.gradient_checkpointing
    trainer.run()
    names = [n for n, _ in trainer.trained]
    assert names and all(n.startswith(CONTROL_MODULE_PREFIXES) for n in names)
    assert len(names) == len(model.control_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(CONTROL_MODULE_PREFIXES) for n in changed)
    assert "control_proj_out.0.weight" in changed  # the zero-initialised projector learns first


def test_stage2_trains_only_lora_parameters():
    model = tiny_model()
    Trainer(model, [latent_sample(1)], _fast(1, 2)).run()  # a stage-1 model (non-zero projectors)
    before = _snapshot(model)
    trainer = Trainer(model, [latent_sample(1)], _fast(2, 3, lora_rank=4))
    trainer.run()
    names = [n for n, _ in trainer.trained]
    assert names and all(".lora_" in n and not n.startswith(CONTROL_MODULE_PREFIXES) for n in names)
    after = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}  # peft wraps the targets
    changed = {n for n, p in after.items() if n not in before or not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed)
    # LoRA on every attention projection of every main block (4 per attention, 2 attentions, A and B).
    assert len(names) == TINY_CONFIG["num_layers"] * 2 * 4 * 2


def test_stage_defaults_follow_the_paper():
    assert TrainConfig(stage=1).lr == 1e-5 and TrainConfig(stage=2).lr == 1e-4
    assert TrainConfig().lora_rank == 64
    with pytest.raises(InvalidInputError):
        TrainConfig(stage=3)


def test_checkpoint_resume_round_trip(tmp_path):
    samples = [latent_sample(s, num_ref=1 + s % 2) for s in range(4)]
    straight = Trainer(tiny_model(), samples, _fast(2, 4, lora_rank=4), val=samples[:1])
    straight.run()
    first = Trainer(tiny_model(), samples, _fast(2, 2, lora_rank=4), val=samples[:1])
    first.run(checkpoint_dir=tmp_path)
    resumed = Trainer(tiny_model(), samples, _fast(2, 4, lora_rank=4), val=samples[:1])
    resumed.load_checkpoint(tmp_path)
    assert resumed.state.step == 2 and resumed.optimizer.state  # AdamW moments came back
    resumed.run(checkpoint_dir=tmp_path)
    assert resumed.state.train_losses == pytest.approx(straight.state.train_losses, rel=1e-5)
    for (n, p), (_, q) in zip(straight.trained, resumed.trained):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)
    assert (tmp_path / "latest").read_text() == "step-0000004"
    wrong_stage = Trainer(tiny_model(), samples, _fast(1, 4))
    with pytest.raises(PreconditionError, match="stage 2 checkpoint"):
        wrong_stage.load_checkpoint(tmp_path)


def test_export_loads_back_and_plot(tmp_path):
    model = tiny_model()
    Trainer(model, [latent_sample(1)], _fast(1, 2)).run()
    trainer = Trainer(model, [latent_sample(1)], _fast(2, 2, lora_rank=4))
    state = trainer.run()
    out = trainer.export(tmp_path / "weights")
    manifest = convert.read_manifest(out)
    assert manifest["lora"]["rank"] == 4
    fresh = tiny_model(seed=5)
    convert.load_spatia_weights(fresh, out)
    x = latent_sample(9)
    hidden = torch.cat([x.references, x.latents], dim=2)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        a = model(hidden, torch.full((1,), 500.0), x.text, control_latents=x.control, num_ref_frames=2)
        # main weights differ (seed 5): load the main stream too, then the outputs must match
        fresh.load_state_dict({k: v for k, v in model.state_dict().items() if ".lora_" not in k and
                               not k.startswith(CONTROL_MODULE_PREFIXES)}, strict=False)
        b = fresh(hidden, torch.full((1,), 500.0), x.text, control_latents=x.control, num_ref_frames=2)
    torch.testing.assert_close(a, b)
    png = plot_losses(state, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trainer_rejects_empty_data():
    with pytest.raises(InvalidInputError):
        Trainer(tiny_model(), [], _fast(1, 1))
    np.testing.assert_equal(len(collate([])), 0)


def test_spatia_train_command(tmp_path):
    """``spatia train`` end to end on a tiny model and one procedural video: checkpoint, export, plot, summary."""
    import json

    from spatia.cli import main

    argv = ["train", "--tiny", "--procedural", "1", "--procedural-frames", "16", "--width", "32", "--height", "32",
            "--target-frames", "4", "--preceding-frames", "5", "--references", "2", "--voxel-size", "0.05",
            "--samples", "2", "--val-samples", "1", "--steps", "2", "--lr", "1e-3", "--no-progress",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    assert (tmp_path / "checkpoints" / "stage-1" / "latest").read_text() == "step-0000002"
    assert convert.read_manifest(tmp_path / "weights-stage-1")["files"]["lora"] is None
    assert (tmp_path / "losses-stage-1.png").stat().st_size > 0
    assert main(argv[:-2] + ["--out", str(tmp_path / "s2"), "--stage", "2"]) == 2  # stage 2 needs --init


@pytest.mark.parametrize("stage", [1, 2])
def test_gradient_checkpointing_gives_the_same_gradients(stage):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        # Zero projectors pass no gradient upstream (the ControlNet's first steps train only them): give them values,
        # as after some stage-1 training, so that every trained tensor gets a gradient.
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for linear in [model.control_proj_in, *model.control_proj_out]:
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.1)
        trainer = Trainer(model, [latent_sample(1)], _fast(stage, 1, lora_rank=4, gradient_checkpointing=checkpointing))
        (batch,) = collate([latent_sample(3)])
        draw = draw_noise(batch, trainer.config, torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        with torch.no_grad():  # LoRA B starts at zero: give it a value so A gets a gradient too
            for name, p in trainer.trained:
                if ".lora_B." in name:
                    p.copy_(torch.randn(p.shape) * 0.1)
        flow_matching_loss(model, batch, draw).backward()
        grads.append({n: p.grad.clone() for n, p in trainer.trained})
    assert grads[0].keys() == grads[1].keys()
    assert all(float(g.abs().sum()) > 0 for g in grads[1].values())  # every trained tensor gets a gradient
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
