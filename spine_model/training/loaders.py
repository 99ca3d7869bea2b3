"""DataLoaders over a family's datasets: batches in a fixed order per seed, a last batch of one item
merged, preparation in loader workers on the CPU or on the device, and workers stopped cleanly."""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Iterator

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
)

from spine_model.core.config import TrainConfig
from spine_model.core.interrupts import ignore_in_helper
from spine_model.families import get_family
from spine_model.families.base import ModelFamily
from spine_model.training.devices import channels_last, to_device


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
