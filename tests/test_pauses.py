"""Tests for rotator.pauses: a real StateStore in tmp_path, a real asyncio loop, real log lines.

Pauses run for fractions of a second. Every wait is bounded by ``BOUND`` only so
that a bug fails the test instead of hanging it; nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import structlog

from rotator import logs
from rotator.pauses import PauseBoard
from rotator.policy import PolicySettings, doubling
from rotator.state import Pause, StateStore

BOUND = 5.0  # seconds; a safety net against hangs, never an expectation
SETTINGS = PolicySettings(
    retry_initial=0.05,
    retry_max=1.0,
    pause_credits=0.05,
    pause_account=0.02,
    pause_auth=0.05,
    pause_max=10.0,
)
T0 = dt.datetime(2026, 7, 1, 12, 0, tzinfo=dt.UTC)
T = TypeVar("T")

LogLines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Send our JSON log lines to a buffer; yield a reader that parses them."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buffer = io.StringIO()
    logs.configure(level="debug", fmt="json", stream=buffer)
    yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line]
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """Yield a real state store in a temporary state directory."""
    with StateStore.open(tmp_path / "state") as opened:
        yield opened


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Return the log lines of one event."""
    return [line for line in lines if line["event"] == name]


async def bounded(awaitable: Awaitable[T]) -> T:
    """Await with a generous bound, so a bug fails instead of hanging."""
    return await asyncio.wait_for(awaitable, BOUND)


async def settle() -> None:
    """Let every runnable task run."""
    for _ in range(50):
        await asyncio.sleep(0)


class JumpClock:
    """A UTC clock that stands still until the test moves it."""

    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def jump_to_pause_ends(board: PauseBoard, clock: JumpClock, account: str) -> None:
    """Keep moving ``clock`` to the end of ``account``'s pause, so its timer comes due."""
    while True:
        pause = board.active(account)
        if pause is not None and pause.until > clock.now:
            clock.now = pause.until
        await asyncio.sleep(0.002)


def test_pause_logs_once_ends_by_itself_and_logs_the_end_once(
    store: StateStore, log_lines: LogLines
) -> None:
    """A pause logs pause.started once (repeats do not), ends on time and logs pause.ended once."""

    async def main() -> None:
        board = PauseBoard(store, SETTINGS)
        first = board.pause(
            scope="account",
            account="alice",
            kind="x_rate_limited",
            reason="x_rate_limited",
            seconds=0.15,
        )
        again = board.pause(
            scope="account",
            account="alice",
            kind="x_rate_limited",
            reason="x_rate_limited",
            seconds=0.05,
        )
        assert again == first  # a shorter repeat changes nothing
        longer = board.pause(
            scope="account",
            account="alice",
            kind="x_rate_limited",
            reason="x_rate_limited",
            seconds=0.2,
        )
        assert longer.until > first.until
        assert longer.started == first.started
        [row] = store.pauses()
        assert (row.scope, row.account, row.until) == ("account", "alice", longer.until)
        assert len(events(log_lines(), "pause.started")) == 1
        await bounded(board.wait("alice"))
        assert board.active("alice") is None
        assert store.pauses() == []
        await board.close()

    asyncio.run(main())
    lines = log_lines()
    [started] = events(lines, "pause.started")
    [ended] = events(lines, "pause.ended")
    assert started["level"] == "warning"
    assert (started["scope"], started["account"], started["kind"]) == (
        "account",
        "alice",
        "x_rate_limited",
    )
    assert (ended["scope"], ended["account"], ended["reason"]) == (
        "account",
        "alice",
        "x_rate_limited",
    )
    assert lines.index(started) < lines.index(ended)


def test_key_pause_holds_every_account_and_account_pause_only_its_own(store: StateStore) -> None:
    """A key pause blocks all accounts; an account pause blocks that account alone."""

    async def main() -> None:
        board = PauseBoard(store, SETTINGS)
        board.pause(
            scope="account",
            account="alice",
            kind="account",
            reason="account_restricted",
            seconds=60,
        )
        assert board.active("bob") is None
        await bounded(board.wait("bob"))  # not held: returns at once
        alice_waits = asyncio.create_task(board.wait("alice"))
        key = board.pause(
            scope="key", account="bob", kind="credits", reason="insufficient_credits", seconds=60
        )
        assert key.account is None
        for account in ["alice", "bob", "carol"]:
            assert board.active(account) == key  # the key's pause comes first
        bob_waits = asyncio.create_task(board.wait("bob"))
        await settle()
        assert not alice_waits.done()
        assert not bob_waits.done()
        assert await board.end("key", None, "test")
        await bounded(bob_waits)
        await settle()
        assert not alice_waits.done()  # alice's own pause still holds her
        assert board.active("alice") is not None
        assert await board.end("account", "alice", "test")
        await bounded(alice_waits)
        assert not await board.end("account", "alice", "again")  # nothing left to end
        await board.close()

    asyncio.run(main())


