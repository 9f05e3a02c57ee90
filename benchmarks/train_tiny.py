"""Benchmark: the Spatia training recipe end to end on CPU, at 64 x 64 on procedural clips, with a small model.

Data: the built-in procedural dataset (``world.scenes`` rooms / houses / courtyards walked along their demo loops,
exact depth), cut into samples per paper Sec. 3.1 (5 preceding + 8 target frames, up to 3 references, scene point
cloud from one candidate frame, voxel 5 cm), encoded by the tiny random Wan2.2 VAE and prompt encoder. Held-out
validation samples come from the same videos with other seeds (other clips, other cloud frames).

Model: ``SpatiaTransformer3DModel`` of 2 layers, 4 heads x 48 (inner 192), ffn 384, control after block 0. The inner
width is 192 = 48 latent channels x the 2 x 2 patch: with the 24-wide ``TINY_CONFIG`` the output projection alone
caps how much of the 192-d velocity per token any training can explain.

Recipe: stage 1 (ControlNet stream only, main frozen) then stage 2 (LoRA on the main blocks, ControlNet frozen), as
in the paper, with learning rates raised for a random tiny model (paper: 1e-5 / 1e-4 for a pretrained 5B one).

Prints ONE JSON object on stdout: ``val_loss_start`` (before stage 1), ``val_loss_end`` (after stage 2),
``steps_per_s``; ``median_ms`` = median wall time of a training step (fast batched loss + backward + AdamW) and
``baseline_median_ms`` = the same step with the slow per-sample ``reference_flow_matching_loss``, timed in the same
run; plus the sizes used. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from _common import emit, load_average, log

BENCH_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=48, in_channels=48, out_channels=48, text_dim=32,
    freq_dim=64, ffn_dim=384, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024, control_layers=(0,), control_in_channels=96,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--frames", type=int, default=40, help="frames per procedural video")
    p.add_argument("--train-samples", type=int, default=24)
    p.add_argument("--val-samples", type=int, default=6)
    p.add_argument("--stage1-steps", type=int, default=150)
    p.add_argument("--stage2-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr1", type=float, default=1e-3)
    p.add_argument("--lr2", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--timing-steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from spatia.model.spatia.data import SampleBuilder, SampleConfig, build_latent_samples, procedural_videos
    from spatia.model.spatia.text import tiny_prompt_encoder
    from spatia.model.spatia.train import (
        TrainConfig, Trainer, collate, draw_noise, flow_matching_loss, reference_flow_matching_loss,
    )
    from spatia.model.spatia.transformer import SpatiaTransformer3DModel
    from spatia.model.spatia.vae import SpatiaVAE, tiny_vae

    t0 = time.perf_counter()
    size = 64
    videos = procedural_videos(args.videos, args.frames, size, size, loop_fraction=0.3)
    sample_config = SampleConfig(target_frames=8, preceding_frames=5, num_references=3, voxel_size_m=0.05)
    builder = SampleBuilder(sample_config)
    vae, prompts = SpatiaVAE(tiny_vae(args.seed)), tiny_prompt_encoder(32, seed=args.seed)
    log(f"building {args.train_samples} + {args.val_samples} samples from {args.videos} procedural videos")
    train = build_latent_samples(videos, args.train_samples, builder, vae, prompts, seed=args.seed)
    val = build_latent_samples(videos, args.val_samples, builder, vae, prompts, seed=args.seed + 1_000_003)
    data_s = time.perf_counter() - t0
    log(f"data ready in {data_s:.1f} s")

    torch.manual_seed(args.seed)
    model = SpatiaTransformer3DModel(**BENCH_CONFIG)
    common = dict(batch_size=args.batch_size, seed=args.seed, progress=False, gradient_checkpointing=False)
    stage1 = Trainer(model, train, TrainConfig(stage=1, steps=args.stage1_steps, learning_rate=args.lr1, **common), val)
    s1 = stage1.run(on_step=lambda t: t.state.step % 50 == 0 and log(f"stage 1 step {t.state.step}"))
    log(f"stage 1: val {s1.val_losses[0][1]:.4f} -> {s1.val_losses[-1][1]:.4f}")
    stage2 = Trainer(model, train, TrainConfig(stage=2, steps=args.stage2_steps, learning_rate=args.lr2,
                                               lora_rank=args.lora_rank, **common), val)
    s2 = stage2.run(on_step=lambda t: t.state.step % 50 == 0 and log(f"stage 2 step {t.state.step}"))
    log(f"stage 2: val {s2.val_losses[0][1]:.4f} -> {s2.val_losses[-1][1]:.4f}")
    steps = len(s1.train_losses) + len(s2.train_losses)
    train_s = s1.seconds + s2.seconds

    # Step timing, fast loss vs the per-sample reference, on the same batches (stage 2 trainer, LoRA params).
    def timed_step(loss_fn) -> float:
        step = stage2.state.step
        batches = collate(stage2.batch_for_step(step))
        gen = torch.Generator().manual_seed(step)
        n = sum(b.latents.shape[0] for b in batches)
        t = time.perf_counter()
        stage2.optimizer.zero_grad(set_to_none=True)
        for b in batches:
            (loss_fn(model, b, draw_noise(b, stage2.config, gen)) * (b.latents.shape[0] / n)).backward()
        stage2.optimizer.step()
        return (time.perf_counter() - t) * 1e3

    fast = [timed_step(flow_matching_loss) for _ in range(args.timing_steps)]
    slow = [timed_step(reference_flow_matching_loss) for _ in range(args.timing_steps)]
    s = train[0]
    result = {
        "benchmark": "train_tiny",
        "val_loss_start": round(s1.val_losses[0][1], 5),
        "val_loss_end": round(s2.val_losses[-1][1], 5),
        "val_ratio": round(s2.val_losses[-1][1] / s1.val_losses[0][1], 4),
        "val_loss_after_stage1": round(s1.val_losses[-1][1], 5),
        "steps": steps,
        "steps_per_s": round(steps / train_s, 3),
        "median_ms": round(statistics.median(fast), 2),
        "baseline_median_ms": round(statistics.median(slow), 2),
        "train_s": round(train_s, 1),
        "data_s": round(data_s, 1),
        "sizes": {
            "frame_px": [size, size], "videos": args.videos, "frames_per_video": args.frames,
            "train_samples": len(train), "val_samples": len(val), "batch_size": args.batch_size,
            "preceding_frames": 5, "target_frames": 8, "max_references": 3,
            "references_per_sample": [x.num_references for x in train],
            "latents": list(s.latents.shape), "control": list(s.control.shape),
            "model_params": sum(p.numel() for p in model.parameters()),
            "stage1_steps": args.stage1_steps, "stage2_steps": args.stage2_steps,
            "lr": [args.lr1, args.lr2], "lora_rank": args.lora_rank,
        },
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": load_average(),
    }
    emit(result)


if __name__ == "__main__":
    main()
