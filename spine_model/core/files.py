"""Files written safely (a temporary sibling renamed into place) and fingerprinted."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file through `write(handle)` into a temporary sibling, then rename it into place.

    An interrupted run never leaves a half-written file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a text (UTF-8)."""
    payload = text.encode()
    return atomic_write(path, lambda handle: handle.write(payload))


def atomic_write_csv(path: str | Path, frame) -> Path:
    """`atomic_write` of a DataFrame as CSV, without its index."""
    return atomic_write(path, lambda handle: frame.to_csv(handle, index=False))


def atomic_write_figure(path: str | Path, figure, dpi: int) -> Path:
    """`atomic_write` of a matplotlib figure, in the format of the path's suffix (e.g. .png)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda handle: figure.savefig(handle, format=fmt, dpi=dpi))


def file_fingerprint(path: str | Path, content: bool = True) -> str:
    """sha256 of a file's bytes (or, with content=False, of its size and mtime); 'missing' if absent."""
    path = Path(path)
    if not path.is_file():
        return f"missing:{path}"
    if not content:
        stat = path.stat()
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
