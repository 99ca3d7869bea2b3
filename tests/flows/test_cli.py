"""The `spine` command line, run through typer's runner (same process, real files)."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from flows.cli import app
from flows.config import PipelineConfig

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
    result = runner.invoke(app, ["ingest", str(data), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "nothing skipped" in result.output
    assert len(pd.read_parquet(out)) == len(pd.read_csv(data / "train_label_coordinates.csv"))


def test_bad_data_is_a_one_line_error_not_a_traceback(tiny_copy):
    (tiny_copy / "train.csv").unlink()
    result = runner.invoke(app, ["ingest", str(tiny_copy)])
    assert result.exit_code == 1
    assert "train.csv not found" in result.output and "Traceback" not in result.output


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
