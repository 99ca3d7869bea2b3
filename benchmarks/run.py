"""Speed and memory measurements of the pipeline's hot paths (not tests: nothing here asserts).

    python benchmarks/run.py --out benchmarks/RESULTS.md

Measures synthetic data generation, ingestion, DICOM preprocessing (1 and all processes), dataset
reads and training throughput of SpineNet on this machine's device.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from spine_model.config import TrainConfig
from spine_model.dataset import SpineDataset
from spine_model.image_store import PngImageStore
from spine_model.ingest import build_long_table
from spine_model.model import create_model
from spine_model.preprocess import preprocess_instances
from spine_model.synth import generate_dataset
from spine_model.train import masked_cross_entropy, resolve_device


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def train_throughput(image_size: int, batch_size: int, device: torch.device, steps: int) -> float:
    """Images per second of forward + backward + Adam step on random inputs (after warm-up)."""
    torch.manual_seed(0)
    model = create_model("resnet18", pretrained=False, image_size=image_size).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.tensor(TrainConfig().class_weights, device=device)
    image = torch.randn(batch_size, 1, image_size, image_size, device=device)
    coords = torch.rand(batch_size, 2, device=device)
    targets = torch.randint(0, 3, (batch_size, 25), device=device)
    use_amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(image, coords)
        loss_sum, weight_sum = masked_cross_entropy(logits, targets, weights)
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
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown report here")
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device("auto")
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary, seconds = timed(generate_dataset, tmp / "data", args.studies, 10, 96, 10, 0)
        rows.append(
            (f"synth {args.studies}+10 studies at 96 px ({summary.dicom_files} DICOM files)", f"{seconds:.1f} s")
        )
        ingest, seconds = timed(build_long_table, tmp / "data")
        rows.append((f"ingest {len(ingest.table)} coordinate rows", f"{seconds:.2f} s"))
        keys = list(ingest.table[["study_id", "series_id", "instance_number"]].itertuples(index=False, name=None))
        for workers in sorted({1, os.cpu_count() or 1}):
            report, seconds = timed(
                preprocess_instances, keys, tmp / "data", tmp / f"png{workers}", 224, workers=workers, progress=False
            )
            rows.append((f"preprocess to 224 px PNG, {workers} process(es)", f"{report.written / seconds:.0f} img/s"))
        _, seconds = timed(preprocess_instances, keys, tmp / "data", tmp / "png1", 224, workers=1, progress=False)
        rows.append(("preprocess rerun (all up to date)", f"{len(set(keys)) / seconds:.0f} img/s"))
        dataset = SpineDataset(ingest.table, PngImageStore(tmp / "png1"), 224)
        loader = DataLoader(dataset, batch_size=64, num_workers=0)
        started, n = time.perf_counter(), 0
        for image, _, _ in loader:
            n += len(image)
        rows.append(("SpineDataset reads at 224 px, 1 process", f"{n / (time.perf_counter() - started):.0f} rows/s"))
    for size, batch in ((64, 32), (128, 32), (224, 32)):
        rate = train_throughput(size, batch, device, args.train_steps)
        rows.append((f"train step resnet18 SpineNet {size} px, batch {batch}, {device.type}", f"{rate:.1f} img/s"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows.append(("peak resident memory of this process", f"{peak_mib:.0f} MiB"))

    header = (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, device {device}"
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
