"""``spatia train``: train the Spatia network's ControlNet stream (stage 1) or its LoRA (stage 2), paper Sec. 4.

Data: ``--data`` folders in our plain format (docs/TRAINING.md), ``--re10k CAMERA_FILE:FRAMES_DIR[:DEPTH_DIR]``,
``--spatialvid ANNOTATION_DIR:FRAMES_DIR[:DEPTH.npy]``, or ``--procedural N`` built-in scenes. Model: ``--weights``
(a diffusers-format Wan2.2-TI2V-5B directory) or ``--tiny`` (a tiny random model of the same classes, on CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the Spatia network (stage 1: ControlNet, stage 2: LoRA)")
    p.add_argument("--out", type=Path, required=True, help="output directory (checkpoints/, weights/, losses.png)")
    p.add_argument("--stage", type=int, choices=(1, 2), default=1)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--weights", type=Path, help="diffusers-format Wan2.2-TI2V-5B directory")
    model.add_argument("--tiny", action="store_true", help="a tiny random model of the same classes (CPU smoke runs)")
    p.add_argument("--init", type=Path, help="start from these Spatia weights (our export or the official control "
                                             "checkpoint); stage 2 needs stage-1 weights")
    p.add_argument("--prompt-embeddings", type=Path, help="precomputed prompt embeddings (skips UMT5-XXL)")
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, action="extend", nargs="+", default=[],
                      help="video folders in the plain format (docs/TRAINING.md)")
    data.add_argument("--re10k", action="append", default=[], help="CAMERA_FILE:FRAMES_DIR[:DEPTH_DIR] (repeatable)")
    data.add_argument("--spatialvid", action="append", default=[], help="ANNOTATION_DIR:FRAMES_DIR[:DEPTH.npy]")
    data.add_argument("--procedural", type=int, default=0, help="number of built-in procedural scene videos")
    data.add_argument("--procedural-frames", type=int, default=120)
    data.add_argument("--samples", type=int, default=256, help="training samples drawn from the videos")
    data.add_argument("--val-samples", type=int, default=8)
    data.add_argument("--cache", type=Path, help="latent cache directory (default OUT/latents)")
    data.add_argument("--depth-model", type=Path, help="local transformers depth model for videos without depth")
    clip = p.add_argument_group("clips")
    clip.add_argument("--width", type=int, default=None, help="frame width (multiple of 32)")
    clip.add_argument("--height", type=int, default=None, help="frame height (multiple of 32)")
    clip.add_argument("--target-frames", type=int, default=72)
    clip.add_argument("--preceding-frames", type=int, default=9)
    clip.add_argument("--first-clip-prob", type=float, default=0.0)
    clip.add_argument("--references", type=int, default=7)
    clip.add_argument("--retrieval", choices=("paper", "official"), default="paper",
                      help="paper: Algorithm 1 (voxel IoU); official: shared points + Hungarian matching")
    clip.add_argument("--candidate-stride", type=int, default=1,
                      help="keep every n-th candidate frame for retrieval (official: 4 at 24 fps)")
    clip.add_argument("--voxel-size", type=float, default=0.01, help="metres")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=None, help="default: 8000 (stage 1), 5000 (stage 2)")
    opt.add_argument("--lr", type=float, default=None, help="default: 1e-5 (stage 1), 1e-4 (stage 2)")
    opt.add_argument("--batch-size", type=int, default=1)
    opt.add_argument("--lora-rank", type=int, default=64)
    opt.add_argument("--seed", type=int, default=0)
    opt.add_argument("--val-every", type=int, default=0)
    opt.add_argument("--checkpoint-every", type=int, default=500)
    opt.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/stage-N/latest")
    opt.add_argument("--no-gradient-checkpointing", action="store_true")
    opt.add_argument("--device", default=None, help="default: cuda when available")
    opt.add_argument("--no-progress", action="store_true")


def _split(spec: str, what: str) -> list[str]:
    from spatia.world.errors import InvalidInputError

    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise InvalidInputError(f"--{what} takes A:B[:C], got {spec!r}")
    return parts


def run(args: argparse.Namespace) -> int:
    import torch

    from spatia.model.spatia import convert
    from spatia.model.spatia.data import (
        FolderVideo, LatentCache, SampleBuilder, SampleConfig, build_latent_samples, procedural_videos,
        read_realestate10k, read_spatialvid,
    )
    from spatia.model.spatia.train import TrainConfig, Trainer, plot_losses, steps_per_second
    from spatia.world.errors import InvalidInputError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    videos = [FolderVideo(d) for d in args.data]
    for spec in args.re10k:
        cam, frames, *depth = _split(spec, "re10k")
        videos.append(read_realestate10k(cam, frames, depth[0] if depth else None))
    for spec in args.spatialvid:
        ann, frames, *depth = _split(spec, "spatialvid")
        videos.append(read_spatialvid(ann, frames, depth[0] if depth else None))
    width, height = args.width, args.height
    if args.procedural:
        width, height = width or 64, height or 64
        videos += procedural_videos(args.procedural, args.procedural_frames, width, height)
    if not videos:
        raise InvalidInputError("no training data: give --data, --re10k, --spatialvid or --procedural")

    # Model, VAE and prompt encoder.
    if args.tiny:
        from spatia.model.spatia import SpatiaGenerator

        gen = SpatiaGenerator.tiny(seed=args.seed)
        model, vae, prompts = gen.transformer, gen.vae, gen.prompt_encoder
    else:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel

        from spatia.model.spatia.text import PrecomputedPromptEmbeddings, UMT5PromptEncoder
        from spatia.model.spatia.transformer import SpatiaTransformer3DModel
        from spatia.model.spatia.vae import SpatiaVAE

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        wan = WanTransformer3DModel.from_pretrained(args.weights / "transformer", torch_dtype=dtype)
        model = SpatiaTransformer3DModel.from_wan_transformer(wan)
        del wan
        vae = SpatiaVAE(AutoencoderKLWan.from_pretrained(args.weights / "vae", torch_dtype=torch.float32), device=device)
        prompts = (PrecomputedPromptEmbeddings.load(args.prompt_embeddings) if args.prompt_embeddings
                   else UMT5PromptEncoder.from_pretrained(args.weights, device=device, dtype=dtype))
    if args.init is not None:
        if convert.is_spatia_weights_dir(args.init):
            convert.load_spatia_weights(model, args.init, merge=True)  # a stage-1 export has no LoRA; a LoRA merges
        else:
            convert.load_official_control(model, args.init)
    elif args.stage == 2:
        raise InvalidInputError("stage 2 trains the LoRA on top of a trained ControlNet: pass --init STAGE1_WEIGHTS")

    sample_config = SampleConfig(
        target_frames=args.target_frames, preceding_frames=args.preceding_frames,
        first_clip_prob=args.first_clip_prob, num_references=args.references, voxel_size_m=args.voxel_size,
        retrieval_method=args.retrieval, candidate_stride=args.candidate_stride,
        width=width, height=height,
    )
    depth_estimator = None
    if args.depth_model is not None:
        from spatia.world.depth import TransformersDepth

        depth_estimator = TransformersDepth(args.depth_model)
    builder = SampleBuilder(sample_config, depth_estimator)
    cache = LatentCache(args.cache or args.out / "latents")
    progress = not args.no_progress
    train = build_latent_samples(videos, args.samples, builder, vae, prompts, seed=args.seed, cache=cache,
                                 progress=progress)
    val = build_latent_samples(videos, args.val_samples, builder, vae, prompts, seed=args.seed + 1_000_003,
                               cache=cache, progress=progress) if args.val_samples else []

    # The VAE and the text encoder (UMT5-XXL: ~11 GB) are only needed to build latents: release them for training.
    del vae, prompts
    if args.tiny:
        del gen
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    config = TrainConfig(
        stage=args.stage, steps=args.steps if args.steps is not None else (8000 if args.stage == 1 else 5000),
        learning_rate=args.lr, batch_size=args.batch_size, lora_rank=args.lora_rank, seed=args.seed,
        val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=not args.no_gradient_checkpointing, progress=progress,
    )
    trainer = Trainer(model, train, config, val, device=device)
    ckpt = args.out / "checkpoints" / f"stage-{args.stage}"
    if args.resume and (ckpt / "latest").is_file():
        trainer.load_checkpoint(ckpt)
    state = trainer.run(checkpoint_dir=ckpt)
    weights = trainer.export(args.out / f"weights-stage-{args.stage}")
    plot = plot_losses(state, args.out / f"losses-stage-{args.stage}.png", title=f"Spatia stage {args.stage}")
    summary = {
        "stage": args.stage, "steps": state.step, "videos": len(videos), "samples": len(train),
        "train_loss_last": state.train_losses[-1] if state.train_losses else None,
        "val_losses": state.val_losses, "steps_per_s": steps_per_second(state),
        "weights": str(weights), "checkpoint": str(ckpt), "loss_plot": str(plot), "device": str(device),
    }
    print(json.dumps(summary, indent=2))
    return 0
