"""`benchmarks/gpu.py` runs end to end (on the CPU here) with --dry-run, as it would on a CUDA machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_dry_run_measures_every_family(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["families"]) == {"seed", "crops attention", "crops channels", "localiser"}
    for name, figures in results["families"].items():
        assert figures["items"] > 0, name
        assert figures["model_only_per_s"] > 0 and figures["loader_fed_per_s"] > 0, name
        assert figures["fed_share"] == figures["loader_fed_per_s"] / figures["model_only_per_s"]


def test_gpu_benchmark_refuses_to_measure_without_cuda_unless_dry(tmp_path):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the real run is the one to make
        return
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0 and "no CUDA device here" in done.stderr
