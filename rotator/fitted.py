"""The fitted-copy store: images fitted once (resized, re-encoded) kept by content in a folder.

A copy is named by the source's SHA-256 and the fit settings (``fit_cache_name``), so a
changed source or a changed ``[images]`` section never finds a stale copy. Copies are
written to a temporary name and renamed into place; a damaged one is simply made again.
``prune_fitted`` deletes the copies no catalog may use any more. Everything here blocks:
it is called from a worker thread.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from rotator.errors import ImageError
from rotator.images import (
    FITTED_EXTENSIONS,
    FitSettings,
    FittedImage,
    ImageVerdict,
    fit_cache_name,
    fit_image_bytes,
    read_fitted,
)

_FITTED_NAME = re.compile(r"^[0-9a-f]{64}-[0-9a-f]{12}\.(?:jpg|png)$")
_FITTED_TEMP_PREFIX = ".fitting-"
_STALE_TEMP_SECONDS = 3600.0


def fitted_copy(
    fitted_dir: Path,
    verdict: ImageVerdict,
    data: bytes,
    settings: FitSettings,
    log_failure: Callable[[OSError], None],
) -> tuple[FittedImage, bool]:
    """Return the stored fitted copy of ``data``, and whether it was made just now.

    A copy made now is stored for the next time; ``log_failure`` hears why it could not be
    (sending does not need the stored copy: the next rotation fits again).
    """
    assert verdict.sha256 is not None
    for image_format in FITTED_EXTENSIONS:
        stored = fitted_dir / fit_cache_name(verdict.sha256, settings, image_format)
        try:
            return read_fitted(stored.read_bytes(), verdict, settings), False
        except (OSError, ImageError):
            continue  # missing, or a damaged copy that is simply made again
    fitted = fit_image_bytes(data, settings)
    target = fitted_dir / fit_cache_name(verdict.sha256, settings, fitted.format)
    try:
        _write_atomically(target, fitted.data)
    except OSError as exc:
        log_failure(exc)
    return fitted, True


def fitted_names(verdicts: Iterable[ImageVerdict], settings: FitSettings) -> set[str]:
    """Return the fitted-copy file names the images of these verdicts may use."""
    return {
        fit_cache_name(verdict.sha256, settings, image_format)
        for verdict in verdicts
        if verdict.needs_fit and verdict.sha256
        for image_format in FITTED_EXTENSIONS
    }


def prune_fitted(fitted_dir: Path, keep: set[str]) -> list[str]:
    """Delete fitted copies not named in ``keep`` (and stale temp files); return the names."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(fitted_dir))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        try:
            if _FITTED_NAME.match(name):
                if name in keep:
                    continue
            elif not (
                name.startswith(_FITTED_TEMP_PREFIX)
                and now - entry.stat().st_mtime > _STALE_TEMP_SECONDS
            ):
                continue  # not ours, or a copy being written right now
            os.unlink(entry.path)
            removed.append(name)
        except OSError:
            continue
    return sorted(removed)


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # for the daemon's user only
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=_FITTED_TEMP_PREFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
