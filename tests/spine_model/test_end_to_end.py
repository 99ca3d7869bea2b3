"""The library alone, end to end on CPU: synth -> ingest -> preprocess -> train 1 epoch -> evaluate."""

from __future__ import annotations

import json
import math

import pandas as pd

from spine_model.config import TrainConfig
from spine_model.steps import (
    evaluate_step,
    index_step,
    ingest_step,
    preprocess_step,
    priors_step,
    split_step,
    train_step,
)
from spine_model.synth import generate_dataset
from spine_model.workspace import RunRecord, Workspace


def test_synth_to_evaluation(tmp_path):
    data = tmp_path / "data"
    generate_dataset(data, n_studies=12, n_test_studies=2, image_size=64, n_slices=6, seed=11)
    workspace = Workspace(tmp_path / "out")
    run_dir = workspace.run_dir("e2e")

    ingested = ingest_step(data, workspace.dataset_dir(data))
    split = split_step(ingested.table_path, 0.25, 42, run_dir / "split.json")
    prepared = preprocess_step(
        data,
        ingested.table_path,
        workspace.image_store_root(data, 64),
        64,
        run_dir / "ready.parquet",
        workers=1,
        progress=False,
    )
    config = TrainConfig(pretrained=False, image_size=64, epochs=1, batch_size=16, num_workers=0, lr=1e-3)
    slices_path = index_step(data, ingested.table_path, tmp_path / "slices.parquet", workers=1)
    record = RunRecord(
        str(data), prepared.table_path, ingested.labels_path, prepared.store_root, slices_path, config, split
    )
    record.save(run_dir)
    priors = json.loads(priors_step(run_dir).read_text())
    assert len(priors["coordinate_prior"]) == 25 and len(priors["class_prior"]) == 5
    fit = train_step(run_dir, progress=False)
    evaluation, paths = evaluate_step(run_dir, progress=False)

    assert len(fit.history) == 1 and math.isfinite(fit.history[0].val_loss)
    val_rows = pd.read_parquet(prepared.table_path).query("study_id in @split.val_study_ids")
    assert evaluation.n_rows == len(val_rows) and evaluation.n_studies == len(split.val_study_ids)
    assert math.isfinite(evaluation.score) and math.isfinite(evaluation.prior_score)
    assert len(evaluation.submission) == 25 * len(split.val_study_ids)
    assert json.loads(paths["metrics"].read_text())["val_competition_score"] == evaluation.score
    assert paths["confusion_png"].stat().st_size > 0 and (run_dir / "training_curves.png").is_file()
