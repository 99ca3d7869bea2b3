import pandas as pd

from spine_model.steps import ingest_step, preprocess_step


def test_rows_of_unreadable_images_are_dropped_and_counted(tiny_copy, tmp_path):
    ingested = ingest_step(tiny_copy, tmp_path / "cache")
    table = pd.read_parquet(ingested.table_path)
    broken = table.iloc[0]
    path = tiny_copy / "train_images" / str(broken.study_id) / str(broken.series_id) / f"{broken.instance_number}.dcm"
    path.write_bytes(path.read_bytes()[:200])
    on_broken = (table["series_id"] == broken.series_id) & (table["instance_number"] == broken.instance_number)

    prepared = preprocess_step(
        tiny_copy, ingested.table_path, tmp_path / "png", 32, tmp_path / "ready.parquet", workers=1, progress=False
    )
    ready = pd.read_parquet(prepared.table_path)
    assert prepared.dropped_rows == int(on_broken.sum()) > 0
    assert len(ready) == len(table) - prepared.dropped_rows
    assert list(prepared.failed) == [f"{broken.study_id}/{broken.series_id}/{broken.instance_number}"]
    assert not ((ready["series_id"] == broken.series_id) & (ready["instance_number"] == broken.instance_number)).any()
