"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), v0.1.

The network of the ``lpips`` package, written out here so that no extra package is needed: an ImageNet backbone
(AlexNet or VGG16, layer indices as ``torchvision.models.*.features`` so a torchvision state dict loads as is),
unit-normalised activations at five ReLU taps, squared differences weighted per channel by 1x1 convolutions
(the learned "linear heads", keys ``lin{k}.model.1.weight`` as in the package's ``weights/v0.1/{alex,vgg}.pth``),
averaged over space and summed over the taps.

Weights are never downloaded: ``load_lpips`` takes local files only. Without them the evaluation reports LPIPS as
unavailable instead of a number (see ``model.eval.metrics.LpipsMetric``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spatia.world.errors import InvalidInputError, NotFoundError

# lpips ScalingLayer: inputs in [-1, 1] are standardised with these ImageNet-derived constants
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)

# (layers of torchvision's ``features``, ReLU taps after which LPIPS reads the activations, tap channels)
_ALEX = (
    [("conv", 3, 64, 11, 4, 2), ("relu",), ("pool",), ("conv", 64, 192, 5, 1, 2), ("relu",), ("pool",),
     ("conv", 192, 384, 3, 1, 1), ("relu",), ("conv", 384, 256, 3, 1, 1), ("relu",), ("conv", 256, 256, 3, 1, 1),
     ("relu",)],
    (1, 4, 7, 9, 11),
    (64, 192, 384, 256, 256),
)
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG = (
    [],  # built below from the config, like torchvision's make_layers
    (3, 8, 15, 22, 29),
    (64, 128, 256, 512, 512),
)
NETS = ("alex", "vgg")


def _layers(net: str) -> list[nn.Module]:
    if net == "alex":
        out: list[nn.Module] = []
        for spec in _ALEX[0]:
            if spec[0] == "conv":
                _, cin, cout, k, s, p = spec
                out.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
            elif spec[0] == "relu":
                out.append(nn.ReLU(inplace=False))
            else:
                out.append(nn.MaxPool2d(kernel_size=3, stride=2))
        return out
    out, cin = [], 3
    for v in _VGG16_CFG:
        if v == "M":
            out.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            out += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return out


class NetLinLayer(nn.Module):
    """A 1x1 convolution to one channel, no bias; ``model.1`` so the lpips package's keys load unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(p=0.0), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPSNet(nn.Module):
    """LPIPS v0.1 with an AlexNet or VGG16 backbone. ``forward(a, b)`` -> ``[B]`` distances (lower = closer)."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise InvalidInputError(f"LPIPS backbone must be one of {NETS}, got {net!r}")
        self.net = net
        self.features = nn.Sequential(*_layers(net))
        self.taps = (_ALEX if net == "alex" else _VGG)[1]
        channels = (_ALEX if net == "alex" else _VGG)[2]
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", NetLinLayer(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def tap_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone activations at the five taps for ``x`` ``[B, 3, H, W]`` in [-1, 1]."""
        h = (x - self.shift) / self.scale
        feats = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                feats.append(h)
            if i >= self.taps[-1]:
                break
        return feats

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] each, in [-1, 1]
        total = 0.0
        for k, (fa, fb) in enumerate(zip(self.tap_features(a), self.tap_features(b))):
            na = fa / (torch.sqrt((fa * fa).sum(dim=1, keepdim=True)) + 1e-10)  # unit length along channels
            nb = fb / (torch.sqrt((fb * fb).sum(dim=1, keepdim=True)) + 1e-10)
            d = getattr(self, f"lin{k}")((na - nb) ** 2)  # [B, 1, h, w]
            total = total + d.mean(dim=(2, 3))  # spatial average
        return total[:, 0]

    @torch.no_grad()
    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS between two uint8 ``[H, W, 3]`` RGB images."""
        ta, tb = to_lpips_input(a), to_lpips_input(b)
        if ta.shape != tb.shape:
            raise InvalidInputError(f"images differ in shape: {a.shape} vs {b.shape}")
        device = next(self.parameters()).device
        return float(self(ta.to(device), tb.to(device))[0])


def to_lpips_input(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[1, 3, H, W]`` in [-1, 1] (the lpips package's ``im2tensor``)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InvalidInputError(f"LPIPS needs uint8 [H, W, 3] images, got {rgb.dtype} {list(rgb.shape)}")
    if min(rgb.shape[:2]) < 32:
        raise InvalidInputError(f"LPIPS needs images of at least 32x32 pixels, got {rgb.shape[1]}x{rgb.shape[0]}")
    return torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None].contiguous()


def load_lpips(paths: Sequence[str | Path], net: str = "alex", device: str = "cpu") -> LPIPSNet:
    """LPIPS from local state-dict files (``torch.load``): the backbone (torchvision ``features.*`` keys, e.g.
    ``alexnet-owt-7be5be79.pth``) and the linear heads (``lin*.model.1.weight``, the lpips package's
    ``weights/v0.1/alex.pth``), in one file or several. Every parameter must be found; extra keys
    (a torchvision ``classifier.*``) are ignored."""
    model = LPIPSNet(net)
    merged: dict[str, torch.Tensor] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise NotFoundError(f"LPIPS weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise InvalidInputError(f"{path} does not hold a state dict")
        merged.update({k.removeprefix("net."): v for k, v in state.items()})  # lpips' own pickles prefix "net."
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in merged]
    if missing:
        raise InvalidInputError(f"LPIPS ({net}) weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    bad = [k for k in wanted if tuple(merged[k].shape) != tuple(wanted[k].shape)]
    if bad:
        raise InvalidInputError(f"LPIPS ({net}) weights have wrong shapes for {bad[:3]}")
    model.load_state_dict({k: merged[k] for k in wanted})
    return model.eval().to(device)


def reference_lpips(state: dict[str, torch.Tensor], net: str, a: np.ndarray, b: np.ndarray) -> float:
    """Slow, plain LPIPS for tests: the backbone layer by layer with ``torch.nn.functional`` from the state dict,
    then the normalise / square / weigh / average / sum of the paper in float64 numpy, one tap at a time."""
    import torch.nn.functional as F

    layers = _layers(net)
    taps = (_ALEX if net == "alex" else _VGG)[1]

    def features(img: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(img.astype(np.float64) / 127.5 - 1.0).permute(2, 0, 1)[None]
        x = (x - torch.tensor(SHIFT, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
            SCALE, dtype=torch.float64).view(1, 3, 1, 1)
        out = []
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.Conv2d):
                w = state[f"features.{i}.weight"].double()
                bias = state[f"features.{i}.bias"].double()
                x = F.conv2d(x, w, bias, stride=layer.stride, padding=layer.padding)
            elif isinstance(layer, nn.ReLU):
                x = torch.clamp(x, min=0.0)
            else:
                x = F.max_pool2d(x, layer.kernel_size, layer.stride)
            if i in taps:
                out.append(x[0].numpy())  # [C, h, w]
            if i >= taps[-1]:
                break
        return out

    total = 0.0
    for k, (fa, fb) in enumerate(zip(features(a), features(b))):
        w = state[f"lin{k}.model.1.weight"].double().numpy()[0, :, 0, 0]  # [C]
        na = fa / (np.sqrt((fa**2).sum(axis=0, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(axis=0, keepdims=True)) + 1e-10)
        per_pixel = np.tensordot(w, (na - nb) ** 2, axes=(0, 0))  # [h, w]
        total += float(per_pixel.mean())
    return total
