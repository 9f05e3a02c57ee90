"""Checkpoint conversion: official Spatia (DiffSynth) names -> our modules, LoRA load / merge, and our own export.

Official names (``ZhaoJingjing713/Spatia`` ``wan/wan_video_vace.py``, ``wan/wan_video_dit.py``; DiffSynth v1.1.9):

* control checkpoint (``step-8500.safetensors``, loaded strictly into ``VaceWanModel``)::

      vace_patch_embedding.{weight,bias}            -> control_patch_embedding.*
      vace_blocks.0.before_proj.{weight,bias}       -> control_proj_in.*
      vace_blocks.{k}.after_proj.{weight,bias}      -> control_proj_out.{k}.*
      vace_blocks.{k}.<DiT block key>               -> control_blocks.{k}.<diffusers block key>

* DiT block keys (DiffSynth ``DiTBlock`` -> diffusers ``WanTransformerBlock``, the mapping of diffusers'
  ``convert_wan_transformer_to_diffusers``): ``self_attn``/``cross_attn`` -> ``attn1``/``attn2``; ``q,k,v,o`` ->
  ``to_q,to_k,to_v,to_out.0``; ``norm_q,norm_k`` unchanged; ``norm3`` (the affine cross-attention norm) -> ``norm2``;
  ``ffn.0``/``ffn.2`` -> ``ffn.net.0.proj``/``ffn.net.2``; ``modulation`` -> ``scale_shift_table``.

* LoRA (``lora_weights_10000.safetensors``; inference.py strips ``pipe.dit.``, DiffSynth's ``GeneralLoRALoader``
  then merges ``W += alpha * B @ A`` with alpha 1): ``[pipe.dit.|diffusion_model.]blocks.{i}.<layer>.lora_{A,B}
  [.default].weight``.

Our export format (``save_spatia_weights`` / ``load_spatia_weights``), a directory with:

* ``spatia_weights.json``: ``{"format": "spatia-weights", "version": 1, "transformer_config": {...},
  "files": {"control": "control.safetensors", "lora": "lora.safetensors" | null, "main": ... | null},
  "lora": {"rank": r, "alpha": a, "target_modules": [...]} | null}``
* ``control.safetensors``: every ``control_*`` tensor under our module names;
* ``lora.safetensors`` (optional): ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r] with
  module names of our main stream (``blocks.{i}.attn1.to_q``), applied as ``W + (alpha / r) * B @ A``;
* ``main.safetensors`` (optional): the main stream for a full fine-tune (normally the Wan2.2 weights are untouched).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from spatia.model.spatia.transformer import CONTROL_MODULE_PREFIXES, SpatiaTransformer3DModel
from spatia.world.errors import InvalidInputError, NotFoundError

FORMAT_NAME = "spatia-weights"
FORMAT_VERSION = 1
MANIFEST = "spatia_weights.json"

# DiffSynth DiTBlock sub-module -> diffusers WanTransformerBlock sub-module (parameter suffix kept).
DIT_BLOCK_MODULES: dict[str, str] = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
# DiffSynth WanModel top-level modules -> diffusers WanTransformer3DModel (for an official-format main checkpoint).
DIT_TOP_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}

_PARAM = r"(weight|bias)"


def convert_dit_block_key(key: str) -> str:
    """``self_attn.q.weight`` -> ``attn1.to_q.weight``; ``modulation`` -> ``scale_shift_table``."""
    if key == "modulation":
        return "scale_shift_table"
    module, _, param = key.rpartition(".")
    if module not in DIT_BLOCK_MODULES or param not in ("weight", "bias"):
        raise InvalidInputError(f"unknown DiffSynth DiT block key {key!r}")
    return f"{DIT_BLOCK_MODULES[module]}.{param}"


def _strip_prefix(key: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def convert_official_control(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official VACE-style control checkpoint -> ``control_*`` keys of ``SpatiaTransformer3DModel``."""
    out: dict[str, torch.Tensor] = {}
    for raw_key, value in state_dict.items():
        key = _strip_prefix(raw_key, ("pipe.vace.", "vace."))
        if m := re.fullmatch(rf"vace_patch_embedding\.{_PARAM}", key):
            new = f"control_patch_embedding.{m[1]}"
        elif m := re.fullmatch(rf"vace_blocks\.0\.before_proj\.{_PARAM}", key):
            new = f"control_proj_in.{m[1]}"
        elif m := re.fullmatch(rf"vace_blocks\.(\d+)\.after_proj\.{_PARAM}", key):
            new = f"control_proj_out.{m[1]}.{m[2]}"
        elif m := re.fullmatch(r"vace_blocks\.(\d+)\.(.+)", key):
            new = f"control_blocks.{m[1]}.{convert_dit_block_key(m[2])}"
        else:
            raise InvalidInputError(f"unexpected key {raw_key!r} in the official control checkpoint")
        out[new] = value
    return out


