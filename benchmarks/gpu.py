"""The GPU figures in one call: model-only vs loader-fed training throughput per model family.

    python benchmarks/gpu.py --out gpu.json            on a CUDA machine (about 5 minutes on one GPU)
    python benchmarks/gpu.py --dry-run                 tiny sizes, any device: checks that it runs

Runs on a bare machine with PyTorch, torchvision, numpy, pandas and pillow: no Prefect, MLflow or
internet, no DICOM files (it writes its own volume store). It imports `spine_model`, whose other
pure-Python need is pydantic (carry its wheels: pydantic, pydantic-core, annotated-types,
typing-inspection). Per family, at the real data's settings:

- model-only samples/s: training steps (forward, backward, Adam, bf16 autocast, channels_last) on
  one batch already on the GPU, prepared once;
- loader-fed samples/s: `spine_model.training.loop.run_epoch` over a DataLoader on the memory-mapped
  store (workers, pinned memory, the batch resized, normalised and augmented on the GPU), the
  loop a real training run uses;
- loader-fed / model-only (target: at least 90 %), peak GPU memory, and the projected time of one
  real-size epoch (43,823 training points; the localiser: 5,700 sagittal series and 10,500 labelled
  axial slices).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from spine_model.core.catalog import StoreFiles  # noqa: E402
from spine_model.core.config import TrainConfig  # noqa: E402
from spine_model.core.constants import CONDITION_SERIES, CONDITIONS, LABEL_COLUMNS, LEVELS, SERIES_DESCRIPTIONS  # noqa: E402
from spine_model.data.volumes import GEOMETRY_COLUMNS, VolumeStore, index_rows  # noqa: E402
from spine_model.families import get_family  # noqa: E402
from spine_model.families.base import batches  # noqa: E402
from spine_model.training.devices import resolve_device
from spine_model.training.loaders import make_loader, model_batches  # noqa: E402
from spine_model.training.loop import run_epoch

REAL_TRAIN = {"seed": 43_823, "crops": 43_823, "localiser": 16_200}  # items per epoch at the real size
FAMILIES = {
    "seed": {"model_family": "seed", "batch_size": 64},
    "crops attention": {"model_family": "crops", "crop_pooling": "attention", "batch_size": 64},
    "crops channels": {"model_family": "crops", "crop_pooling": "channels", "batch_size": 64},
    "localiser": {"model_family": "localiser", "image_size": 256, "batch_size": 8},
}
DRY = {"store_size": 64, "image_size": 64, "crop_size": 32, "batch_size": 8}


def write_store(root: Path, studies: int, size: int, slices: int, rng: np.random.Generator) -> VolumeStore:
    """A volume store of random-textured uint8 series (3 per study), with its index, written as
    `build_volume_store` would, without DICOM files."""
    files, rows = StoreFiles(root), []
    for study in range(studies):
        for series, description in enumerate(SERIES_DESCRIPTIONS):
            pixels = rng.integers(0, 256, (slices, size, size), dtype=np.uint8)
            path = files.volume(study + 1, series + 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, pixels)
            frames = pd.DataFrame({
                "instance_number": np.arange(1, slices + 1), "rows": 512, "columns": 512,
                "position": np.arange(slices, dtype=float) * 4, "spacing_row": 0.5, "spacing_col": 0.5,
                **dict(zip(GEOMETRY_COLUMNS, [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0], strict=True)),
            })  # fmt: skip
            rows.append(index_rows(study + 1, series + 1, description, frames))
    pd.concat(rows, ignore_index=True).to_parquet(files.index, index=False)
    files.manifest.write_text(json.dumps({"size": size, "split": "train", "data_dir": "(benchmarks/gpu.py)"}))
    return VolumeStore(root)


def points_of(store: VolumeStore, rng: np.random.Generator) -> pd.DataFrame:
    """Every study's 25 labelled points on the series their condition is read on, located on the store."""
    index = store.index
    rows = []
    for _, study in index.groupby("study_id"):
        for condition in CONDITIONS:
            series = study[study["series_description"] == CONDITION_SERIES[condition]]
            for level in LEVELS:
                slice_row = series.iloc[int(rng.integers(len(series)))]
                x, y = rng.uniform(0.3, 0.7, 2) * 512
                rows.append({**slice_row.to_dict(), "condition": condition, "level": level, "x": x, "y": y,
                             "x_store": x * store.size / 512, "y_store": y * store.size / 512,
                             "label": int(rng.integers(3))})  # fmt: skip
    points = pd.DataFrame(rows)
    for column in LABEL_COLUMNS:
        points[column] = rng.integers(0, 3, len(points))
    return points


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(family, config: TrainConfig, dataset, device: torch.device, steps: int) -> float:
    """Samples/s of training steps on one prepared batch that stays on the device."""
    model = family.create_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = batches(dataset, config.batch_size)
    inputs, targets = next(model_batches(loader, family, config, device, train=True))
    weights = torch.tensor(config.class_weights, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    use_amp = config.amp and device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = model(*inputs)
        loss_sum, weight_sum = family.loss(outputs, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / weight_sum.clamp_min(1e-12)).backward()
        optimizer.step()

    for _ in range(3):
        step()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return steps * len(targets) / (time.perf_counter() - started)


def loader_fed(family, config: TrainConfig, dataset, device: torch.device) -> float:
    """Samples/s of `run_epoch` over the whole dataset (after one warm-up epoch)."""
    model = family.create_model(config).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = make_loader(dataset, config, shuffle=True, device=device)
    weights = torch.tensor(config.class_weights, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    run_epoch(model, family, loader, device, weights, config, optimizer, progress=False)  # warm-up, workers start
    synchronise(device)
    started = time.perf_counter()
    run_epoch(model, family, loader, device, weights, config, optimizer, progress=False)
    synchronise(device)
    return len(dataset) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes and few steps, on any device")
    parser.add_argument("--studies", type=int, default=64, help="studies in the generated store")
    parser.add_argument("--steps", type=int, default=20, help="model-only steps per family")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    device = resolve_device("auto")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("no CUDA device here: run on a GPU machine, or with --dry-run to check the script")
    studies, steps, workers = (2, 2, 0) if args.dry_run else (args.studies, args.steps, args.workers)
    sizes = DRY if args.dry_run else {}
    rng = np.random.default_rng(0)
    results = {"machine": platform.machine(), "torch": torch.__version__, "device": str(device), "families": {}}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as scratch:
        store = write_store(Path(scratch) / "store", studies, sizes.get("store_size", 256), 8 if args.dry_run else 18,
                            rng)  # fmt: skip
        points = points_of(store, rng)
        for name, settings in FAMILIES.items():
            config = TrainConfig(**{**settings, **sizes, "store_size": store.size, "pretrained": False,
                                    "num_workers": workers, "augment": True})  # fmt: skip
            if name == "localiser" and args.dry_run:
                config = config.model_copy(update={"batch_size": 2})
            family = get_family(config.model_family)
            dataset = family.dataset(points, store, config, train=True)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            only = model_only(family, config, dataset, device, steps)
            fed = loader_fed(family, config, dataset, device)
            real = REAL_TRAIN[config.model_family]
            figures = {
                "items": len(dataset), "batch_size": config.batch_size, "model_only_per_s": only,
                "loader_fed_per_s": fed, "fed_share": fed / only, "real_epoch_s": real / fed,
                "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            }  # fmt: skip
            results["families"][name] = figures
            print(
                f"{name:16s} model-only {only:9.1f}/s  loader-fed {fed:9.1f}/s  ({100 * fed / only:5.1f} %)  "
                f"real epoch {real / fed:7.1f} s"
                + (f"  peak {figures['peak_gpu_mib']:.0f} MiB" if figures["peak_gpu_mib"] is not None else ""),
                flush=True,
            )
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
