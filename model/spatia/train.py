"""Training the Spatia network (paper Sec. 3.1.3 and 4): flow-matching loss, the two stages, checkpoints, resume.

Loss (paper Eq. 1). We use diffusers' / DiffSynth's flow-matching convention, the one the sampler integrates
(``model.spatia.sampler``)::

    x_sigma = (1 - sigma) * x0 + sigma * eps        x0 = clean target latents, eps ~ N(0, I), sigma in (0, 1)
    target  v = eps - x0                            the network is fed timestep sigma * 1000

The paper writes ``x_t = (1 - t) x_0 + t X_T`` with ``x_0`` the noise and ``X_T`` the data, so ``t = 1 - sigma`` and
its velocity ``u_t = X_T - x_0 = -v``: the same regression up to the sign of the target (the MSE is identical).
sigma is drawn logit-normal (``compute_density_for_timestep_sampling("logit_normal")``, mean 0, std 1), optionally
time-shifted. Preceding-clip latents get the appendix's low-noise augmentation: t_aug ~ U[0, 50] of 1000, the same
interpolation with sigma_aug = t_aug / 1000, fed to the network with timestep 0 as at inference (the paper does not
say which timestep the augmented frames carry; 0 is what they carry at inference, which is what the augmentation
prepares for). Reference latents and a TI2V first frame are clean with timestep 0. The loss covers the generated
(target) latent frames only, as diffusers' TI2V training masks its first frame.

Stages (paper Sec. 4): 1) ControlNet stream trained, main frozen, AdamW lr 1e-5; 2) ControlNet frozen, rank-64 LoRA
on the main blocks' attention projections, AdamW lr 1e-4. Gradient checkpointing on the blocks and bf16 autocast on
GPU (frozen weights stored in bf16, trained ones in fp32).

Checkpoints are directories: ``trainable.safetensors`` (the trained tensors under model names),
``optimizer.safetensors`` (AdamW moments per trained tensor), ``state.json`` (step, stage, losses, config). Resume is
exact: the data order and the noise of step s depend only on (seed, s). The final weights are exported with
``convert.save_spatia_weights`` (the documented format ``SpatiaGenerator.from_pretrained`` loads).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from spatia.model.spatia.convert import main_lora_config, save_spatia_weights
from spatia.model.spatia.data import LatentSample
from spatia.model.spatia.transformer import SpatiaTransformer3DModel
from spatia.world.errors import InvalidInputError, NotFoundError, PreconditionError

STAGES = (1, 2)
ADAPTER = "spatia"  # the adapter name SpatiaGenerator / convert use
CHECKPOINT_STATE = "state.json"


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one stage. Defaults: the paper's (Sec. 4) where it gives them."""

    stage: int = 1  # 1: ControlNet stream, main frozen; 2: LoRA on the main blocks, ControlNet frozen
    steps: int = 8000  # paper: 8,000 iterations (stage 1), 5,000 (stage 2)
    learning_rate: float | None = None  # None: paper's 1e-5 (stage 1) / 1e-4 (stage 2)
    weight_decay: float = 0.01  # AdamW default; the paper does not give one
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 1  # samples per step (paper: 64 over 64 GPUs)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    lora_rank: int = 64  # paper: rank 64
    lora_alpha: float | None = None  # None: = rank (scale 1, as the official LoRA is applied)
    logit_mean: float = 0.0  # logit-normal sigma sampling (SD3 / diffusers defaults)
    logit_std: float = 1.0
    train_shift: float = 1.0  # time shift of sampled sigmas (1: none)
    aug_max_timestep: float = 50.0  # preceding-latent augmentation t_aug ~ U[0, this] of 1000 (paper appendix)
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 on CPU; "bf16"; "no"
    seed: int = 0
    val_every: int = 0  # steps between validation losses; 0: only at start and end
    checkpoint_every: int = 0  # steps between checkpoints; 0: only at the end
    progress: bool = True  # tqdm bar on stderr

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise InvalidInputError(f"stage must be 1 or 2, got {self.stage}")
        if self.steps < 0 or self.batch_size < 1 or self.lora_rank < 1:
            raise InvalidInputError("steps >= 0, batch_size >= 1 and lora_rank >= 1 are required")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise InvalidInputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.aug_max_timestep <= 1000.0:
            raise InvalidInputError(f"aug_max_timestep must be in [0, 1000], got {self.aug_max_timestep}")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise InvalidInputError(f"mixed_precision must be auto, bf16 or no, got {self.mixed_precision!r}")
        if not self.train_shift > 0 or not self.logit_std > 0:
            raise InvalidInputError("train_shift and logit_std must be > 0")

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-5 if self.stage == 1 else 1e-4


