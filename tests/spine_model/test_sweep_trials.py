"""The sweep's bookkeeping without Prefect (spine_model.pipeline.sweep): trials asked with their run
folders, epochs reported from the epoch log, a hopeless trial pruned through its STOP file, ends
told to Optuna, and a reopened study that gives up the trials a stopped sweep left running."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from spine_model.core.config import TrainConfig
from spine_model.pipeline.sweep import (
    OBJECTIVE,
    SweepTrials,
    create_study,
    read_space,
    reopen_study,
    trials_table,
)
from spine_model.training.history import EpochLog, EpochStats


def _train(run_dir: Path, losses: list[float], score: float | None = None) -> None:
    """What a trial's pipeline leaves in its run folder: an epoch log, then (finished) its metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EpochLog(run_dir / "epochs.jsonl")
    for epoch, loss in enumerate(losses, 1):
        log.append(EpochStats(epoch, loss, 0.5, loss, 0.5, 1e-3, 1.0))
    if score is not None:
        (run_dir / "evaluation").mkdir(exist_ok=True)
        (run_dir / "evaluation" / "metrics.json").write_text(json.dumps({OBJECTIVE: score}))


def _book(tmp_path: Path, storage: str) -> SweepTrials:
    settings = read_space({"lr": [1e-3, 1e-2, 1e-1]}, TrainConfig(model_family="crops"))
    study = create_study("s", storage, seed=1, attrs={"trials": 4})
    return SweepTrials(study, settings, str(tmp_path / "out"))


def test_trials_are_asked_reported_pruned_and_told(tmp_path):
    book = _book(tmp_path, f"sqlite:///{tmp_path / 'sweeps.db'}")
    assert book.remaining(4) == 4
    scores = {}
    for number, score in enumerate((0.9, 0.7)):  # two trials complete: the pruner has a median
        trial, values, run_name, run_dir = book.ask()
        assert run_name == f"s-trial-{number}" and run_dir == Path(tmp_path / "out" / "runs" / run_name)
        assert set(values) == {"lr"} and values["lr"] in (1e-3, 1e-2, 1e-1)
        _train(run_dir, [1.0, 0.8, 0.6], score)
        reported: list[int] = []
        assert book.report(trial, run_dir, reported) is None and reported == [1, 2, 3]
        assert book.tell(trial, run_dir, None) == "complete"
        scores[number] = score
    trial, _, _, run_dir = book.ask()
    _train(run_dir, [5.0])  # far worse than the others' first epoch
    reported = []
    news = book.report(trial, run_dir, reported)
    assert news and "pruned after epoch 1" in news and (run_dir / "STOP").exists()
    assert book.tell(trial, run_dir, "TrainingStopped: stopped on request") == "pruned"
    trial, _, _, run_dir = book.ask()
    _train(run_dir, [0.9])
    assert book.tell(trial, run_dir, "RuntimeError: out of memory") == "failed"
    assert book.remaining(4) == 0
    table = trials_table(book.study)
    assert list(table["state"]) == ["complete", "complete", "pruned", "fail"]  # Optuna's names
    assert list(table["run"]) == [f"s-trial-{n}" for n in range(4)]
    assert book.best().number == 1 and book.best().value == scores[1]
    assert book.study.trials[3].user_attrs["error"] == "RuntimeError: out of memory"


def test_a_reopened_study_gives_up_the_trials_left_running_and_asks_new_ones(tmp_path):
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    book = _book(tmp_path, storage)
    trial, _, _, run_dir = book.ask()
    _train(run_dir, [0.8], 0.8)
    book.tell(trial, run_dir, None)
    book.ask()  # the sweep stopped while this one trained
    reopened = SweepTrials(reopen_study("s", storage), book.settings, book.workdir)
    states = [trial.state for trial in reopened.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert reopened.study.user_attrs["abandoned"] == [1] and reopened.study.user_attrs["trials"] == 4
    assert reopened.remaining(4) == 3  # the abandoned trial does not count as one of the four
    trial, _, run_name, _ = reopened.ask()
    assert trial.number == 2 and run_name == "s-trial-2"