def test_a_shorter_pause_of_another_kind_does_not_shorten_the_pause(store: StateStore) -> None:
    """A pause is extended, never shortened, even when a different kind of pause arrives."""

    async def main() -> None:
        board = PauseBoard(store, SETTINGS)
        credits = board.pause(
            scope="key", account=None, kind="credits", reason="no_credits", seconds=600
        )
        board.pause(
            scope="key", account=None, kind="rate_limit", reason="rate_limit_exceeded", seconds=1
        )
        held = board.active("alice")
        await board.close()
        assert held is not None
        assert held.until >= credits.until
        [row] = store.pauses()
        assert row.until >= credits.until

    asyncio.run(main())


def test_restart_restores_pauses_without_ending_them_early(
    tmp_path: Path, log_lines: LogLines
) -> None:
    """Pauses kept in the state come back after a restart and end only when their time is up."""
    state_dir = tmp_path / "state"

    async def before_restart() -> tuple[dt.datetime, int]:
        with StateStore.open(state_dir) as first_store:
            board = PauseBoard(first_store, SETTINGS)
            key = board.pause(
                scope="key",
                account=None,
                kind="rate_limit",
                reason="rate_limit_exceeded",
                seconds=0.3,
            )
            board.pause(
                scope="account",
                account="alice",
                kind="account",
                reason="account_needs_reauth",
                seconds=600,
            )
            level = board.level_for("key", None, "rate_limit")
            await board.close()  # the daemon stops; the pauses stay in the state
            return key.until, level

    async def after_restart() -> None:
        with StateStore.open(state_dir) as second_store:
            board = PauseBoard(second_store, SETTINGS)
            assert board.all() == []
            board.restore()
            key = board.active("bob")
            assert key is not None
            assert (key.scope, key.kind, key.reason, key.until) == (
                "key",
                "rate_limit",
                "rate_limit_exceeded",
                key_until,
            )
            assert board.level_for("key", None, "rate_limit") == level_before
            [alice] = [pause for pause in board.all() if pause.scope == "account"]
            assert (alice.account, alice.kind) == ("alice", "account")
            await settle()
            assert events(log_lines(), "pause.ended") == []  # restoring ended nothing
            await bounded(board.wait("bob"))
            assert dt.datetime.now(dt.UTC) >= key_until
            assert board.active("alice") is alice  # still paused for its own reason
            assert [row.scope for row in second_store.pauses()] == ["account"]
            await board.close()

    key_until, level_before = asyncio.run(before_restart())
    assert events(log_lines(), "pause.ended") == []
    asyncio.run(after_restart())
    [ended] = events(log_lines(), "pause.ended")
    assert ended["scope"] == "key"


def test_a_pause_that_ran_out_while_stopped_ends_at_restore(
    store: StateStore, log_lines: LogLines
) -> None:
    """A stored pause whose time passed while the daemon was down ends right after restore."""

    async def main() -> None:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        store.set_pause(
            Pause(
                scope="account",
                account="bob",
                kind="x_rate_limited",
                reason="x_rate_limited",
                until=past,
                level=0,
                started=past - dt.timedelta(minutes=1),
            ),
            now=past - dt.timedelta(minutes=1),
        )
        board = PauseBoard(store, SETTINGS)
        board.restore()
        await bounded(board.wait("bob"))
        assert store.pauses() == []
        await board.close()

    asyncio.run(main())
    assert len(events(log_lines(), "pause.ended")) == 1


def test_credits_pause_lasts_until_the_balance_shows_credits(
    store: StateStore, log_lines: LogLines
) -> None:
    """A billing pause is extended while the free check says no (or cannot tell), then ends."""
    answers: list[bool | None] = [False, None, True]
    seen: list[dt.datetime] = []

    async def main() -> None:
        board: PauseBoard

        async def check_credits() -> bool | None:
            pause = board.active("alice")
            assert pause is not None  # the pause is still on while being checked
            seen.append(pause.until)
            assert events(log_lines(), "pause.ended") == []
            return answers[len(seen) - 1]

        board = PauseBoard(store, SETTINGS, check_credits=check_credits)
        board.pause(
            scope="key", account=None, kind="credits", reason="insufficient_credits", seconds=0.05
        )
        await bounded(board.wait("alice"))
        await board.close()

    asyncio.run(main())
    assert len(seen) == 3
    assert seen[0] < seen[1] < seen[2]  # each "no" pushed the end further
    lines = log_lines()
    assert len(events(lines, "pause.started")) == 1
    assert len(events(lines, "pause.ended")) == 1


