"""The volume store: each series decoded once into a slice-ordered uint8 array, memory-mapped.

    build_volume_store(...)  DICOM -> {root}/{study}/{series}.npy + .json, and index.parquet
    VolumeStore(root)        read access: `index` (one row per slice) and `volume(study, series)`
    MemoryVolumeStore        the same interface over series decoded in memory (the serving model)

Both stores come from `read_series`, the one code path from DICOM files to pixels for training,
evaluation, `spine predict` and the pyfunc. A series' slices are ordered by ImagePositionPatient
projected on the slice normal (never by instance number), windowed to uint8 over the whole series,
and each frame is resampled in-plane to size x size; the index keeps every frame's own rows and
columns, so a point is mapped with the size of the frame it was marked on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from spine_model.core.catalog import StoreFiles, series_folder
from spine_model.core.files import atomic_write
from spine_model.core.parallel import parallel_map

log = logging.getLogger(__name__)

STORE_FORMAT = 3  # a series stored by an older version of this module is stored again
WINDOW_SAMPLES = 1_000_000  # pixels of a series that its intensity window is computed from
SERIES_KEY = ["study_id", "series_id"]
SLICE_KEY = ["study_id", "series_id", "instance_number"]
# Patient geometry of a slice: ImagePositionPatient and ImageOrientationPatient (row, then column
# direction cosines), for mapping pixels between series (see spine_model.core.geometry).
GEOMETRY_COLUMNS = ["ipp_x", "ipp_y", "ipp_z", "row_x", "row_y", "row_z", "col_x", "col_y", "col_z"]
_FRAME_COLUMNS = ["instance_number", "rows", "columns", "position", "spacing_row", "spacing_col", *GEOMETRY_COLUMNS]
# One row per stored slice, in slice order within each series.
INDEX_COLUMNS = ["study_id", "series_id", "series_description", "n_slices", "slice_index", *_FRAME_COLUMNS]


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """An 8-bit image resized to size x size (bilinear, antialiased when shrinking)."""
    if pixels.shape == (size, size):
        return pixels
    return np.array(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass
class SeriesVolume:
    """One series as the store keeps it."""

    pixels: np.ndarray  # uint8 (n_slices, size, size), in slice order
    slices: pd.DataFrame  # per slice, same order: _FRAME_COLUMNS (instance number, size, position, geometry)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason naming the file)


def read_series(files: Sequence[tuple[int, str | Path]], size: int) -> SeriesVolume:
    """Decode (instance_number, path) files of one series into a slice-ordered uint8 volume.

    One window (0.5 / 99.5 percentiles) for the whole series, so that neighbouring slices keep
    their relative brightness; unreadable files are returned with their reason, not raised.
    """
    from spine_model.data.dicom import DicomReadError, apply_window, read_frame, window  # pydicom: only to decode

    decoded, unreadable = [], []
    for instance_number, path in files:
        try:
            decoded.append((int(instance_number), read_frame(path)))
        except DicomReadError as error:
            unreadable.append((str(path), str(error)))
    decoded.sort(key=lambda item: (item[1].position, item[0]))
    slices = pd.DataFrame(
        [(n, *f.pixels.shape, f.position, f.spacing_row, f.spacing_col, *f.origin, *f.orientation) for n, f in decoded],
        columns=_FRAME_COLUMNS,
    )
    if not decoded:
        return SeriesVolume(np.zeros((0, size, size), np.uint8), slices, unreadable)
    # The window's percentiles from at most WINDOW_SAMPLES evenly strided pixels of the series: the
    # same window to a fraction of a grey level, at a fraction of the cost of sorting them all.
    stride = max(1, sum(frame.pixels.size for _, frame in decoded) // WINDOW_SAMPLES)
    low, high = window(np.concatenate([frame.pixels.ravel()[::stride] for _, frame in decoded]))
    pixels = np.stack([resize_square(apply_window(frame.pixels, low, high), size) for _, frame in decoded])
    return SeriesVolume(pixels, slices, unreadable)


def index_rows(study_id: int, series_id: int, description: str | None, slices: pd.DataFrame) -> pd.DataFrame:
    """The store index's rows of one series."""
    return slices.assign(
        study_id=int(study_id), series_id=int(series_id), series_description=description,
        n_slices=len(slices), slice_index=np.arange(len(slices)),
    )[INDEX_COLUMNS]  # fmt: skip


