"""`spine validate`: every problem with its count and examples; exit 0 when usable, 1 when not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pydicom.encaps
import pydicom.uid
from typer.testing import CliRunner

from flows.cli import app
from spine_model.core.catalog import image_file
from spine_model.data.validate import validate_data

runner = CliRunner()


def _rewrite(path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_a_clean_folder_has_no_findings_and_exits_0(tiny_data):
    report = validate_data(tiny_data, workers=1, progress=False)
    assert report.usable and report.findings == [], report.describe()
    assert report.checked["coordinate_rows"] == len(pd.read_csv(tiny_data / "train_label_coordinates.csv"))
    result = runner.invoke(app, ["validate", str(tiny_data), "--workers", "1"])
    assert result.exit_code == 0 and "no problems found; the data is usable" in result.output
    test = runner.invoke(app, ["validate", str(tiny_data), "--split", "test", "--workers", "1"])
    assert test.exit_code == 0, test.output


def test_every_problem_is_counted_with_examples(tiny_copy):
    coordinates = pd.read_csv(tiny_copy / "train_label_coordinates.csv")
    series = pd.read_csv(tiny_copy / "train_series_descriptions.csv")
    first, axial = coordinates.iloc[0], coordinates[coordinates["condition"].str.contains("Subarticular")].iloc[0]
    dropped = coordinates.iloc[[7]]  # its labelled cell loses its point
    extra = pd.concat(
        [
            coordinates.iloc[[3]],  # repeated
            coordinates.iloc[[5]].assign(x=-4.0),  # outside its image (and a second point for that cell)
            pd.DataFrame([{**axial.to_dict(), "condition": "Spinal Canal Stenosis", "level": "L1/L2", "study_id":
                          axial.study_id}]).iloc[[0]],  # a canal point on an axial series (second point too)
        ],
        ignore_index=True,
    )  # fmt: skip
    pd.concat([coordinates.drop(index=7), extra], ignore_index=True).to_csv(
        tiny_copy / "train_label_coordinates.csv", index=False
    )
    # One image of a series at another size, one in a transfer syntax nothing decodes.
    other = coordinates[coordinates["series_id"] != first.series_id].iloc[0]
    labelled = set(coordinates.loc[coordinates["series_id"] == first.series_id, "instance_number"])
    folder = image_file(tiny_copy, "train", first.study_id, first.series_id, 0).parent
    unlabelled = next(p for p in sorted(folder.glob("*.dcm")) if int(p.stem) not in labelled)
    _rewrite(
        unlabelled,
        lambda ds: (setattr(ds, "Rows", 16), setattr(ds, "Columns", 16),
                    setattr(ds, "PixelData", np.zeros((16, 16), np.uint16).tobytes())),
    )  # fmt: skip

    def to_video(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])

    _rewrite(image_file(tiny_copy, "train", other.study_id, other.series_id, other.instance_number), to_video)

    report = validate_data(tiny_copy, workers=1, progress=False)
    found = {finding.check: finding for finding in report.findings}
    assert report.usable, report.describe()  # warnings only: training skips and counts these
    assert found["rows_repeated"].count == 1
    assert found["points_outside_image"].count == 1 and "x=-4" in found["points_outside_image"].examples[0]
    assert found["points_on_unexpected_series"].count == 1
    assert "on a Axial T2 series" in found["points_on_unexpected_series"].examples[0]
    assert found["second_points"].count == 2
    assert found["series_mixed_sizes"].count == 1 and "16x16" in found["series_mixed_sizes"].examples[0]
    assert found["dicom_no_decoder"].count == 1 and "MPEG2" in found["dicom_no_decoder"].examples[0]
    cell = f"{dropped.condition.iloc[0].lower().replace(' ', '_')}_{dropped.level.iloc[0].lower().replace('/', '_')}"
    assert found["labels_without_points"].examples == [f"study {dropped.study_id.iloc[0]} {cell}"]
    counts = report.counts()
    assert counts["validate_rows_repeated"] == 1 and counts["validate_errors"] == 0
    assert len(series) == report.checked["series"]


def test_errors_make_the_data_unusable_and_exit_1(tiny_copy):
    labels = pd.read_csv(tiny_copy / "train.csv", dtype=str, keep_default_na=False)
    labels.loc[2, "spinal_canal_stenosis_l1_l2"] = "Very severe"
    labels.to_csv(tiny_copy / "train.csv", index=False)
    (tiny_copy / "train_series_descriptions.csv").write_bytes(b"study_id,series_id,series_description\n")
    result = runner.invoke(app, ["validate", str(tiny_copy), "--workers", "1"])
    assert result.exit_code == 1
    assert "'Very severe' is not one of" in result.output and "has a header but no rows" in result.output
    assert "NOT usable" in result.output and "Traceback" not in result.output
