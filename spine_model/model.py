"""SpineNet and the one factory that builds it, with pretrained weights handled in one place."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from spine_model.constants import CONDITIONS, LEVELS, SEVERITIES

OUTPUT_SHAPE = (len(CONDITIONS), len(LEVELS), len(SEVERITIES))


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights are neither cached nor downloadable; the message says how to provide them."""


class SpineNet(nn.Module):
    """The seed's model: a ResNet trunk over (image, coordinate map), 5x5x3 severity logits.

    The two input coordinates (x, y in [0, 1]) pass through Linear(2, S*S) into an S x S map that
    becomes conv1's second channel. After the trunk: conv -> 256 + BN + ReLU, global average pool,
    Linear 256 -> 128 + BN + ReLU, Linear 128 -> 75 viewed as (5 conditions, 5 levels, 3 classes).
    """

    def __init__(self, backbone: str = "resnet18", image_size: int = 224) -> None:
        super().__init__()
        trunk = torchvision.models.get_model(backbone, weights=None)
        trunk.conv1 = nn.Conv2d(2, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.image_size = image_size
        self.coord_map = nn.Linear(2, image_size * image_size)
        self.trunk = nn.Sequential(
            trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool,
            trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4,
        )  # fmt: skip
        self.neck = nn.Sequential(
            nn.Conv2d(trunk.fc.in_features, 256, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(256, 128, bias=False),
            nn.BatchNorm1d(128),
            nn.ReLU(inplace=True),
            nn.Linear(128, OUTPUT_SHAPE[0] * OUTPUT_SHAPE[1] * OUTPUT_SHAPE[2]),
        )

    def forward(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        coord_channel = self.coord_map(coords).view(-1, 1, self.image_size, self.image_size)
        features = self.trunk(torch.cat([image, coord_channel.to(image.dtype)], dim=1))
        return self.head(self.neck(features)).view(-1, *OUTPUT_SHAPE)


def adapt_input_conv(pretrained_weight: torch.Tensor, in_channels: int = 2) -> torch.Tensor:
    """conv1 weights for (image, coordinate) input from RGB ones.

    The image channel gets the RGB filters summed (a grey image is three equal channels, as
    timm's adapt_input_conv does for one channel); the coordinate channel starts at zero, so
    the pretrained trunk initially sees exactly what it was trained on.
    """
    out_channels, _, kh, kw = pretrained_weight.shape
    weight = torch.zeros(out_channels, in_channels, kh, kw, dtype=pretrained_weight.dtype)
    weight[:, 0] = pretrained_weight.sum(dim=1)
    return weight


def pretrained_weights_file(backbone: str) -> Path:
    """Where torch.hub caches the ImageNet weights of `backbone` (under TORCH_HOME)."""
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_pretrained_state_dict(backbone: str, allow_download: bool = True) -> dict[str, torch.Tensor]:
    """ImageNet state_dict of the torchvision `backbone`, from the torch.hub cache or downloaded."""
    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    cached = pretrained_weights_file(backbone)
    how_to = (
        f"Put {cached.name} into {cached.parent} (set TORCH_HOME to use another cache folder): on a "
        f'machine with internet, `python -c "import torchvision; torchvision.models.{backbone}'
        f"(weights='DEFAULT')\"` downloads it into $TORCH_HOME/hub/checkpoints, or fetch "
        f"{weights.url}. Or train from scratch with --no-pretrained."
    )
    if not cached.is_file() and not allow_download:
        raise PretrainedWeightsUnavailable(f"ImageNet weights for {backbone} are not cached. {how_to}")
    try:
        return weights.get_state_dict(progress=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise PretrainedWeightsUnavailable(
            f"ImageNet weights for {backbone} could not be loaded ({error}). {how_to}"
        ) from error


def create_model(
    backbone: str = "resnet18",
    pretrained: bool = False,
    image_size: int = 224,
    allow_download: bool = True,
) -> SpineNet:
    """Build SpineNet; with `pretrained`, the trunk starts from torchvision's ImageNet weights."""
    model = SpineNet(backbone=backbone, image_size=image_size)
    if pretrained:
        state = load_pretrained_state_dict(backbone, allow_download=allow_download)
        state["conv1.weight"] = adapt_input_conv(state["conv1.weight"], in_channels=2)
        trunk_keys = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
        names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
        trunk_state = {
            f"{names[key.split('.', 1)[0]]}.{key.split('.', 1)[1]}": value
            for key, value in state.items()
            if key.startswith(trunk_keys)
        }
        model.trunk.load_state_dict(trunk_state, strict=True)
    return model