class VolumeReader:
    """What datasets and predictors read: `index` (one row per slice), `size`, `volume(study, series)`."""

    index: pd.DataFrame
    size: int

    def volume(self, study_id: int, series_id: int) -> np.ndarray:
        raise NotImplementedError

    def series(self) -> pd.DataFrame:
        """One row per stored series: study_id, series_id, series_description, n_slices."""
        return self.index.drop_duplicates(SERIES_KEY)[[*SERIES_KEY, "series_description", "n_slices"]]


class VolumeStore(VolumeReader):
    """A store on disk; volumes are memory-mapped, never loaded whole.

    At most `max_open` series stay mapped (least recently used first out), so the resident memory
    of an epoch does not grow with the number of studies. Pickles without its open maps, for
    DataLoader workers.
    """

    def __init__(self, root: str | Path, max_open: int = 64) -> None:
        self.files = StoreFiles(root)
        self.max_open = max_open
        self._index: pd.DataFrame | None = None
        self._open: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        manifest = self.files.manifest
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest} not found: {root} is not a volume store; build it with `spine preprocess`"
            )
        self.manifest = json.loads(manifest.read_text())
        self.size = int(self.manifest["size"])

    @property
    def root(self) -> Path:
        return self.files.root

    @property
    def index(self) -> pd.DataFrame:
        if self._index is None:
            self._index = pd.read_parquet(self.files.index)
        return self._index

    def volume(self, study_id: int, series_id: int) -> np.ndarray:
        key = (int(study_id), int(series_id))
        if key in self._open:
            self._open.move_to_end(key)
            return self._open[key]
        path = self.files.volume(*key)
        if not path.is_file():
            raise KeyError(f"series {key[0]}/{key[1]} is not in the volume store {self.root}")
        volume = np.load(path, mmap_mode="r")
        self._open[key] = volume
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return volume

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": OrderedDict()}


