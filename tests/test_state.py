"""Tests for rotator.state: real SQLite files, real locks, real processes killed with -9."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rotator.errors import StateError, StateLockedError, StateVersionError
from rotator.state import (
    DB_NAME,
    SCHEMA_VERSION,
    HistoryRow,
    Pause,
    PauseScope,
    StateStore,
    WriteRecord,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
ENTRY = "alice:/srv/avatars/alice"


def at(seconds: float) -> dt.datetime:
    """Return T0 plus some seconds."""
    return T0 + dt.timedelta(seconds=seconds)


def success(store: StateStore, image: str, now: dt.datetime, entry: str = ENTRY) -> None:
    """Record a successful write of ``image`` for ``entry``."""
    store.record_success(
        HistoryRow(
            time=now,
            entry_id=entry,
            account="alice",
            image=image,
            sha256=f"sent-{image}",
            source_sha256=f"src-{image}",
            request_id=f"req-{image}",
            status=200,
            duration_ms=120,
            outcome="success",
        ),
        shown_in_cycle=frozenset({image}),
    )


def failure(store: StateStore, now: dt.datetime, *, pending: WriteRecord | None = None) -> None:
    """Record a rate-limited attempt for ENTRY (``pending``: the write kept for a replay)."""
    store.record_failure(
        HistoryRow(
            time=now,
            entry_id=ENTRY,
            account="alice",
            image="b.png",
            sha256="sent-b",
            source_sha256="src-b",
            outcome="error",
            error_code="x_rate_limited",
            status=429,
            message="slow   down",
            request_id="req-fail",
            attempt=2,
        ),
        pending=pending,
    )


def begin(store: StateStore, image: str, key: str, now: dt.datetime) -> WriteRecord:
    """Record a pending write of ``image`` for ENTRY; return it."""
    record = WriteRecord(
        entry_id=ENTRY,
        account="alice",
        image=image,
        sha256=f"sent-{image}",
        source_sha256=f"src-{image}",
        idempotency_key=key,
        rotation_id="rot-1",
        started=now,
        last_status="sending",
    )
    store.save_write(record, now=now)
    return record


def pause(
    store: StateStore,
    scope: PauseScope,
    account: str | None,
    reason: str,
    *,
    until: dt.datetime,
    level: int,
    now: dt.datetime,
    kind: str = "rate_limit",
) -> None:
    """Set a pause with positional scope, account and reason."""
    store.set_pause(
        Pause(
            scope=scope,
            account=account,
            kind=kind,
            reason=reason,
            until=until,
            level=level,
            started=now,
        ),
        now=now,
    )


def spawn(script: str, *args: str) -> subprocess.Popen[str]:
    """Start a Python child that runs ``script`` with the repo importable."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def integrity(state_dir: Path) -> str:
    """Return SQLite's integrity verdict on the state database."""
    conn = sqlite3.connect(state_dir / DB_NAME)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def set_user_version(state_dir: Path, version: int) -> None:
    """Overwrite the schema version stored in the state database."""
    conn = sqlite3.connect(state_dir / DB_NAME)
    try:
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()


# --- opening -----------------------------------------------------------------------------