def test_account_pause_is_extended_with_doubling_while_the_account_is_unhealthy(
    store: StateStore, log_lines: LogLines
) -> None:
    """An account still unhealthy at the pause's end gets pause.account x 2, x 4, ..."""
    clock = JumpClock()
    checked_at: list[dt.datetime] = []
    answers = [False, False, True]

    async def main() -> None:
        async def check_account(account: str) -> bool | None:
            assert account == "alice"
            checked_at.append(clock())
            return answers[len(checked_at) - 1]

        board = PauseBoard(store, SETTINGS, check_account=check_account, clock=clock)
        board.pause(
            scope="account",
            account="alice",
            kind="account",
            reason="account_restricted",
            seconds=SETTINGS.pause_account,
        )
        driver = asyncio.create_task(jump_to_pause_ends(board, clock, "alice"))
        await bounded(board.wait("alice"))
        driver.cancel()
        assert board.level_for("account", "alice", "account") == 3
        board.succeeded("alice")
        assert board.level_for("account", "alice", "account") == 0
        await board.close()

    asyncio.run(main())
    assert len(checked_at) == 3
    extensions = [later - earlier for earlier, later in itertools.pairwise(checked_at)]
    assert extensions == [
        dt.timedelta(seconds=doubling(SETTINGS.pause_account, level, SETTINGS.pause_max))
        for level in (1, 2)
    ]
    assert len(events(log_lines(), "pause.ended")) == 1


def test_restart_keeps_the_level_reached_by_extensions(tmp_path: Path) -> None:
    """The doubling level reached while an account stayed unhealthy survives a restart."""
    state_dir = tmp_path / "state"
    clock = JumpClock()

    async def before_restart() -> int:
        checks = 0
        second_check = asyncio.Event()

        async def check_account(account: str) -> bool | None:
            nonlocal checks
            checks += 1
            if checks == 2:
                second_check.set()
            return False

        with StateStore.open(state_dir) as first_store:
            board = PauseBoard(first_store, SETTINGS, check_account=check_account, clock=clock)
            board.pause(
                scope="account",
                account="alice",
                kind="account",
                reason="account_restricted",
                seconds=SETTINGS.pause_account,
            )
            driver = asyncio.create_task(jump_to_pause_ends(board, clock, "alice"))
            await bounded(second_check.wait())
            await settle()  # let the second extension be stored
            driver.cancel()
            level = board.level_for("account", "alice", "account")
            await board.close()
            return level

    async def after_restart() -> int:
        with StateStore.open(state_dir) as second_store:
            board = PauseBoard(second_store, SETTINGS, clock=JumpClock(T0))
            board.restore()
            level = board.level_for("account", "alice", "account")
            await board.close()
            return level

    level_before = asyncio.run(before_restart())
    assert level_before == 3
    assert asyncio.run(after_restart()) == level_before


def test_sync_ends_pauses_cleared_in_the_state(
    tmp_path: Path, store: StateStore, log_lines: LogLines
) -> None:
    """`rotator resume` clears a pause in the state; sync() ends it here and frees the waiters."""

    async def main() -> None:
        board = PauseBoard(store, SETTINGS)
        board.pause(
            scope="account",
            account="alice",
            kind="account",
            reason="account_restricted",
            seconds=60,
        )
        board.pause(scope="key", account=None, kind="auth", reason="unauthenticated", seconds=60)
        waiting = asyncio.create_task(board.wait("alice"))
        # Another process (the resume command) clears the account pause only.
        with StateStore.open(store.state_dir, lock=False) as other:
            assert other.clear_pause(scope="account", account="alice")
        await board.sync()
        assert board.active("bob") is not None  # the key pause was not cleared
        assert [pause.scope for pause in board.all()] == ["key"]
        await settle()
        assert not waiting.done()  # alice is still held by the key pause
        with StateStore.open(store.state_dir, lock=False) as other:
            assert other.clear_pause(scope="key", account=None)
        await board.sync()
        await bounded(waiting)
        assert board.all() == []
        await board.close()

    asyncio.run(main())
    ended = events(log_lines(), "pause.ended")
    assert [(line["scope"], line["why"]) for line in ended] == [
        ("account", "resumed by hand"),
        ("key", "resumed by hand"),
    ]


def test_levels_double_across_repeated_pauses_and_reset_on_success(store: StateStore) -> None:
    """Each pause of the same kind comes back one level higher, until a write succeeds."""

    async def main() -> None:
        board = PauseBoard(store, SETTINGS)
        levels = []
        for _ in range(3):
            pause = board.pause(
                scope="account", account="alice", kind="account", reason="r", seconds=60
            )
            levels.append(pause.level)
            assert store.pauses()[0].level == pause.level
            await board.end("account", "alice", "test")
        assert levels == [0, 1, 2]
        assert board.level_for("account", "alice", "account") == 3
        board.pause(scope="account", account="bob", kind="account", reason="r", seconds=60)
        board.pause(scope="key", account=None, kind="auth", reason="unauthenticated", seconds=60)
        assert board.level_for("key", None, "auth") == 1
        board.succeeded("alice")
        assert board.level_for("account", "alice", "account") == 0
        assert board.level_for("key", None, "auth") == 0  # a success proves the key works
        assert board.level_for("account", "bob", "account") == 1  # bob is still in trouble
        again = board.pause(
            scope="account", account="alice", kind="account", reason="r", seconds=60
        )
        assert again.level == 0
        await board.close()

    asyncio.run(main())