# ----------------------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Latent samples of one shape, stacked on the batch dimension."""

    latents: torch.Tensor  # [B, C, F, h, w] clean preceding + target latents
    control: torch.Tensor  # [B, 2C, F, h, w]
    references: torch.Tensor  # [B, C, K, h, w]
    text: torch.Tensor  # [B, L, text_dim]
    num_known: int  # leading latent frames of ``latents`` given as conditions
    num_preceding: int  # of which are preceding-clip latents (augmented); the rest (TI2V first frame) stay clean

    @property
    def num_references(self) -> int:
        return int(self.references.shape[2])


def collate(samples: Sequence[LatentSample]) -> list[Batch]:
    """Group samples of equal shapes (K and clip lengths may differ between samples) into stacked batches."""
    groups: dict[tuple, list[LatentSample]] = {}
    for s in samples:
        groups.setdefault(s.shape_key(), []).append(s)
    return [
        Batch(torch.cat([s.latents for s in g]), torch.cat([s.control for s in g]),
              torch.cat([s.references for s in g]), torch.cat([s.text for s in g]), g[0].num_known,
              g[0].num_preceding)
        for g in groups.values()
    ]


@dataclass
class NoiseDraw:
    """The random part of one loss evaluation (fixed for validation, fresh for training)."""

    sigma: torch.Tensor  # [B] in (0, 1)
    noise: torch.Tensor  # [B, C, F, h, w]
    aug_sigma: torch.Tensor  # [B] in [0, aug_max / 1000]
    aug_noise: torch.Tensor  # [B, C, F, h, w] (used on the preceding frames only)


def draw_noise(batch: Batch, config: TrainConfig, generator: torch.Generator) -> NoiseDraw:
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from spatia.model.spatia.sampler import shift_sigmas

    b = batch.latents.shape[0]
    u = compute_density_for_timestep_sampling("logit_normal", b, logit_mean=config.logit_mean,
                                              logit_std=config.logit_std, generator=generator)
    sigma = shift_sigmas(u.double(), config.train_shift).float() if config.train_shift != 1.0 else u.float()
    shape = tuple(batch.latents.shape)
    noise = torch.randn(shape, generator=generator)
    aug_sigma = torch.rand(b, generator=generator) * (config.aug_max_timestep / 1000.0)
    aug_noise = torch.randn(shape, generator=generator)
    return NoiseDraw(sigma, noise, aug_sigma, aug_noise)


