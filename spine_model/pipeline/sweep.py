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

`SweepTrials` is the sweep's bookkeeping, without Prefect: which trials are left, a trial's
settings and run folder, its epochs reported to Optuna (and its STOP file written when Optuna
prunes it), its end told to Optuna and to its MLflow run. How the trials run (one after the other
here, or as deployment runs on a work pool) is the flow's business (flows/sweep.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from pydantic import BaseModel, ValidationError

from spine_model import tracking
from spine_model.core.catalog import CVFolder, RunFolder, Workspace
from spine_model.core.config import TrainConfig
from spine_model.core.files import atomic_write_figure
from spine_model.evaluation.compare import markdown_table
from spine_model.training.history import EpochLog

OBJECTIVE = "val_competition_score"  # a run's score on its validation studies, or out of fold for a CV


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


def create_study(name: str, storage: str, seed: int, attrs: dict[str, Any]) -> optuna.Study:
    """A new study (TPE with `seed`, median pruning once two trials have finished) holding `attrs`:
    what a resumed sweep needs (its MLflow run, base config, space, trials, folds)."""
    study = optuna.create_study(
        study_name=name, storage=storage, direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )  # fmt: skip
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def reopen_study(name: str, storage: str) -> optuna.Study:
    """A stopped sweep's study. Trials it left running failed: they are not asked again, and a new
    trial takes their place; the finished ones are kept as they are."""
    study = optuna.load_study(study_name=name, storage=storage)
    stopped = [trial.number for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))]
    for number in stopped:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    study.set_user_attr("abandoned", [*study.user_attrs.get("abandoned", []), *stopped])
    return study


@dataclass
class SweepTrials:
    """A sweep's trials: ask, report epochs (and prune), tell. `folds` > 0: each trial is a
    cross-validation, watched through its first fold and judged on its out-of-fold score."""

    study: optuna.Study
    settings: list[Setting]
    workdir: str
    folds: int = 0
    tracking_uri: str | None = None

    def remaining(self, total: int) -> int:
        """How many of `total` trials are still to finish (a trial abandoned by a stopped sweep does not count)."""
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        abandoned = set(self.study.user_attrs.get("abandoned", []))
        return total - sum(1 for t in self.study.get_trials(states=finished) if t.number not in abandoned)

    def ask(self) -> tuple[optuna.trial.Trial, dict[str, Any], str, Path]:
        """A new trial: (trial, its settings, its run name, the run folder whose epochs it reports)."""
        trial = self.study.ask()
        values = suggest(trial, self.settings)
        run_name = f"{self.study.study_name}-trial-{trial.number}"
        trial.set_user_attr("run_name", run_name)
        workspace = Workspace(self.workdir)
        run_dir = workspace.cross_validation(run_name).fold(0).root if self.folds else workspace.run(run_name).root
        return trial, values, run_name, run_dir

    def report(self, trial: optuna.trial.Trial, run_dir: Path, reported: list[int]) -> str | None:
        """Report the trial's new epochs (its epoch log) to Optuna; when Optuna prunes it, write its
        STOP file (training ends after the epoch it is in) and return what happened, in words."""
        news = None
        folder = RunFolder(run_dir)
        stop = folder.stop_request
        for stats in EpochLog(folder.epochs_log).read()[len(reported) :]:
            trial.report(stats.val_loss, stats.epoch)
            reported.append(stats.epoch)
            if trial.should_prune() and not stop.exists():
                stop.touch()
                news = f"trial {trial.number} pruned after epoch {stats.epoch} (validation loss {stats.val_loss:.4f})"
        return news

    def tell(self, trial: optuna.trial.Trial, run_dir: Path, error: str | None) -> str:
        """The trial's end, to Optuna and on its MLflow run (tags; a pruned run KILLED): "complete",
        "pruned" (it was asked to stop, whatever its run said then) or "failed" (`error`, kept)."""
        pruned = RunFolder(run_dir).stop_request.exists()
        if error is None:
            state = "complete"
            self.study.tell(trial, trial_score(run_dir, bool(self.folds)))
        elif pruned:
            state = "pruned"
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            state = "failed"
            trial.set_user_attr("error", error[:500])
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        run_id = trial_run_id(run_dir, bool(self.folds))
        if run_id is not None:
            tags = {"sweep_trial": trial.number, "sweep_state": state, "pruned": str(pruned)}
            tracking.set_tags(run_id, tags, self.tracking_uri)
            if pruned:
                tracking.end_run(run_id, "KILLED", self.tracking_uri)
        return state

    def best(self) -> optuna.trial.FrozenTrial | None:
        """The completed trial with the lowest score (None before one completes)."""
        done = [trial for trial in self.study.trials if trial.state == optuna.trial.TrialState.COMPLETE]
        return min(done, key=lambda trial: trial.value) if done else None


def trial_run_id(run_dir: Path, folds: bool) -> str | None:
    """The MLflow run of a trial, from the state its pipeline keeps in its folder (None before that)."""
    state = CVFolder(Path(run_dir).parent).pipeline_state if folds else RunFolder(run_dir).pipeline_state
    return json.loads(state.read_text())["run_id"] if state.is_file() else None


def trial_score(run_dir: Path, folds: bool) -> float:
    """The trial's score: its evaluation's, or its cross-validation's out-of-fold score."""
    if folds:
        metrics = CVFolder(Path(run_dir).parent).summary_files()["metrics"]
    else:
        metrics = RunFolder(run_dir).evaluation_files()["metrics"]
    return float(json.loads(metrics.read_text())[OBJECTIVE])
