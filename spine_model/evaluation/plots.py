"""Figures for a run: training curves and the confusion matrix (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from spine_model.core.constants import SEVERITIES  # noqa: E402
from spine_model.core.files import atomic_write_figure  # noqa: E402


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
    atomic_write_figure(path, fig, dpi=110)
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
    atomic_write_figure(path, fig, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_localiser_examples(
    store, found: pd.DataFrame, truth: pd.DataFrame, path: str | Path, studies: int = 3
) -> Path:
    """A few validation studies: per series type, a labelled slice with the labelled points (green
    circles) and the localiser's points on that slice (red crosses)."""
    from spine_model.core.constants import SERIES_DESCRIPTIONS

    chosen = sorted(truth["study_id"].unique())[:studies]
    fig, axes = plt.subplots(len(chosen), 3, figsize=(10, 3.4 * len(chosen)), squeeze=False)
    for row, study_id in enumerate(chosen):
        for col, description in enumerate(SERIES_DESCRIPTIONS):
            ax = axes[row, col]
            ax.axis("off")
            labelled = truth[(truth["study_id"] == study_id) & (truth["series_description"] == description)]
            if labelled.empty:
                continue
            first = labelled.sort_values(["level", "condition"]).iloc[len(labelled) // 2]
            same = ["study_id", "series_id", "instance_number"]
            on_slice = labelled[(labelled[same] == first[same]).all(axis=1)]
            guessed = found[(found[same] == first[same].to_numpy()).all(axis=1)] if len(found) else found
            scale_x, scale_y = store.size / first["columns"], store.size / first["rows"]
            ax.imshow(store.volume(study_id, first["series_id"])[first["slice_index"]], cmap="gray")
            ax.scatter(on_slice["x"] * scale_x, on_slice["y"] * scale_y, s=60, facecolors="none", edgecolors="lime")
            ax.scatter(guessed["x"] * scale_x, guessed["y"] * scale_y, s=40, marker="x", c="red")
            ax.set_title(f"{study_id} {description}\ninstance {first['instance_number']}", fontsize=8)
    fig.tight_layout()
    atomic_write_figure(path, fig, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_reliability(tables: dict[str, pd.DataFrame], path: str | Path, title: str = "validation") -> Path:
    """A reliability diagram per condition (spine_model.evaluation.calibration): predicted probability
    against how often it came true, one line per severity; the diagonal is a calibrated model."""
    fig, axes = plt.subplots(1, max(1, len(tables)), figsize=(3.2 * max(1, len(tables)), 3.4), squeeze=False)
    for ax, (condition, table) in zip(axes[0], tables.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        for severity, part in table.groupby("severity", sort=False):
            ax.plot(part["predicted"], part["observed"], marker="o", markersize=3, label=severity)
        ax.set_title(condition.replace("_", " "), fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("observed share", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Reliability ({title})", fontsize=10)
    fig.tight_layout()
    atomic_write_figure(path, fig, dpi=100)
    plt.close(fig)
    return Path(path)
