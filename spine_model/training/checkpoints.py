"""Checkpoints (weights plus the config that rebuilds the model) and the full training state a run
resumes from (optimiser, scheduler, random states, history), each written atomically."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from spine_model.core.catalog import checkpoint_files
from spine_model.core.config import TrainConfig
from spine_model.core.files import atomic_write
from spine_model.families import get_family
from spine_model.training.history import EpochStats, FitResult


def _rng_states() -> dict:
    """Every random state an epoch draws from (torch, CUDA, NumPy, Python), as plain tensors and ints."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached), "kind": kind},
        "python": random.getstate(),
    }  # fmt: skip


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _generators(loaders: list[DataLoader]) -> list[torch.Generator]:
    """The loaders' own generators (shuffle order, worker seeds): random states beside the global ones."""
    return [loader.generator for loader in loaders if loader.generator is not None]


def save_training_state(
    path: Path, model, optimizer, scheduler, config: TrainConfig, result: FitResult, loaders: list[DataLoader]
) -> None:
    """Everything to go on from the next epoch, written atomically: weights, optimiser, scheduler,
    epoch, RNG states (the loaders' too), best epoch and score, history. (bf16 autocast needs no
    AMP grad scaler.)"""
    payload = {
        "model_family": config.model_family,
        "config": config.model_dump(),
        "epoch": result.history[-1].epoch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "grad_scaler": None,
        "rng": _rng_states(),
        "loader_rng": [generator.get_state() for generator in _generators(loaders)],
        "best_epoch": result.best_epoch,
        "best_val_loss": result.best_val_loss,
        "history": [asdict(stats) for stats in result.history],
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_training_state(
    path: Path, model, optimizer, scheduler, config: TrainConfig, loaders: list[DataLoader]
) -> FitResult:
    """Restore what `save_training_state` wrote into model, optimiser, scheduler and the RNGs; the
    history so far. A state of another model family or other training settings is an error."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = TrainConfig(**payload["config"])
    settings = ("model_family", "backbone", "batch_size", "lr", "seed", "image_size", "crop_size", "crop_slices")
    differing = [key for key in settings if getattr(saved, key) != getattr(config, key)]
    if differing:
        raise ValueError(f"{path} was written with other settings ({', '.join(differing)}): cannot resume from it")
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    _set_rng_states(payload["rng"])
    for generator, state in zip(_generators(loaders), payload["loader_rng"], strict=True):
        generator.set_state(state)
    history = [EpochStats(**stats) for stats in payload["history"]]
    return FitResult(history, payload["best_epoch"], payload["best_val_loss"])


def saved_epoch(checkpoint_dir: str | Path) -> int:
    """The last epoch whose training state `fit` saved in `checkpoint_dir` (0: none). Memory-mapped:
    the weights and optimiser state are not read for it."""
    path = checkpoint_files(checkpoint_dir).state
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def save_checkpoint(path: Path, model: nn.Module, config: TrainConfig, epoch: int, val_loss: float) -> None:
    """A self-describing checkpoint: weights plus the config (family included) that rebuilds the model."""
    payload = {
        "model_family": config.model_family,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.model_dump(),
        "epoch": epoch,
        "val_loss": val_loss,
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Rebuild a model of any family from a checkpoint written by `save_checkpoint`."""
    payload = torch.load(path, map_location=device, weights_only=True)
    config = TrainConfig(**payload["config"])
    model = get_family(config.model_family).create_model(config, pretrained=False)
    model.load_state_dict(payload["state_dict"])
    return model, config
