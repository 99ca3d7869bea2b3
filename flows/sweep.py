"""`sweep`: a search over settings, each trial a pipeline run that a person compares in MLflow.

Optuna asks for each trial's settings (TPE, fixed seed) over the search space
(spine_model.pipeline.sweep); each trial is a `train-pipeline` run (or, with `folds`, a
`cross-validate` run, judged on its out-of-fold score) nested in the sweep's MLflow run. With
dispatch="local" the trials run one after the other in this process; with "work-pool" they are
`spine-pipeline` (or `cross-validate`) deployment runs, `parallel` at a time, their training on
the gpu pool. While a trial trains, the sweep reads its epoch log and reports each validation
loss to Optuna; a trial whose loss is worse than the median of the others' at the same epoch is
pruned: the sweep asks it to stop (its run folder's STOP file), and its GPU is free for the next.
A trial that fails is recorded as failed, with its message, and the sweep goes on. The study lives
in `storage` (default: `sweeps.db` in the workdir), so that `resume` goes on with a stopped sweep
without repeating a finished trial.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import optuna
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.compare import compare_models
from flows.config import CVConfig, PipelineConfig
from flows.dispatch import ui_link
from flows.train import _prefect_tags, _run_name, train_pipeline
from spine_model import tracking
from spine_model.core.catalog import Workspace
from spine_model.core.files import atomic_write_text
from spine_model.pipeline.sweep import (
    OBJECTIVE,
    SweepTrials,
    create_study,
    markdown_trials,
    plot_scores,
    read_space,
    reopen_study,
    trials_table,
)

POLL_S = 2.0


@flow(name="sweep", log_prints=True)
def sweep(
    config: PipelineConfig = PipelineConfig(),
    space: dict | None = None,
    trials: int = 12,
    folds: int = 0,
    parallel: int = 2,
    name: str | None = None,
    storage: str | None = None,
    seed: int = 42,
    resume: str | None = None,
    first: list[dict] | None = None,
) -> dict:
    """Search `space` over `trials` runs of `config`; returns the best trial's score and settings.

    folds: 0 judges each trial on its validation split; K > 1 on a K-fold cross-validation's
    out-of-fold score. resume: the name of a stopped sweep to go on with (its study, space and
    settings come from its storage). first: settings to try before the sampler's (e.g. the
    hand-picked defaults, to see whether the search beats them).
    """
    logger = get_run_logger()
    storage = storage or f"sqlite:///{Path(config.workdir).resolve() / 'sweeps.db'}"
    Path(config.workdir).mkdir(parents=True, exist_ok=True)
    if resume:
        study = reopen_study(resume, storage)
        attrs = study.user_attrs
        config, space = PipelineConfig(**attrs["config"]), attrs["space"]
        trials, folds, parallel, name = attrs["trials"], attrs["folds"], attrs["parallel"], resume
        tracking.reopen_run(attrs["mlflow_run_id"], attrs["tracking_uri"])
    else:
        name = name or f"sweep-{_run_name(config)}"
        space = dict(space or {})
        read_space(space, config)  # refused before any trial starts
        study = _new_study(name, storage, seed, config, space, trials, folds, parallel)
        for values in first or []:
            study.enqueue_trial(values)
    settings = read_space(space, config)
    run_id, uri = study.user_attrs["mlflow_run_id"], study.user_attrs["tracking_uri"]
    logger.info("sweep %s: %d trials over %s", name, trials, "; ".join(s.describe() for s in settings))
    book = SweepTrials(study, settings, config.workdir, folds, uri)
    runner = _LocalTrials if config.dispatch == "local" else _PoolTrials
    runner(book, config, parallel, run_id).run(trials)
    return _finish(book, config, name, run_id)


def _new_study(name, storage, seed, config, space, trials, folds, parallel) -> optuna.Study:
    """The Optuna study and the sweep's MLflow run, each knowing the other."""
    uri = tracking.resolve_tracking_uri(config.tracking_uri)
    run_id = tracking.start_run(config.experiment, name, {**_prefect_tags(), "sweep": "parent"}, uri)
    tracking.log_params(run_id, {
        "sweep_space": json.dumps(space), "sweep_trials": trials, "sweep_folds": folds, "sweep_seed": seed,
        "sweep_storage": storage.split("@")[-1], "sweep_objective": OBJECTIVE,
        **{f"base_{key}": value for key, value in config.model_dump().items() if value is not None},
    }, uri)  # fmt: skip
    attrs = {
        "mlflow_run_id": run_id, "tracking_uri": uri, "config": config.model_dump(mode="json"), "space": space,
        "trials": trials, "folds": folds, "parallel": parallel,
    }  # fmt: skip
    return create_study(name, storage, seed, attrs)


def _trial_config(config: PipelineConfig, folds: int, values: dict, run_name: str, parent: str) -> PipelineConfig:
    """A trial's pipeline config: the base's, its settings, nested in the sweep's run, no comparison."""
    update = {**values, "run_name": run_name, "parent_run_id": parent, "compare_after": False}
    if folds:
        return CVConfig(**{**config.model_dump(exclude_unset=True), **update, "folds": folds})
    return PipelineConfig(**{**config.model_dump(exclude_unset=True), **update})


