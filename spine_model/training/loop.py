"""The training loop: one readable function, with AMP, clipping, scheduling and checkpoints in it.

It knows models only through their family (`spine_model.families`): the family builds the model
and the dataset, and computes the loss; batches are `(inputs, targets)` and the model is called
as `model(*inputs)`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from spine_model.core.catalog import CheckpointFiles, checkpoint_files
from spine_model.core.config import TrainConfig
from spine_model.core.split import StudySplit
from spine_model.data.volumes import VolumeReader
from spine_model.families import get_family
from spine_model.families.base import ModelFamily
from spine_model.training import distributed
from spine_model.training.checkpoints import load_training_state, save_checkpoint, save_training_state
from spine_model.training.devices import resolve_device
from spine_model.training.distributed import SINGLE, ShardSampler, World
from spine_model.training.history import EpochStats, FitResult
from spine_model.training.loaders import make_loader, model_batches

log = logging.getLogger(__name__)


def run_epoch(
    model: nn.Module,
    family: ModelFamily,
    loader: DataLoader,
    device: torch.device,
    class_weights: torch.Tensor,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer | None = None,
    desc: str = "",
    progress: bool = True,
) -> tuple[float, float]:
    """One pass over `loader`; trains when given an optimizer. Returns (loss, accuracy) over labelled targets
    (the family's `hits`: a classifier's argmax, a localiser's points found where labelled)."""
    training = optimizer is not None
    model.train(training)
    # Sums stay on the device: reading them every step would make the host wait for the GPU.
    loss_total, weight_total, correct, labelled = (torch.zeros((), device=device) for _ in range(4))
    use_amp = config.amp and device.type == "cuda"
    batches = model_batches(loader, family, config, device, training)
    with torch.set_grad_enabled(training):
        for inputs, targets in tqdm(batches, desc=desc, total=len(loader), leave=False, disable=not progress):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs = model(*inputs)
            loss_sum, weight_sum = family.loss(outputs, targets, class_weights)
            if training:
                optimizer.zero_grad(set_to_none=True)
                # A batch without labelled targets has a zero gradient. Adam still steps on its moments
                # then; skipping it would cost a host-device sync on every batch.
                distributed.batch_loss(loss_sum, weight_sum).backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
            batch_correct, batch_labelled = family.hits(outputs.detach(), targets)
            correct += batch_correct
            labelled += batch_labelled
            loss_total += loss_sum.detach().float()
            weight_total += weight_sum.detach().float()
    distributed.sum_across(loss_total, weight_total, correct, labelled)  # the whole epoch's, in every process
    if int(labelled) == 0:
        raise ValueError(f"{desc or 'epoch'}: no labelled targets in {len(loader.dataset)} points")
    return float(loss_total / weight_total), float(correct / labelled)


class TrainingStopped(RuntimeError):
    """Training ended early on request (`fit`'s should_stop): not a failure to retry."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: training stopped; the last good epoch's checkpoints are kept."""


def fit(
    model: nn.Module,
    family: ModelFamily,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    resume: bool = False,
    world: World = SINGLE,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train `model` for `config.epochs`; keep (and save) the lowest-val-loss weights.

    With `checkpoint_dir`, every epoch ends by writing best.pt (when it improved), last.pt and the
    full training state (state.pt), each atomically. `resume` goes on from the epoch after the one
    state.pt holds (a fresh start when there is none), as if training had never stopped. A loss
    that is NaN or infinite raises TrainingDiverged before that epoch writes anything.

    In one of several processes (`world`, see training.distributed), the model trains wrapped in
    DistributedDataParallel on the loaders' shares; only rank 0 writes files and sees `on_epoch_end`.

    `should_stop`, asked after each epoch has been saved and reported, ends training early with
    TrainingStopped when it says so (a sweep pruning a hopeless trial, a person asking).
    """
    device, step_model, val_model = _place(model, config, world)
    class_weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=config.lr_patience, factor=config.lr_factor
    )
    files = None if checkpoint_dir is None else checkpoint_files(checkpoint_dir)
    loaders = [train_loader, val_loader]
    result = _resumed(files, model, optimizer, scheduler, config, loaders) if resume else FitResult()
    writes, progress, best_state = files is not None and world.main, progress and world.main, None
    for epoch in range(len(result.history) + 1, config.epochs + 1):
        started, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        order = getattr(train_loader.batch_sampler, "sampler", train_loader.sampler)
        if isinstance(order, DistributedSampler):
            order.set_epoch(epoch)  # a new shuffle each epoch, the same in every process
        train_loss, train_accuracy = run_epoch(
            step_model, family, train_loader, device, class_weights, config, optimizer, f"epoch {epoch} train",
            progress,
        )  # fmt: skip
        val_loss, val_accuracy = run_epoch(
            val_model, family, val_loader, device, class_weights, config, None, f"epoch {epoch} val", progress
        )
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            kept = f"{files.last} holds epoch {epoch - 1}" if files is not None and epoch > 1 else "none kept"
            raise TrainingDiverged(
                f"epoch {epoch}: train loss {train_loss}, validation loss {val_loss}: not finite; training "
                f"stopped (last good checkpoint: {kept}); try a lower lr or grad_clip"
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
            if writes:
                save_checkpoint(files.best, model, config, epoch, val_loss)
        if writes:
            save_checkpoint(files.last, model, config, epoch, val_loss)
            save_training_state(files.state, model, optimizer, scheduler, config, result, loaders)
        if on_epoch_end is not None and world.main:
            on_epoch_end(stats)
        if should_stop is not None and epoch < config.epochs and should_stop():
            raise TrainingStopped(f"stopped on request after epoch {epoch} of {config.epochs}; checkpoints kept")
    if config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    elif config.restore_best and files is not None and files.best.is_file():  # resumed: the best is on disk
        model.load_state_dict(torch.load(files.best, map_location="cpu", weights_only=True)["state_dict"])
    return result


def _place(model: nn.Module, config: TrainConfig, world: World) -> tuple[torch.device, nn.Module, nn.Module]:
    """The model on its device and memory layout: (device, the module that trains, the one that validates)."""
    device = resolve_device(config.device)
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark  # fixed input sizes: autotune once
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    # The compiled module shares its parameters with `model`, which checkpoints and evaluation use.
    step_model = torch.compile(model) if config.compile else model
    # Several processes: DDP averages the gradients. Validation runs on the plain model: each process
    # scores its own share, in batches of uneven count, where DDP's forward would wait on the others.
    val_model = step_model
    if world.size > 1:
        gpu = [torch.cuda.current_device()] if device.type == "cuda" else None  # set by distributed.init
        step_model = DistributedDataParallel(step_model, device_ids=gpu)
    return device, step_model, val_model


def _resumed(files: CheckpointFiles | None, model, optimizer, scheduler, config: TrainConfig, loaders) -> FitResult:
    """The history so far, with model, optimiser, scheduler and random states as the saved state left
    them; an empty history (a fresh start) when nothing was saved."""
    if files is None or not files.state.is_file():
        log.info("nothing to resume%s: training from the first epoch", "" if files is None else f" in {files.state}")
        return FitResult()
    result = load_training_state(files.state, model, optimizer, scheduler, config, loaders)
    log.info("resumed from %s: epoch %d of %d done", files.state, result.history[-1].epoch, config.epochs)
    return result


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train_model(
    points: pd.DataFrame,
    split: StudySplit,
    store: VolumeReader,
    config: TrainConfig,
    checkpoint_dir: str | Path | None = None,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    progress: bool = True,
    allow_download: bool = True,
    resume: bool = False,
    world: World = SINGLE,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[nn.Module, FitResult]:
    """Build the config's model family and fit it on the split's points; returns the model and history.

    points: located training points (see volumes.locate_points) of both sides of the split. In one
    of several processes (`world`), this process takes its share of each batch of
    `config.batch_size`, and of the validation points.
    """
    family = get_family(config.model_family)
    seed_everything(config.seed)
    model = family.create_model(config, config.pretrained, allow_download)
    train_points, val_points = split.select(points, "train"), split.select(points, "val")
    if train_points.empty or val_points.empty:
        raise ValueError(f"empty split: {len(train_points)} train points, {len(val_points)} validation points")
    device = resolve_device(config.device)
    train_set = family.dataset(train_points, store, config, train=True)
    val_set = family.dataset(val_points, store, config, train=False)
    # The training order is a function of (seed, epoch) alone, so that N processes train on the same
    # global batches as one: process r takes items r, r + N, ... of each epoch's permutation (padded
    # to the same count everywhere: DDP's steps must match).
    sampler = DistributedSampler(train_set, world.size, world.rank, shuffle=True, seed=config.seed)
    if world.size == 1:
        train_loader = make_loader(train_set, config, False, device, train=True, sampler=sampler)
        val_loader = make_loader(val_set, config, False, device)
    else:
        if device.type == "cuda":  # batch statistics over the whole batch (SyncBatchNorm needs a GPU)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        share = config.batch_size // world.size
        train_loader = make_loader(train_set, config, False, device, train=True, sampler=sampler, batch_size=share)
        val_loader = make_loader(val_set, config, False, device, sampler=ShardSampler(len(val_set), world),
                                 batch_size=share)  # fmt: skip
    log.info(
        "training %s on %s: %d train points, %d validation points",
        family.describe(config), device, len(train_points), len(val_points),
    )  # fmt: skip
    result = fit(
        model, family, train_loader, val_loader, config, checkpoint_dir, on_epoch_end, progress, resume, world,
        should_stop,
    )  # fmt: skip
    return model, result
