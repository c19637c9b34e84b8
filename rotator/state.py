"""Keep the daemon's durable memory in SQLite: positions, pending writes, history, pauses, cache.

The store lives in ``rotator.db`` inside the state directory. It is the only module that
imports ``sqlite3`` (and ``fcntl``, for the one-daemon-per-directory lock).

Durability: WAL journal and one short transaction per change (``BEGIN IMMEDIATE`` …
``COMMIT``, never a long-lived open transaction), so a ``kill -9`` at any moment keeps
every committed row. A write is recorded *before* the request leaves (``save_write``) and
its result in one transaction (``record_success``, ``record_failure``,
``record_uncertain``): after a crash the next image is the one after the last success, or
the pending one again, replayed with the same Idempotency-Key. Commits are synced to disk
(``synchronous=FULL``) so a power cut keeps them too, except the results of writes and the
validation cache (``synchronous=NORMAL``, a sync saved per write): a result lost to a
power cut leaves its write pending, and the replay under its key gets the server's own
record of it back, at no cost; a lost verdict is looked at again.

Threading: the daemon calls the store from the event loop, and the catalog calls the
validation cache from worker threads during scans. One connection is opened with
``check_same_thread=False`` and every use of it is serialised by a ``threading.Lock``.

Datetimes are stored as ISO 8601 UTC text with microseconds (so text order is time order)
and returned as aware UTC datetimes; naive datetimes are rejected with ``ValueError``.

The API key is never stored: there is no method that takes it, and messages handed to the
store come from the client, which never puts the key in them.

Why one module of this size: it is the one place that knows the schema. Every method is
one stored fact (a position, a write, a row of history, a pause, a verdict) written in one
transaction under one lock, and the migrations, the connection checks and the flock exist
for those same tables; split, each part would have to share the connection, the lock and
the schema version with the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import json
import os
import sqlite3
import stat
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from rotator.errors import StateError, StateLockedError, StateVersionError
from rotator.redaction import redact, redact_optional, safe_code

DB_NAME = "rotator.db"
PAGE_CACHE_KIB = 256
LOCK_NAME = "rotator.lock"
_SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 5000
MAX_MESSAGE_CHARS = 500  # a proxy's HTML error page must not bloat the history
MAX_LAST_ERROR_CHARS = 200

PauseScope = Literal["key", "account"]
CacheRow = tuple[str, int, int, Mapping[str, object]]  # path, size, mtime_ns, verdict

# Migration i takes the schema from version i to i + 1; the schema version is their count.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE entries (
            entry_id TEXT PRIMARY KEY, account TEXT NOT NULL,
            last_image TEXT, last_image_sha256 TEXT, last_success TEXT,
            last_attempt TEXT, last_error TEXT,
            shown_in_cycle TEXT NOT NULL DEFAULT '[]', last_fire TEXT,
            uncertain INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE pending_writes (
            entry_id TEXT PRIMARY KEY, account TEXT NOT NULL, image TEXT NOT NULL,
            sha256 TEXT NOT NULL, source_sha256 TEXT NOT NULL, idempotency_key TEXT NOT NULL,
            rotation_id TEXT NOT NULL, started TEXT NOT NULL)""",
        """CREATE TABLE history (
            id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,
            entry_id TEXT NOT NULL, account TEXT NOT NULL, image TEXT, sha256 TEXT,
            source_sha256 TEXT, outcome TEXT NOT NULL, error_code TEXT, status INTEGER,
            request_id TEXT, message TEXT NOT NULL, attempt INTEGER NOT NULL,
            duration_ms INTEGER)""",
        "CREATE INDEX history_time ON history (time)",
        "CREATE INDEX history_entry ON history (entry_id, id)",
        # account is '' for scope "key": NULLs would never collide in the primary key.
        """CREATE TABLE pauses (
            scope TEXT NOT NULL, account TEXT NOT NULL, reason TEXT NOT NULL,
            until TEXT NOT NULL, level INTEGER NOT NULL, started TEXT NOT NULL,
            PRIMARY KEY (scope, account))""",
        # The images the server refused; renamed refused_images by migration 3.
        """CREATE TABLE rejected_images (
            sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, code TEXT NOT NULL,
            time TEXT NOT NULL)""",
        """CREATE TABLE validation_cache (
            path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            verdict TEXT NOT NULL)""",
    ),
    # 2: the write ledger. A pending write keeps its write record (id, statusUrl,
    # expiresAt, last status, request id) so a restart resumes it; history rows name
    # the write action and the credits it cost. Additive only: a v1 state opens as is.
    (
        "ALTER TABLE pending_writes ADD COLUMN action_id TEXT",
        "ALTER TABLE pending_writes ADD COLUMN status_url TEXT",
        "ALTER TABLE pending_writes ADD COLUMN expires_at TEXT",
        "ALTER TABLE pending_writes ADD COLUMN last_status TEXT",
        "ALTER TABLE pending_writes ADD COLUMN request_id TEXT",
        "ALTER TABLE history ADD COLUMN action_id TEXT",
        "ALTER TABLE history ADD COLUMN credits INTEGER",
    ),
    # 3: one word per concept. A pause's kind gets a column of its own (it was packed into
    # the reason as "kind:reason", split the way str.partition splits it: no colon means
    # the kind is the whole text, an empty reason is the kind again), and the images the
    # server refused are kept under that word.
    (
        "ALTER TABLE pauses ADD COLUMN kind TEXT NOT NULL DEFAULT ''",
        "UPDATE pauses SET kind = reason WHERE instr(reason, ':') = 0",
        """UPDATE pauses SET kind = substr(reason, 1, instr(reason, ':') - 1),
           reason = substr(reason, instr(reason, ':') + 1) WHERE instr(reason, ':') > 0""",
        "UPDATE pauses SET reason = kind WHERE reason = ''",
        "ALTER TABLE rejected_images RENAME TO refused_images",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)
