"""Figures for a run: training curves and the confusion matrix (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from spine_model.constants import SEVERITIES  # noqa: E402


def plot_training_curves(history: pd.DataFrame, path: str | Path) -> Path:
    """Loss, accuracy and learning rate per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for split in ("train", "val"):
        axes[0].plot(history["epoch"], history[f"{split}_loss"], marker="o", label=split)
        axes[1].plot(history["epoch"], history[f"{split}_accuracy"], marker="o", label=split)
    axes[2].plot(history["epoch"], history["lr"], marker="o", color="tab:green")
    axes[2].set_yscale("log")
    for ax, title in zip(axes, ("weighted CE loss", "accuracy (labelled cells)", "learning rate"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(confusion: np.ndarray, path: str | Path, title: str = "validation") -> Path:
    """Counts and row-normalised shares (recall per true class) side by side."""
    confusion = np.asarray(confusion)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, values, fmt, name in ((axes[0], confusion, "d", "counts"), (axes[1], shares, ".2f", "share of true class")):
        ax.imshow(values, cmap="Blues")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, format(value, fmt), ha="center", va="center",
                    color="white" if values[i, j] > values.max() / 2 else "black")  # fmt: skip
        ax.set_xticks(range(len(SEVERITIES)), SEVERITIES)
        ax.set_yticks(range(len(SEVERITIES)), SEVERITIES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
