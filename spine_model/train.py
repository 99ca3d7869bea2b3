"""The training loop: one readable function, with AMP, clipping, scheduling and checkpoints in it.

It knows models only through their family (`spine_model.families`): the family builds the model
and the dataset, and computes the loss; batches are `(inputs, targets)` and the model is called
as `model(*inputs)`.
"""

from __future__ import annotations

import atexit
import copy
import logging
import math
import random
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)
from tqdm.auto import tqdm

from spine_model import distributed
from spine_model.catalog import atomic_write, checkpoint_files
from spine_model.config import TrainConfig
from spine_model.distributed import SINGLE, ShardSampler, World
from spine_model.families import get_family
from spine_model.families.base import ModelFamily
from spine_model.interrupts import ignore_in_helper
from spine_model.split import StudySplit
from spine_model.volumes import VolumeReader

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


def make_loader(
    dataset: Dataset,
    config: TrainConfig,
    shuffle: bool,
    device: torch.device,
    train: bool | None = None,
    prepare_in_workers: bool | None = None,
    sampler: Sampler | None = None,
    batch_size: int | None = None,
) -> DataLoader:
    """Batches of `config.batch_size` items; a dataset with a `collate` method batches its own items.
    A `sampler` (one process's share, see train_model) replaces `shuffle`; `batch_size` overrides.
    A last batch of a single item joins the batch before it (see `Batches`).

    On a GPU the family's `prepare` runs on the device (see `model_batches`). Training on the CPU
    with loader workers, the workers prepare the batches instead (`train`: with augmentation,
    default `shuffle`), leaving the main process's cores to the model; `prepare_in_workers`
    overrides that choice.
    """
    collate = getattr(dataset, "collate", None)
    in_workers = device.type == "cpu" and config.num_workers > 0 if prepare_in_workers is None else prepare_in_workers
    if in_workers:
        collate = PreparedBatches(collate, config, shuffle if train is None else train)
    generator = torch.Generator().manual_seed(config.seed)
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    loader = DataLoader(
        dataset,
        batch_sampler=Batches(sampler, batch_size or config.batch_size),
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
        generator=generator,
        collate_fn=collate,
        worker_init_fn=ignore_in_helper,  # Ctrl-C reaches the workers too: the main process stops them
    )
    loader.prepared_in_workers = in_workers
    if config.num_workers > 0:
        _LOADERS_WITH_WORKERS.add(loader)
    return loader


# Loader workers ignore SIGTERM (see interrupts.ignore_in_helper), and multiprocessing stops daemonic
# children at exit with exactly that signal, then waits for them: a process whose persistent loader
# workers were still up at exit (a run stopped by Ctrl-C, whose traceback kept the loaders alive)
# waited for ever. They are shut down the DataLoader's own way first: this atexit hook, registered
# after multiprocessing's and torch's, runs before them.
_LOADERS_WITH_WORKERS: weakref.WeakSet[DataLoader] = weakref.WeakSet()


def stop_loader_workers(loader: DataLoader) -> None:
    """Shut a loader's (persistent) worker processes down now, as the DataLoader does when its
    iterator is garbage-collected (torch offers no public call for it)."""
    iterator = loader.__dict__.get("_iterator")
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader.__dict__["_iterator"] = None


@atexit.register
def _stop_all_loader_workers() -> None:
    for loader in list(_LOADERS_WITH_WORKERS):
        stop_loader_workers(loader)


class Batches(Sampler[list[int]]):
    """The sampler's items in batches of `batch_size`, in order, where a last batch of one item (of a
    batch_size above 1) joins the batch before it (one batch of batch_size + 1). BatchNorm cannot
    train on a single sample ("Expected more than 1 value per channel"), and dropping it would lose
    that item for the epoch; a split whose size leaves one over (one in batch_size) trains as usual.
    In several processes each takes its share of every global batch, so the merge falls on the same
    step everywhere."""

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self) -> Iterator[list[int]]:
        # Copies: BatchSampler refills one list in place.
        batches = [list(batch) for batch in BatchSampler(self.sampler, self.batch_size, drop_last=False)]
        if self.batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:
            last = batches.pop()
            batches[-1] = batches[-1] + last
        return iter(batches)

    def __len__(self) -> int:
        count, left = divmod(len(self.sampler), self.batch_size)
        return count + (left > 0) - (self.batch_size > 1 and left == 1 and count > 0)