def convert_official_dit(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (DiffSynth / original Wan) DiT checkpoint -> our main-stream (= diffusers Wan) keys."""
    out: dict[str, torch.Tensor] = {}
    for raw_key, value in state_dict.items():
        key = _strip_prefix(raw_key, ("model.diffusion_model.", "diffusion_model.", "pipe.dit.", "dit."))
        if key == "head.modulation":
            new = "scale_shift_table"
        elif m := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            new = f"blocks.{m[1]}.{convert_dit_block_key(m[2])}"
        else:
            module, _, param = key.rpartition(".")
            if module not in DIT_TOP_MODULES or param not in ("weight", "bias"):
                raise InvalidInputError(f"unexpected key {raw_key!r} in the official DiT checkpoint")
            new = f"{DIT_TOP_MODULES[module]}.{param}"
        out[new] = value
    return out


def _strict_load_part(model: nn.Module, part: dict[str, torch.Tensor], expected_keys: set[str], what: str) -> None:
    missing = sorted(expected_keys - part.keys())
    unexpected = sorted(part.keys() - expected_keys)
    if missing or unexpected:
        raise InvalidInputError(f"{what} does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}"
                                f" ({len(missing)} missing, {len(unexpected)} unexpected)")
    current = model.state_dict()
    bad = [(k, tuple(v.shape), tuple(current[k].shape)) for k, v in part.items() if v.shape != current[k].shape]
    if bad:
        raise InvalidInputError(f"{what}: shape mismatch (key, file, model): {bad[:5]}")
    model.load_state_dict(part, strict=False)


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} not found")
    return load_file(str(path))


def load_official_control(model: SpatiaTransformer3DModel, source: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load the official control checkpoint into the control stream, strictly (no missing / unexpected keys)."""
    state = load_state_file(source) if isinstance(source, (str, Path)) else source
    part = convert_official_control(state)
    _strict_load_part(model, part, set(model.control_state_dict()), "official control checkpoint")


def load_official_dit(model: SpatiaTransformer3DModel, source: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load an official-format Wan DiT checkpoint into the main stream, strictly."""
    state = load_state_file(source) if isinstance(source, (str, Path)) else source
    _strict_load_part(model, convert_official_dit(state), set(model.main_state_dict()), "official DiT checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraWeights:
    """Low-rank deltas for named linear modules: ``W += scale * B @ A``; ``scale = alpha / rank``."""

    down: dict[str, torch.Tensor]  # module name -> A [rank, in_features]
    up: dict[str, torch.Tensor]  # module name -> B [out_features, rank]
    alpha: float

    def __post_init__(self) -> None:
        if self.down.keys() != self.up.keys() or not self.down:
            raise InvalidInputError("LoRA needs matching, non-empty lora_A / lora_B sets")
        ranks = {int(a.shape[0]) for a in self.down.values()}
        if len(ranks) != 1:
            raise InvalidInputError(f"LoRA modules must share one rank, got {sorted(ranks)}")
        for name in self.down:
            if self.up[name].shape[1] != self.down[name].shape[0]:
                raise InvalidInputError(f"LoRA {name}: B {tuple(self.up[name].shape)} does not match A {tuple(self.down[name].shape)}")

    @property
    def rank(self) -> int:
        return int(next(iter(self.down.values())).shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def modules(self) -> list[str]:
        return sorted(self.down)


def convert_official_lora(state_dict: Mapping[str, torch.Tensor]) -> LoraWeights:
    """Official / DiffSynth LoRA -> ``LoraWeights`` on our main-stream module names.

    Alpha is the rank (scale 1): DiffSynth's ``GeneralLoRALoader.load`` adds ``alpha * B @ A`` with alpha 1.0.
    """
    down: dict[str, torch.Tensor] = {}
    up: dict[str, torch.Tensor] = {}
    for raw_key, value in state_dict.items():
        key = _strip_prefix(raw_key, ("pipe.dit.", "diffusion_model.", "dit."))
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.lora_([AB])(?:\.default)?\.weight", key)
        if not m:
            raise InvalidInputError(f"unexpected key {raw_key!r} in the official LoRA")
        module = f"blocks.{m[1]}.{convert_dit_block_key(m[2] + '.weight').rpartition('.')[0]}"
        (down if m[3] == "A" else up)[module] = value
    if down.keys() != up.keys():
        raise InvalidInputError(f"LoRA has unpaired modules: {sorted(down.keys() ^ up.keys())[:5]}")
    weights = LoraWeights(down, up, alpha=1.0)
    return LoraWeights(down, up, alpha=float(weights.rank))


def _linear(model: nn.Module, name: str) -> nn.Linear:
    modules = dict(model.named_modules())
    if name not in modules:
        raise InvalidInputError(f"LoRA targets {name!r}, which the model does not have")
    module = modules[name]
    module = getattr(module, "base_layer", module)  # a peft-wrapped linear
    if not isinstance(module, nn.Linear):
        raise InvalidInputError(f"LoRA target {name!r} is a {type(module).__name__}, not a Linear")
    return module


@torch.no_grad()
def merge_lora(model: nn.Module, lora: LoraWeights, sign: float = 1.0) -> None:
    """Fold the LoRA into the weights (``sign=-1`` takes it out again, as the official ``unload_lora``)."""
    for name in lora.modules:
        linear = _linear(model, name)
        a, b = lora.down[name], lora.up[name]
        if (b.shape[0], a.shape[1]) != tuple(linear.weight.shape):
            raise InvalidInputError(f"LoRA {name}: delta {b.shape[0]}x{a.shape[1]} vs weight {tuple(linear.weight.shape)}")
        delta = (b.float().to(linear.weight.device) @ a.float().to(linear.weight.device)) * (lora.scale * sign)
        linear.weight.copy_((linear.weight.float() + delta).to(linear.weight.dtype))


def attach_lora(model: SpatiaTransformer3DModel, lora: LoraWeights, adapter_name: str = "spatia") -> None:
    """Attach the LoRA as a peft adapter (switchable with ``model.enable_adapters()`` / ``disable_adapters()``)."""
    from peft import LoraConfig

    for name in lora.modules:
        _linear(model, name)
        if name.startswith(CONTROL_MODULE_PREFIXES):
            raise InvalidInputError(f"LoRA must target the main blocks only, got {name!r}")
    pattern = "|".join(re.escape(n) for n in lora.modules)
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=f"^(?:{pattern})$", lora_dropout=0.0)
    model.add_adapter(config, adapter_name=adapter_name)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in lora.modules:
            layer = modules[name]
            layer.lora_A[adapter_name].weight.copy_(lora.down[name])
            layer.lora_B[adapter_name].weight.copy_(lora.up[name])
    model.set_adapter(adapter_name)


def main_lora_config(rank: int = 64, alpha: float | None = None):
    """peft config of the paper's stage 2: rank-64 LoRA on the main blocks' attention projections."""
    from peft import LoraConfig

    from spatia.model.spatia.transformer import main_lora_target_modules

    return LoraConfig(r=rank, lora_alpha=float(rank if alpha is None else alpha),
                      target_modules=main_lora_target_modules(), lora_dropout=0.0)


def extract_lora(model: nn.Module, adapter_name: str = "spatia") -> LoraWeights | None:
    """The peft adapter ``adapter_name`` of ``model`` as ``LoraWeights`` (None if it has none)."""
    down, up, alphas = {}, {}, set()
    for name, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter_name in lora_a:
            down[name] = lora_a[adapter_name].weight.detach().cpu().clone()
            up[name] = module.lora_B[adapter_name].weight.detach().cpu().clone()
            alphas.add(float(module.scaling[adapter_name]) * down[name].shape[0])
    if not down:
        return None
    if len(alphas) != 1:
        raise InvalidInputError(f"adapter {adapter_name!r} mixes LoRA scalings {sorted(alphas)}")
    return LoraWeights(down, up, alpha=alphas.pop())


# ----------------------------------------------------------------------------------------------------------------
# Our own format
# ----------------------------------------------------------------------------------------------------------------


def _config_dict(model: SpatiaTransformer3DModel) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}


def save_spatia_weights(model: SpatiaTransformer3DModel, out_dir: str | Path, adapter_name: str = "spatia",
                        include_main: bool = False) -> Path:
    """Write control (+ LoRA, + optionally main) weights in the documented format above; returns ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str | None] = {"control": "control.safetensors", "lora": None, "main": None}
    control = {k: v.detach().cpu().contiguous() for k, v in model.control_state_dict().items()}
    save_file(control, str(out / files["control"]), metadata={"format": FORMAT_NAME})
    lora = extract_lora(model, adapter_name)
    lora_meta = None
    if lora is not None:
        files["lora"] = "lora.safetensors"
        tensors = {f"{n}.lora_A.weight": lora.down[n].contiguous() for n in lora.modules}
        tensors.update({f"{n}.lora_B.weight": lora.up[n].contiguous() for n in lora.modules})
        save_file(tensors, str(out / files["lora"]), metadata={"format": FORMAT_NAME})
        lora_meta = {"rank": lora.rank, "alpha": lora.alpha, "target_modules": lora.modules}
    if include_main:
        files["main"] = "main.safetensors"
        main = {_base_name(k): v.detach().cpu().contiguous() for k, v in model.main_state_dict().items() if ".lora_" not in k}
        save_file(main, str(out / files["main"]), metadata={"format": FORMAT_NAME})
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "transformer_config": _config_dict(model),
                "files": files, "lora": lora_meta}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)
    return out


