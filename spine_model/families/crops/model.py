"""CropNet: a torchvision backbone over k adjacent slices, a condition x level embedding, 3 logits."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from spine_model.core.constants import CONDITIONS, LEVELS, SEVERITIES
from spine_model.families.backbones import create_backbone

N_CELLS = len(CONDITIONS) * len(LEVELS)


class CropNet(nn.Module):
    """Severity logits (B, 3) of a crop (B, k, C, C) at cell (B,) = condition * 5 + level.

    pooling 'channels': the k slices are the input channels of one 2-D backbone (first conv adapted
    from the RGB filters). 'attention': each slice goes through the backbone alone (one channel) and
    the k feature vectors are pooled by learned attention weights (attention-MIL), as several top
    solutions did over slices.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        slices: int = 5,
        pooling: Literal["attention", "channels"] = "attention",
        pretrained: bool = False,
        allow_download: bool = True,
        embedding_size: int = 32,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.encoder, features = create_backbone(
            backbone, slices if pooling == "channels" else 1, pretrained, allow_download
        )
        if pooling == "attention":
            self.attention = nn.Sequential(nn.Linear(features, 128), nn.Tanh(), nn.Linear(128, 1))
        self.cell_embedding = nn.Embedding(N_CELLS, embedding_size)
        self.head = nn.Sequential(
            nn.Linear(features + embedding_size, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.2),
            nn.Linear(256, len(SEVERITIES)),
        )

    def forward(self, crop: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        if self.pooling == "channels":
            features = self.encoder(crop)
        else:
            batch, slices = crop.shape[0], crop.shape[1]
            per_slice = self.encoder(crop.reshape(batch * slices, 1, crop.shape[2], crop.shape[3]))
            per_slice = per_slice.reshape(batch, slices, -1)
            weights = torch.softmax(self.attention(per_slice), dim=1)
            features = (weights * per_slice).sum(dim=1)
        return self.head(torch.cat([features, self.cell_embedding(cell)], dim=1))
