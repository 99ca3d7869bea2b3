"""SpineNet, the seed notebook's model: a ResNet trunk over (image, coordinate map) -> 5 x 5 x 3 logits."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from spine_model.core.cells import CELLS_SHAPE
from spine_model.families.backbones import load_pretrained_state_dict


class SpineNet(nn.Module):
    """The two input coordinates (x, y in [0, 1]) pass through Linear(2, S*S) into an S x S map that
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
            nn.Linear(128, CELLS_SHAPE[0] * CELLS_SHAPE[1] * CELLS_SHAPE[2]),
        )

    def forward(self, image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        coord_channel = self.coord_map(coords).view(-1, 1, self.image_size, self.image_size)
        features = self.trunk(torch.cat([image, coord_channel.to(image.dtype)], dim=1))
        return self.head(self.neck(features)).view(-1, *CELLS_SHAPE)


def image_and_coordinate_conv(pretrained_weight: torch.Tensor) -> torch.Tensor:
    """conv1 weights for (image, coordinate) input from RGB ones.

    The image channel gets the RGB filters summed (a grey image is three equal channels, as
    timm's adapt_input_conv does for one channel); the coordinate channel starts at zero, so
    the pretrained trunk initially sees exactly what it was trained on.
    """
    out_channels, _, kh, kw = pretrained_weight.shape
    weight = torch.zeros(out_channels, 2, kh, kw, dtype=pretrained_weight.dtype)
    weight[:, 0] = pretrained_weight.sum(dim=1)
    return weight


def create_spinenet(
    backbone: str = "resnet18", pretrained: bool = False, image_size: int = 224, allow_download: bool = True
) -> SpineNet:
    """Build SpineNet; with `pretrained`, the trunk starts from torchvision's ImageNet weights."""
    model = SpineNet(backbone=backbone, image_size=image_size)
    if pretrained:
        state = load_pretrained_state_dict(backbone, allow_download=allow_download)
        state["conv1.weight"] = image_and_coordinate_conv(state["conv1.weight"])
        names = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
        trunk_state = {
            f"{names[key.split('.', 1)[0]]}.{key.split('.', 1)[1]}": value
            for key, value in state.items()
            if key.split(".", 1)[0] in names
        }
        model.trunk.load_state_dict(trunk_state, strict=True)
    return model