# Tables added without a schema version of their own: made at every writable open, so an
# older rotator that opens the same database simply ignores them.
_SIDE_TABLES = (
    """CREATE TABLE IF NOT EXISTS excluded_images (
        entry_id TEXT NOT NULL, image TEXT NOT NULL, time TEXT NOT NULL,
        PRIMARY KEY (entry_id, image))""",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EntryState:
    """Where one entry (account + image folder) stands; all empty for an unknown entry."""

    entry_id: str
    account: str | None = None
    last_image: str | None = None  # path relative to the entry's folder
    last_image_sha256: str | None = None  # hash of the bytes sent
    last_success: dt.datetime | None = None
    last_attempt: dt.datetime | None = None
    last_error: str | None = None  # "code: message"
    shown_in_cycle: frozenset[str] = frozenset()
    last_fire: dt.datetime | None = None  # when its schedule last fired (cron catch-up)
    uncertain: bool = False  # the last write's outcome is unknown


@dataclasses.dataclass(frozen=True, kw_only=True)
class WriteRecord:
    """Everything known about one write, kept before its request is sent and on each change.

    Made once by the rotation and replaced whole (``dataclasses.replace``) when the
    server tells more; a restart finds it and resumes the write before anything new.
    """

    entry_id: str
    account: str
    image: str
    sha256: str  # of the bytes sent
    source_sha256: str  # of the file the bytes came from
    idempotency_key: str
    rotation_id: str
    started: dt.datetime
    action_id: str | None = None  # the server's write-action id, once known
    status_url: str | None = None  # where the write action is polled
    expires_at: dt.datetime | None = None  # deadline for resolving a running write
    last_status: str | None = None  # sending | accepted | ... | the last record's status
    request_id: str | None = None  # X-Request-Id of the write

    def audit_row(self, time: dt.datetime, outcome: str) -> HistoryRow:
        """Return the history row of this write at ``time``, its details (answer, cost) empty."""
        return HistoryRow(
            time=time,
            entry_id=self.entry_id,
            account=self.account,
            image=self.image,
            sha256=self.sha256,
            source_sha256=self.source_sha256,
            outcome=outcome,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HistoryRow:
    """One audit row: a write attempt and what came of it."""

    time: dt.datetime
    entry_id: str
    account: str
    image: str | None
    sha256: str | None  # of the bytes sent
    source_sha256: str | None  # of the file the bytes came from
    outcome: str  # success | uncertain | unresolved | an Outcome kind
    error_code: str | None = None
    status: int | None = None  # HTTP status of the answer
    request_id: str | None = None  # X-Request-Id of the write
    message: str = ""  # short, one line, never the key
    attempt: int = 1
    duration_ms: int | None = None
    action_id: str | None = None  # the server's write-action id, when it gave one
    credits: int | None = None  # credits the write cost, by its record's billing


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pause:
    """A pause of the whole key or of one account, kept across restarts."""

    scope: PauseScope
    account: str | None  # None for scope "key"
    kind: str  # what the pause is for: rate_limit, credits, account, manual, ...
    reason: str  # the error code (or words) that started it
    until: dt.datetime
    level: int  # how many times in a row it was extended, for doubling
    started: dt.datetime

    def summary(self) -> str:
        """Return a one-line summary (``credits (insufficient_credits) until ...``)."""
        who = "all accounts" if self.scope == "key" else self.account
        return f"{who}: {self.kind} ({self.reason}) until {self.until.isoformat()}"


def _time_text(value: dt.datetime) -> str:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware datetime")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _time_value(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.UTC)


def _maybe_time(text: str | None) -> dt.datetime | None:
    return None if text is None else _time_value(text)


def _short(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_line(code: str | None, message: str) -> str:
    parts = (safe_code(code), redact(message))  # both may be a server's echo of the key
    line = ": ".join(part for part in parts if part) or "unknown error"
    return _short(line, MAX_LAST_ERROR_CHARS)


class StateStore:
    """The SQLite store of one state directory; open it with ``StateStore.open``."""

    def __init__(
        self, state_dir: Path, conn: sqlite3.Connection, lock_fd: int | None, readonly: bool
    ) -> None:
        self.state_dir = state_dir
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()

    # --- opening and closing -------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path, *, lock: bool = True, readonly: bool = False) -> StateStore:
        """Open (creating unless ``readonly``) the store in ``state_dir``.

        ``lock`` takes the directory's flock first (ignored when ``readonly``): a second
        daemon gets ``StateLockedError``. ``readonly`` opens without the lock, for commands
        that look while the daemon runs.
        """
        state_dir = Path(state_dir)
        db_path = state_dir / DB_NAME
        if readonly:
            if not state_exists(state_dir):
                raise StateError(f"no state yet at {state_dir}")
            check_state_file(state_dir)
            return cls(state_dir, _connect(db_path, state_dir, readonly=True), None, True)
        _make_dir(state_dir)
        lock_fd = _take_lock(state_dir) if lock else None
        try:
            if state_exists(state_dir):
                check_state_file(state_dir)
            else:
                _create_db(db_path, state_dir)
            conn = _connect(db_path, state_dir, readonly=False)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(state_dir, conn, lock_fd, False)

    def close(self) -> None:
        """Close the database and release the directory lock; closing twice is harmless."""
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor releases the flock
                self._lock_fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self, *, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the body as one transaction, serialised with every other use.

        ``synced=False`` commits without waiting for the disk: for what a power cut may
        lose because something synced already recovers it (see the module docstring).
        """
        if self.readonly:
            raise StateError(f"the state in {self.state_dir} was opened read-only")
        with self._mutex:
            conn = self._live()
            try:
                if not synced:
                    conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                    except BaseException:
                        _rollback(conn)
                        raise
                    conn.execute("COMMIT")
                finally:
                    if not synced:
                        conn.execute("PRAGMA synchronous = FULL")
            except sqlite3.Error as exc:
                raise StateError(f"cannot write the state in {self.state_dir}: {exc}") from exc

    def _read(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._mutex:
            try:
                return self._live().execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"cannot read the state in {self.state_dir}: {exc}") from exc

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"the state store for {self.state_dir} is closed")
        return self._conn

    # --- entries -------------------------------------------------------------------------

    def entry(self, entry_id: str) -> EntryState:
        """Return where ``entry_id`` stands (all empty if it never ran)."""
        rows = self._read("SELECT * FROM entries WHERE entry_id = ?", (entry_id,))
        return _entry_state(rows[0]) if rows else EntryState(entry_id=entry_id)

    def entries(self) -> list[EntryState]:
        """Return every entry the store knows, by entry id."""
        return [_entry_state(row) for row in self._read("SELECT * FROM entries ORDER BY entry_id")]

    def entry_times(self) -> dict[str, tuple[dt.datetime | None, dt.datetime | None]]:
        """Return every known entry's last fire and last success (what scheduling and the
        metrics need).

        Not ``entries()``: a start of 10,000 entries would parse all of each row for two
        times (7 MiB of start-up peak, kept by the allocator as the daemon's memory).
        """
        rows = self._read("SELECT entry_id, last_fire, last_success FROM entries")
        return {row[0]: (_maybe_time(row[1]), _maybe_time(row[2])) for row in rows}

    def record_fire(self, entry_id: str, account: str, now: dt.datetime) -> None:
        """Remember that the entry's schedule fired at ``now``."""
        with self._write() as conn:
            _touch_entry(conn, entry_id, account)
            conn.execute(
                "UPDATE entries SET last_fire = ? WHERE entry_id = ?", (_time_text(now), entry_id)
            )

    def save_write(self, record: WriteRecord, *, now: dt.datetime) -> None:
        """Keep ``record`` as the entry's pending write (before the send, and on each change)."""
        with self._write() as conn:
            conn.execute(
                """INSERT INTO entries (entry_id, account, last_attempt) VALUES (?, ?, ?)
                   ON CONFLICT (entry_id) DO UPDATE SET account = excluded.account,
                   last_attempt = excluded.last_attempt""",
                (record.entry_id, record.account, _time_text(now)),
            )
            _keep_pending(conn, record)

    def pending_write(self, entry_id: str) -> WriteRecord | None:
        """Return the entry's write whose result was never recorded, if any."""
        rows = self._read("SELECT * FROM pending_writes WHERE entry_id = ?", (entry_id,))
        if not rows:
            return None
        row = dict(rows[0])
        row["started"] = _time_value(row["started"])
        row["expires_at"] = _maybe_time(row["expires_at"])
        return WriteRecord(**row)

    def record_success(self, row: HistoryRow, *, shown_in_cycle: frozenset[str]) -> None:
        """Move the entry's position to the row's image, audit it and clear the pending write.

        All at once, in one transaction; the row is audited as a ``success``.
        """
        when = _time_text(row.time)
        with self._write(synced=False) as conn:
            conn.execute(
                """INSERT INTO entries (entry_id, account, last_image, last_image_sha256,
                   last_success, last_attempt, last_error, uncertain, shown_in_cycle)
                   VALUES (?, ?, ?, ?, ?, ?, NULL, 0, ?)
                   ON CONFLICT (entry_id) DO UPDATE SET account = excluded.account,
                   last_image = excluded.last_image,
                   last_image_sha256 = excluded.last_image_sha256,
                   last_success = excluded.last_success, last_attempt = excluded.last_attempt,
                   last_error = NULL, uncertain = 0, shown_in_cycle = excluded.shown_in_cycle""",
                (
                    row.entry_id,
                    row.account,
                    row.image,
                    row.sha256,
                    when,
                    when,
                    json.dumps(sorted(shown_in_cycle)),
                ),
            )
            _audit(conn, dataclasses.replace(row, outcome="success"))
            conn.execute("DELETE FROM pending_writes WHERE entry_id = ?", (row.entry_id,))

    def record_failure(
        self,
        row: HistoryRow,
        *,
        pending: WriteRecord | None,
        shown_in_cycle: frozenset[str] | None = None,
    ) -> None:
        """Audit a failed attempt and set ``last_error``; the position does not move.

        ``pending`` is the write to keep for a replay under its Idempotency-Key (no answer
        came, or the server is still at it), as it stands now; None clears the pending
        write. With ``shown_in_cycle`` the position moves past the row's image (the server
        said that input cannot succeed).
        """
        self._record_unsuccessful(row, pending, False, shown_in_cycle)

    def record_uncertain(
        self, row: HistoryRow, *, shown_in_cycle: frozenset[str] | None = None
    ) -> None:
        """Audit a write whose outcome is unknown (as ``uncertain``) and flag the entry.

        With ``shown_in_cycle`` the position moves past the row's image in the same
        transaction (the write may have happened: sending it again would be a blind
        resend), but ``last_success`` stays as it was.
        """
        row = dataclasses.replace(row, outcome="uncertain")
        self._record_unsuccessful(row, None, True, shown_in_cycle)

    def _record_unsuccessful(
        self,
        row: HistoryRow,
        pending: WriteRecord | None,
        uncertain: bool,
        shown_in_cycle: frozenset[str] | None,
    ) -> None:
        with self._write(synced=False) as conn:
            _touch_entry(conn, row.entry_id, row.account)
            conn.execute(
                """UPDATE entries SET last_attempt = ?, last_error = ?, uncertain = ?
                   WHERE entry_id = ?""",
                (
                    _time_text(row.time),
                    _error_line(row.error_code, row.message),
                    int(uncertain),
                    row.entry_id,
                ),
            )
            if shown_in_cycle is not None:
                conn.execute(
                    """UPDATE entries SET last_image = ?, last_image_sha256 = ?,
                       shown_in_cycle = ? WHERE entry_id = ?""",
                    (row.image, row.sha256, json.dumps(sorted(shown_in_cycle)), row.entry_id),
                )
            _audit(conn, row)
            if pending is not None:
                _keep_pending(conn, pending)
            else:
                conn.execute("DELETE FROM pending_writes WHERE entry_id = ?", (row.entry_id,))

    def history(
        self,
        *,
        limit: int = 50,
        entry_id: str | None = None,
        account: str | None = None,
        since: dt.datetime | None = None,
    ) -> list[HistoryRow]:
        """Return up to ``limit`` audit rows, newest first, narrowed by entry, account, time."""
        if limit < 0:
            raise ValueError(f"limit must be zero or more, not {limit}")
        conditions, params = ["1"], list[object]()
        if entry_id is not None:
            conditions.append("entry_id = ?")
            params.append(entry_id)
        if account is not None:
            conditions.append("account = ?")
            params.append(account)
        if since is not None:
            conditions.append("time >= ?")
            params.append(_time_text(since))
        rows = self._read(
            f"SELECT * FROM history WHERE {' AND '.join(conditions)} ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed condition texts, values are parameters
            (*params, limit),
        )
        result = []
        for row in rows:
            fields = dict(row)
            del fields["id"]
            fields["time"] = _time_value(fields["time"])
            result.append(HistoryRow(**fields))
        return result

    def credits_spent(self, *, since: dt.datetime) -> int:
        """Return the credits the writes audited at or after ``since`` cost, by their billing."""
        rows = self._read(
            "SELECT coalesce(sum(credits), 0) FROM history WHERE time >= ?", (_time_text(since),)
        )
        return int(rows[0][0])

    def prune_history(self, *, before: dt.datetime) -> int:
        """Delete audit rows older than ``before``; return how many went."""
        with self._write() as conn:
            cursor = conn.execute("DELETE FROM history WHERE time < ?", (_time_text(before),))
            return cursor.rowcount

    # --- pauses --------------------------------------------------------------------------

    def set_pause(self, pause: Pause, *, now: dt.datetime) -> None:
        """Start or extend the pause of the key or of one account.

        ``started`` is kept when an active pause is extended, and reset to ``now`` otherwise.
        """
        key = _pause_key(pause.scope, pause.account)
        when = _time_text(now)
        with self._write() as conn:
            conn.execute(
                """INSERT INTO pauses (scope, account, kind, reason, until, level, started)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (scope, account) DO UPDATE SET kind = excluded.kind,
                   reason = excluded.reason, until = excluded.until, level = excluded.level,
                   started = CASE WHEN pauses.until > excluded.started
                                  THEN pauses.started ELSE excluded.started END""",
                (*key, pause.kind, pause.reason, _time_text(pause.until), pause.level, when),
            )

    def pauses(self) -> list[Pause]:
        """Return every stored pause, expired ones included, key pause first."""
        rows = self._read("SELECT * FROM pauses ORDER BY scope = 'account', account")
        return [
            Pause(
                scope=row["scope"],
                account=row["account"] or None,
                kind=row["kind"],
                reason=row["reason"],
                until=_time_value(row["until"]),
                level=row["level"],
                started=_time_value(row["started"]),
            )
            for row in rows
        ]

    def clear_pause(self, *, scope: PauseScope, account: str | None) -> bool:
        """End a pause; tell whether there was one."""
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM pauses WHERE scope = ? AND account = ?", _pause_key(scope, account)
            )
            return cursor.rowcount > 0

    # --- images the server refused -------------------------------------------------------

    def mark_refused(self, *, sha256: str, path: str, code: str, now: dt.datetime) -> None:
        """Remember that the server refused the image with this content hash."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO refused_images VALUES (?, ?, ?, ?)",
                (sha256, path, redact(code), _time_text(now)),
            )

    def refused_hashes(self) -> dict[str, str]:
        """Return the content hashes the server refused, each with its error code."""
        return {row[0]: row[1] for row in self._read("SELECT sha256, code FROM refused_images")}

    def refused_images(self) -> list[tuple[str, str]]:
        """Return (path, error code) of every image the server refused, by path."""
        rows = self._read("SELECT path, code FROM refused_images ORDER BY path")
        return [(str(row[0]), str(row[1])) for row in rows]

    # --- set by hand: positions skipped, images excluded ----------------------------------

    def set_position(
        self, *, entry_id: str, account: str, last_image: str, shown_in_cycle: frozenset[str]
    ) -> None:
        """Move the entry's position past ``last_image`` without a write (``rotator skip``)."""
        with self._write() as conn:
            _touch_entry(conn, entry_id, account)
            conn.execute(
                "UPDATE entries SET last_image = ?, shown_in_cycle = ? WHERE entry_id = ?",
                (last_image, json.dumps(sorted(shown_in_cycle)), entry_id),
            )

    def exclude_image(self, *, entry_id: str, image: str, now: dt.datetime) -> bool:
        """Keep ``image`` (relative to the entry's folder) from being picked; False if it was."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO excluded_images VALUES (?, ?, ?)",
                (entry_id, image, _time_text(now)),
            )
            return cursor.rowcount > 0

    def include_image(self, *, entry_id: str, image: str) -> bool:
        """Let ``image`` be picked again; False if it was not excluded."""
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM excluded_images WHERE entry_id = ? AND image = ?", (entry_id, image)
            )
            return cursor.rowcount > 0

    def excluded_images(self, entry_id: str | None = None) -> list[tuple[str, str]]:
        """Return (entry id, image) of the images excluded by hand, of one entry or of all."""
        if not self._read(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'excluded_images'"
        ):
            return []  # a read-only look at a database no daemon of this version opened yet
        rows = self._read(
            """SELECT entry_id, image FROM excluded_images
               WHERE ? IS NULL OR entry_id = ? ORDER BY entry_id, image""",
            (entry_id, entry_id),
        )
        return [(str(row[0]), str(row[1])) for row in rows]

    # --- validation cache ----------------------------------------------------------------

    def cache_get(self, path: str, size: int, mtime_ns: int) -> dict[str, object] | None:
        """Return the cached verdict for ``path`` if its size and mtime still match."""
        rows = self._read(
            "SELECT verdict FROM validation_cache WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, size, mtime_ns),
        )
        return self.cache_decode(rows[0][0]) if rows else None

    def cache_rows_under(self, folder: str) -> dict[str, tuple[int, int, str]]:
        """Return the stored verdicts of the files under ``folder`` (a catalog's key prefix)
        in one read: path -> (size, mtime_ns, raw verdict)."""
        # Every key under it starts with "folder/", and "/" + 1 is "0": one index range.
        rows = self._read(
            "SELECT path, size, mtime_ns, verdict FROM validation_cache"
            " WHERE path >= ? AND path < ?",
            (f"{folder}/", f"{folder}0"),
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    @staticmethod
    def cache_decode(raw: str) -> dict[str, object] | None:
        """Return a raw verdict as ``cache_get`` does (None when it is unreadable)."""
        try:
            verdict = json.loads(raw)
        except ValueError:
            return None  # an unreadable entry is a miss: the file is validated again
        if not isinstance(verdict, dict):
            return None
        # Short values ("png", "image/png", the settings key) repeat in every verdict:
        # one shared copy each rather than one per image held in memory.
        return {
            key: sys.intern(value) if isinstance(value, str) and len(value) < 40 else value
            for key, value in verdict.items()
        }

    def cache_put(self, path: str, size: int, mtime_ns: int, verdict: Mapping[str, object]) -> None:
        """Store the verdict for ``path`` at this size and mtime, replacing any older one."""
        self.cache_put_many([(path, size, mtime_ns, verdict)])

    def cache_put_many(self, rows: Iterable[CacheRow]) -> None:
        """Store many verdicts in one transaction (a cold scan of thousands of files)."""
        encoded = [(p, s, m, json.dumps(v, sort_keys=True)) for p, s, m, v in rows]
        with self._write(synced=False) as conn:
            conn.executemany("INSERT OR REPLACE INTO validation_cache VALUES (?, ?, ?, ?)", encoded)

    def cache_forget(self, path: str) -> None:
        """Drop the cached verdict for ``path``."""
        with self._write() as conn:
            conn.execute("DELETE FROM validation_cache WHERE path = ?", (path,))


# --- connection, lock, schema --------------------------------------------------------------


def state_exists(state_dir: Path) -> bool:
    """Tell whether ``state_dir`` holds a state database (usable or not)."""
    return os.path.lexists(Path(state_dir) / DB_NAME)


def check_state_file(state_dir: Path) -> None:
    """Reject a database file that is empty, truncated to nothing or not SQLite at all.

    Reads only the 100-byte header (no SQLite, no lock): ``health`` can afford it.
    """
    db_path = Path(state_dir) / DB_NAME
    try:
        fd = os.open(db_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateError(f"the state database {db_path} is not a regular file")
            header = os.pread(fd, 100, 0)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateError(f"cannot read the state database {db_path}: {_os_text(exc)}") from None
    if not header:
        raise StateError(
            f"the state database {db_path} is empty (0 bytes): the positions and history it "
            "held are gone; restore it from a backup, or delete it to start afresh"
        )
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StateError(
            f"the state database {db_path} is not a SQLite database (truncated or overwritten): "
            "restore it from a backup, or move it away to start afresh"
        )
    # The header's page count is valid when its two change counters agree (SQLite file format).
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    if header[24:28] == header[92:96] and size < page_size * pages:
        raise StateError(
            f"the state database {db_path} is truncated ({size} of {page_size * pages} bytes): "
            "restore it from a backup, or move it away to start afresh"
        )


def _os_text(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _write_problem(exc: OSError) -> str:
    """Describe an OSError met opening state for writing, with what to check."""
    why = _os_text(exc)
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        why += " (rotator must be able to write it: check its owner, mode and file system)"
    return why


def _make_dir(state_dir: Path) -> None:
    try:
        if not state_dir.is_dir():
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(state_dir, 0o700)  # mkdir's mode is only what the umask leaves
        mode = os.stat(state_dir).st_mode
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot create the state directory {state_dir}: {exc}") from None
    if not stat.S_ISDIR(mode):
        raise StateError(f"the state directory {state_dir} is not a directory")
    if mode & stat.S_IWOTH:
        raise StateError(
            f"the state directory {state_dir} is writable by other users "
            f"(mode {stat.S_IMODE(mode):04o}): anyone could replace the state; chmod 700 it"
        )


def _create_db(db_path: Path, state_dir: Path) -> None:
    """Create a new database under a temporary name and link it into place complete.

    So a crash at any moment leaves either no database or one with its schema, never an
    empty file that would look like lost state.
    """
    temporary = db_path.with_name(f".{DB_NAME}.new-{os.getpid()}")
    try:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        os.close(os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(str(temporary), isolation_level=None)
        try:
            _check_schema(conn, state_dir, readonly=False)
        finally:
            conn.close()
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(temporary, db_path)
    except sqlite3.Error as exc:
        raise StateError(f"cannot create the state database {db_path}: {exc}") from None
    except OSError as exc:
        raise StateError(f"cannot create the state database {db_path}: {_os_text(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _take_lock(state_dir: Path) -> int:
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"cannot open the lock file {path}: {_write_problem(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StateLockedError(
            f"another rotator daemon is using the state directory {state_dir} (pid {holder})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StateError(f"cannot lock the state directory {state_dir}: {exc}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _connect(db_path: Path, state_dir: Path, *, readonly: bool) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = None
    try:
        if readonly:
            target = db_path.absolute().as_uri() + "?mode=ro"
        else:
            # The file exists (``_create_db``): open it for writing here, so a read-only
            # database is one clear error now rather than a failed write later.
            os.close(os.open(db_path, os.O_RDWR | os.O_CLOEXEC))
            target = str(db_path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, DDL included.
        conn = sqlite3.connect(target, uri=readonly, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # SQLite's page cache (2 MiB by default) fills up with the start's read of the
        # validation cache and stays in the daemon's memory; the operating system caches
        # the file anyway, and the writes touch a few pages each.
        conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        _check_schema(conn, state_dir, readonly=readonly)
        _check_integrity(conn, db_path)
        if not readonly:
            for statement in _SIDE_TABLES:
                conn.execute(statement)
    except sqlite3.DatabaseError as exc:
        if conn is not None:
            conn.close()
        hint = _database_hint(exc)
        raise StateError(f"cannot use the state database {db_path}: {exc}{hint}") from None
    except OSError as exc:
        if conn is not None:
            conn.close()
        raise StateError(
            f"cannot open the state database {db_path}: {_write_problem(exc)}"
        ) from None
    except StateError:
        if conn is not None:
            conn.close()
        raise
    return conn


def _check_integrity(conn: sqlite3.Connection, db_path: Path) -> None:
    """Reject a damaged database at once, rather than failing at some later write."""
    problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(3)").fetchall()]
    if problems != ["ok"]:
        raise StateError(
            f"the state database {db_path} is damaged ({'; '.join(problems)[:200]}): restore "
            "it from a backup, or move it away to start afresh"
        )


def _database_hint(exc: sqlite3.DatabaseError) -> str:
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return " (rotator must be able to write it: check its owner, mode and file system)"
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return " (restore it from a backup, or move it away to start afresh)"
    return ""


def _check_schema(conn: sqlite3.Connection, state_dir: Path, *, readonly: bool) -> None:
    version = _user_version(conn)
    if version > SCHEMA_VERSION:
        raise StateVersionError(
            f"the state in {state_dir} was written by a newer rotator (schema {version}; "
            f"this one knows up to {SCHEMA_VERSION}); upgrade rotator or use another state dir"
        )
    if version == SCHEMA_VERSION:
        return
    if readonly:
        raise StateError(
            f"the state in {state_dir} has schema {version} (this rotator uses "
            f"{SCHEMA_VERSION}); start the daemon once to upgrade it"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _user_version(conn)  # again, inside the transaction: another may have won
        for number in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[number]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        _rollback(conn)
        raise
    conn.execute("COMMIT")


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (disk full, I/O): then there is nothing to do.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _touch_entry(conn: sqlite3.Connection, entry_id: str, account: str) -> None:
    conn.execute(
        """INSERT INTO entries (entry_id, account) VALUES (?, ?)
           ON CONFLICT (entry_id) DO UPDATE SET account = excluded.account""",
        (entry_id, account),
    )


def _fields(record: WriteRecord | HistoryRow) -> dict[str, Any]:
    """Return a record's fields by name (``dataclasses.asdict`` deep-copies: slower)."""
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def _keep_pending(conn: sqlite3.Connection, record: WriteRecord) -> None:
    fields = _fields(record)
    fields["started"] = _time_text(record.started)
    fields["expires_at"] = None if record.expires_at is None else _time_text(record.expires_at)
    conn.execute(
        """INSERT OR REPLACE INTO pending_writes (entry_id, account, image, sha256,
           source_sha256, idempotency_key, rotation_id, started, action_id, status_url,
           expires_at, last_status, request_id) VALUES (:entry_id, :account, :image,
           :sha256, :source_sha256, :idempotency_key, :rotation_id, :started,
           :action_id, :status_url, :expires_at, :last_status, :request_id)""",
        fields,
    )


def _audit(conn: sqlite3.Connection, row: HistoryRow) -> None:
    fields = _fields(row)
    fields["time"] = _time_text(row.time)
    fields["message"] = _short(redact(row.message), MAX_MESSAGE_CHARS)
    fields["error_code"] = safe_code(row.error_code)
    fields["request_id"] = redact_optional(row.request_id)
    conn.execute(
        """INSERT INTO history (time, entry_id, account, image, sha256, source_sha256, outcome,
           error_code, status, request_id, message, attempt, duration_ms, action_id, credits)
           VALUES (:time, :entry_id, :account, :image, :sha256, :source_sha256, :outcome,
           :error_code, :status, :request_id, :message, :attempt, :duration_ms, :action_id,
           :credits)""",
        fields,
    )


def _entry_state(row: sqlite3.Row) -> EntryState:
    return EntryState(
        entry_id=row["entry_id"],
        account=row["account"],
        last_image=row["last_image"],
        last_image_sha256=row["last_image_sha256"],
        last_success=_maybe_time(row["last_success"]),
        last_attempt=_maybe_time(row["last_attempt"]),
        last_error=row["last_error"],
        shown_in_cycle=frozenset(json.loads(row["shown_in_cycle"])),
        last_fire=_maybe_time(row["last_fire"]),
        uncertain=bool(row["uncertain"]),
    )


def _pause_key(scope: PauseScope, account: str | None) -> tuple[str, str]:
    if scope == "key":
        return ("key", "")
    if scope == "account" and account:
        return ("account", account)
    raise ValueError(f"a pause needs scope 'key', or scope 'account' with an account: {scope!r}")


# --- copies ------------------------------------------------------------------------------


def copy_state(source_dir: Path, dest_dir: Path) -> bool:
    """Copy the database in ``source_dir`` into ``dest_dir``; False when there is none.

    A consistent snapshot through SQLite's backup API, safe while a daemon writes to
    the source: a dry run works on the copy, so it sees the real positions and pauses
    and changes nothing of them.
    """
    source = source_dir / DB_NAME
    if not source.exists():
        return False
    _make_dir(dest_dir)
    uri = f"file:{urllib.parse.quote(str(source))}?mode=ro"
    try:
        with (
            contextlib.closing(sqlite3.connect(uri, uri=True)) as reader,
            contextlib.closing(sqlite3.connect(dest_dir / DB_NAME)) as writer,
        ):
            reader.backup(writer)
    except sqlite3.Error as exc:
        raise StateError(f"cannot copy the state in {source_dir}: {exc}") from exc
    return True