def flow_matching_loss(model: SpatiaTransformer3DModel, batch: Batch, draw: NoiseDraw,
                       autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity ``eps - x0`` over the generated frames."""
    device = next(model.parameters()).device
    x0 = batch.latents.to(device, torch.float32)
    b, _, f = x0.shape[:3]
    k, known, prec = batch.num_references, batch.num_known, batch.num_preceding
    sigma = draw.sigma.to(device)[:, None, None, None, None]
    noise = draw.noise.to(device)
    x_t = (1.0 - sigma) * x0 + sigma * noise
    # Known frames: clean (references, TI2V first frame) or low-noise augmented (preceding clip, paper appendix).
    a = draw.aug_sigma.to(device)[:, None, None, None, None]
    augmented = (1.0 - a) * x0[:, :, :prec] + a * draw.aug_noise.to(device)[:, :, :prec]
    main = torch.cat([augmented, x0[:, :, prec:known], x_t[:, :, known:]], dim=2)
    hidden = torch.cat([batch.references.to(device, torch.float32), main], dim=2)
    timestep = torch.zeros(b, k + f, device=device)
    timestep[:, k + known:] = draw.sigma.to(device)[:, None] * 1000.0
    text = batch.text.to(device)
    control = batch.control.to(device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = model(hidden, timestep, text, control_latents=control, num_ref_frames=k)
    target = (noise - x0)[:, :, known:]
    return torch.mean((pred[:, :, k + known:].float() - target) ** 2)


def reference_flow_matching_loss(model: SpatiaTransformer3DModel, batch: Batch, draw: NoiseDraw) -> torch.Tensor:
    """Slow, plainly written version of ``flow_matching_loss`` (fp32, no autocast): the network input is built frame
    by frame, one network call per sample, and the squared error summed frame by frame. Tests and the benchmark
    compare the fast loss with it."""
    k, known, prec = batch.num_references, batch.num_known, batch.num_preceding
    total, count = 0.0, 0
    for b in range(batch.latents.shape[0]):
        x0 = batch.latents[b:b + 1].float()
        s, a = float(draw.sigma[b]), float(draw.aug_sigma[b])
        frames, steps = [], []
        for j in range(k):  # references: clean, t = 0
            frames.append(batch.references[b:b + 1, :, j:j + 1].float())
            steps.append(0.0)
        for j in range(x0.shape[2]):
            clean = x0[:, :, j:j + 1]
            if j < prec:  # preceding clip: low-noise augmented, t = 0
                frames.append((1 - a) * clean + a * draw.aug_noise[b:b + 1, :, j:j + 1])
                steps.append(0.0)
            elif j < known:  # TI2V first frame: clean, t = 0
                frames.append(clean)
                steps.append(0.0)
            else:  # target: x_sigma, t = 1000 sigma
                frames.append((1 - s) * clean + s * draw.noise[b:b + 1, :, j:j + 1])
                steps.append(s * 1000.0)
        pred = model(torch.cat(frames, dim=2), torch.tensor([steps]), batch.text[b:b + 1],
                     control_latents=batch.control[b:b + 1], num_ref_frames=k)
        for j in range(known, x0.shape[2]):
            v = draw.noise[b:b + 1, :, j] - x0[:, :, j]
            total = total + ((pred[:, :, k + j].float() - v) ** 2).sum()
            count += v.numel()
    return total / count


# ----------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------


def has_adapter(model: nn.Module) -> bool:
    return bool(getattr(model, "_hf_peft_config_loaded", False)) and ADAPTER in getattr(model, "peft_config", {})


def prepare_stage(model: SpatiaTransformer3DModel, config: TrainConfig) -> list[tuple[str, nn.Parameter]]:
    """Freeze / unfreeze for the stage (adding the LoRA adapter in stage 2); returns the trained (name, param)s."""
    model.requires_grad_(False)
    if config.stage == 1:
        if has_adapter(model):
            # Stage 1 trains the ControlNet under the plain main stream, as the official round-0 inference runs it.
            model.disable_adapters()
        for p in model.control_parameters():
            p.requires_grad_(True)
    else:
        if not has_adapter(model):
            model.add_adapter(main_lora_config(config.lora_rank, config.lora_alpha), adapter_name=ADAPTER)
        model.set_adapter(ADAPTER)
        model.enable_adapters()
        model.requires_grad_(False)  # add_adapter may leave other parameters trainable
        for name, p in model.named_parameters():
            if ".lora_" in name and f".{ADAPTER}." in name + ".":
                p.requires_grad_(True)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trained:
        raise PreconditionError(f"stage {config.stage}: nothing to train")
    return trained


def trained_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.mixed_precision == "bf16" or (config.mixed_precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


# ----------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What changes while training (kept apart from the frozen config)."""

    step: int = 0
    stage: int = 1
    train_losses: list[float] = field(default_factory=list)  # one per step
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    seconds: float = 0.0  # wall time spent in training steps


def _step_seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(stream)]).generate_state(1)[0])


