"""DICOM to 8-bit images for the labelled instances, once, in parallel, into an image store."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spine_model.constants import images_dir
from spine_model.dicom import DicomReadError, read_pixels, to_uint8
from spine_model.image_store import PngImageStore, resize_square
from spine_model.parallel import parallel_map

log = logging.getLogger(__name__)

InstanceKey = tuple[int, int, int]  # (study_id, series_id, instance_number)


@dataclass
class PreprocessReport:
    """What a preprocessing pass did with each instance it was given."""

    written: int = 0
    already_done: int = 0
    failed: dict[InstanceKey, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.written + self.already_done + len(self.failed)

    def describe(self) -> str:
        text = (
            f"preprocessed {self.total} instances: {self.written} written, "
            f"{self.already_done} already done, {len(self.failed)} unreadable (skipped)"
        )
        if self.failed:
            key, reason = next(iter(self.failed.items()))
            text += f"; first failure {key}: {reason}"
        return text


def dicom_path(data_dir: str | Path, split: str, key: InstanceKey) -> Path:
    """`{data_dir}/{split}_images/{study}/{series}/{instance}.dcm`."""
    study_id, series_id, instance_number = key
    return Path(data_dir) / images_dir(split) / str(study_id) / str(series_id) / f"{instance_number}.dcm"


def _convert_one(job: tuple[InstanceKey, str, str, int]) -> tuple[InstanceKey, str, str]:
    """Convert one instance; returns (key, 'written' | 'already_done' | 'failed', reason)."""
    key, source, store_root, image_size = job
    store = PngImageStore(store_root)
    target = store.path(*key)
    try:
        # Idempotent: a PNG newer than its DICOM is up to date; a re-written DICOM is redone.
        if target.is_file() and target.stat().st_mtime >= os.stat(source).st_mtime:
            return key, "already_done", ""
        pixels = read_pixels(source)
    except (DicomReadError, OSError) as error:
        return key, "failed", str(error)
    height, width = pixels.shape
    store.put(*key, pixels=resize_square(to_uint8(pixels), image_size), original_height=height, original_width=width)
    return key, "written", ""


def preprocess_instances(
    keys: Iterable[InstanceKey],
    data_dir: str | Path,
    store_root: str | Path,
    image_size: int,
    split: str = "train",
    workers: int | None = None,
    progress: bool = True,
) -> PreprocessReport:
    """Convert each instance's DICOM to an 8-bit `image_size` square PNG in the store.

    Parallel over processes; existing up-to-date outputs are skipped; unreadable files are
    counted and logged, never raised, so one broken file does not stop a run.
    """
    unique_keys = sorted(set(keys))
    jobs = [(key, str(dicom_path(data_dir, split, key)), str(store_root), image_size) for key in unique_keys]
    report = PreprocessReport()
    statuses: Counter[str] = Counter()
    for key, status, reason in parallel_map(_convert_one, jobs, workers, f"preprocess {image_size}px", "img", progress):
        statuses[status] += 1
        if status == "failed":
            report.failed[key] = reason
    report.written, report.already_done = statuses["written"], statuses["already_done"]
    for key, reason in report.failed.items():
        log.warning("skipped unreadable instance %s: %s", key, reason)
    log.info(report.describe())
    return report
