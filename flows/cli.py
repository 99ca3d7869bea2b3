"""The `spine` command line: synthetic data, ingestion, the volume store, training, evaluation, prediction.

Heavy imports (torch, Prefect, MLflow) happen inside the commands, so `--help` stays fast.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import flows  # noqa: F401  (sets the offline defaults before Prefect or MLflow load)
from flows.config import PipelineConfig
from spine_model.core.catalog import CHAMPION_URI, DEFAULT_WORKDIR, DEMO_DATA, MODEL_NAME
from spine_model.tracking.runs import DEFAULT_EXPERIMENT

app = typer.Typer(
    help="RSNA 2024 lumbar spine degeneration pipeline: Kaggle data in, a model family (seed SpineNet "
    "or crops of adjacent slices) trained, evaluated with the competition metric, tracked in MLflow, "
    "orchestrated by Prefect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

TRACKING_URI_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)"


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=1)


@contextmanager
def _stoppable() -> Iterator[None]:
    """Around a command that runs Prefect flows: Ctrl-C and SIGTERM stop the run through its own
    clean-up (spine_model.core.interrupts), and Prefect's temporary server, when one is started, is out
    of their reach until the run has reported how it ended (flows/server.py)."""
    from flows.server import detach_temporary_server
    from spine_model.core.interrupts import stop_on_signals

    detach_temporary_server()
    with stop_on_signals():
        yield


def _stopped(stop: KeyboardInterrupt, resume: str) -> typer.Exit:
    """What a person reads after stopping a run: how to go on; exit status 130 (SIGINT) or 143 (SIGTERM)."""
    from spine_model.core.interrupts import RunInterrupted, resume_hints

    hints = resume_hints() or [resume]
    err.print(f"\n[bold yellow]stopped:[/] {stop or 'interrupted'}; resume with: {hints[-1]}")
    return typer.Exit(code=stop.exit_status if isinstance(stop, RunInterrupted) else 130)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="folder to write the Kaggle layout into")] = DEMO_DATA,
    studies: Annotated[int, typer.Option(min=1, help="train studies")] = 100,
    test_studies: Annotated[int, typer.Option(min=0, help="test studies (scored via test_solution.csv)")] = 10,
    image_size: Annotated[int, typer.Option(min=16, help="DICOM width in pixels (heights vary)")] = 96,
    slices: Annotated[int, typer.Option(min=5, help="slices per series")] = 10,
    seed: Annotated[int, typer.Option(help="random seed; same seed, same files")] = 0,
    difficulty: Annotated[
        str,
        typer.Option(
            help="'realistic': labels a noisy read of continuous grades the images show, the truth "
            "(synthetic_posteriors.csv) beside them, a best attainable score near the real leaderboard's; "
            "'easy': labels set the images (a clear signal, for tests)"
        ),
    ] = "realistic",
) -> None:
    """Write a synthetic dataset in the exact Kaggle layout (DICOM + CSVs)."""
    from spine_model.data.synth import DIFFICULTIES, generate_dataset

    if difficulty not in DIFFICULTIES:
        raise _fail(f"--difficulty must be one of {', '.join(DIFFICULTIES)}, not {difficulty!r}")
    summary = generate_dataset(out, studies, test_studies, image_size, slices, seed, difficulty=difficulty)
    console.print(summary.describe())


@app.command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(help="Kaggle-layout data folder")],
    out: Annotated[Path | None, typer.Option(help="also copy the long table to this parquet file")] = None,
    workdir: Annotated[Path, typer.Option(help="outputs folder")] = DEFAULT_WORKDIR,
) -> None:
    """Build the long table (one row per coordinate row, with the study's 25 labels) and the labels
    as parquet, in WORKDIR/cache/: the pipeline's own ingest step, whose output it then reuses."""
    import shutil

    from spine_model.core.catalog import Workspace
    from spine_model.data.ingest import DataError
    from spine_model.pipeline.data import ingest_step

    try:
        ingested = ingest_step(data_dir, Workspace(workdir).dataset(data_dir))
    except DataError as error:
        raise _fail(str(error)) from None
    console.print(f"{ingested.summary}\nwrote {ingested.table_path} and {ingested.labels_path}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        console.print(f"copied the long table to {shutil.copyfile(ingested.table_path, out)}")


@app.command()
def preprocess(
    data_dir: Annotated[Path, typer.Argument(help="Kaggle-layout data folder")],
    split: Annotated[
        str, typer.Option(help="'train' (the series with coordinate rows) or 'test' (all listed)")
    ] = "train",
    store_size: Annotated[int, typer.Option(min=16, help="in-plane size of the stored slices in pixels")] = 256,
    workers: Annotated[int | None, typer.Option(min=1, help="processes (default: all cores)")] = None,
    workdir: Annotated[Path, typer.Option(help="outputs folder")] = DEFAULT_WORKDIR,
) -> None:
    """Decode every series the split needs into a volume store once (reruns redo only what changed).

    One slice-ordered uint8 array per series (memory-mapped in training) and a parquet index, under
    WORKDIR/cache/; training, evaluation and prediction all read it. The pipeline's own steps: for
    'train', ingest first, and the coordinate rows whose image could not be stored are counted by
    reason, as training would drop them.
    """
    from spine_model.core.catalog import Workspace
    from spine_model.data.ingest import DataError
    from spine_model.data.volumes import VolumeStore, describe_unplaced, locate_points
    from spine_model.pipeline.data import ingest_step, series_to_store, store_step

    cache = Workspace(workdir).dataset(data_dir)
    try:
        table = ingest_step(data_dir, cache).read()[0] if split == "train" else None
        series = series_to_store(data_dir, split, table)
    except DataError as error:
        raise _fail(str(error)) from None
    store_root = cache.volume_store(split, store_size)
    report = store_step(data_dir, split, series, store_root, store_size, workers)
    console.print(f"{report.describe()}\nvolume store in {store_root}")
    if table is not None:
        store = VolumeStore(store_root)
        located, unplaced = locate_points(table, store.index, store.size)
        console.print(f"{len(located)} of {len(table)} coordinate rows placed on stored slices")
        for line in describe_unplaced(unplaced):
            console.print(f"  dropped in training: {line}")


@app.command()
def validate(
    data_dir: Annotated[Path, typer.Argument(help="Kaggle-layout data folder")],
    split: Annotated[str, typer.Option(help="'train' (CSVs, coordinates and images) or 'test'")] = "train",
    workers: Annotated[int | None, typer.Option(min=1, help="processes reading DICOM headers (default: all)")] = None,
) -> None:
    """Report every problem of a data folder, with counts and examples; exit 1 when it is not usable.

    Errors (missing files, unreadable CSVs, unknown strings, bad ids) stop a run; warnings are what
    training skips, counts and logs (e.g. missing images, repeated rows, points outside their image,
    labels without points, files no decoder reads). Train runs the same checks first.
    """
    from spine_model.data.validate import validate_data

    report = validate_data(data_dir, split, workers, progress=sys.stderr.isatty())
    typer.echo(report.describe())
    if not report.usable:
        raise typer.Exit(code=1)


def _with_model_options(model: type, positional: str):
    """Give a command one CLI option per field of a pydantic model (help = the field's description)."""

    from flows.config import form_order, section_of

    def decorate(func):
        parameters = []
        for name in form_order(model.form):  # the run form's order, one help panel per section
            field = model.model_fields[name]
            flag = "--" + name.replace("_", "-")
            panel = {"rich_help_panel": section_of(name, model.form)}
            if name == positional:  # required, but for `--resume RUN_DIR` (checked by the command)
                default = typer.Argument(None, help=field.description, show_default=False)
            elif field.annotation is bool:
                default = typer.Option(field.default, f"{flag}/--no-{flag[2:]}", help=field.description, **panel)
            else:
                default = typer.Option(field.default, flag, help=field.description, **panel)
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if name == positional else inspect.Parameter.KEYWORD_ONLY
            annotation = field.annotation | None if name == positional else field.annotation
            parameters.append(inspect.Parameter(name, kind, default=default, annotation=annotation))
        parameters.sort(key=lambda p: p.kind)
        func.__signature__ = inspect.Signature(parameters)
        return func

    return decorate


def _train_command(**options) -> None:
    """Train a model family with the Prefect flow `train-pipeline`; every setting is an option.

    Defaults are the seed notebook's settings (family `seed`) for real data on a GPU. The
    recommended family is `--model-family crops`; add e.g. `--store-size 96 --crop-size 32
    --epochs 4 --no-pretrained` for a quick CPU run on synthetic data. `spine train --resume
    RUN_DIR` goes on with an interrupted run from its last saved epoch.
    """
    from flows.train import train_pipeline
    from spine_model.core.catalog import RunFolder

    result, config = _run_flow(train_pipeline, PipelineConfig, options, "spine train --resume RUN_DIR")
    run_dir = Path(str(result["run_dir"]))
    console.print()
    typer.echo(RunFolder(run_dir).evaluation_files()["summary"].read_text())
    _print_where_to_look(run_dir, str(result["mlflow_run_id"]), config.tracking_uri)


def _cv_command(**options) -> None:
    """Cross-validate a configuration with the Prefect flow `cross-validate`: K folds by study, each
    trained as `spine train` trains, scored out of fold, calibrated, served as one ensemble.

    `--dispatch work-pool` runs the folds as concurrent flow runs of the gpu pool (as many at once
    as the pool's concurrency limit allows); `spine cv --resume CV_DIR` goes on with an interrupted
    cross-validation, keeping the folds that finished.
    """
    from flows.config import CVConfig
    from flows.cv import cross_validate
    from spine_model.core.catalog import CVFolder

    result, config = _run_flow(cross_validate, CVConfig, options, "spine cv --resume CV_DIR")
    cv_dir = Path(str(result["run_dir"]))
    console.print()
    typer.echo(CVFolder(cv_dir).summary_files()["summary"].read_text())
    _print_where_to_look(cv_dir, str(result["mlflow_run_id"]), config.tracking_uri)


def _run_flow(flow, config_type: type, options: dict, resume_hint: str):
    """Build the flow's config from the command's options and run the flow in this process, turning the
    errors a person can fix into one line and a stop into its resume line; (result, config)."""
    from pydantic import ValidationError

    from spine_model.data.ingest import DataError
    from spine_model.families.backbones import PretrainedWeightsUnavailable
    from spine_model.pipeline.preflight import SetupError
    from spine_model.pipeline.run import PipelineRun
    from spine_model.training.loop import TrainingDiverged

    if options["data_dir"] is None and not options.get("resume"):
        raise _fail("DATA_DIR is missing: give the Kaggle-layout data folder (or --resume RUN_DIR)")
    if options["data_dir"] is None:
        options.pop("data_dir")
    else:
        options["data_dir"] = str(options["data_dir"])
    try:
        config = config_type(**options)
    except ValidationError as error:
        raise _fail("; ".join(e["msg"] for e in error.errors())) from None
    if config.resume:
        try:  # before any Prefect flow run starts: a clear line, not a failed run
            PipelineRun.load(config.resume, config_type)
        except (ValueError, ValidationError) as error:
            raise _fail(str(error).splitlines()[0]) from None
    try:
        with _stoppable():
            return flow(config), config
    except (DataError, SetupError, PretrainedWeightsUnavailable, FileNotFoundError, TrainingDiverged) as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt as stop:
        raise _stopped(stop, f"{resume_hint} (the folder the log names)") from None


def _print_where_to_look(run_dir: Path, run_id: str, tracking_uri: str | None) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    from spine_model import tracking

    console.print(f"[bold]Run folder:[/] {run_dir}")
    console.print(f"[bold]MLflow:[/] {tracking.run_link(run_id, tracking_uri)}")
    if PREFECT_API_URL.value():
        console.print(f"[bold]Prefect UI:[/] {PREFECT_UI_URL.value()}")
    else:
        console.print(
            "[bold]Prefect:[/] this run used a temporary Prefect server; start one with "
            "`prefect server start` (or `make stack`) and set PREFECT_API_URL to keep the history"
        )


app.command(name="train")(_with_model_options(PipelineConfig, "data_dir")(_train_command))


def _register_cv() -> None:
    from flows.config import CVConfig

    app.command(name="cv")(_with_model_options(CVConfig, "data_dir")(_cv_command))


_register_cv()


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `spine train`")],
    checkpoint: Annotated[
        str, typer.Option(help="'best' (lowest validation loss) or 'last' (latest epoch) checkpoint")
    ] = "best",
) -> None:
    """Evaluate a run's checkpoint on its validation split and print the report."""
    from spine_model.pipeline.evaluate import evaluate_step
    from spine_model.pipeline.run import RunInputs

    if checkpoint not in ("best", "last"):
        raise _fail(f"--checkpoint must be 'best' or 'last', not {checkpoint!r}")
    try:
        evaluation, paths = evaluate_step(RunInputs.load(run_dir), checkpoint)
    except FileNotFoundError as error:
        raise _fail(str(error)) from None
    typer.echo(evaluation.describe())
    console.print(f"\nreports in {paths['reports_text'].parent}")


@app.command()
def compare(
    experiment: Annotated[str, typer.Option(help="MLflow experiment to rank")] = DEFAULT_EXPERIMENT,
    tracking_uri: Annotated[str | None, typer.Option(help=TRACKING_URI_HELP)] = None,
    model_name: Annotated[str, typer.Option(help="registered model name")] = MODEL_NAME,
    update_registry: Annotated[
        bool, typer.Option("--update-registry/--no-update-registry", help="register the best run, move aliases")
    ] = True,
    rebase: Annotated[
        bool,
        typer.Option(
            "--rebase",
            help="when the best run was validated on other studies than the champion (new data, another "
            "--split-seed), re-score the champion on that run's validation studies and decide on that",
        ),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(help="with --rebase: the data folder of those studies (default: the one that run trained on)"),
    ] = None,
    workdir: Annotated[
        Path, typer.Option(help="with --rebase: outputs folder (the volume store it reads)")
    ] = DEFAULT_WORKDIR,
) -> None:
    """Rank an experiment's finished runs by validation competition score; update champion/challenger.

    `champion` moves only when the best run beats the current champion on the same validation
    studies; `challenger` always points at the newest run. Runs validated on other studies do not
    compare: `--rebase` re-scores the champion on the best run's validation studies (the champion may
    have trained on some of them, which favours the champion) and promotes the run if it still wins.
    """
    from rich.table import Table

    from flows.compare import compare_models
    from spine_model.evaluation.compare import comparison_table

    result = compare_models(
        experiment, tracking_uri, model_name, update_registry, rebase=rebase,
        data_dir=None if data is None else str(data), workdir=str(workdir),
    )  # fmt: skip
    frame = comparison_table(result["ranked"])
    if frame.empty:
        raise _fail(f"no finished run with a score in experiment {experiment!r}")
    table = Table(title=f"{experiment}: best first (lower score is better)")
    for column in frame.columns:
        table.add_column(str(column), justify="right" if column not in ("run_id", "name", "settings") else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*("" if value is None else str(value) for value in row))
    Console(width=max(console.width, 150)).print(table)  # a ranking is unreadable wrapped at 80
    if result["decision"] is not None:
        console.print(f"[bold]{model_name}:[/] {result['decision'].describe()}")


@app.command()
def predict(
    data_dir: Annotated[Path, typer.Argument(help="Kaggle-layout data folder")],
    model: Annotated[str, typer.Option(help="serving model URI, e.g. models:/spine-net@champion")] = CHAMPION_URI,
    split: Annotated[str, typer.Option(help="which {split}_series_descriptions.csv / {split}_images to read")] = "test",
    out: Annotated[Path, typer.Option(help="submission CSV to write")] = Path("submission.csv"),
    use_coordinates: Annotated[
        bool, typer.Option("--use-coordinates/--no-use-coordinates", help="use train_label_coordinates.csv points")
    ] = False,
    tracking_uri: Annotated[str | None, typer.Option(help=TRACKING_URI_HELP)] = None,
    workdir: Annotated[Path, typer.Option(help="outputs folder")] = DEFAULT_WORKDIR,
    workers: Annotated[int | None, typer.Option(min=1, help="decoding processes (default: all cores)")] = None,
) -> None:
    """Predict every study of a split into a Kaggle submission (25 rows per study).

    The split's series are decoded once into a volume store under WORKDIR. Scores the submission
    beside the prior baseline when the data folder has test_solution.csv.
    """
    from flows.predict import predict as predict_flow
    from spine_model.data.ingest import DataError
    from spine_model.pipeline.preflight import SetupError

    try:
        with _stoppable():
            result = predict_flow(
                str(data_dir), model, split, str(out), use_coordinates, tracking_uri, str(workdir), workers
            )
    except (DataError, SetupError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    except KeyboardInterrupt as stop:
        raise _stopped(stop, "run the same `spine predict` again (the volume store keeps what is decoded)") from None
    console.print(f"wrote {result['rows']} rows ({result['rows'] // 25} studies) to {result['submission']}")
    if result["scores"]:
        from spine_model.evaluation.metric import describe_scores

        console.print(describe_scores(result["scores"]))


@app.command(name="ensemble")
def ensemble_command(
    cv_dirs: Annotated[list[Path], typer.Argument(help="cross-validation folders written by `spine cv`")],
    run_name: Annotated[str | None, typer.Option(help="name of the ensemble's folder and MLflow run")] = None,
    compare_after: Annotated[
        bool, typer.Option("--compare/--no-compare", help="rank the experiment's runs and update the registry after")
    ] = True,
) -> None:
    """Serve the fold models of several cross-validations (other configurations, same data) as one
    model: probabilities averaged, scored out of fold beside the prior, calibrated, registered."""
    from flows.ensemble import ensemble
    from spine_model.core.catalog import CVFolder

    try:
        with _stoppable():
            result = ensemble([str(d) for d in cv_dirs], run_name, compare_after=compare_after)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error).splitlines()[0]) from None
    typer.echo(CVFolder(result["run_dir"]).summary_files()["summary"].read_text())
    _print_where_to_look(Path(str(result["run_dir"])), str(result["mlflow_run_id"]), None)


