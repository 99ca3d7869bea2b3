"""`spine validate`: every problem of a Kaggle-layout data folder, with counts and examples.

Errors make the data unusable (a missing file or folder, a CSV that cannot be read, an unknown
string, a bad id); warnings are what the pipeline skips, counts and logs (rows without a study,
series or image, repeated rows, second points, points on an unexpected series or outside their
image, labels without points, DICOM files whose header cannot be read, whose transfer syntax has
no decoder installed, or whose size differs from the rest of their series). The pipeline runs
the same checks before any image is decoded and logs the counts to MLflow.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from spine_model.core.catalog import image_file
from spine_model.core.constants import CONDITION_SERIES, LABEL_COLUMNS, LEVELS, MISSING_LABEL
from spine_model.core.parallel import parallel_map
from spine_model.data.dicom import DECODER_HINT, decoder_problem, transfer_syntax
from spine_model.data.ingest import (
    DataError,
    check_data_dir,
    find_series_files,
    load_coordinates,
    load_labels,
    load_series_descriptions,
)

ERROR, WARNING = "error", "warning"
EXAMPLES = 3


@dataclass
class Finding:
    check: str  # a short name, also the MLflow metric's suffix
    severity: str  # ERROR or WARNING
    count: int
    what: str  # one line on what was found
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    data_dir: str
    split: str
    findings: list[Finding] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)  # what was looked at: rows, series, files

    @property
    def usable(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    def raise_if_unusable(self) -> None:
        """A DataError naming the first error, when there is one."""
        if not self.usable:
            first = next(f for f in self.findings if f.severity == ERROR)
            raise DataError(
                f"{self.data_dir} is not usable: {first.examples[0]} (`spine validate {self.data_dir}` lists all)"
            )

    def add(self, check: str, severity: str, items: list[str], what: str) -> None:
        if items:
            self.findings.append(Finding(check, severity, len(items), what, items[:EXAMPLES]))

    def counts(self) -> dict[str, int]:
        """Flat counts for MLflow: validate_<check> per finding, and what was checked."""
        counts = {f"validate_checked_{key}": value for key, value in self.checked.items()}
        counts.update({f"validate_{f.check}": f.count for f in self.findings})
        counts["validate_errors"] = sum(f.severity == ERROR for f in self.findings)
        return counts

    def describe(self) -> str:
        looked = ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in self.checked.items())
        lines = [f"{self.data_dir} ({self.split}): checked {looked or 'nothing'}"]
        for finding in sorted(self.findings, key=lambda f: (f.severity != ERROR, f.check)):
            lines.append(f"  {finding.severity.upper():<8}{finding.count:>7}  {finding.what}")
            lines += [f"{'':17}e.g. {example}" for example in finding.examples]
        verdict = "usable" if self.usable else "NOT usable: fix the errors above"
        problems = "no problems found; " if not self.findings else ""
        lines.append(f"{problems}the data is {verdict}")
        return "\n".join(lines)


def _header(path: str) -> tuple[str, tuple | str]:
    """(path, (rows, columns, transfer syntax name, decoder available, has geometry)) or (path, reason)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as error:  # any broken header
        return path, f"{type(error).__name__}: {str(error)[:120]}"
    syntax, available = transfer_syntax(ds), decoder_problem(ds) is None
    geometry = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
    return path, (rows, columns, syntax.name if syntax is not None else "unknown", available, geometry)


def validate_data(
    data_dir: str | Path, split: str = "train", workers: int | None = None, progress: bool = True
) -> ValidationReport:
    """Every check on the split of a Kaggle-layout folder (headers of every listed DICOM file read)."""
    report = ValidationReport(str(data_dir), split)
    root = Path(data_dir)
    try:
        check_data_dir(root, split)
    except DataError as error:
        report.add("layout", ERROR, [str(error)], "files or folders of the Kaggle layout missing")
        return report
    tables = {}
    loaders = {"series": lambda: load_series_descriptions(root, split)}
    if split == "train":
        loaders |= {"labels": lambda: load_labels(root), "coordinates": lambda: load_coordinates(root)}
    for name, load in loaders.items():
        try:
            tables[name] = load()
        except DataError as error:
            report.add(f"{name}_unreadable", ERROR, [str(error)], f"{name} CSV cannot be used as it is")
    if "series" not in tables:
        return report
    series = tables["series"]
    report.checked["series"] = len(series)
    _check_series(report, series)
    headers = _check_files(report, root, split, series, workers, progress)
    if split == "train" and {"labels", "coordinates"} <= set(tables):
        _check_rows(report, root, tables["labels"], series, tables["coordinates"], headers)
    return report


def _check_series(report: ValidationReport, series: pd.DataFrame) -> None:
    repeated = series[series.duplicated(["study_id", "series_id"])]
    report.add(
        "series_repeated", WARNING, [f"study {r.study_id} series {r.series_id}" for r in repeated.itertuples()],
        "series listed more than once",
    )  # fmt: skip