class Trainer:
    """Runs one stage on a list of latent samples (precomputed / cached: the VAE and text encoder are not needed)."""

    def __init__(self, model: SpatiaTransformer3DModel, train: Sequence[LatentSample], config: TrainConfig,
                 val: Sequence[LatentSample] = (), device: str | torch.device = "cpu") -> None:
        if not train:
            raise InvalidInputError("no training samples")
        self.config = config
        self.device = torch.device(device)
        self.model = model
        self.train_samples = list(train)
        self.val_samples = list(val)
        self.trained = prepare_stage(model, config)
        self._place_weights()
        model.train()
        if config.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()
        self.optimizer = torch.optim.AdamW([p for _, p in self.trained], lr=config.lr, betas=config.betas,
                                           weight_decay=config.weight_decay)
        self.state = TrainState(stage=config.stage)
        self.autocast_dtype = _autocast_dtype(config, self.device)
        # Validation noise is drawn once, so every validation loss measures the same thing.
        gen = torch.Generator().manual_seed(_step_seed(config.seed, 0, 0))
        self._val = [(b, draw_noise(b, config, gen)) for b in collate(self.val_samples)]

    def _place_weights(self) -> None:
        """Frozen weights in bf16 on GPU (half the memory of the 5B main stream), trained ones in fp32."""
        self.model.to(self.device)
        if self.device.type == "cuda" and self._low_precision_storage():
            # Norms, modulation tables and the time embedder stay fp32, as diffusers keeps them under a bf16 load.
            keep = tuple(getattr(self.model, "_keep_in_fp32_modules", None) or ())
            for name, p in self.model.named_parameters():
                if not p.requires_grad and not any(k in name.split(".") for k in keep):
                    p.data = p.data.to(torch.bfloat16)
        for _, p in self.trained:
            p.data = p.data.float()

    def _low_precision_storage(self) -> bool:
        return _autocast_dtype(self.config, self.device) is not None

    # ---- steps ----

    def batch_for_step(self, step: int) -> list[LatentSample]:
        rng = np.random.default_rng(_step_seed(self.config.seed, step, 1))
        idx = rng.choice(len(self.train_samples), size=self.config.batch_size,
                         replace=self.config.batch_size > len(self.train_samples))
        return [self.train_samples[int(i)] for i in idx]

    def train_step(self) -> float:
        step = self.state.step
        t0 = time.perf_counter()
        batches = collate(self.batch_for_step(step))
        gen = torch.Generator().manual_seed(_step_seed(self.config.seed, step, 2))
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        n = sum(b.latents.shape[0] for b in batches)
        for batch in batches:  # groups of different shapes: gradients accumulate, weighted by group size
            loss = flow_matching_loss(self.model, batch, draw_noise(batch, self.config, gen), self.autocast_dtype)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: loss is {float(loss)}")
            (loss * (batch.latents.shape[0] / n)).backward()
            total += float(loss.detach()) * batch.latents.shape[0] / n
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in self.trained], self.config.grad_clip)
        self.optimizer.step()
        self.state.step += 1
        self.state.train_losses.append(total)
        self.state.seconds += time.perf_counter() - t0
        return total

    @torch.no_grad()
    def validation_loss(self) -> float:
        if not self._val:
            raise PreconditionError("no validation samples")
        was_training = self.model.training
        self.model.eval()
        total = n = 0
        for batch, draw in self._val:
            b = batch.latents.shape[0]
            total += float(flow_matching_loss(self.model, batch, draw, self.autocast_dtype)) * b
            n += b
        self.model.train(was_training)
        return total / n

    def run(self, checkpoint_dir: str | Path | None = None,
            on_step: Callable[["Trainer"], None] | None = None) -> TrainState:
        """Train up to ``config.steps`` (continuing from ``state.step``), validating and checkpointing on schedule."""
        from tqdm import tqdm

        c = self.config
        if self.val_samples and not any(s == self.state.step for s, _ in self.state.val_losses):
            self.state.val_losses.append((self.state.step, self.validation_loss()))
        bar = tqdm(total=c.steps, initial=self.state.step, desc=f"stage {c.stage}", disable=not c.progress,
                   dynamic_ncols=True)
        while self.state.step < c.steps:
            loss = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            s = self.state.step
            if self.val_samples and c.val_every and s % c.val_every == 0 and s < c.steps:
                self.state.val_losses.append((s, self.validation_loss()))
            if checkpoint_dir is not None and c.checkpoint_every and s % c.checkpoint_every == 0 and s < c.steps:
                self.save_checkpoint(checkpoint_dir)
            if on_step is not None:
                on_step(self)
        bar.close()
        if self.val_samples and self.state.val_losses[-1][0] != self.state.step:
            self.state.val_losses.append((self.state.step, self.validation_loss()))
        if checkpoint_dir is not None:
            self.save_checkpoint(checkpoint_dir)
        return self.state

    # ---- checkpoints ----

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Write ``directory/step-XXXXXXX`` (safetensors + state.json) and point ``directory/latest`` at it."""
        from safetensors.torch import save_file

        root = Path(directory)
        out = root / f"step-{self.state.step:07d}"
        tmp = root / f".tmp-step-{self.state.step:07d}"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({n: p.detach().float().cpu().contiguous() for n, p in self.trained}, str(tmp / "trainable.safetensors"))
        opt: dict[str, torch.Tensor] = {}
        for n, p in self.trained:
            st = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    opt[f"{n}::{key}"] = st[key].detach().cpu().contiguous()
            if "step" in st:
                opt[f"{n}::step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
        save_file(opt, str(tmp / "optimizer.safetensors"))
        state = {"format": "spatia-train-checkpoint", "version": 1, "state": asdict(self.state),
                 "config": asdict(self.config), "trained": [n for n, _ in self.trained]}
        (tmp / CHECKPOINT_STATE).write_text(json.dumps(state))
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.replace(out)
        (root / "latest.tmp").write_text(out.name)
        (root / "latest.tmp").replace(root / "latest")
        return out

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore trained tensors, AdamW moments and the train state (``path`` = a step dir or its parent)."""
        from safetensors.torch import load_file

        path = resolve_checkpoint(path)
        doc = json.loads((path / CHECKPOINT_STATE).read_text())
        if doc.get("format") != "spatia-train-checkpoint":
            raise InvalidInputError(f"{path}: not a training checkpoint")
        if doc["state"]["stage"] != self.config.stage:
            raise PreconditionError(f"{path} is a stage {doc['state']['stage']} checkpoint; this trainer runs stage "
                                    f"{self.config.stage} (start stage 2 from stage 1 weights with --init)")
        ours = [n for n, _ in self.trained]
        if doc["trained"] != ours:
            raise InvalidInputError(f"{path}: trained parameters differ from this model's ({len(doc['trained'])} vs "
                                    f"{len(ours)})")
        weights = load_file(str(path / "trainable.safetensors"))
        opt = load_file(str(path / "optimizer.safetensors"))
        with torch.no_grad():
            for n, p in self.trained:
                if weights[n].shape != p.shape:
                    raise InvalidInputError(f"{path}: {n} has shape {tuple(weights[n].shape)}, model {tuple(p.shape)}")
                p.copy_(weights[n].to(p))
                if f"{n}::exp_avg" in opt:
                    self.optimizer.state[p] = {
                        "step": opt[f"{n}::step"].reshape(()).clone(),
                        "exp_avg": opt[f"{n}::exp_avg"].to(p),
                        "exp_avg_sq": opt[f"{n}::exp_avg_sq"].to(p),
                    }
        s = doc["state"]
        self.state = TrainState(int(s["step"]), int(s["stage"]), [float(v) for v in s["train_losses"]],
                                [(int(a), float(b)) for a, b in s["val_losses"]], float(s["seconds"]))

    def export(self, out_dir: str | Path) -> Path:
        """Control (+ LoRA) weights in the documented ``spatia-weights`` format (``SpatiaGenerator.from_pretrained``)."""
        return save_spatia_weights(self.model, out_dir, adapter_name=ADAPTER)


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if (path / CHECKPOINT_STATE).is_file():
        return path
    if (path / "latest").is_file():
        return path / (path / "latest").read_text().strip()
    raise NotFoundError(f"no training checkpoint at {path} (expected {CHECKPOINT_STATE} or a 'latest' pointer)")


# ----------------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------------


def plot_losses(state: TrainState, path: str | Path, title: str = "Spatia training") -> Path:
    """Loss curve PNG: per-step training loss (faint), its running mean, validation losses (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if state.train_losses:
        steps = np.arange(1, len(state.train_losses) + 1)
        losses = np.asarray(state.train_losses)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train (per step)")
        win = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(win) / win, mode="valid")
        ax.plot(steps[win - 1:], smooth, color="tab:blue", lw=1.5, label=f"train (mean of {win})")
    if state.val_losses:
        vs, vl = zip(*state.val_losses)
        ax.plot(vs, vl, "o-", color="tab:red", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def steps_per_second(state: TrainState) -> float:
    return len(state.train_losses) / state.seconds if state.seconds > 0 else math.nan


__all__ = ["TrainConfig", "TrainState", "Trainer", "Batch", "NoiseDraw", "collate", "draw_noise",
           "flow_matching_loss", "reference_flow_matching_loss", "prepare_stage", "trained_names", "plot_losses", "resolve_checkpoint",
           "steps_per_second"]
