"""The `spine` command line, run through typer's runner (same process, real files)."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from flows.cli import app
from flows.config import PipelineConfig
from spine_model.core.catalog import Workspace

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "ingest", "preprocess", "train", "evaluate", "stack"):
        assert command in result.output


def test_train_has_an_option_for_every_config_field():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name, _field in PipelineConfig.model_fields.items():
        if name != "data_dir":
            assert "--" + name.replace("_", "-") in result.output, name
    assert "--no-pretrained" in result.output


def test_synth_then_ingest(tmp_path):
    data = tmp_path / "data"
    result = runner.invoke(
        app,
        ["synth", "--out", str(data), "--studies", "3", "--test-studies", "1", "--image-size", "32", "--slices", "5"],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 3 train + 1 test studies" in result.output
    out = tmp_path / "long.parquet"
    result = runner.invoke(app, ["ingest", str(data), "--out", str(out), "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    assert "nothing skipped" in result.output
    assert len(pd.read_parquet(out)) == len(pd.read_csv(data / "train_label_coordinates.csv"))
    # The pipeline's own ingest step: its long table and labels in the dataset's cache folder.
    cache = Workspace(tmp_path / "work").dataset(data)
    assert pd.read_parquet(cache.long_table).equals(pd.read_parquet(out))
    assert len(pd.read_parquet(cache.labels)) == 3


def test_preprocess_counts_the_rows_training_will_drop(tiny_copy, tmp_path):
    coordinates = pd.read_csv(tiny_copy / "train_label_coordinates.csv")
    first = coordinates.iloc[0]
    image = tiny_copy / "train_images" / str(first.study_id) / str(first.series_id) / f"{first.instance_number}.dcm"
    image.write_bytes(image.read_bytes()[:300])  # truncated: unreadable
    on_it = int(
        (
            (coordinates["series_id"] == first.series_id) & (coordinates["instance_number"] == first.instance_number)
        ).sum()
    )
    args = ["preprocess", str(tiny_copy), "--store-size", "32", "--workers", "1", "--workdir", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{len(coordinates) - on_it} of {len(coordinates)} coordinate rows placed" in result.output
    assert f"dropped in training: {on_it} point(s): image not in the volume store" in result.output
    assert Workspace(tmp_path).dataset(tiny_copy).labels.is_file()  # ingested as the flow does


def test_bad_data_is_a_one_line_error_not_a_traceback(tiny_copy):
    (tiny_copy / "train.csv").unlink()
    result = runner.invoke(app, ["ingest", str(tiny_copy)])
    assert result.exit_code == 1
    assert "lacks train.csv" in result.output and "Traceback" not in result.output


def test_evaluate_rejects_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a run folder" in result.output


def test_preprocess_builds_the_volume_store_once(tiny_data, tmp_path):
    args = ["preprocess", str(tiny_data), "--split", "test", "--store-size", "32", "--workers", "1"]
    result = runner.invoke(app, [*args, "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    n_series = len(pd.read_csv(tiny_data / "test_series_descriptions.csv"))
    assert f"{n_series} series, {n_series} written" in result.output
    again = runner.invoke(app, [*args, "--workdir", str(tmp_path)])
    assert f"0 written, {n_series} already done" in again.output
    assert list(tmp_path.glob("cache/*/volumes_test_32/index.parquet"))


def test_train_rejects_settings_its_family_cannot_use(tiny_data, tmp_path):
    result = runner.invoke(app, ["train", str(tiny_data), "--model-family", "seed", "--backbone", "efficientnet_b0"])
    assert result.exit_code == 1
    assert "needs a ResNet backbone" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", str(tiny_data), "--model-family", "nope"])
    assert result.exit_code != 0 and "nope" in result.output


def test_a_tracking_uri_with_credentials_is_refused(tiny_data):
    result = runner.invoke(app, ["train", str(tiny_data), "--tracking-uri", "http://me:secret@127.0.0.1:5000"])
    assert result.exit_code == 1
    assert "must not hold credentials" in result.output and "secret" not in result.output.replace(
        "MLFLOW_TRACKING_PASSWORD", ""
    )


def test_the_stack_follows_the_checkout_it_is_started_from(tmp_path):
    from flows.stack import PROJECT_DIR, LocalStack, resolve_project_dir

    other = tmp_path / "other-checkout"
    other.mkdir()
    (other / "prefect.yaml").write_text("name: spine-pipeline\n")
    assert resolve_project_dir(cwd=other) == other.resolve()  # started there: that checkout
    assert resolve_project_dir(cwd=tmp_path) == PROJECT_DIR  # no prefect.yaml here: the installed one
    assert resolve_project_dir(other, cwd=tmp_path) == other.resolve()
    stack = LocalStack(tmp_path / "state", resolve_project_dir(cwd=other))
    assert stack.env()["SPINE_PROJECT_DIR"] == str(other.resolve())  # deployments resolve the code there

    result = runner.invoke(app, ["stack", "--project-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")])
    assert result.exit_code == 1
    assert "has no prefect.yaml" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()  # refused before anything started