def _sweep_command(**options) -> None:
    """Search settings with the Prefect flow `sweep`: each trial a `spine train` run (or, with
    --folds, a cross-validation) nested in the sweep's MLflow run, compared there.

    --space names a YAML file, one entry per setting: a list of choices, or {low, high, log}.
    Optuna (TPE, --sweep-seed) picks the trials and prunes hopeless ones on their validation loss;
    the study is kept in WORKDIR/sweeps.db (or --storage), so `spine sweep --resume NAME` goes on
    with a stopped sweep without repeating a finished trial.
    """
    from flows.sweep import sweep
    from spine_model.pipeline.sweep import SpaceError

    knobs = {key: options.pop(key) for key in ("space", "trials", "folds", "parallel", "sweep_seed", "storage")}
    name = options.pop("run_name", None)
    resume = options.pop("resume", None)
    if resume:
        options["data_dir"] = options["data_dir"] or "."
    elif knobs["space"] is None:
        raise _fail("--space is missing: a YAML file of the settings to search (see `spine sweep --help`)")
    try:
        import yaml

        space = {} if resume else yaml.safe_load(Path(knobs["space"]).read_text())
        config, result = _run_flow(
            lambda config: sweep(config, space, knobs["trials"], knobs["folds"], knobs["parallel"], name,
                                 knobs["storage"], knobs["sweep_seed"], resume),
            PipelineConfig, options, "spine sweep --resume NAME",
        )[::-1]  # fmt: skip
    except (SpaceError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    console.print(f"[bold]sweep {result['name']}:[/] best {result['best_score']} with {result['best_params']}")
    from spine_model import tracking

    console.print(f"[bold]MLflow:[/] {tracking.run_link(result['mlflow_run_id'], config.tracking_uri)}")


def _with_sweep_options(func):
    """`spine train`'s options (the base configuration), then the sweep's own."""
    import inspect as _inspect

    signature = _inspect.signature(func)
    extra = [
        ("space", Path | None, typer.Option(None, help="YAML file of the settings to search", rich_help_panel="Sweep")),
        ("trials", int, typer.Option(12, min=1, help="trials in all", rich_help_panel="Sweep")),
        ("folds", int, typer.Option(0, min=0, help="0: judge on the validation split; K: out of fold, K folds",
                                    rich_help_panel="Sweep")),
        ("parallel", int, typer.Option(2, min=1, help="trials at once with --dispatch work-pool",
                                       rich_help_panel="Sweep")),
        ("sweep_seed", int, typer.Option(42, help="the sampler's seed", rich_help_panel="Sweep")),
        ("storage", str | None, typer.Option(None, help="Optuna storage URL (default: WORKDIR/sweeps.db)",
                                             rich_help_panel="Sweep")),
    ]  # fmt: skip
    parameters = list(signature.parameters.values())
    parameters += [_inspect.Parameter(n, _inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in extra]
    func.__signature__ = signature.replace(parameters=sorted(parameters, key=lambda p: p.kind))
    return func


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="work pool to take flow runs from (e.g. gpu, cpu)")],
    name: Annotated[str | None, typer.Option(help="worker name shown in the Prefect UI")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="flow runs at once (default: no limit)")] = None,
    healthcheck: Annotated[
        bool, typer.Option("--with-healthcheck/--no-healthcheck", help="serve Prefect's worker health check")
    ] = False,
    grace: Annotated[
        float, typer.Option(min=1, help="seconds the flow runs get to stop cleanly before they are killed")
    ] = 30.0,
) -> None:
    """A Prefect process worker (`prefect worker start --type process`) whose flow runs stop within
    seconds when it is told to stop.

    On SIGTERM (a supervisor: systemd, `docker stop`, Kubernetes) or Ctrl-C, every flow run it
    started gets SIGTERM first and ends through its own clean-up (last checkpoint kept, MLflow run
    KILLED with the epoch reached and how to resume it, Prefect flow run Crashed), then the worker
    stops; exit status 143 (130 for Ctrl-C). What outlasts --grace is killed.
    """
    from flows.worker import run_worker

    args = ["--pool", pool, "--type", "process", *(["--name", name] if name else [])]
    args += [*(["--limit", str(limit)] if limit else []), *(["--with-healthcheck"] if healthcheck else [])]
    raise typer.Exit(code=run_worker(args, grace))