class _Trials:
    """What both ways of running trials share: the sweep's book (spine_model.pipeline.sweep), a
    trial's pipeline config, and the log lines."""

    def __init__(self, book: SweepTrials, config: PipelineConfig, parallel: int, parent_run_id: str) -> None:
        self.book, self.config, self.parallel, self.parent = book, config, max(1, parallel), parent_run_id
        self.logger = get_run_logger()

    def remaining(self, total: int) -> int:
        return self.book.remaining(total)

    def ask(self) -> tuple[optuna.trial.Trial, PipelineConfig, Path]:
        trial, values, run_name, run_dir = self.book.ask()
        self.logger.info("trial %d: %s", trial.number, values)
        return trial, _trial_config(self.config, self.book.folds, values, run_name, self.parent), run_dir

    def watch(self, trial: optuna.trial.Trial, run_dir: Path, reported: list[int]) -> None:
        """Report the trial's new epochs; it is asked to stop when Optuna prunes it."""
        news = self.book.report(trial, run_dir, reported)
        if news:
            self.logger.info("%s", news)

    def tell(self, trial: optuna.trial.Trial, run_dir: Path, error: str | None) -> None:
        if self.book.tell(trial, run_dir, error) == "failed":
            self.logger.warning("trial %d failed: %s", trial.number, error[:500])


class _LocalTrials(_Trials):
    """One trial after the other in this process; a thread watches the running trial's epochs."""

    def run(self, total: int) -> None:
        while self.remaining(total) > 0:
            trial, config, run_dir = self.ask()
            reported: list[int] = []
            stop = threading.Event()

            def watch(trial=trial, run_dir=run_dir, reported=reported, stop=stop) -> None:
                while not stop.wait(POLL_S):
                    self.watch(trial, run_dir, reported)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            error = None
            try:
                train_pipeline(config) if not self.book.folds else _cross_validate(config)
            except Exception as failure:  # a failed or pruned trial: recorded, and the sweep goes on
                error = f"{type(failure).__name__}: {failure}"
            finally:
                stop.set()
                watcher.join()
            self.watch(trial, run_dir, reported)
            self.tell(trial, run_dir, error)


class _PoolTrials(_Trials):
    """`parallel` trials at a time as deployment runs (their training on the gpu pool)."""

    def run(self, total: int) -> None:
        running: dict = {}  # flow run id -> (trial, run_dir, epochs reported)
        name = "cross-validate/cross-validate" if self.book.folds else "train-pipeline/spine-pipeline"
        try:
            while self.remaining(total) > 0 or running:
                while len(running) < self.parallel and self.remaining(total) - len(running) > 0:
                    trial, config, run_dir = self.ask()
                    parameters = {"config": config.model_dump(mode="json", exclude_none=True)}
                    child = run_deployment(name, parameters=parameters, timeout=0, flow_run_name=config.run_name)
                    trial.set_user_attr("flow_run", ui_link(child))
                    running[child.id] = (trial, run_dir, [])
                time.sleep(POLL_S)
                with get_client(sync_client=True) as client:
                    for flow_run_id, (trial, run_dir, reported) in list(running.items()):
                        self.watch(trial, run_dir, reported)
                        state = client.read_flow_run(flow_run_id).state
                        if state is not None and state.is_final():
                            self.watch(trial, run_dir, reported)
                            error = None if state.is_completed() else f"{state.name}: {state.message}"
                            self.tell(trial, run_dir, error)
                            del running[flow_run_id]
        except BaseException:  # the sweep stops: its trials stop too
            from flows.dispatch import cancel

            with get_client(sync_client=True) as client:
                cancel([client.read_flow_run(flow_run_id) for flow_run_id in running], "the sweep was stopped")
            raise


def _cross_validate(config: CVConfig) -> dict:
    from flows.cv import cross_validate

    return cross_validate(config)


def _finish(book: SweepTrials, config: PipelineConfig, name: str, run_id: str) -> dict:
    """The sweep's MLflow run (best trial, a picture of the score per setting, the trials' table), its
    Prefect summary, the end of its run, and the comparison that ranks the trials' models."""
    uri, folds = book.tracking_uri, book.folds
    table = trials_table(book.study)
    folder = Workspace(config.workdir).root / "sweeps" / name
    picture = plot_scores(table, book.settings, folder / "scores.png", OBJECTIVE)
    atomic_write_text(folder / "trials.csv", table.to_csv(index=False))
    best = book.best()
    if best is not None:
        tracking.log_params(run_id, {f"best_{key}": value for key, value in best.params.items()}, uri)
        tracking.log_metrics(run_id, {"best_score": best.value, "best_trial": best.number}, tracking_uri=uri)
        tracking.set_tags(run_id, {"best_run": best.user_attrs.get("run_name", "")}, uri)
    counts = table["state"].value_counts().to_dict()
    tracking.log_metrics(run_id, {f"trials_{state}": n for state, n in counts.items()}, tracking_uri=uri)
    tracking.log_artifacts(run_id, [picture], "plots", uri)
    tracking.log_artifacts(run_id, [folder / "trials.csv"], "sweep", uri)
    headline = f"best trial {best.number}: {best.value:.4f} with {best.params}" if best else "no trial completed"
    create_markdown_artifact(
        f"# Sweep `{name}`\n\n{headline} ({OBJECTIVE}{', out of fold' if folds else ''}; lower is better).\n\n"
        f"{markdown_trials(table)}\n\n**MLflow:** {tracking.run_link(run_id, uri)} (each trial a nested run)\n",
        key="spine-sweep-summary", description="the sweep's trials",
    )  # fmt: skip
    tracking.end_run(run_id, "FINISHED", uri)
    if config.compare_after:
        compare_models(config.experiment, uri, config.model_name, champion_margin=config.champion_margin)
    return {"best_score": best.value if best else None, "best_params": best.params if best else {},
            "mlflow_run_id": run_id, "trials": table.to_dict(orient="records"), "name": name}  # fmt: skip
