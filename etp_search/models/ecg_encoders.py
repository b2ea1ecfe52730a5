"""1-D ResNet ECG encoders built by name through one registry (timm's register_model/create_model habit)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from etp_search.errors import ModelError


class EcgEncoder(nn.Module):
    """What a registered builder returns: a module (B, leads, L) -> (B, out_dim) that sets ``out_dim``."""

    out_dim: int  # pooled feature width; EtpModel sizes its projection head from it


_REGISTRY: dict[str, Callable[..., EcgEncoder]] = {}


def register_ecg_encoder(fn: Callable[..., EcgEncoder]) -> Callable[..., EcgEncoder]:
    """Register a builder under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_ecg_encoders() -> list[str]:
    return sorted(_REGISTRY)


def create_ecg_encoder(name: str, **kwargs: object) -> EcgEncoder:
    """Build a registered ECG encoder; the module has ``.out_dim`` (pooled feature width).

    Raises:
        ModelError: unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise ModelError(f"unknown ECG encoder {name!r}; choose one of: {', '.join(list_ecg_encoders())}")
    return _REGISTRY[name](**kwargs)


class BasicBlock1d(nn.Module):
    """ResNet basic block with 1-D convolutions (two k-wide convs + identity/1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(cin, cout, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, kernel, stride=1, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv1d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm1d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act(x + shortcut)


class ResNet1d(EcgEncoder):
    """1-D ResNet over (B, leads, L); global average pooling makes it length-agnostic (100 or 500 Hz).

    Args:
        layers: Blocks per stage ([2, 2, 2, 2] = ResNet-18).
        widths: Channels per stage.
        kernel: Width of every block convolution (the ETP 1-D ResNet uses 7).
        in_channels: Input leads.
        stem_kernel: Width of the stride-2 stem convolution.
        drop_rate: Dropout on the pooled feature.
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int],
        kernel: int = 7,
        in_channels: int = 12,
        stem_kernel: int = 15,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError("layers and widths need one entry per stage")
        self.stem = nn.Sequential(
            nn.Conv1d(in_channels, widths[0], stem_kernel, stride=2, padding=stem_kernel // 2, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool1d(3, stride=2, padding=1),
        )
        stages = []
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock1d(cin, w, stride=1 if i == 0 else 2, kernel=kernel)]
            blocks += [BasicBlock1d(w, w, stride=1, kernel=kernel) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.out_dim = widths[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch so every block starts as identity (Goyal et al.
        # 2017, timm's zero_init_last): trains faster from scratch at small batch sizes.
        for m in self.modules():
            if isinstance(m, BasicBlock1d):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, out_dim, L') feature map before pooling."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pool(self.forward_features(x)).flatten(1))


@register_ecg_encoder
def resnet1d18(in_channels: int = 12, drop_rate: float = 0.0) -> ResNet1d:
    """The ETP paper's 1-D ResNet-18: BasicBlock [2,2,2,2], widths 64-128-256-512, kernel 7 (~8.7M)."""
    return ResNet1d([2, 2, 2, 2], [64, 128, 256, 512], kernel=7, in_channels=in_channels, drop_rate=drop_rate)


@register_ecg_encoder
def resnet1d_small(in_channels: int = 12, drop_rate: float = 0.0) -> ResNet1d:
    """A CPU-friendly ResNet-18 at half width: widths 32-64-128-256, kernel 7 (~2.2M params)."""
    return ResNet1d([2, 2, 2, 2], [32, 64, 128, 256], kernel=7, in_channels=in_channels, drop_rate=drop_rate)


@register_ecg_encoder
def test_tiny(in_channels: int = 12, drop_rate: float = 0.0) -> ResNet1d:
    """A few thousand parameters, for tests only (timm's test_resnet habit)."""
    return ResNet1d([1, 1], [8, 16], kernel=3, in_channels=in_channels, stem_kernel=7, drop_rate=drop_rate)
