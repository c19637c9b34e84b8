"""The usable images of one folder, in natural order, with a validation cache.

One job at some 600 lines: walking the folder, judging each file, opening a file once
proven inside the folder and loading the bytes to send all share the catalog's data (its
root, fit settings, cache and the images found), and each is the half of another (the
bytes sent are checked against the verdict the walk made). Fitted copies are stored by
``fitted``.

Threading: ``scan``, ``inspect_path`` and ``load_payload`` block (they decode images) and
are meant for a worker thread; they never change the catalog. ``apply_scan``,
``apply_file`` and ``remove_path`` change it and belong on the event-loop thread. The
``ValidationCache`` is called from the worker thread (``get``/``put``) and from the loop
thread (``forget``), so it must be thread-safe. The ``log`` callable is called from both.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from rotator.errors import ImageError
from rotator.fitted import fitted_copy, fitted_names
from rotator.images import (
    FitSettings,
    FittedImage,
    ImageVerdict,
    judge_image_bytes,
    os_error_reason,
    read_open_file,
    rejected_verdict,
)
from rotator.names import escape_name

TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".swp")
_DIGITS = re.compile(r"(\d+)")
_SENT_SUFFIXES = {"jpeg": (".jpg", ".jpeg"), "png": (".png",)}
# What ``image.fitted`` tells of a fitted copy, in this order (then its ``bytes``).
_FIT_FACTS = (
    "source_format",
    "source_bytes",
    "source_width",
    "source_height",
    "format",
    "width",
    "height",
)

NaturalKey = tuple[tuple[tuple[str | int, ...], ...], str]
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_FLAGS |= getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_PATH = getattr(os, "O_PATH", 0)
_PROC_FD = Path("/proc/self/fd")


@functools.cache
def _proc_fd_exists() -> bool:
    """Tell whether /proc/self/fd is there (asked once, not with a stat per file opened)."""
    return _PROC_FD.is_dir()


def natural_key(relative_path: str) -> NaturalKey:
    """Return a sort key: per path component, case-insensitive, numbers by value."""
    components = tuple(
        tuple(
            int(chunk) if index % 2 else chunk
            for index, chunk in enumerate(_DIGITS.split(part.casefold()))
        )
        for part in relative_path.split("/")
    )
    # The raw path breaks ties between names equal but for case or leading zeros.
    return components, relative_path


def is_candidate_name(name: str) -> bool:
    """Tell whether a file or folder name may hold images (not hidden, not a temp name)."""
    lowered = name.lower()
    return not (name.startswith(".") or name.endswith("~") or lowered.endswith(TEMP_SUFFIXES))


CacheEntry = tuple[str, int, int, "ImageVerdict"]  # absolute path, size, mtime_ns, verdict
CACHE_BATCH = 500  # verdicts stored per write during a scan


class ValidationCache(Protocol):
    """Remember verdicts by absolute path, size and mtime so restarts skip decoding."""

    def get(self, path: str, size: int, mtime_ns: int) -> ImageVerdict | None:
        """Return the verdict stored for exactly this path, size and mtime, if any."""
        ...

    def put(self, path: str, size: int, mtime_ns: int, verdict: ImageVerdict) -> None:
        """Store the verdict for this path, size and mtime (replacing older ones)."""
        ...

    def put_many(self, rows: Sequence[CacheEntry]) -> None:
        """Store several verdicts at once (a scan's: one write instead of thousands)."""
        ...

    def forget(self, path: str) -> None:
        """Drop whatever is stored for this path."""
        ...


class MemoryValidationCache:
    """Keep verdicts in memory (thread-safe); for dry runs and tools."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, int, ImageVerdict]] = {}

    def get(self, path: str, size: int, mtime_ns: int) -> ImageVerdict | None:
        """Return the verdict stored for exactly this path, size and mtime, if any."""
        with self._lock:
            entry = self._entries.get(path)
        if entry is None or entry[:2] != (size, mtime_ns):
            return None
        return entry[2]

    def put(self, path: str, size: int, mtime_ns: int, verdict: ImageVerdict) -> None:
        """Store the verdict for this path, size and mtime (replacing older ones)."""
        with self._lock:
            self._entries[path] = (size, mtime_ns, verdict)

    def put_many(self, rows: Sequence[CacheEntry]) -> None:
        """Store several verdicts at once."""
        with self._lock:
            for path, size, mtime_ns, verdict in rows:
                self._entries[path] = (size, mtime_ns, verdict)

    def forget(self, path: str) -> None:
        """Drop whatever is stored for this path."""
        with self._lock:
            self._entries.pop(path, None)


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogImage:
    """One file of a folder and its verdict (usable or not), as a worker thread found it.

    ``folder`` is the catalog's resolved folder (one object shared by all its images),
    ``name`` the file's raw relative name in it, ``relative`` its escaped form (see
    ``escape_name``; the same object when nothing needs escaping). The catalog keeps the
    usable ones; ``ScanResult`` carries them all.
    """

    folder: Path
    name: str
    relative: str
    size_bytes: int
    mtime_ns: int
    verdict: ImageVerdict

    @property
    def path(self) -> Path:
        """Return the file's path (made when asked: a Path per image costs ~440 bytes)."""
        return self.folder / self.name


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """Every candidate path of a folder with its verdict; ``folder_error`` if unreadable."""

    files: tuple[CatalogImage, ...]
    folder_error: str | None = None