def _base_name(key: str) -> str:
    return key.replace(".base_layer.", ".")


def is_spatia_weights_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise NotFoundError(f"{manifest_path} not found (not a {FORMAT_NAME} directory)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
        raise InvalidInputError(f"{manifest_path}: unsupported format {manifest.get('format')!r} v{manifest.get('version')}")
    return manifest


def load_spatia_weights(model: SpatiaTransformer3DModel, weights_dir: str | Path, adapter_name: str = "spatia",
                        merge: bool = False) -> LoraWeights | None:
    """Load weights written by ``save_spatia_weights`` strictly; attach (or ``merge``) the LoRA. Returns the LoRA."""
    root = Path(weights_dir)
    manifest = read_manifest(root)
    saved = manifest["transformer_config"]
    ours = _config_dict(model)
    clash = {k: (saved[k], ours.get(k)) for k in saved if k in ours and saved[k] != ours[k]}
    if clash:
        raise InvalidInputError(f"{root}: saved for a different transformer config (saved, model): {clash}")
    files = manifest["files"]
    if files.get("main"):
        main = load_state_file(root / files["main"])
        _strict_load_part(model, main, {_base_name(k) for k in model.main_state_dict() if ".lora_" not in k}, "main weights")
    control = load_state_file(root / files["control"])
    _strict_load_part(model, control, set(model.control_state_dict()), "control weights")
    if not files.get("lora"):
        return None
    tensors = load_state_file(root / files["lora"])
    down = {k[: -len(".lora_A.weight")]: v for k, v in tensors.items() if k.endswith(".lora_A.weight")}
    up = {k[: -len(".lora_B.weight")]: v for k, v in tensors.items() if k.endswith(".lora_B.weight")}
    if len(down) + len(up) != len(tensors):
        raise InvalidInputError(f"{root / files['lora']}: keys other than <module>.lora_A/B.weight")
    lora = LoraWeights(down, up, alpha=float(manifest["lora"]["alpha"]))
    if merge:
        merge_lora(model, lora)
    else:
        attach_lora(model, lora, adapter_name)
    return lora