class MemoryVolumeStore(VolumeReader):
    """Series decoded in memory with `read_series`: the serving model's store for image references."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.unreadable: list[tuple[str, str]] = []
        self._volumes: dict[tuple[int, int], np.ndarray] = {}
        self._rows: list[pd.DataFrame] = []
        self._index: pd.DataFrame | None = None

    @classmethod
    def from_files(cls, files: pd.DataFrame, size: int) -> MemoryVolumeStore:
        """files: study_id, series_id, instance_number, image_path, optional series_description."""
        store = cls(size)
        files = files.drop_duplicates(SLICE_KEY)  # a file listed twice (e.g. once per point) is one slice
        for (study_id, series_id), series in files.groupby(SERIES_KEY, sort=True):
            volume = read_series(list(zip(series["instance_number"], series["image_path"], strict=True)), size)
            store.unreadable += volume.unreadable
            if len(volume.slices) == 0:
                log.warning("series %s/%s: no readable slice, e.g. %s", study_id, series_id, volume.unreadable[:1])
                continue
            description = series["series_description"].iloc[0] if "series_description" in series else None
            store.add(study_id, series_id, description, volume)
        return store

    def add(self, study_id: int, series_id: int, description: str | None, volume: SeriesVolume) -> None:
        """Hold one decoded series."""
        self._volumes[(int(study_id), int(series_id))] = volume.pixels
        self._rows.append(index_rows(study_id, series_id, description, volume.slices))
        self._index = None

    @property
    def index(self) -> pd.DataFrame:
        if self._index is None:
            self._index = (
                pd.concat(self._rows, ignore_index=True) if self._rows else pd.DataFrame(columns=INDEX_COLUMNS)
            )
        return self._index

    def volume(self, study_id: int, series_id: int) -> np.ndarray:
        return self._volumes[(int(study_id), int(series_id))]


# --- building a store on disk ---------------------------------------------------------------------


@dataclass
class StoreReport:
    """What one build of a store did, series by series."""

    root: str
    size: int
    written: int = 0
    already_done: int = 0
    skipped_series: dict[str, str] = field(default_factory=dict)  # "study/series" -> reason
    unreadable_files: dict[str, str] = field(default_factory=dict)  # path -> reason (which names the path)

    def describe(self) -> str:
        total = self.written + self.already_done + len(self.skipped_series)
        text = (
            f"volume store {self.size}px: {total} series, {self.written} written, {self.already_done} already done, "
            f"{len(self.skipped_series)} skipped; {len(self.unreadable_files)} unreadable file(s)"
        )
        if self.skipped_series:
            key, reason = next(iter(self.skipped_series.items()))
            text += f"; first skipped series {key}: {reason}"
        if self.unreadable_files:
            text += f"; first unreadable file: {next(iter(self.unreadable_files.values()))}"
        return text


def _source_fingerprint(paths: list[Path]) -> list[list]:
    """Name, size and modification time of every file: a changed DICOM changes it."""
    return [[p.name, (stat := p.stat()).st_size, stat.st_mtime_ns] for p in paths]


def sources_fingerprint(data_dir: str | Path, split: str, series: pd.DataFrame) -> str:
    """A hash of the name, size and modification time of every DICOM file of the listed series.

    Changes when any file is added, removed or rewritten; costs one stat per file, no reads.
    """
    digest = hashlib.sha256()
    for study_id, series_id in series[SERIES_KEY].drop_duplicates().itertuples(index=False):
        folder = series_folder(data_dir, split, study_id, series_id)
        digest.update(json.dumps([study_id, series_id, _source_fingerprint(sorted(folder.glob("*.dcm")))]).encode())
    return digest.hexdigest()


def _build_series(job: tuple[int, int, str | None, str, str, int]) -> tuple[str, dict]:
    """Build (or find up to date) one series; returns (status, its record)."""
    study_id, series_id, description, series_dir, root, size = job
    files = StoreFiles(root)
    record_path = files.series_record(study_id, series_id)
    paths = sorted(Path(series_dir).glob("*.dcm"))
    source = _source_fingerprint(paths)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        done = record.get("skipped") or files.volume(study_id, series_id).is_file()
        same = [record.get(key) for key in ("format", "size", "source")] == [STORE_FORMAT, size, source]
        if same and done:
            return "already_done", record
    named = [(int(p.stem), p) for p in paths if p.stem.isdigit()]
    unreadable = [(str(p), f"{p}: file name is not an instance number") for p in paths if not p.stem.isdigit()]
    volume = read_series(named, size)
    unreadable += volume.unreadable
    record = {
        "format": STORE_FORMAT, "study_id": study_id, "series_id": series_id, "series_description": description,
        "size": size,
        "source": source, "slices": volume.slices.to_dict(orient="list"), "unreadable": unreadable, "skipped": None,
    }  # fmt: skip
    if not paths:
        record["skipped"] = f"no DICOM files in {series_dir}"
    elif len(volume.slices) == 0:
        record["skipped"] = f"none of its {len(paths)} file(s) is readable, e.g. {unreadable[0][1]}"
    else:
        atomic_write(files.volume(study_id, series_id), lambda handle: np.save(handle, volume.pixels))
    # The record goes last: it is what marks the series as done.
    atomic_write(record_path, lambda handle: handle.write(json.dumps(record).encode()))
    return ("skipped" if record["skipped"] else "written"), record


def build_volume_store(
    data_dir: str | Path,
    split: str,
    series: pd.DataFrame,
    root: str | Path,
    size: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> StoreReport:
    """Decode every listed series (study_id, series_id, series_description) of `{split}_images` into the store.

    Parallel over processes, resumable (a series whose files are unchanged is not redone), atomic
    per file; unreadable files are counted and logged, a series without any readable slice is
    skipped with its reason. The index covers every series the store holds. One build of a store
    at a time (a lock file in it): a second pipeline run on the same store waits, then finds the
    series done.
    """
    from filelock import FileLock, Timeout

    Path(root).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(root) / ".build.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is building the volume store %s: waiting for it", root)
        lock.acquire()
    try:
        return _build_volume_store(data_dir, split, series, root, size, workers, progress)
    finally:
        lock.release()


def _build_volume_store(data_dir, split, series, root, size, workers, progress) -> StoreReport:
    files = StoreFiles(root)
    if files.manifest.is_file():
        manifest = json.loads(files.manifest.read_text())
        if int(manifest["size"]) != size:
            raise ValueError(f"{root} holds {manifest['size']} px volumes, not {size} px: one store per size")
    series = series[[*SERIES_KEY, "series_description"]].drop_duplicates(SERIES_KEY)
    jobs = [
        (
            int(study),
            int(series_id),
            description,
            str(series_folder(data_dir, split, study, series_id)),
            str(root),
            size,
        )
        for study, series_id, description in series.itertuples(index=False)
    ]
    report = StoreReport(str(root), size)
    rows = []
    desc = f"volumes {split} {size}px"
    for status, record in parallel_map(_build_series, jobs, workers, desc, "series", progress, min_jobs_per_worker=4):
        key = f"{record['study_id']}/{record['series_id']}"
        report.unreadable_files.update(dict(record["unreadable"]))
        if status == "skipped":
            report.skipped_series[key] = record["skipped"]
            continue
        setattr(report, status, getattr(report, status) + 1)
        slices = pd.DataFrame(record["slices"], columns=_FRAME_COLUMNS)
        rows.append(index_rows(record["study_id"], record["series_id"], record["series_description"], slices))
    index = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=INDEX_COLUMNS)
    if files.index.is_file():  # keep what earlier builds stored for other series
        earlier = pd.read_parquet(files.index)
        built = pd.MultiIndex.from_frame(series[SERIES_KEY])
        earlier = earlier[~pd.MultiIndex.from_frame(earlier[SERIES_KEY]).isin(built)]
        index = pd.concat([earlier, index], ignore_index=True) if len(earlier) else index
    index = index.astype({"study_id": "int64", "series_id": "int64", "instance_number": "int64"})
    atomic_write(files.index, lambda handle: index.to_parquet(handle, index=False))
    manifest = {"size": size, "split": split, "data_dir": str(Path(data_dir).resolve())}
    atomic_write(files.manifest, lambda handle: handle.write(json.dumps(manifest, indent=2).encode()))
    for key, reason in report.skipped_series.items():
        log.warning("skipped series %s: %s", key, reason)
    for reason in list(report.unreadable_files.values())[:20]:
        log.warning("unreadable file %s", reason)
    if len(report.unreadable_files) > 20:
        log.warning("... and %d more unreadable file(s)", len(report.unreadable_files) - 20)
    log.info(report.describe())
    return report


# --- points on stored slices ------------------------------------------------------------------------


UNPLACED_NOT_STORED = "image not in the volume store (unreadable file or skipped series)"
UNPLACED_OUTSIDE = "point outside its image"


def locate_points(points: pd.DataFrame, index: pd.DataFrame, size: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Put points (study_id, series_id, instance_number, x, y in that frame's pixels) on stored slices.

    Adds slice_index, n_slices, the frame's rows and columns, its pixel spacing and patient geometry,
    and x_store, y_store: the point in the store's size x size pixels, scaled by the point's own
    frame size.
    Returns (located, unplaced): points whose slice is not in the store (an unreadable file, a
    skipped series) or that lie outside their image (a negative coordinate, or one beyond the
    frame's columns or rows) are returned apart with their `reason`, for the caller to count and
    report; nothing is clamped.
    """
    columns = [
        *SLICE_KEY,
        "slice_index",
        "n_slices",
        "rows",
        "columns",
        "spacing_row",
        "spacing_col",
        *GEOMETRY_COLUMNS,
    ]
    merged = points.drop(columns=[c for c in columns if c not in SLICE_KEY and c in points.columns]).merge(
        index[columns], on=SLICE_KEY, how="left", validate="many_to_one"
    )
    stored = merged["slice_index"].notna().to_numpy()
    x, y = merged["x"].to_numpy(np.float64), merged["y"].to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        inside = (x >= 0) & (y >= 0) & (x <= merged["columns"].to_numpy()) & (y <= merged["rows"].to_numpy())
    placed = stored & inside
    located = merged[placed].astype({"slice_index": "int64", "n_slices": "int64", "rows": "int64", "columns": "int64"})
    located = located.assign(
        x_store=located["x"] * size / located["columns"], y_store=located["y"] * size / located["rows"]
    ).reset_index(drop=True)
    reasons = np.where(stored, UNPLACED_OUTSIDE, UNPLACED_NOT_STORED)[~placed]
    return located, points[~placed].assign(reason=reasons).reset_index(drop=True)


def describe_unplaced(unplaced: pd.DataFrame) -> list[str]:
    """One line per reason: how many points, and the first one's study, series, instance and x, y."""
    lines = []
    for reason, part in unplaced.groupby("reason", sort=True):
        first = part.iloc[0]
        lines.append(
            f"{len(part)} point(s): {reason}, e.g. study {first.study_id} series {first.series_id} "
            f"instance {first.instance_number} at x={first.x:g}, y={first.y:g}"
        )
    return lines
