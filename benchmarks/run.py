"""Speed and memory measurements of the pipeline's hot paths (not tests: nothing here asserts).

    python benchmarks/run.py --out benchmarks/RESULTS.md        (make bench)

Measures synthetic data generation, ingestion, building the volume store (1 and all processes,
and a rerun), dataset reads per model family, training throughput per family on this machine's
device, and the peak resident memory of a data epoch at N and 4N studies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from spine_model.config import TrainConfig  # noqa: E402
from spine_model.families import get_family  # noqa: E402
from spine_model.families.base import masked_cross_entropy  # noqa: E402
from spine_model.ingest import build_long_table  # noqa: E402
from spine_model.steps import series_to_store  # noqa: E402
from spine_model.synth import generate_dataset  # noqa: E402
from spine_model.train import resolve_device  # noqa: E402
from spine_model.volumes import VolumeStore, build_volume_store, locate_points  # noqa: E402

STORE_SIZE = 256
FAMILY_SETTINGS = {  # the defaults for real data: seed at 224 px, crops 5 x 128 px
    "seed": {"model_family": "seed"},
    "crops attention": {"model_family": "crops", "crop_pooling": "attention"},
    "crops channels": {"model_family": "crops", "crop_pooling": "channels"},
}


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def train_throughput(config: TrainConfig, inputs: list[torch.Tensor], device: torch.device, steps: int) -> float:
    """Samples per second of forward + backward + Adam step on one real batch (after warm-up)."""
    torch.manual_seed(0)
    family = get_family(config.model_family)
    model = family.create_model(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.tensor(config.class_weights, device=device)
    inputs = [tensor.to(device) for tensor in inputs]
    batch = inputs[0].shape[0]
    with torch.no_grad():
        targets = torch.randint(0, 3, model(*inputs).shape[:-1], device=device)
    use_amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = model(*inputs)
        loss_sum, weight_sum = masked_cross_entropy(outputs, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / weight_sum).backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def prepared_points(data: Path, store_root: Path, workers: int | None) -> tuple[pd.DataFrame, VolumeStore, float]:
    """Build the store of a data folder; returns (located points, store, seconds to build)."""
    table = build_long_table(data).table
    _, seconds = timed(
        build_volume_store, data, "train", series_to_store(data, "train", table), store_root, STORE_SIZE,
        workers, False,
    )  # fmt: skip
    store = VolumeStore(store_root)
    return locate_points(table, store.index, store.size)[0], store, seconds


def epoch_peak_rss(points_path: Path, store_root: Path) -> dict:
    """Peak RSS (MiB) of a fresh process that reads one epoch of every family's dataset, all points.

    Read from VmHWM in /proc, which a new program starts afresh (ru_maxrss would carry over the
    high-water mark of the process that forked it).
    """
    code = (
        "import json, sys, pandas as pd\n"
        "def peak():\n"
        "    lines = open('/proc/self/status').read().splitlines()\n"
        "    return next(int(line.split()[1]) for line in lines if line.startswith('VmHWM')) / 1024\n"
        "from torch.utils.data import DataLoader\n"
        "from spine_model.config import TrainConfig\n"
        "from spine_model.families import get_family\n"
        "from spine_model.volumes import VolumeStore\n"
        "points, store = pd.read_parquet(sys.argv[1]), VolumeStore(sys.argv[2])\n"
        "before = peak()\n"
        "for name in ('seed', 'crops'):\n"
        "    config = TrainConfig(model_family=name, store_size=store.size)\n"
        "    for _ in DataLoader(get_family(name).dataset(points, store, config, train=True), batch_size=64):\n"
        "        pass\n"
        "after = peak()\n"
        "print(json.dumps({'points': len(points), 'imports_mib': before, 'epoch_mib': after}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(points_path), str(store_root)], capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown report here")
    parser.add_argument("--studies", type=int, default=100, help="N: studies of the main data set")
    parser.add_argument("--train-steps", type=int, default=10)
    args = parser.parse_args()
    device = resolve_device("auto")
    cores = os.cpu_count() or 1
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary, seconds = timed(generate_dataset, tmp / "data", args.studies, 10, 96, 10, 0)
        rows.append(
            (f"synth {args.studies}+10 studies at 96 px ({summary.dicom_files} DICOM files)", f"{seconds:.1f} s")
        )
        ingest, seconds = timed(build_long_table, tmp / "data")
        rows.append((f"ingest {len(ingest.table)} coordinate rows", f"{seconds:.2f} s"))
        for workers in sorted({1, cores}):
            points, store, seconds = prepared_points(tmp / "data", tmp / f"store{workers}", workers)
            slices = len(store.index)
            rows.append((f"volume store {STORE_SIZE} px, {workers} process(es)", f"{slices / seconds:.0f} slices/s"))
        _, _, seconds = prepared_points(tmp / "data", tmp / "store1", 1)
        rows.append(("volume store rerun (all up to date)", f"{slices / seconds:.0f} slices/s"))

        batches: dict[str, list[torch.Tensor]] = {}
        for name, settings in FAMILY_SETTINGS.items():
            config = TrainConfig(**settings, store_size=STORE_SIZE, pretrained=False)
            dataset = get_family(config.model_family).dataset(points, store, config, train=True)
            loader = DataLoader(dataset, batch_size=32, num_workers=0)
            started, n = time.perf_counter(), 0
            for inputs, targets in loader:
                n += len(targets)
                batches.setdefault(name, inputs)
            rows.append((f"{name} dataset reads ({get_family(config.model_family).describe(config)}), 1 process",
                         f"{n / (time.perf_counter() - started):.0f} samples/s"))  # fmt: skip
        for name, settings in FAMILY_SETTINGS.items():
            config = TrainConfig(**settings, store_size=STORE_SIZE, pretrained=False)
            rate = train_throughput(config, batches[name], device, args.train_steps)
            rows.append((f"train step {name}, batch 32, {device.type}", f"{rate:.1f} samples/s"))

        points.to_parquet(tmp / "points.parquet")
        small = epoch_peak_rss(tmp / "points.parquet", tmp / "store1")
        generate_dataset(tmp / "data4", 4 * args.studies, 0, 96, 10, 1)
        points4, _, _ = prepared_points(tmp / "data4", tmp / "store4", None)
        points4.to_parquet(tmp / "points4.parquet")
        large = epoch_peak_rss(tmp / "points4.parquet", tmp / "store4")
        for label, measured in ((f"N={args.studies}", small), (f"4N={4 * args.studies}", large)):
            rows.append((
                f"peak RSS of a data epoch (seed + crops datasets), {label} studies, {measured['points']} points",
                f"{measured['epoch_mib']:.0f} MiB ({measured['imports_mib']:.0f} MiB after imports)",
            ))  # fmt: skip
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("peak resident memory of this process", f"{peak_mib:.0f} MiB"))

    header = (
        f"Machine: {platform.machine()}, {cores} CPU cores, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f"; torch {torch.__version__}, Python {platform.python_version()}"
    )
    table = "\n".join(["| measurement | result |", "|---|---:|", *[f"| {a} | {b} |" for a, b in rows]])
    text = f"# Benchmark results\n\n`make bench` ({time.strftime('%Y-%m-%d')})\n\n{header}\n\n{table}\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