class PreparedBatches:
    """A collate function that also applies the family's `prepare` (in a loader worker, on the CPU)."""

    def __init__(self, collate, config: TrainConfig, train: bool) -> None:
        self.collate, self.config, self.train = collate or default_collate, config, train

    def __call__(self, batch):
        inputs, targets = self.collate(batch)
        return get_family(self.config.model_family).prepare(list(inputs), self.config, self.train), targets


def to_device(inputs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    return [tensor.to(device, non_blocking=True) for tensor in inputs]


def channels_last(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Image batches (4-D) in NHWC memory order, which tensor-core (and oneDNN CPU) convolutions prefer."""
    return [tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor for tensor in inputs]


def model_batches(
    loader: DataLoader, family: ModelFamily, config: TrainConfig, device: torch.device, train: bool
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """The loader's batches as the model's inputs on the device: copied (non-blocking from pinned
    memory), then prepared by the family (resize, normalise, augment: batched, on the device)."""
    prepared = getattr(loader, "prepared_in_workers", False)
    for inputs, targets in loader:
        inputs = to_device(inputs, device) if prepared else family.prepare(to_device(inputs, device), config, train)
        if config.channels_last:
            inputs = channels_last(inputs)
        yield inputs, targets.to(device, non_blocking=True)


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


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: training stopped; the last good epoch's checkpoints are kept."""


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
) -> FitResult:
    """Train `model` for `config.epochs`; keep (and save) the lowest-val-loss weights.

    With `checkpoint_dir`, every epoch ends by writing best.pt (when it improved), last.pt and the
    full training state (state.pt), each atomically. `resume` goes on from the epoch after the one
    state.pt holds (a fresh start when there is none), as if training had never stopped. A loss
    that is NaN or infinite raises TrainingDiverged before that epoch writes anything.

    In one of several processes (`world`, see spine_model.distributed), the model trains wrapped in
    DistributedDataParallel on the loaders' shares; only rank 0 writes files and sees `on_epoch_end`.
    """
    device = resolve_device(config.device)
    progress = progress and world.main
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
    class_weights = torch.tensor(config.class_weights, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", patience=config.lr_patience, factor=config.lr_factor
    )
    result = FitResult()
    writes = checkpoint_dir is not None and world.main
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        best_path, last_path = checkpoint_files(checkpoint_dir)
        state_path = training_state_file(checkpoint_dir)
        if resume and state_path.is_file():
            result = load_training_state(state_path, model, optimizer, scheduler, config, [train_loader, val_loader])
            log.info("resumed from %s: epoch %d of %d done", state_path, result.history[-1].epoch, config.epochs)
        elif resume:
            log.info("nothing to resume in %s: training from the first epoch", checkpoint_dir)
    best_state = None
    for epoch in range(len(result.history) + 1, config.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
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
            kept = f"{last_path} holds epoch {epoch - 1}" if checkpoint_dir is not None and epoch > 1 else "none kept"
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
                save_checkpoint(best_path, model, config, epoch, val_loss)
        if writes:
            save_checkpoint(last_path, model, config, epoch, val_loss)
            save_training_state(state_path, model, optimizer, scheduler, config, result, [train_loader, val_loader])
        if on_epoch_end is not None and world.main:
            on_epoch_end(stats)
    if config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    elif config.restore_best and checkpoint_dir is not None and best_path.is_file():  # resumed: best from disk
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    return result


def training_state_file(checkpoint_dir: str | Path) -> Path:
    """Where `fit` keeps the state it resumes from."""
    return Path(checkpoint_dir) / "state.pt"


def saved_epoch(checkpoint_dir: str | Path) -> int:
    """The last epoch whose training state `fit` saved in `checkpoint_dir` (0: none). Memory-mapped:
    the weights and optimiser state are not read for it."""
    path = training_state_file(checkpoint_dir)
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
    result = fit(model, family, train_loader, val_loader, config, checkpoint_dir, on_epoch_end, progress, resume, world)
    return model, result