@dataclasses.dataclass(frozen=True)
class Payload:
    """The exact bytes to send for one image, and what they are."""

    data: bytes = dataclasses.field(repr=False)
    mime: str
    filename: str
    sha256: str
    source_sha256: str
    fitted: FittedImage | None = dataclasses.field(repr=False)


class Catalog:
    """Hold the usable images of one folder (see the module docstring for threads)."""

    # An agency's 10,000 folders make 10,000 catalogs: no ``__dict__`` each.
    __slots__ = (
        "_cache",
        "_folder_error",
        "_given",
        "_images",
        "_log",
        "_order",
        "_rejected",
        "_root",
        "_root_name",
        "_settings",
    )

    def __init__(
        self,
        folder: Path,
        settings: FitSettings,
        cache: ValidationCache,
        log: Callable[..., None],
        *,
        real_parents: dict[str, str] | None = None,
    ) -> None:
        """Make the catalog of ``folder`` (not scanned yet).

        ``real_parents`` (resolved parent folders by spelling), shared by the catalogs
        made together, spares a ``realpath`` per folder: 10,000 folders in one parent
        then cost one ``realpath`` and 10,000 ``lstat``s.
        """
        # The same Path object where the spellings agree (the usual case): a Path costs
        # ~440 bytes, and an agency's 10,000 folders would hold three of each.
        given = os.path.abspath(folder)
        self._given = folder if isinstance(folder, Path) and str(folder) == given else Path(given)
        real = _real_folder(given, {} if real_parents is None else real_parents)
        self._root = self._given if real == given else Path(real)
        self._root_name = escape_name(str(self._root))
        self._settings = settings
        self._cache = cache
        self._log = log
        self._images: dict[str, CatalogImage] = {}
        self._order: list[str] | None = None  # natural order of self._images, when known
        self._rejected: dict[str, tuple[int, int, str]] = {}
        self._folder_error: str | None = None

    @property
    def folder(self) -> Path:
        """Return the folder, resolved (watch this path so event paths line up)."""
        return self._root

    # -- blocking, thread-safe, read-only -------------------------------------------------

    def scan(self) -> ScanResult:
        """Walk the folder and judge every candidate file (decoding only cache misses)."""
        try:
            root_status = os.stat(self._root)
        except OSError as exc:
            return ScanResult(files=(), folder_error=os_error_reason(exc))
        if not stat.S_ISDIR(root_status.st_mode):
            return ScanResult(files=(), folder_error="not a folder")
        visited = {(root_status.st_dev, root_status.st_ino)}
        pending: list[CacheEntry] = []
        files = []
        for result in self._walk(self._root, "", visited, pending):
            files.append(result)
            if len(pending) >= CACHE_BATCH:
                self._cache.put_many(pending)
                pending.clear()
        if pending:
            self._cache.put_many(pending)
        return ScanResult(files=tuple(files))

    def inspect_path(self, path: Path) -> CatalogImage | None:
        """Judge one path; None when it is not a candidate (hidden, temp, outside, gone, folder)."""
        relative = self._relative(path)
        if not relative or not all(is_candidate_name(part) for part in relative.split("/")):
            return None
        absolute = self._root / relative
        if os.path.islink(absolute):
            try:
                real = os.path.realpath(absolute, strict=True)
            except OSError as exc:
                return self._rejection(relative, _symlink_reason(exc))
            if not self._inside(real):
                return self._rejection(relative, "symlink leaves the folder")
        try:
            status = os.stat(absolute)
        except FileNotFoundError:
            try:
                os.lstat(absolute)
            except FileNotFoundError:
                return None
            except OSError as exc:
                return self._rejection(relative, os_error_reason(exc))
            return self._rejection(relative, "broken symlink")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._rejection(relative, "symlink loop")
            return self._rejection(relative, os_error_reason(exc))
        if stat.S_ISDIR(status.st_mode):
            return None
        if not stat.S_ISREG(status.st_mode):
            return self._rejection(relative, "not a regular file")
        try:
            return self._judge_file(absolute, relative)
        except FileNotFoundError:
            return None

    def read_image(self, image: CatalogImage) -> bytes:
        """Return the bytes of ``image`` as checked; raise ``ImageError`` if they changed.

        The file is opened once and proven to lie inside the folder through that very
        descriptor; the bytes read from it are compared with the checked hash and are
        what is sent, so nothing swapped in afterwards (a symlink, say) can be.
        """
        verdict = image.verdict
        if not verdict.usable or verdict.sha256 is None:
            raise ImageError(f"{image.relative}: not usable ({verdict.reason})")
        try:
            fd = self._open_inside(image.path)
        except OSError as exc:
            raise ImageError(f"{image.relative}: {os_error_reason(exc)}") from None
        except _RejectedError as exc:
            raise ImageError(f"{image.relative}: {exc}") from None
        try:
            data, reason, _ = read_open_file(fd, self._settings.max_source_bytes)
        finally:
            os.close(fd)
        if data is None:
            raise ImageError(f"{image.relative}: {reason}")
        if hashlib.sha256(data).hexdigest() != verdict.sha256:
            raise ImageError(f"{image.relative}: changed since it was checked")
        return data

    def load_payload(self, image: CatalogImage, fitted_dir: Path) -> Payload:
        """Return the bytes to send for ``image``; raise ``ImageError`` if that is impossible."""
        verdict = image.verdict
        if not verdict.usable or verdict.sha256 is None or verdict.format is None:
            raise ImageError(f"{image.relative}: not usable ({verdict.reason})")
        data = self.read_image(image)
        if not verdict.needs_fit:
            return Payload(
                data=data,
                mime=verdict.mime or "application/octet-stream",
                filename=_sent_filename(escape_name(image.path.name), verdict.format),
                sha256=verdict.sha256,
                source_sha256=verdict.sha256,
                fitted=None,
            )
        fitted = self._fitted_copy(image, data, fitted_dir)
        return Payload(
            data=fitted.data,
            mime=fitted.mime,
            filename=_sent_filename(escape_name(image.path.name), fitted.format),
            sha256=fitted.sha256,
            source_sha256=fitted.source_sha256,
            fitted=fitted,
        )

    # -- event-loop thread: changes ---------------------------------------------------------

    def apply_scan(self, result: ScanResult) -> None:
        """Make the image set match a full scan, logging what was added, removed or rejected."""
        if result.folder_error != self._folder_error:
            if result.folder_error is not None:
                self._log(
                    "catalog.folder_unreadable", folder=self._root_name, reason=result.folder_error
                )
            self._folder_error = result.folder_error
        seen = {file.relative for file in result.files}
        for relative in [name for name in self._images if name not in seen]:
            self._drop(relative)
        for relative in [name for name in self._rejected if name not in seen]:
            del self._rejected[relative]
            self._cache.forget(self._cache_key(relative))
        for file in result.files:
            self.apply_file(file)

    def apply_file(self, result: CatalogImage) -> None:
        """Add, replace or reject one file, logging the change."""
        relative = result.relative
        verdict = result.verdict
        if verdict.usable:
            self._rejected.pop(relative, None)
            old = self._images.get(relative)
            self._images[relative] = result
            if old is None:
                self._order = None
            if old is None or old.verdict.sha256 != verdict.sha256:
                self._log(
                    "image.added" if old is None else "image.changed",
                    path=relative,
                    folder=self._root_name,
                    bytes=verdict.size_bytes,
                    format=verdict.format,
                    needs_fit=verdict.needs_fit,
                )
            return
        if relative in self._images:
            self._drop(relative, forget=False)
        reason = verdict.reason or "unusable"
        seen_as = (result.size_bytes, result.mtime_ns, reason)
        if self._rejected.get(relative) != seen_as:
            self._rejected[relative] = seen_as
            self._log("image.rejected", path=relative, folder=self._root_name, reason=reason)

    def remove_path(self, path: Path) -> None:
        """Forget a file, or everything under a folder (the catalog folder itself included)."""
        raw = self._relative(path)
        if raw is None:
            return
        relative = escape_name(raw)
        prefix = f"{relative}/"

        def under(name: str) -> bool:
            return not relative or name == relative or name.startswith(prefix)

        for name in [name for name in self._images if under(name)]:
            self._drop(name)
        for name in [name for name in self._rejected if under(name)]:
            del self._rejected[name]
            self._cache.forget(self._cache_key(name))

    # -- event-loop thread: reads -----------------------------------------------------------

    def usable(self) -> list[CatalogImage]:
        """Return the usable images in natural order."""
        if self._order is None:  # sorted again only after a file came or went
            self._order = sorted(self._images, key=natural_key)
        return [self._images[name] for name in self._order]

    def rejected(self) -> list[tuple[str, str]]:
        """Return (relative path, reason) of every rejected path, in natural order."""
        return [(name, self._rejected[name][2]) for name in sorted(self._rejected, key=natural_key)]

    def get(self, relative: str) -> CatalogImage | None:
        """Return the usable image at this relative path, if any."""
        return self._images.get(relative)

    def fitted_names(self) -> set[str]:
        """Return the fitted-copy file names this catalog may use (for ``prune_fitted``)."""
        return fitted_names((image.verdict for image in self._images.values()), self._settings)

    # -- internals ----------------------------------------------------------------------------

    def _walk(
        self,
        directory: str | Path,
        prefix: str,
        visited: set[tuple[int, int]],
        pending: list[CacheEntry],
    ) -> Iterator[CatalogImage]:
        """Yield a result for every candidate file under ``directory``; never raise."""
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            if prefix:
                yield self._rejection(
                    prefix.rstrip("/"), f"unreadable folder: {os_error_reason(exc)}"
                )
            return
        for entry in entries:
            if not is_candidate_name(entry.name):
                continue
            relative = prefix + entry.name
            path = entry.path  # a str: no Path made per file listed
            try:
                yield from self._walk_entry(entry, path, relative, visited, pending)
            except OSError as exc:  # vanished or unreadable between listing and looking
                if not isinstance(exc, FileNotFoundError):
                    yield self._rejection(relative, os_error_reason(exc))

    def _walk_entry(
        self,
        entry: os.DirEntry[str],
        path: str,
        relative: str,
        visited: set[tuple[int, int]],
        pending: list[CacheEntry],
    ) -> Iterator[CatalogImage]:
        if not entry.is_symlink() and entry.is_file(follow_symlinks=False):
            # The listing's own type says "regular file": _judge_file opens and fstats it
            # anyway, so a stat here would be one more syscall per file for nothing.
            yield self._judge_file(path, relative, pending)
            return
        directory = os.path.dirname(path)
        if entry.is_symlink():
            try:
                real = os.path.realpath(path, strict=True)
            except OSError as exc:
                yield self._rejection(relative, _symlink_reason(exc))
                return
            if not self._inside(real):
                yield self._rejection(relative, "symlink leaves the folder")
                return
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            identity = (status.st_dev, status.st_ino)
            if identity in visited:
                real_directory = os.path.realpath(directory)
                target = os.path.realpath(path)
                if real_directory == target or real_directory.startswith(target + os.sep):
                    yield self._rejection(relative, "symlink loop")
                # Otherwise a second name for a folder already walked: skip the duplicate.
                return
            visited.add(identity)
            yield from self._walk(path, f"{relative}/", visited, pending)
        elif stat.S_ISREG(status.st_mode):
            yield self._judge_file(path, relative, pending)
        else:
            yield self._rejection(relative, "not a regular file")

    def _judge_file(
        self, path: str | Path, relative: str, pending: list[CacheEntry] | None = None
    ) -> CatalogImage:
        """Return the cached verdict for this version of the file, or decode it.

        The file is opened once (``_open_inside``) and everything is judged from that
        descriptor. A new verdict goes into ``pending`` when given (the scan stores them
        in batches), else straight into the cache. Raise ``FileNotFoundError`` if it is gone.
        """
        key = self._cache_key(escape_name(relative))
        try:
            fd = self._open_inside(path)
        except FileNotFoundError:
            raise
        except _RejectedError as exc:
            return self._rejection(relative, str(exc))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return self._rejection(relative, "symlink loop")
            return self._rejection(relative, os_error_reason(exc))
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                return self._rejection(relative, "not a regular file")
            for _attempt in range(2):
                size, mtime_ns = status.st_size, status.st_mtime_ns
                cached = self._cache.get(key, size, mtime_ns)
                if cached is not None and cached.settings_key == self._settings.verdict_key:
                    return self._result(relative, size, mtime_ns, cached)
                data, reason, read_size = read_open_file(fd, self._settings.max_source_bytes)
                if data is None:
                    verdict = rejected_verdict(
                        reason or "unreadable", read_size, self._settings.verdict_key
                    )
                else:
                    verdict = judge_image_bytes(data, self._settings)
                after = os.fstat(fd)
                unchanged = (after.st_size, after.st_mtime_ns) == (size, mtime_ns)
                read_whole = verdict.sha256 is None or verdict.size_bytes == size
                if unchanged and read_whole:
                    # No bytes read means no content facts: those verdicts are retried.
                    if verdict.sha256 is not None and pending is not None:
                        pending.append((key, size, mtime_ns, verdict))
                    elif verdict.sha256 is not None:
                        self._cache.put(key, size, mtime_ns, verdict)
                    return self._result(relative, size, mtime_ns, verdict)
                status = after
            return self._rejection(relative, "still being written", status)
        finally:
            os.close(fd)

    def _open_inside(self, path: str | Path) -> int:
        """Open a file for reading, proving through the descriptor that it is in the folder.

        ``O_NOFOLLOW`` first; a symlink is then followed, and where the descriptor really
        points (``/proc/self/fd``, else the inode of the resolved path) must be inside.
        Where the system allows (Linux), the path is first opened with ``O_PATH``, which
        follows symlinks but opens nothing for reading (no device or FIFO is touched), and
        only a regular file proven inside is then opened, through that very descriptor.
        Raise ``OSError`` or ``_RejectedError``; the caller closes the descriptor.
        """
        if _O_PATH and _proc_fd_exists():
            return self._open_through_anchor(path)
        try:
            fd = os.open(path, _OPEN_FLAGS | _NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP or not _NOFOLLOW:
                raise
            fd = os.open(path, _OPEN_FLAGS)  # a symlink: followed, its target checked below
        try:
            where = _opened_path(fd, path)
        except BaseException:
            os.close(fd)
            raise
        if where is None or not self._inside(where):
            os.close(fd)
            raise _RejectedError("symlink leaves the folder")
        return fd

    def _open_through_anchor(self, path: str | Path) -> int:
        """Open ``path`` for reading only once an ``O_PATH`` descriptor proved it fit."""
        anchor = os.open(path, _O_PATH | getattr(os, "O_CLOEXEC", 0))
        try:
            if not self._inside(os.readlink(_PROC_FD / str(anchor))):
                raise _RejectedError("symlink leaves the folder")
            if not stat.S_ISREG(os.fstat(anchor).st_mode):
                raise _RejectedError("not a regular file")
            # Reopening the magic link opens the very inode checked, whatever the path is now.
            return os.open(_PROC_FD / str(anchor), _OPEN_FLAGS)
        finally:
            os.close(anchor)

    def _cache_key(self, name: str) -> str:
        """Return the validation-cache key of an escaped relative name (valid UTF-8)."""
        return f"{self._root_name}/{name}"

    def _result(
        self, relative: str, size: int, mtime_ns: int, verdict: ImageVerdict
    ) -> CatalogImage:
        # No Path kept: ``CatalogImage.path`` is the folder joined with ``relative``.
        return CatalogImage(self._root, relative, escape_name(relative), size, mtime_ns, verdict)

    def _rejection(
        self, relative: str, reason: str, status: os.stat_result | None = None
    ) -> CatalogImage:
        size = status.st_size if status else 0
        mtime_ns = status.st_mtime_ns if status else 0
        verdict = rejected_verdict(reason, size, self._settings.verdict_key)
        return self._result(relative, size, mtime_ns, verdict)

    def _fitted_copy(self, image: CatalogImage, data: bytes, fitted_dir: Path) -> FittedImage:
        """Return the stored fitted copy of ``image``, making and storing it the first time."""

        def not_stored(exc: OSError) -> None:
            self._log("image.fit_not_stored", path=image.relative, reason=os_error_reason(exc))

        fitted, made = fitted_copy(fitted_dir, image.verdict, data, self._settings, not_stored)
        if made:
            facts = {name: getattr(fitted, name) for name in _FIT_FACTS}
            facts["bytes"] = len(fitted.data)
            self._log("image.fitted", path=image.relative, folder=self._root_name, **facts)
        return fitted

    def _drop(self, relative: str, *, forget: bool = True) -> None:
        self._images.pop(relative)
        self._order = None
        if forget:
            self._cache.forget(self._cache_key(relative))
        self._log("image.removed", path=relative, folder=str(self._root))

    def _relative(self, path: Path) -> str | None:
        """Return ``path`` relative to the folder (POSIX; "" for the folder), None if outside."""
        absolute = Path(os.path.abspath(path))
        for root in (self._root, self._given):
            try:
                relative = absolute.relative_to(root).as_posix()
            except ValueError:
                continue
            return "" if relative == "." else relative
        return None

    def _inside(self, real: str) -> bool:
        root = str(self._root)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class _RejectedError(Exception):
    """The file is rejected before reading: outside the folder (a symlink), or not a file."""


def _opened_path(fd: int, path: str | Path) -> str | None:
    """Return where an open descriptor points, or None if that cannot be told."""
    try:
        return os.readlink(_PROC_FD / str(fd))
    except OSError:
        pass
    # No /proc: accept the resolved path only if it is the very file that was opened.
    real = os.path.realpath(path)
    opened = os.fstat(fd)
    try:
        there = os.stat(real, follow_symlinks=False)
    except OSError:
        return None
    return real if (there.st_dev, there.st_ino) == (opened.st_dev, opened.st_ino) else None


def _real_folder(given: str, real_parents: dict[str, str]) -> str:
    """Return ``os.path.realpath(given)`` of an absolute, normalised path, parents remembered.

    Only the last component is looked at (one ``lstat``): not a symlink (or missing, where
    ``realpath`` would also keep the name as it is) means the real parent plus the name.
    """
    parent, name = os.path.split(given)
    if not name or name in (os.curdir, os.pardir):
        return os.path.realpath(given)
    try:
        if stat.S_ISLNK(os.lstat(given).st_mode):
            return os.path.realpath(given)
    except OSError:
        pass  # missing or unreachable: realpath keeps such a name as it is, too
    real_parent = real_parents.get(parent)
    if real_parent is None:
        real_parent = real_parents[parent] = os.path.realpath(parent)
    return os.path.join(real_parent, name)


def _sent_filename(name: str, image_format: str) -> str:
    """Keep the source name, with an extension matching what is sent."""
    suffixes = _SENT_SUFFIXES[image_format]
    path = Path(name)
    if path.suffix.lower() in suffixes:
        return name
    return f"{path.stem if path.suffix else name}{suffixes[0]}"


def _symlink_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(exc, FileNotFoundError):
        return "broken symlink"
    return f"unreadable symlink: {os_error_reason(exc)}"