def test_open_creates_private_dir_and_db_in_wal_mode(tmp_path: Path) -> None:
    """A fresh state dir is created 0700 with a 0600 WAL database at the current schema."""
    state_dir = tmp_path / "deep" / "state"
    with StateStore.open(state_dir):
        pass
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / DB_NAME).stat().st_mode) == 0o600
    conn = sqlite3.connect(state_dir / DB_NAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_readonly_open_of_missing_state_says_no_state_yet(tmp_path: Path) -> None:
    """A read-only open of a directory without a database fails and creates nothing."""
    with pytest.raises(StateError, match="no state yet at"):
        StateStore.open(tmp_path / "none", readonly=True)
    assert not (tmp_path / "none").exists()


def test_empty_database_file_is_rejected_with_how_to_recover(tmp_path: Path) -> None:
    """A zero-byte database that existed (positions lost) is rejected, not silently renewed."""
    (tmp_path / DB_NAME).write_bytes(b"")
    for readonly in (False, True):
        with pytest.raises(StateError, match=r"empty \(0 bytes\).*backup"):
            StateStore.open(tmp_path, readonly=readonly)


def test_schema_zero_database_is_migrated(tmp_path: Path) -> None:
    """A SQLite file without our tables (schema 0) is migrated forward to the current schema."""
    sqlite3.connect(tmp_path / DB_NAME).execute("CREATE TABLE unrelated (x)").connection.close()
    with StateStore.open(tmp_path) as store:
        success(store, "a.png", T0)
        assert store.entry(ENTRY).last_image == "a.png"


def test_readonly_open_rejects_an_older_schema(tmp_path: Path) -> None:
    """A read-only open cannot migrate, so an old schema is rejected with advice."""
    sqlite3.connect(tmp_path / DB_NAME).execute("CREATE TABLE unrelated (x)").connection.close()
    with pytest.raises(StateError, match="start the daemon once"):
        StateStore.open(tmp_path, readonly=True)


def test_newer_schema_is_rejected_naming_both_versions(tmp_path: Path) -> None:
    """A database from a newer rotator raises StateVersionError naming both versions."""
    with StateStore.open(tmp_path):
        pass
    set_user_version(tmp_path, SCHEMA_VERSION + 5)
    for readonly in (False, True):
        with pytest.raises(StateVersionError) as info:
            StateStore.open(tmp_path, readonly=readonly)
        message = str(info.value)
        assert f"schema {SCHEMA_VERSION + 5}" in message
        assert f"knows up to {SCHEMA_VERSION}" in message
        assert info.value.exit_code == 2
    # The rejected open must have released the lock.
    set_user_version(tmp_path, SCHEMA_VERSION)
    with StateStore.open(tmp_path):
        pass


def test_garbage_database_file_is_a_state_error(tmp_path: Path) -> None:
    """A file that is not SQLite is reported as an unusable state database."""
    (tmp_path / DB_NAME).write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(StateError, match="not a SQLite database"):
        StateStore.open(tmp_path)


def test_closed_store_raises_state_error(tmp_path: Path) -> None:
    """Using a store after close raises StateError, and closing twice is harmless."""
    store = StateStore.open(tmp_path)
    store.close()
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.entry(ENTRY)
    with pytest.raises(StateError, match="closed"):
        store.record_fire(ENTRY, "alice", T0)


# --- the lock ----------------------------------------------------------------------------

HOLDER = """
    import sys
    from pathlib import Path
    from rotator.state import StateStore
    import datetime as dt
    store = StateStore.open(Path(sys.argv[1]))
    store.record_fire("held", "bob", dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_second_daemon_in_another_process_is_rejected_until_holder_dies(tmp_path: Path) -> None:
    """While another process holds the dir, open(lock=True) fails naming its pid; readonly works."""
    child = spawn(HOLDER, str(tmp_path))
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        with pytest.raises(StateLockedError) as info:
            StateStore.open(tmp_path)
        assert str(info.value) == (
            f"another rotator daemon is using the state directory {tmp_path} (pid {child.pid})"
        )
        assert info.value.exit_code == 2
        with StateStore.open(tmp_path, readonly=True) as reader:
            assert reader.entry("held").account == "bob"
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    with StateStore.open(tmp_path) as store:
        assert store.entry("held").last_fire is not None


def test_lock_is_released_on_close(tmp_path: Path) -> None:
    """A second lock in the same process fails while the first is open, succeeds after close."""
    first = StateStore.open(tmp_path)
    with pytest.raises(StateLockedError, match=f"pid {os.getpid()}"):
        StateStore.open(tmp_path)
    first.close()
    with StateStore.open(tmp_path):
        pass


def test_unlocked_open_does_not_take_the_lock(tmp_path: Path) -> None:
    """open(lock=False) leaves the directory free for a locking open."""
    with StateStore.open(tmp_path, lock=False), StateStore.open(tmp_path):
        pass


# --- readonly alongside a writer ---------------------------------------------------------


def test_readonly_store_sees_writes_committed_later_by_another_connection(tmp_path: Path) -> None:
    """A read-only store opened first sees rows the daemon commits afterwards (WAL)."""
    with StateStore.open(tmp_path) as writer, StateStore.open(tmp_path, readonly=True) as reader:
        assert reader.entry(ENTRY).last_image is None
        success(writer, "a.png", T0)
        assert reader.entry(ENTRY).last_image == "a.png"
        assert [row.image for row in reader.history()] == ["a.png"]


def test_readonly_store_rejects_writes(tmp_path: Path) -> None:
    """Every write through a read-only store raises StateError and changes nothing."""
    with StateStore.open(tmp_path):
        pass
    with StateStore.open(tmp_path, readonly=True) as reader:
        with pytest.raises(StateError, match="read-only"):
            success(reader, "a.png", T0)
        with pytest.raises(StateError, match="read-only"):
            reader.cache_put("a.png", 1, 1, {"ok": True})
        assert reader.entry(ENTRY).last_image is None


# --- entries and writes ------------------------------------------------------------------


def test_unknown_entry_is_empty(tmp_path: Path) -> None:
    """An entry that never ran has no position, no times and an empty cycle."""
    with StateStore.open(tmp_path) as store:
        state = store.entry("nobody:/x")
        assert state.entry_id == "nobody:/x"
        assert state.account is None
        assert state.last_image is None
        assert state.last_success is None
        assert state.shown_in_cycle == frozenset()
        assert not state.uncertain
        assert store.entries() == []
        assert store.pending_write("nobody:/x") is None


def test_success_round_trip_survives_reopen(tmp_path: Path) -> None:
    """record_success stores position, cycle and time, returned as aware UTC after a reopen."""
    local = dt.datetime(2026, 7, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with StateStore.open(tmp_path) as store:
        store.record_success(
            HistoryRow(
                time=local,
                entry_id=ENTRY,
                account="alice",
                image="sub/b.png",
                sha256="sent-b",
                source_sha256="src-b",
                request_id="req-1",
                status=200,
                duration_ms=321,
                outcome="success",
            ),
            shown_in_cycle=frozenset({"a.png", "sub/b.png"}),
        )
    with StateStore.open(tmp_path) as store:
        state = store.entry(ENTRY)
        assert state.account == "alice"
        assert state.last_image == "sub/b.png"
        assert state.last_image_sha256 == "sent-b"
        assert state.last_success == T0
        assert state.last_success is not None
        assert state.last_success.tzinfo == dt.UTC
        assert state.shown_in_cycle == frozenset({"a.png", "sub/b.png"})
        assert store.entries() == [state]
        [row] = store.history()
        assert (row.outcome, row.request_id, row.status, row.duration_ms) == (
            "success",
            "req-1",
            200,
            321,
        )
        assert (row.sha256, row.source_sha256, row.time) == ("sent-b", "src-b", T0)


def test_record_fire_round_trip(tmp_path: Path) -> None:
    """record_fire creates the entry and stores when its schedule last fired."""
    with StateStore.open(tmp_path) as store:
        store.record_fire(ENTRY, "alice", T0)
        store.record_fire(ENTRY, "alice", at(60))
        state = store.entry(ENTRY)
        assert state.last_fire == at(60)
        assert state.account == "alice"
        assert state.last_image is None


def test_pending_write_round_trip_and_replace(tmp_path: Path) -> None:
    """save_write stores one pending write per entry; a second one replaces the first."""
    with StateStore.open(tmp_path) as store:
        begin(store, "a.png", "key-a", T0)
        begin(store, "b.png", "key-b", at(5))
        pending = store.pending_write(ENTRY)
        assert pending is not None
        assert (pending.image, pending.idempotency_key) == ("b.png", "key-b")
        assert pending.started == at(5)
        assert (pending.sha256, pending.source_sha256, pending.rotation_id) == (
            "sent-b.png",
            "src-b.png",
            "rot-1",
        )
        assert store.entry(ENTRY).last_attempt == at(5)


def test_success_clears_pending_error_and_uncertain(tmp_path: Path) -> None:
    """record_success clears the pending write, last_error and the uncertain flag together."""
    with StateStore.open(tmp_path) as store:
        begin(store, "a.png", "key-a", T0)
        store.record_uncertain(
            HistoryRow(
                time=at(1),
                entry_id=ENTRY,
                account="alice",
                image="a.png",
                sha256="sent-a",
                source_sha256="src-a",
                error_code="x_write_ambiguous",
                status=500,
                message="could not confirm",
                request_id="req-u",
                attempt=1,
                outcome="uncertain",
            )
        )
        state = store.entry(ENTRY)
        assert state.uncertain
        assert state.last_error == "x_write_ambiguous: could not confirm"
        assert state.last_image is None
        assert store.pending_write(ENTRY) is None
        assert store.history()[0].outcome == "uncertain"
        begin(store, "a.png", "key-a2", at(2))
        success(store, "a.png", at(3))
        state = store.entry(ENTRY)
        assert not state.uncertain
        assert state.last_error is None
        assert state.last_image == "a.png"
        assert store.pending_write(ENTRY) is None


def test_success_is_all_or_nothing_when_the_audit_insert_fails(tmp_path: Path) -> None:
    """If the audit row cannot be written, position and pending write stay as they were."""
    with StateStore.open(tmp_path) as store:
        success(store, "a.png", T0)
        begin(store, "b.png", "key-b", at(10))
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        conn.execute(
            "CREATE TRIGGER broken BEFORE INSERT ON history BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        conn.commit()
    finally:
        conn.close()
    with StateStore.open(tmp_path) as store:
        with pytest.raises(StateError, match="cannot write the state"):
            success(store, "b.png", at(11))
        state = store.entry(ENTRY)
        assert (state.last_image, state.last_success) == ("a.png", T0)
        pending = store.pending_write(ENTRY)
        assert pending is not None
        assert pending.image == "b.png"
        assert len(store.history()) == 1


def test_failure_keeps_position_and_pending_only_when_asked(tmp_path: Path) -> None:
    """record_failure leaves the position alone and clears the pending write unless kept."""
    with StateStore.open(tmp_path) as store:
        success(store, "a.png", T0)
        record = begin(store, "b.png", "key-b", at(10))
        # The answer's request id reaches the ledger with the failure, in one transaction.
        failure(store, at(11), pending=dataclasses.replace(record, request_id="req-fail"))
        kept = store.pending_write(ENTRY)
        assert kept is not None
        assert (kept.idempotency_key, kept.request_id) == ("key-b", "req-fail")
        state = store.entry(ENTRY)
        assert (state.last_image, state.last_success) == ("a.png", T0)
        assert state.last_error == "x_rate_limited: slow down"
        assert state.last_attempt == at(11)
        failure(store, at(12))
        assert store.pending_write(ENTRY) is None
        assert store.entry(ENTRY).last_image == "a.png"
        row = store.history(limit=1)[0]
        assert (row.outcome, row.error_code, row.status, row.attempt, row.message) == (
            "error",
            "x_rate_limited",
            429,
            2,
            "slow down",
        )


def test_failure_without_code_or_message_still_names_an_error(tmp_path: Path) -> None:
    """A failure with no code and no message leaves a readable last_error."""
    with StateStore.open(tmp_path) as store:
        store.record_failure(
            HistoryRow(
                time=T0,
                entry_id=ENTRY,
                account="alice",
                image=None,
                sha256=None,
                source_sha256=None,
                outcome="not_sent",
                error_code=None,
                status=None,
                message="",
                request_id=None,
                attempt=1,
            ),
            pending=None,
        )
        assert store.entry(ENTRY).last_error == "unknown error"
        assert store.history()[0].image is None


def test_naive_datetimes_are_rejected(tmp_path: Path) -> None:
    """A naive datetime raises ValueError and writes nothing."""
    with StateStore.open(tmp_path) as store:
        with pytest.raises(ValueError, match="naive"):
            success(store, "a.png", dt.datetime(2026, 7, 1, 12, 0))
        assert store.history() == []
        assert store.entry(ENTRY).last_image is None


# --- crashes -----------------------------------------------------------------------------

CRASH_AFTER_BEGIN = """
    import os, signal, sys
    import datetime as dt
    from pathlib import Path
    from rotator.state import HistoryRow, StateStore, WriteRecord
    t0 = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
    store = StateStore.open(Path(sys.argv[1]))
    store.record_success(HistoryRow(time=t0, entry_id="e", account="alice", image="a.png",
        sha256="sa", source_sha256="ra", outcome="success", request_id="r1", status=200,
        duration_ms=5), shown_in_cycle=frozenset({"a.png"}))
    store.save_write(WriteRecord(entry_id="e", account="alice", image="b.png", sha256="sb",
        source_sha256="rb", idempotency_key="key-b", rotation_id="rot-2", started=t0), now=t0)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_crash_between_begin_and_success_keeps_pending_and_old_position(tmp_path: Path) -> None:
    """kill -9 after save_write leaves the old position and the pending write with its key."""
    child = spawn(CRASH_AFTER_BEGIN, str(tmp_path))
    _, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    with StateStore.open(tmp_path) as store:  # also proves the dead holder's lock is gone
        state = store.entry("e")
        assert (state.last_image, state.last_image_sha256) == ("a.png", "sa")
        pending = store.pending_write("e")
        assert pending is not None
        assert (pending.image, pending.idempotency_key, pending.rotation_id) == (
            "b.png",
            "key-b",
            "rot-2",
        )
    assert integrity(tmp_path) == "ok"


SUCCESS_LOOP = """
    import sys
    import datetime as dt
    from pathlib import Path
    from rotator.state import HistoryRow, StateStore, WriteRecord
    t0 = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
    store = StateStore.open(Path(sys.argv[1]))
    for i in range(1_000_000):
        image = f"img{i:07d}.png"
        when = t0 + dt.timedelta(seconds=i)
        store.save_write(WriteRecord(entry_id="e", account="alice", image=image, sha256=image,
            source_sha256=image, idempotency_key=f"k{i}", rotation_id=f"r{i}", started=when),
            now=when)
        store.record_success(HistoryRow(time=t0 + dt.timedelta(seconds=i), entry_id="e",
            account="alice", image=image, sha256=image, source_sha256=image,
            outcome="success", request_id=f"q{i}", status=200, duration_ms=1),
            shown_in_cycle=frozenset({image}))
        print(i, flush=True)
"""


def test_kill_9_during_success_loop_loses_no_committed_success(tmp_path: Path) -> None:
    """Killing a writer mid-loop keeps every success it reported and leaves a sound database."""
    child = spawn(SUCCESS_LOOP, str(tmp_path))
    assert child.stdout is not None
    reported: list[int] = []
    while len(reported) < 40:
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        reported.append(int(line))
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=60)
    reported.extend(int(line) for line in rest.split())
    assert child.returncode == -signal.SIGKILL
    last_reported = reported[-1]

    assert integrity(tmp_path) == "ok"
    with StateStore.open(tmp_path) as store:
        state = store.entry("e")
        assert state.last_image is not None
        committed = int(state.last_image[3:10])
        # Never behind what was reported; at most the one in flight when the kill landed.
        assert last_reported <= committed <= last_reported + 1
        history = store.history(limit=2_000_000, entry_id="e")
        # Position and audit row commit together: one success row per committed image.
        assert len(history) == committed + 1
        assert history[0].image == state.last_image
        assert state.shown_in_cycle == frozenset({state.last_image})
        pending = store.pending_write("e")
        # A pending write, if any, is the one after the last success.
        assert pending is None or pending.image == f"img{committed + 1:07d}.png"


