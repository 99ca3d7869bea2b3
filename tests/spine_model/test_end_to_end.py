"""The library alone, end to end on CPU, per family: synth -> ingest -> store -> prepare -> train -> evaluate."""

from __future__ import annotations

import json
import math

import pytest

from spine_model.core.catalog import Workspace
from spine_model.core.config import TrainConfig
from spine_model.data.synth import generate_dataset
from spine_model.pipeline.data import ingest_step, series_to_store, store_step
from spine_model.pipeline.evaluate import evaluate_step
from spine_model.pipeline.run import RunData, RunInputs, prepare_run
from spine_model.pipeline.train import train_step
from tests.conftest import FAMILIES


@pytest.fixture(scope="module")
def data(module_tmp):
    root = module_tmp.mktemp("e2e_data")
    generate_dataset(root, n_studies=12, n_test_studies=2, image_size=64, n_slices=6, seed=11)
    return root


@pytest.mark.parametrize("family_name", FAMILIES)
def test_synth_to_evaluation(family_name, data, tmp_path):
    workspace = Workspace(tmp_path / "out")
    cache, folder = workspace.dataset(data), workspace.run("e2e")
    ingested = ingest_step(data, cache)
    table, labels = ingested.read()
    store = store_step(
        data, "train", series_to_store(data, "train", table), cache.volume_store("train", 48), 48, 1, False
    )
    config = TrainConfig(
        model_family=family_name, pretrained=False, store_size=48, image_size=48, crop_size=24, epochs=1,
        batch_size=16, num_workers=0, lr=1e-3, val_fraction=0.25,
    )  # fmt: skip
    prepared = prepare_run(RunData(data, ingested, table, labels, store), config, folder.root)
    assert prepared.facts["data_train_points"] + prepared.facts["data_val_points"] == len(table)
    assert prepared.facts["model_summary"].startswith(family_name)
    priors = json.loads(folder.priors.read_text())
    assert len(priors["coordinate_prior"]) == 25 and len(priors["class_prior"]) == 5

    run = RunInputs.load(folder.root)
    assert run.record.config == config and len(run.points) == len(table)
    fit = train_step(run, progress=False)
    evaluation, paths = evaluate_step(run, progress=False)

    assert len(fit.history) == 1 and math.isfinite(fit.history[0].val_loss)
    assert evaluation.loss == pytest.approx(fit.history[0].val_loss, rel=1e-5)  # the loop's val loss
    val_points = run.record.split.select(run.points, "val")
    assert evaluation.n_points == len(val_points) and evaluation.n_studies == len(run.record.split.val_study_ids)
    assert math.isfinite(evaluation.score) and math.isfinite(evaluation.prior_score)
    assert len(evaluation.submission) == 25 * len(run.record.split.val_study_ids)
    assert json.loads(paths["metrics"].read_text())["val_competition_score"] == evaluation.score
    assert paths["confusion_png"].stat().st_size > 0 and folder.curves.is_file()
