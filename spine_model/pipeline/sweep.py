"""A search over settings: the search space, what a trial's settings are, and the sweep's summary.

The space is a small YAML file (or a mapping), one entry per TrainConfig setting by name: a list of
choices, or a range `{low: ..., high: ..., log: true}` (integers for integer settings):

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    crop_size: [24, 32, 48]
    crop_pooling: [channels, attention]

Every setting and value is checked against the base configuration before any trial starts: an
unknown setting, or a value the configuration (or its model family) refuses, is an error that
names it. Optuna samples the trials (TPE with a fixed seed), prunes hopeless ones on the per-epoch
validation loss (median pruning), and keeps the study in a database, so that a stopped sweep
resumes without repeating a finished trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ValidationError

from spine_model.core.config import TrainConfig
from spine_model.core.files import atomic_write_figure
from spine_model.evaluation.compare import markdown_table


class SpaceError(ValueError):
    """A search space that cannot be searched: the message names the setting and what is wrong."""


@dataclass(frozen=True)
class Setting:
    """One searched setting: a list of choices, or a range (low, high, on a log scale or not)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial) -> Any:
        """This setting's value for an Optuna trial."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} from {self.low:g} to {self.high:g}{' (log scale)' if self.log else ''}"


def read_space(space: str | Path | dict, base: BaseModel) -> list[Setting]:
    """The search space of a YAML file (or a mapping), checked against the base configuration `base`
    (a TrainConfig or the pipeline's config): every setting known and searchable, every choice and
    both ends of every range accepted."""
    if not isinstance(space, dict):
        import yaml

        path = Path(space)
        if not path.is_file():
            raise SpaceError(f"search space file {path} not found")
        space = yaml.safe_load(path.read_text()) or {}
        if not isinstance(space, dict):
            raise SpaceError(
                f"{path}: a search space maps setting names to choices or ranges, not {type(space).__name__}"
            )
    if not space:
        raise SpaceError("the search space is empty: name at least one setting")
    searchable = set(TrainConfig.model_fields) - {"model_family", "device", "gpus"}
    settings = []
    for name, entry in space.items():
        if name not in searchable:
            raise SpaceError(
                f"unknown setting {name!r} in the search space; searchable: {', '.join(sorted(searchable))}"
            )
        setting = _setting(name, entry, type(base).model_fields[name].annotation)
        for value in setting.choices if setting.choices is not None else (setting.low, setting.high):
            _check(base, name, value)
        settings.append(setting)
    return settings


def _setting(name: str, entry: Any, annotation) -> Setting:
    if isinstance(entry, list | tuple):
        if not entry:
            raise SpaceError(f"setting {name!r}: an empty list of choices")
        return Setting(name, choices=tuple(entry))
    if isinstance(entry, dict) and {"low", "high"} <= set(entry) and set(entry) <= {"low", "high", "log"}:
        low, high, log = entry["low"], entry["high"], bool(entry.get("log", False))
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise SpaceError(f"setting {name!r}: a range needs numbers low < high, got {low!r} and {high!r}")
        if log and low <= 0:
            raise SpaceError(f"setting {name!r}: a log-scale range needs low > 0, got {low!r}")
        integer = "int" in str(annotation) and "float" not in str(annotation)
        return Setting(name, low=float(low), high=float(high), log=log, integer=integer)
    raise SpaceError(
        f"setting {name!r}: give a list of choices, or a range {{low: ..., high: ..., log: true|false}}; got {entry!r}"
    )


def _check(base: BaseModel, name: str, value: Any) -> None:
    """The base configuration accepts `name` = `value` (its family's checks included)."""
    try:
        type(base).model_validate({**base.model_dump(exclude_unset=True), name: value})
    except ValidationError as error:
        reasons = "; ".join(e["msg"] for e in error.errors())
        raise SpaceError(f"setting {name!r} = {value!r} is refused by the configuration: {reasons}") from None


def suggest(trial, settings: list[Setting]) -> dict[str, Any]:
    """The trial's settings: one value per searched setting."""
    return {setting.name: setting.suggest(trial) for setting in settings}


def trials_table(study) -> pd.DataFrame:
    """One row per trial of an Optuna study: number, state, value, its settings and its run."""
    rows = []
    for trial in study.trials:
        rows.append({
            "trial": trial.number, "state": trial.state.name.lower(),
            "score": trial.value if trial.value is not None else float("nan"),
            "epochs": len(trial.intermediate_values), **trial.params,
            "run": trial.user_attrs.get("run_name", ""),
        })  # fmt: skip
    return pd.DataFrame(rows)


def plot_scores(table: pd.DataFrame, settings: list[Setting], path: str | Path, objective: str) -> Path:
    """The score against each searched setting, one panel each: what a person reads first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4 * len(settings), 3.4), squeeze=False)
    done = table[table["state"] == "complete"]
    for ax, setting in zip(axes[0], settings, strict=True):
        if setting.choices is not None:
            positions = {str(choice): i for i, choice in enumerate(setting.choices)}
            x = done[setting.name].astype(str).map(positions)
            ax.set_xticks(range(len(positions)), list(positions))
        else:
            x = done[setting.name]
            if setting.log:
                ax.set_xscale("log")
        ax.scatter(x, done["score"], color="tab:blue", label="complete")
        ax.set_xlabel(setting.name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(objective)
    best = done["score"].min() if len(done) else math.nan
    fig.suptitle(f"Sweep: {objective} per setting (lower is better; best {best:.4f})", fontsize=10)
    fig.tight_layout()
    atomic_write_figure(path, fig, dpi=100)
    plt.close(fig)
    return Path(path)


def markdown_trials(table: pd.DataFrame) -> str:
    """The trials as a Markdown table, best first."""
    ordered = table.sort_values("score", na_position="last").copy()
    ordered["score"] = ordered["score"].map(lambda v: "" if np.isnan(v) else f"{v:.4f}")
    return markdown_table(ordered)
