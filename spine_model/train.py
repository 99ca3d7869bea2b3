"""The training loop: one readable function, with AMP, clipping, scheduling and checkpoints in it."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from spine_model.config import TrainConfig
from spine_model.constants import MISSING_LABEL
from spine_model.dataset import SpineDataset
from spine_model.image_store import ImageStore
from spine_model.model import SpineNet, create_model
from spine_model.split import StudySplit

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = float("inf")

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(stats) for stats in self.history])


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    return device


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted cross-entropy summed over labelled cells, and the sum of their weights.

    logits (B, 5, 5, 3), targets (B, 25) with -1 for missing labels, which count nowhere. The
    mean is sum / weight; returning both lets epochs average exactly across batches.
    """
    flat_targets = targets.reshape(-1)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        flat_targets,
        weight=class_weights,
        ignore_index=MISSING_LABEL,
        reduction="sum",
    )
    labelled = flat_targets != MISSING_LABEL
    weight_sum = class_weights[flat_targets[labelled]].sum()
    return loss_sum, weight_sum


def make_loader(dataset: Dataset, config: TrainConfig, shuffle: bool, device: torch.device) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
        generator=generator,
    )


def run_epoch(
    model: SpineNet,
    loader: DataLoader,
    device: torch.device,
    class_weights: torch.Tensor,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "",
    progress: bool = True,
) -> tuple[float, float]:
    """One pass over `loader`; trains when given an optimizer. Returns (loss, accuracy) over labelled cells."""
    training = optimizer is not None
    model.train(training)
    loss_total = weight_total = 0.0
    correct = labelled = 0
    use_amp = config.amp and device.type == "cuda"
    with torch.set_grad_enabled(training):
        for image, coords, targets in tqdm(loader, desc=desc, leave=False, disable=not progress):
            image, coords = image.to(device, non_blocking=True), coords.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(image, coords)
            loss_sum, weight_sum = masked_cross_entropy(logits, targets, class_weights)
            if training and weight_sum > 0:
                optimizer.zero_grad(set_to_none=True)
                (loss_sum / weight_sum).backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            mask = targets != MISSING_LABEL
            correct += int((logits.argmax(-1).reshape_as(targets) == targets)[mask].sum())
            labelled += int(mask.sum())
            loss_total += float(loss_sum.detach())
            weight_total += float(weight_sum)
    if labelled == 0:
        raise ValueError(f"{desc or 'epoch'}: no labelled cells in {len(loader.dataset)} rows")
    return loss_total / weight_total, correct / labelled


def fit(
    model: SpineNet,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train `model` for `config.epochs`; keep (and save) the lowest-val-loss weights."""
    device = resolve_device(config.device)
    model.to(device)
    class_weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=config.lr_patience, factor=config.lr_factor
    )
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    result = FitResult()
    best_state = None
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = run_epoch(
            model, train_loader, device, class_weights, config, optimizer, f"epoch {epoch} train", progress
        )
        val_loss, val_accuracy = run_epoch(
            model, val_loader, device, class_weights, config, None, f"epoch {epoch} val", progress
        )
        scheduler.step(val_loss)
        stats = EpochStats(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, time.perf_counter() - started)
        result.history.append(stats)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2g | %.1fs",
            epoch, config.epochs, train_loss, train_accuracy, val_loss, val_accuracy, lr, stats.seconds,
        )  # fmt: skip
        if val_loss < result.best_val_loss:
            result.best_epoch, result.best_val_loss = epoch, val_loss
            best_state = copy.deepcopy(model.state_dict())
            if checkpoint_dir is not None:
                save_checkpoint(checkpoint_dir / "best.pt", model, config, epoch, val_loss)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir / "last.pt", model, config, epoch, val_loss)
        if on_epoch_end is not None:
            on_epoch_end(stats)
    if config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return result


def save_checkpoint(path: Path, model: SpineNet, config: TrainConfig, epoch: int, val_loss: float) -> None:
    """A self-describing checkpoint: weights plus the config that rebuilds the model."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": config.model_dump(), "epoch": epoch, "val_loss": val_loss}, path)


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[SpineNet, TrainConfig]:
    """Rebuild a model from a checkpoint written by `save_checkpoint`."""
    payload = torch.load(path, map_location=device, weights_only=True)
    config = TrainConfig(**payload["config"])
    model = create_model(config.backbone, pretrained=False, image_size=config.image_size)
    model.load_state_dict(payload["state_dict"])
    return model, config


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def build_loaders(
    table: pd.DataFrame, split: StudySplit, store: ImageStore, config: TrainConfig
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled) and validation loaders over the long table's rows of each split."""
    device = resolve_device(config.device)
    train_rows = table[table["study_id"].isin(split.train_study_ids)]
    val_rows = table[table["study_id"].isin(split.val_study_ids)]
    if train_rows.empty or val_rows.empty:
        raise ValueError(f"empty split: {len(train_rows)} train rows, {len(val_rows)} validation rows")
    return (
        make_loader(SpineDataset(train_rows, store, config.image_size, config.augment), config, True, device),
        make_loader(SpineDataset(val_rows, store, config.image_size), config, False, device),
    )


def train_spinenet(
    table: pd.DataFrame,
    split: StudySplit,
    store: ImageStore,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    allow_download: bool = True,
) -> tuple[SpineNet, FitResult]:
    """Build SpineNet from `config` and fit it on the split's rows; returns the model and history."""
    seed_everything(config.seed)
    model = create_model(config.backbone, config.pretrained, config.image_size, allow_download)
    train_loader, val_loader = build_loaders(table, split, store, config)
    log.info(
        "training %s (%s) on %s: %d train rows, %d val rows",
        type(model).__name__, config.backbone, resolve_device(config.device),
        len(train_loader.dataset), len(val_loader.dataset),
    )  # fmt: skip
    result = fit(model, train_loader, val_loader, config, checkpoint_dir, on_epoch_end, progress)
    return model, result