@app.command()
def stack(
    state_dir: Annotated[Path, typer.Option(help="folder for server databases, artifacts and logs")] = Path(".stack"),
    prefect_port: Annotated[int, typer.Option(help="Prefect server port on 127.0.0.1")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port on 127.0.0.1")] = 5000,
    workers: Annotated[bool, typer.Option("--workers/--no-workers", help="start cpu and gpu process workers")] = True,
    gpu_slots: Annotated[
        int, typer.Option(min=1, help="flow runs of the gpu pool at once (its concurrency limit): one per GPU")
    ] = 2,
    project_dir: Annotated[
        Path | None,
        typer.Option(
            help="checkout whose prefect.yaml, code and spine_outputs/ the deployments and workers use "
            "[default: the current folder when it holds prefect.yaml, else the installed project]"
        ),
    ] = None,
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres/--sqlite",
            help="backend store of both servers: a PostgreSQL server of the stack's own in STATE_DIR/postgres "
            "(Debian's postgresql package; `make stack-pg`), or sqlite files in STATE_DIR",
        ),
    ] = False,
) -> None:
    """Run a local stack: Prefect + MLflow servers, `cpu`/`gpu` process workers, prefect.yaml deployments.

    Runs in the foreground; Ctrl-C (or SIGTERM) stops every process it started.
    """
    import signal
    import time

    from flows.stack import LocalStack, resolve_project_dir
    from spine_model.tracking import MODEL_TRAINING_VIEW

    try:
        project = resolve_project_dir(project_dir)
    except FileNotFoundError as error:
        raise _fail(str(error)) from None
    console.print(f"project: {project} (its prefect.yaml, code and outputs)")
    database = None
    if postgres:
        from flows.postgres import LocalPostgres, PostgresUnavailable

        try:
            console.print(f"starting PostgreSQL in {state_dir / 'postgres'} ...")
            database = LocalPostgres(state_dir / "postgres").start()
        except PostgresUnavailable as error:
            raise _fail(str(error)) from None
    backends = {}
    if database is not None:
        backends = {
            "prefect_database_url": database.url("prefect", "asyncpg"),
            "mlflow_backend_uri": database.url("mlflow", "psycopg2"),
        }
    local = LocalStack(
        state_dir, project, prefect_port=prefect_port, mlflow_port=mlflow_port, gpu_slots=gpu_slots, **backends
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the `finally` below
    try:
        console.print("starting Prefect and MLflow servers ...")
        local.start_servers()
        console.print("registering work pools cpu, gpu and the deployments of prefect.yaml ...")
        local.deploy()
        if workers:
            local.start_workers()
        console.print(
            f"\n[bold]Prefect UI[/]  {local.ui_url}\n[bold]MLflow UI[/]   {local.mlflow_url}/#/?{MODEL_TRAINING_VIEW}\n"
            f"logs in {local.state_dir / 'logs'}\n\nIn another shell:\n"
            f"  export PREFECT_API_URL={local.api_url} MLFLOW_TRACKING_URI={local.mlflow_url}\n"
            "  prefect deployment run train-pipeline/spine-pipeline\n\nCtrl-C stops the stack."
        )
        while not local.dead():
            time.sleep(2)
        err.print(f"[bold red]stopped:[/] {', '.join(local.dead())} exited; see {local.state_dir / 'logs'}")
        raise typer.Exit(code=1)
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping the stack ...")
        local.stop()
        if database is not None:
            database.stop()


app.command(name="sweep")(_with_sweep_options(_with_model_options(PipelineConfig, "data_dir")(_sweep_command)))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