# --- history -----------------------------------------------------------------------------


def test_history_is_newest_first_with_limit_and_entry_filter(tmp_path: Path) -> None:
    """history returns newest rows first, honours limit and filters by entry."""
    with StateStore.open(tmp_path) as store:
        for i in range(5):
            success(store, f"{i}.png", at(i), entry=ENTRY if i % 2 == 0 else "bob:/b")
        assert [row.image for row in store.history()] == [f"{i}.png" for i in (4, 3, 2, 1, 0)]
        assert [row.image for row in store.history(limit=2)] == ["4.png", "3.png"]
        assert [row.image for row in store.history(entry_id="bob:/b")] == ["3.png", "1.png"]
        assert [row.image for row in store.history(limit=1, entry_id=ENTRY)] == ["4.png"]
        assert store.history(limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            store.history(limit=-1)


def test_history_message_is_one_short_line(tmp_path: Path) -> None:
    """A long multi-line error body is stored as one line of bounded length."""
    body = "<html>\n<body>Bad Gateway</body>\n</html>" * 100
    with StateStore.open(tmp_path) as store:
        store.record_failure(
            HistoryRow(
                time=T0,
                entry_id=ENTRY,
                account="alice",
                image="a.png",
                sha256="s",
                source_sha256="r",
                outcome="error",
                error_code=None,
                status=502,
                message=body,
                request_id=None,
                attempt=1,
            ),
            pending=None,
        )
        message = store.history()[0].message
        assert "\n" not in message
        assert 100 < len(message) <= 500
        last_error = store.entry(ENTRY).last_error
        assert last_error is not None
        assert len(last_error) <= 200


def test_history_keeps_every_write_newest_first_and_prune_drops_old_rows(tmp_path: Path) -> None:
    """Every audited write is in the history with its outcome; prune drops the old rows."""
    with StateStore.open(tmp_path) as store:
        success(store, "a.png", at(0))
        failure(store, at(10))
        success(store, "b.png", at(20))
        assert [(row.time, row.outcome) for row in store.history()] == [
            (at(20), "success"),
            (at(10), "error"),
            (at(0), "success"),
        ]
        assert store.prune_history(before=at(10)) == 1
        assert [row.time for row in store.history()] == [at(20), at(10)]


# --- pauses ------------------------------------------------------------------------------


def test_pauses_upsert_keep_started_while_active_and_clear(tmp_path: Path) -> None:
    """set_pause upserts per scope and account, keeps started while active, survives reopen."""
    with StateStore.open(tmp_path) as store:
        pause(store, "account", "alice", "x_daily_limit", until=at(100), level=1, now=T0)
        pause(store, "key", None, "insufficient_credits", until=at(50), level=1, now=T0)
        pause(store, "account", "alice", "x_daily_limit", until=at(300), level=2, now=at(90))
    with StateStore.open(tmp_path) as store:
        key, alice = store.pauses()
        assert (key.scope, key.account, key.reason, key.until) == (
            "key",
            None,
            "insufficient_credits",
            at(50),
        )
        assert (alice.scope, alice.account, alice.level, alice.until, alice.started) == (
            "account",
            "alice",
            2,
            at(300),
            T0,
        )
        # After it ran out, a new pause starts afresh.
        pause(store, "account", "alice", "account_restricted", until=at(900), level=1, now=at(400))
        assert store.pauses()[1].started == at(400)
        assert store.clear_pause(scope="key", account=None)
        assert not store.clear_pause(scope="key", account=None)
        assert [p.account for p in store.pauses()] == ["alice"]


def test_pause_scope_must_match_account(tmp_path: Path) -> None:
    """An account pause without an account, or an unknown scope, is a ValueError."""
    with StateStore.open(tmp_path) as store:
        with pytest.raises(ValueError, match="scope"):
            pause(store, "account", None, "r", until=at(1), level=1, now=T0)
        with pytest.raises(ValueError, match="scope"):
            store.clear_pause(scope="nope", account="a")  # type: ignore[arg-type]
        assert store.pauses() == []


# --- images the server refused ----------------------------------------------------------


def test_refused_images_round_trip(tmp_path: Path) -> None:
    """Content hashes the server refused are remembered across reopen, the last code kept."""
    with StateStore.open(tmp_path) as store:
        store.mark_refused(sha256="h1", path="a.png", code="invalid_input", now=T0)
        store.mark_refused(sha256="h2", path="b.png", code="x_rejected", now=T0)
        store.mark_refused(sha256="h1", path="a.png", code="x_rejected", now=at(1))
    with StateStore.open(tmp_path) as store:
        assert store.refused_hashes() == {"h1": "x_rejected", "h2": "x_rejected"}
        assert store.refused_images() == [("a.png", "x_rejected"), ("b.png", "x_rejected")]


# --- validation cache --------------------------------------------------------------------


def test_cache_hits_only_on_same_size_and_mtime(tmp_path: Path) -> None:
    """A cached verdict comes back for the same size and mtime, and is a miss otherwise."""
    verdict: dict[str, object] = {"ok": True, "width": 400, "height": 400, "notes": ["png"]}
    with StateStore.open(tmp_path) as store:
        store.cache_put("a.png", 1000, 123, verdict)
        assert store.cache_get("a.png", 1000, 123) == verdict
        assert store.cache_get("a.png", 1001, 123) is None
        assert store.cache_get("a.png", 1000, 124) is None
        assert store.cache_get("b.png", 1000, 123) is None
        store.cache_put("a.png", 2000, 456, {"ok": False, "reason": "too small"})
        assert store.cache_get("a.png", 1000, 123) is None
        assert store.cache_get("a.png", 2000, 456) == {"ok": False, "reason": "too small"}
        store.cache_forget("a.png")
        assert store.cache_get("a.png", 2000, 456) is None


def test_cache_put_many_stores_ten_thousand_rows(tmp_path: Path) -> None:
    """A cold scan's 10,000 verdicts go in with one call and all come back after reopen."""
    rows = [(f"dir/{i:05d}.png", i, i * 1000, {"ok": i % 7 != 0, "n": i}) for i in range(10_000)]
    with StateStore.open(tmp_path) as store:
        store.cache_put_many(rows)
    with StateStore.open(tmp_path, readonly=True) as store:
        for path, size, mtime_ns, verdict in rows:
            assert store.cache_get(path, size, mtime_ns) == verdict


def test_cache_is_safe_from_worker_threads(tmp_path: Path) -> None:
    """Concurrent cache_put/cache_get from many threads lose nothing and raise nothing."""

    def work(worker: int) -> None:
        for i in range(100):
            path = f"w{worker}/{i}.png"
            store.cache_put(path, i, worker, {"worker": worker, "i": i})
            assert store.cache_get(path, i, worker) == {"worker": worker, "i": i}

    with StateStore.open(tmp_path) as store:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(work, range(8)))
        for worker in range(8):
            for i in range(100):
                assert store.cache_get(f"w{worker}/{i}.png", i, worker) is not None


