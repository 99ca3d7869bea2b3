import dataclasses
import json
import logging

import pytest

from spine_model.core.catalog import Workspace, image_file
from spine_model.core.config import TrainConfig
from spine_model.evaluation.reports import evaluate_model
from spine_model.inference.prior import load_priors
from spine_model.pipeline.data import ingest_step, series_to_store, store_step
from spine_model.pipeline.evaluate import evaluate_step
from spine_model.pipeline.run import RunData, RunInputs, prepare_run
from spine_model.pipeline.train import train_step
from spine_model.training.checkpoints import load_checkpoint


def test_points_on_unreadable_images_are_dropped_counted_and_logged(tiny_copy, tmp_path, caplog):
    workspace = Workspace(tmp_path)
    cache = workspace.dataset(tiny_copy)
    ingested = ingest_step(tiny_copy, cache)
    table, labels = ingested.read()
    broken = table.iloc[0]
    path = image_file(tiny_copy, "train", broken.study_id, broken.series_id, broken.instance_number)
    path.write_bytes(path.read_bytes()[:200])
    on_broken = (table["series_id"] == broken.series_id) & (table["instance_number"] == broken.instance_number)

    store = store_step(tiny_copy, "train", series_to_store(tiny_copy, "train", table), tmp_path / "s", 32, 1, False)
    config = TrainConfig(model_family="crops", store_size=32, val_fraction=0.25)
    with caplog.at_level(logging.WARNING):
        prepared = prepare_run(RunData(tiny_copy, ingested, table, labels, store), config, workspace.run("r").root)
    assert prepared.facts["data_points_dropped_unreadable"] == int(on_broken.sum()) > 0
    assert prepared.facts["data_images_unreadable"] == 1
    assert any("image not in the volume store" in message for message in caplog.messages)
    points = RunInputs.load(workspace.run("r").root).points
    assert len(points) == len(table) - int(on_broken.sum())
    assert not ((points["series_id"] == broken.series_id) & (points["instance_number"] == broken.instance_number)).any()


def test_restore_best_chooses_the_checkpoint_that_is_evaluated_and_served(tiny_data, tmp_path):
    workspace = Workspace(tmp_path)
    ingested = ingest_step(tiny_data, workspace.dataset(tiny_data))
    table, labels = ingested.read()
    store = store_step(tiny_data, "train", series_to_store(tiny_data, "train", table), tmp_path / "s", 32, 1, False)
    config = TrainConfig(
        model_family="crops", store_size=32, crop_size=16, epochs=1, batch_size=16, num_workers=0, pretrained=False,
        val_fraction=0.25,
    )  # fmt: skip
    prepared = prepare_run(RunData(tiny_data, ingested, table, labels, store), config, workspace.run("r").root)
    run = prepared.inputs()
    train_step(run, progress=False)
    run.folder.best_checkpoint.write_bytes(b"not a checkpoint")  # whoever reads best.pt now fails
    with pytest.raises(Exception, match="pickle|checkpoint|load"):
        evaluate_step(run, progress=False)
    last = dataclasses.replace(run, record=dataclasses.replace(run.record, config=config.model_copy(
        update={"restore_best": False})))  # fmt: skip
    assert last.weights == run.folder.last_checkpoint
    evaluation, paths = evaluate_step(last, progress=False)
    # the last checkpoint's own score, computed apart, is what was evaluated and saved
    model, saved_config = load_checkpoint(run.folder.last_checkpoint)
    prior = load_priors(run.folder.priors)[1]
    direct = evaluate_model(model, run.points, run.labels, run.record.split, run.store, saved_config, prior, False)
    assert evaluation.score == pytest.approx(direct.score) and evaluation.n_studies == direct.n_studies > 0
    assert json.loads(paths["metrics"].read_text())["val_competition_score"] == pytest.approx(direct.score)