def _check_files(report, root: Path, split: str, series: pd.DataFrame, workers, progress) -> dict:
    """Headers of every DICOM file of the listed series: (study, series, instance) -> (rows, columns)."""
    found = find_series_files(root, split, series)
    files = [(r.study_id, r.series_id, Path(r.image_path)) for r in found.files.itertuples()]
    no_files = [f"study {study_id} series {series_id}" for study_id, series_id in found.empty]
    report.add("series_without_files", WARNING, no_files, f"listed series without any DICOM file under {found.root}")
    report.add("odd_file_names", WARNING, found.odd_names, "files whose name is not an instance number")
    report.checked["dicom_files"] = len(files)
    results = dict(parallel_map(_header, [str(p) for *_, p in files], workers, "DICOM headers", "file", progress))
    unreadable, no_geometry, sizes = [], [], defaultdict(Counter)
    no_decoder, first_of = Counter(), {}  # transfer syntax -> files, and its first file
    headers = {}
    for study_id, series_id, path in files:
        header = results[str(path)]
        if isinstance(header, str):
            unreadable.append(f"{path}: {header}")
            continue
        rows, columns, syntax, available, geometry = header
        headers[(int(study_id), int(series_id), int(path.stem))] = (rows, columns)
        if not available:
            no_decoder[syntax] += 1
            first_of.setdefault(syntax, str(path))
        if not geometry:
            no_geometry.append(str(path))
        sizes[(study_id, series_id)][(rows, columns)] += 1
    report.add("dicom_unreadable", WARNING, unreadable, "DICOM files whose header cannot be read (skipped)")
    if no_decoder:
        report.findings.append(
            Finding(
                "dicom_no_decoder", WARNING, sum(no_decoder.values()),
                f"DICOM files in a transfer syntax with no decoder installed ({DECODER_HINT})",
                [f"{first_of[name]} ({name}, {count} file(s))" for name, count in no_decoder.most_common(EXAMPLES)],
            )
        )  # fmt: skip
    report.add("dicom_no_geometry", WARNING, no_geometry, "DICOM files without ImagePositionPatient/Orientation")
    mixed = [
        f"study {s} series {r}: " + ", ".join(f"{c} file(s) {h}x{w}" for (h, w), c in counts.most_common())
        for (s, r), counts in sizes.items() if len(counts) > 1
    ]  # fmt: skip
    report.add("series_mixed_sizes", WARNING, mixed, "series whose images differ in size (each is scaled on its own)")
    return headers


def _check_rows(report, root: Path, labels: pd.DataFrame, series: pd.DataFrame, rows: pd.DataFrame, headers) -> None:
    report.checked["coordinate_rows"] = len(rows)
    report.checked["studies"] = len(labels)

    def where(frame: pd.DataFrame) -> list[str]:
        return [
            f"study {r.study_id} series {r.series_id} instance {r.instance_number} {r.condition} {r.level}"
            for r in frame.itertuples()
        ]

    report.add("rows_repeated", WARNING, where(rows[rows.duplicated()]), "coordinate rows repeated (one is kept)")
    second = rows.duplicated(["study_id", "condition", "level"]) & ~rows.duplicated()
    report.add(
        "second_points", WARNING, where(rows[second]),
        "second points for a study, condition and level (the first is kept)",
    )  # fmt: skip
    report.add(
        "rows_without_study", WARNING, where(rows[~rows["study_id"].isin(labels["study_id"])]),
        "coordinate rows of a study not in train.csv",
    )  # fmt: skip
    described = rows.merge(series.drop_duplicates(["study_id", "series_id"]), on=["study_id", "series_id"], how="left")
    report.add(
        "rows_without_description", WARNING, where(described[described["series_description"].isna()]),
        "coordinate rows of a series without a description",
    )  # fmt: skip
    known = described[described["series_description"].notna()]
    unexpected = known[known["condition"].map(CONDITION_SERIES) != known["series_description"]]
    on = zip(where(unexpected), unexpected["series_description"], strict=True)
    report.add(
        "points_on_unexpected_series", WARNING, [f"{line} on a {d} series" for line, d in on],
        "points on a series their condition is not read on (e.g. spinal canal on Sagittal T1)",
    )  # fmt: skip
    keys = list(zip(rows["study_id"], rows["series_id"], rows["instance_number"], strict=True))
    missing = np.array([key not in headers and not image_file(root, "train", *key).is_file() for key in keys], bool)
    report.add("rows_without_image", WARNING, where(rows[missing]), "coordinate rows whose image file is missing")
    size = np.array([headers.get(key, (np.nan, np.nan)) for key in keys], dtype=np.float64).reshape(-1, 2)
    with np.errstate(invalid="ignore"):
        outside = (rows["x"] < 0) | (rows["y"] < 0) | (rows["x"] > size[:, 1]) | (rows["y"] > size[:, 0])
    at = zip(where(rows[outside]), rows.loc[outside, "x"], rows.loc[outside, "y"], strict=True)
    report.add(
        "points_outside_image", WARNING, [f"{line} at x={x:g}, y={y:g}" for line, x, y in at],
        "points outside their image (dropped, never clamped)",
    )  # fmt: skip
    pointed = set(zip(rows["study_id"], rows["condition"], rows["level"], strict=True))
    unpointed = [
        f"study {study_id} {column}"
        for study_id, column, value in labels.melt("study_id", list(LABEL_COLUMNS)).itertuples(index=False)
        if value != MISSING_LABEL and _cell(column) is not None and (study_id, *_cell(column)) not in pointed
    ]
    report.add("labels_without_points", WARNING, unpointed, "labelled cells without a coordinate row (not trained on)")


def _cell(column: str) -> tuple[str, str] | None:
    """'spinal_canal_stenosis_l1_l2' -> ('spinal_canal_stenosis', 'l1_l2')."""
    for level in LEVELS:
        if column.endswith(f"_{level}"):
            return column[: -len(level) - 1], level
    return None