# --- schema 2: the write ledger ---------------------------------------------------------

# The version-1 schema as rotator 0.1.0 wrote it, by hand: the upgrade must keep its rows.
V1_SCHEMA = [
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
    """CREATE TABLE pauses (
        scope TEXT NOT NULL, account TEXT NOT NULL, reason TEXT NOT NULL,
        until TEXT NOT NULL, level INTEGER NOT NULL, started TEXT NOT NULL,
        PRIMARY KEY (scope, account))""",
    """CREATE TABLE rejected_images (
        sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, code TEXT NOT NULL,
        time TEXT NOT NULL)""",
    """CREATE TABLE validation_cache (
        path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
        verdict TEXT NOT NULL)""",
]


def _v1_state(state_dir: Path) -> None:
    state_dir.mkdir()
    with contextlib.closing(sqlite3.connect(state_dir / "rotator.db")) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO pending_writes VALUES "
            "(?, 'alice', 'a.png', 'b1', 's1', 'rot-k1', 'r1', ?)",
            (ENTRY, "2026-05-01T10:00:00.000000+00:00"),
        )
        conn.execute(
            """INSERT INTO history (time, entry_id, account, image, outcome, message, attempt)
               VALUES ('2026-05-01T09:00:00.000000+00:00', ?, 'alice', 'z.png',
               'success', '', 1)""",
            (ENTRY,),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()


def test_a_version_1_state_upgrades_in_place_keeping_its_rows(tmp_path: Path) -> None:
    """A v1 state opens (through schema 2) as schema 3: its rows survive, new fields empty."""
    _v1_state(tmp_path / "state")
    with StateStore.open(tmp_path / "state") as store:
        pending = store.pending_write(ENTRY)
        (row,) = store.history()
    assert pending is not None
    assert (pending.idempotency_key, pending.image, pending.action_id) == ("rot-k1", "a.png", None)
    assert (pending.status_url, pending.expires_at, pending.last_status) == (None, None, None)
    assert (row.image, row.action_id, row.credits) == ("z.png", None, None)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "rotator.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_write_record_round_trips_whole_and_is_replaced_on_change(tmp_path: Path) -> None:
    """save_write keeps every field of the record; a changed record replaces it."""
    record = WriteRecord(
        entry_id=ENTRY,
        account="alice",
        image="a.png",
        sha256="b1",
        source_sha256="s1",
        idempotency_key="rot-k1",
        rotation_id="r1",
        started=T0,
        last_status="sending",
    )
    with StateStore.open(tmp_path) as store:
        store.save_write(record, now=T0)
        assert store.pending_write(ENTRY) == record
        later = dataclasses.replace(
            record,
            action_id="xwa_1",
            status_url="/api/v1/x/write-actions/xwa_1",
            expires_at=T0 + dt.timedelta(hours=1),
            last_status="pending_confirmation",
            request_id="req_1",
        )
        store.save_write(later, now=T0)
    with StateStore.open(tmp_path, readonly=True) as store:
        assert store.pending_write(ENTRY) == later


def test_history_keeps_the_action_id_and_credits_of_a_write(tmp_path: Path) -> None:
    """Success and uncertain rows carry the write action's id and the credits it cost."""
    with StateStore.open(tmp_path) as store:
        store.record_uncertain(
            HistoryRow(
                time=T0,
                entry_id=ENTRY,
                account="alice",
                image="a.png",
                sha256="b1",
                source_sha256="s1",
                error_code="x_write_failed",
                status=200,
                message="failed",
                request_id="req_1",
                attempt=1,
                action_id="xwa_9",
                credits=0,
                outcome="uncertain",
            )
        )
        (row,) = store.history()
    assert (row.outcome, row.action_id, row.credits) == ("uncertain", "xwa_9", 0)


# --- schema 3: one word per concept ------------------------------------------------------

# What schema 2 added to version 1, written out by hand like V1_SCHEMA.
V2_ADDITIONS = [
    "ALTER TABLE pending_writes ADD COLUMN action_id TEXT",
    "ALTER TABLE pending_writes ADD COLUMN status_url TEXT",
    "ALTER TABLE pending_writes ADD COLUMN expires_at TEXT",
    "ALTER TABLE pending_writes ADD COLUMN last_status TEXT",
    "ALTER TABLE pending_writes ADD COLUMN request_id TEXT",
    "ALTER TABLE history ADD COLUMN action_id TEXT",
    "ALTER TABLE history ADD COLUMN credits INTEGER",
]
# Pauses as rotator 0.2 stored them, the kind packed in front of the reason, and the
# (kind, reason) each must come out as: split at the first colon; no colon means the
# whole text is the kind; an empty reason is the kind again.
PACKED_PAUSES = [
    ("key", "", "credits:insufficient_credits", ("credits", "insufficient_credits")),
    ("account", "alice", "manual:paused by hand", ("manual", "paused by hand")),
    ("account", "bob", "rate_limit:", ("rate_limit", "rate_limit")),
    ("account", "carol", "daily", ("daily", "daily")),
    ("account", "dave", "account:x_account:locked", ("account", "x_account:locked")),
]


def _old_state(state_dir: Path, version: int) -> None:
    """Write a state of schema ``version`` (1 or 2) by hand, with packed pauses and a refusal."""
    state_dir.mkdir()
    with contextlib.closing(sqlite3.connect(state_dir / "rotator.db")) as conn:
        for statement in V1_SCHEMA + (V2_ADDITIONS if version == 2 else []):
            conn.execute(statement)
        for scope, account, packed, _ in PACKED_PAUSES:
            conn.execute(
                "INSERT INTO pauses VALUES (?, ?, ?, ?, 0, ?)",
                (scope, account, packed, "2026-05-01T11:00:00.000000+00:00", T0.isoformat()),
            )
        conn.execute(
            "INSERT INTO rejected_images VALUES ('h1', 'bad.png', 'x_rejected', ?)",
            (T0.isoformat(),),
        )
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_state_upgrades_to_3_splitting_pause_kinds(tmp_path: Path, version: int) -> None:
    """A v1 or v2 state opens as schema 3: each pause's kind and reason split, refusals kept."""
    _old_state(tmp_path / "state", version)
    with StateStore.open(tmp_path / "state") as store:
        got = {(p.scope, p.account): (p.kind, p.reason) for p in store.pauses()}
        assert store.refused_hashes() == {"h1": "x_rejected"}
        assert store.refused_images() == [("bad.png", "x_rejected")]
    assert got == {(scope, account or None): split for scope, account, _, split in PACKED_PAUSES}
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "rotator.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "refused_images" in tables
    assert "rejected_images" not in tables


def test_a_pause_keeps_its_kind_apart_from_its_reason(tmp_path: Path) -> None:
    """A kind and a reason holding a colon come back as stored, each in its own field."""
    with StateStore.open(tmp_path) as store:
        pause(store, "key", None, "x:y", until=at(60), level=0, now=T0, kind="auth")
    with StateStore.open(tmp_path, readonly=True) as store:
        (stored,) = store.pauses()
    assert (stored.kind, stored.reason) == ("auth", "x:y")


def test_a_result_committed_without_a_sync_leaves_the_next_ledger_row_synced(
    tmp_path: Path,
) -> None:
    """Results commit at synchronous=NORMAL; the connection is back at FULL after, even
    when the transaction failed, so the next pending write is on disk before it is sent."""
    with StateStore.open(tmp_path) as store:
        synchronous = store._live().execute  # the store's own connection
        assert synchronous("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        record = begin(store, "b.png", "key-b", at(10))
        success(store, "b.png", at(11))
        assert synchronous("PRAGMA synchronous").fetchone()[0] == 2
        with pytest.raises(StateError):
            store.record_failure(
                dataclasses.replace(record.audit_row(at(12), "error"), attempt=object()),  # type: ignore[arg-type]
                pending=None,
            )
        assert synchronous("PRAGMA synchronous").fetchone()[0] == 2


def test_entry_times_are_each_entrys_last_fire_and_last_success(tmp_path: Path) -> None:
    """What scheduling and the metrics read for every entry: two times, or nothing yet."""
    with StateStore.open(tmp_path) as store:
        store.record_fire(ENTRY, "alice", at(5))
        success(store, "a.png", at(7), entry="bob:/pics")
        store.record_fire("bob:/pics", "bob", at(8))
        assert store.entry_times() == {ENTRY: (at(5), None), "bob:/pics": (at(8), at(7))}
