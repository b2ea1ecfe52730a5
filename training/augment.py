"""Training-time ECG augmentation on (B, 12, L) batches, seeded per step so a resumed run repeats it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Probabilities and ranges of each augmentation (all applied per sample)."""

    # Chance that a sample is randomly cropped.
    crop_prob: float = 0.5
    # Shortest crop as a fraction of the window (0.5 = at least 5 s of a 10 s record).
    crop_min: float = 0.5
    # What fills the window after a crop: "pad" (zeros at a random offset, keeps the heart rate) or
    # "resize" (stretch back to full length, changes the apparent rate — bad for rhythm classes).
    crop_mode: str = "pad"
    # Chance that a sample's amplitude is scaled.
    scale_prob: float = 0.5
    # Amplitude factor range (uniform).
    scale_range: tuple[float, float] = (0.8, 1.2)
    # Chance that Gaussian noise is added.
    noise_prob: float = 0.5
    # Noise standard deviation relative to the sample's own standard deviation.
    noise_std: float = 0.05
    # Chance that each lead is zeroed independently (at least one lead always survives).
    lead_drop_prob: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AugmentConfig":
        data = dict(data)
        if "scale_range" in data:
            data["scale_range"] = tuple(data["scale_range"])
        return cls(**data)

    @classmethod
    def off(cls) -> "AugmentConfig":
        return cls(crop_prob=0.0, scale_prob=0.0, noise_prob=0.0, lead_drop_prob=0.0)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Return an augmented copy of x (B, C, L); ``gen`` (a CPU generator) makes it reproducible."""
    b, c, length = x.shape
    dev = x.device
    out = x.clone()

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(dev)

    if cfg.crop_prob > 0:
        do = rand(b) < cfg.crop_prob
        frac = cfg.crop_min + (1.0 - cfg.crop_min) * rand(b)
        starts, offs = rand(b), rand(b)
        for i in torch.nonzero(do).flatten().tolist():
            n = max(2, int(round(float(frac[i]) * length)))
            s = int(float(starts[i]) * (length - n + 1))
            piece = out[i, :, s : s + n]
            if cfg.crop_mode == "resize":
                out[i] = F.interpolate(piece[None], size=length, mode="linear", align_corners=False)[0]
            else:
                o = int(float(offs[i]) * (length - n + 1))
                filled = torch.zeros_like(out[i])
                filled[:, o : o + n] = piece
                out[i] = filled
    if cfg.scale_prob > 0:
        lo, hi = cfg.scale_range
        factor = lo + (hi - lo) * rand(b)
        factor = torch.where(rand(b) < cfg.scale_prob, factor, torch.ones_like(factor))
        out = out * factor[:, None, None]
    if cfg.noise_prob > 0 and cfg.noise_std > 0:
        sd = out.std(dim=(1, 2), keepdim=True)
        noise = torch.randn(b, c, length, generator=gen).to(dev) * cfg.noise_std * sd
        out = out + noise * (rand(b) < cfg.noise_prob)[:, None, None]
    if cfg.lead_drop_prob > 0:
        keep = rand(b, c) >= cfg.lead_drop_prob
        keep[keep.sum(1) == 0, 0] = True
        out = out * keep[:, :, None]
    return out


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, rank): resuming at any step repeats the run."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 9_973 + rank * 7_919) % (2**63 - 1))
    return g
