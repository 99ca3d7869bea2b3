"""The device a run trains on, and batches moved and laid out for it."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def to_device(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [tensor.to(device, non_blocking=True) for tensor in inputs]


def channels_last(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Image batches (4-D) in NHWC memory order, which tensor-core (and oneDNN CPU) convolutions prefer."""
    return [tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor for tensor in inputs]
