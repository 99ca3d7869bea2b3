"""torchvision backbones for every family: one factory, one place for pretrained weights.

Weights load through torchvision's weights API from the torch hub cache ($TORCH_HOME); offline
machines without the file get a message that says which file to put where. A first conv with
another channel count than RGB is adapted as timm's `adapt_input_conv` does.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from spine_model.core.config import classification_models


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights are neither cached nor downloadable; the message says how to provide them."""


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
        f'machine with internet, `python -c "import torchvision; torchvision.models.get_model('
        f"'{backbone}', weights='DEFAULT')\"` downloads it into $TORCH_HOME/hub/checkpoints, or fetch "
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


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB first-conv weights for `in_channels` inputs, as timm does.

    One channel: the RGB filters summed (a grey image is three equal channels). More: the RGB
    filters repeated over the channels and scaled by 3 / in_channels, so that the response to a
    grey stack keeps its pretrained magnitude.
    """
    if in_channels == 3:
        return weight.clone()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)


def _first(model: nn.Module, kind: type[nn.Module], last: bool = False, **attrs) -> tuple[str, nn.Module]:
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, kind) and all(getattr(module, k) == v for k, v in attrs.items())
    ]
    if not found:
        raise ValueError(f"{type(model).__name__} has no {kind.__name__} {attrs or ''}: not usable as a backbone")
    return found[-1] if last else found[0]


def create_backbone(
    name: str, in_channels: int, pretrained: bool = False, allow_download: bool = True
) -> tuple[nn.Module, int]:
    """A torchvision classification model as a feature extractor: (module, feature size).

    The first RGB conv takes `in_channels` (pretrained filters adapted), the last Linear layer
    (the ImageNet classifier) is removed, so the module maps (B, in_channels, H, W) -> (B, features).
    """
    if name not in classification_models():
        raise ValueError(f"unknown backbone {name!r}: use a torchvision classification model, e.g. resnet18")
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        model.load_state_dict(load_pretrained_state_dict(name, allow_download))
    conv_name, conv = _first(model, nn.Conv2d, in_channels=3)
    adapted = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, conv.bias is not None, conv.padding_mode,
    )  # fmt: skip
    with torch.no_grad():
        adapted.weight.copy_(adapt_input_conv(conv.weight, in_channels))
        if conv.bias is not None:
            adapted.bias.copy_(conv.bias)
    model.set_submodule(conv_name, adapted)
    classifier_name, classifier = _first(model, nn.Linear, last=True)
    model.set_submodule(classifier_name, nn.Identity())
    return model, classifier.in_features
