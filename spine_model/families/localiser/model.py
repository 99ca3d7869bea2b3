"""LocaliserNet: a ResNet trunk and a small feature pyramid -> one heatmap per kind of point, at stride 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from spine_model.core.constants import CONDITIONS, LEVELS, SPINAL_CONDITION
from spine_model.families.backbones import load_pretrained_state_dict

STRIDE = 4  # heatmap cells per input pixel: one cell covers 4 x 4 pixels


def point_channels() -> list[tuple[str, str | None]]:
    """(condition, level) of each heatmap channel; level None: any level (axial points).

    Sagittal points have a channel per level, since one series shows all levels; an axial slice
    shows one level, so its left and right points share a channel each across levels.
    """
    sagittal = [(c, lv) for c in CONDITIONS if "subarticular" not in c for lv in LEVELS]
    return [*sagittal, *((c, None) for c in CONDITIONS if "subarticular" in c)]


CHANNELS = point_channels()
CHANNEL_OF = {key: index for index, key in enumerate(CHANNELS)}
SPINAL_CHANNELS = [CHANNEL_OF[(SPINAL_CONDITION, lv)] for lv in LEVELS]


def channel(condition: str, level: str) -> int:
    """The heatmap channel of a point."""
    return CHANNEL_OF.get((condition, level), CHANNEL_OF.get((condition, None), -1))


def _out_channels(layer: nn.Module) -> int:
    return [m for m in layer.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class LocaliserNet(nn.Module):
    """Heatmap logits (B, len(CHANNELS), S / 4, S / 4) of slices (B, 3, S, S) at positions (B,).

    Each input is a slice with its two neighbours as the RGB channels, so ImageNet filters apply as
    they are. Features of layer1-3 are merged top-down (a feature pyramid) back to stride 4. A
    slice's relative position in its series (0 first, 1 last) adds a learned bias per channel: left
    and right foramina look alike and differ only in where their slices lie.
    """

    def __init__(self, backbone: str = "resnet18", pretrained: bool = False, allow_download: bool = True) -> None:
        super().__init__()
        trunk = torchvision.models.get_model(backbone, weights=None)
        if pretrained:
            trunk.load_state_dict(load_pretrained_state_dict(backbone, allow_download))
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        width = 128
        self.lateral = nn.ModuleList(
            nn.Conv2d(_out_channels(layer), width, 1) for layer in (trunk.layer1, trunk.layer2, trunk.layer3)
        )
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.head = nn.Conv2d(width, len(CHANNELS), 1)
        self.position_bias = nn.Sequential(nn.Linear(1, 32), nn.ReLU(inplace=True), nn.Linear(32, len(CHANNELS)))

    def forward(self, slices: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        f1 = self.layer1(self.stem(slices))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        merged = self.lateral[2](f3)
        merged = F.interpolate(merged, size=f2.shape[-2:], mode="nearest") + self.lateral[1](f2)
        merged = F.interpolate(merged, size=f1.shape[-2:], mode="nearest") + self.lateral[0](f1)
        bias = self.position_bias(position.reshape(-1, 1).to(merged.dtype))
        return self.head(self.smooth(merged)) + bias[:, :, None, None]
