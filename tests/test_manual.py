"""Tests for rotator.manual: hand control on a real state store, pause board and catalog."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from rotator import manual
from rotator.catalog import Catalog, MemoryValidationCache
from rotator.config import AccountEntry, ApiSection
from rotator.errors import ConfigError, RotatorError
from rotator.images import FitSettings
from rotator.logs import configure
from rotator.pacer import WritePacer
from rotator.pauses import PauseBoard
from rotator.policy import PolicySettings
from rotator.rotation import RotationSetup, Rotator
from rotator.state import StateStore

SETTINGS = PolicySettings(
    retry_initial=0.05,
    retry_max=1.0,
    pause_credits=60,
    pause_account=60,
    pause_auth=60,
    pause_max=3600,
)
NAMES = ("a1.png", "a2.png", "a3.png", "a10.png")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """Yield a real state store; logs go to a buffer."""
    configure("debug", "json", stream=io.StringIO())
    with StateStore.open(tmp_path / "state") as opened:
        yield opened


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    for seed, name in enumerate(NAMES):
        Image.new("RGB", (32, 32), (seed * 40, 0, 0)).save(folder / name)
    return folder


def _entry(folder: Path, order: str = "sequential", account: str = "alice") -> AccountEntry:
    return AccountEntry(account=account, folder=str(folder), schedule="every 1h", order=order)


def _catalog(folder: Path) -> Catalog:
    catalog = Catalog(folder, FitSettings(), MemoryValidationCache(), lambda *_, **__: None)
    catalog.apply_scan(catalog.scan())
    return catalog


def test_skip_moves_sequential_position_past_the_next_image(
    tmp_path: Path, store: StateStore
) -> None:
    """Sequential: skip counts a1 (then a2) as shown; nothing else about the entry changes."""
    folder = _folder(tmp_path)
    entry, catalog = _entry(folder), _catalog(folder)
    assert manual.skip(store, entry, catalog) == "a1.png"
    assert manual.skip(store, entry, catalog) == "a2.png"
    saved = store.entry(entry.entry_id)
    assert saved.last_image == "a2.png"
    assert saved.last_success is None, "a skip is not a success"
    assert store.history() == []


def test_skip_in_shuffle_counts_the_image_as_shown_this_cycle(
    tmp_path: Path, store: StateStore
) -> None:
    """Shuffle: each skip takes an image not shown this cycle; four skips show all four."""
    folder = _folder(tmp_path)
    entry, catalog = _entry(folder, "shuffle"), _catalog(folder)
    skipped = [manual.skip(store, entry, catalog) for _ in range(3)]
    assert len(set(skipped)) == 3
    assert store.entry(entry.entry_id).shown_in_cycle == frozenset(skipped)


def test_skip_refuses_random_order_and_an_empty_folder(tmp_path: Path, store: StateStore) -> None:
    """Random order has no next image; a folder without images has nothing to skip."""
    folder = _folder(tmp_path)
    with pytest.raises(RotatorError, match="random"):
        manual.skip(store, _entry(folder, "random"), _catalog(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RotatorError, match="no usable image"):
        manual.skip(store, _entry(empty), _catalog(empty))


def test_excluded_images_are_never_picked_until_included(tmp_path: Path, store: StateStore) -> None:
    """A dry-run rotator never sends an excluded image, in any order; include brings it back."""
    folder = _folder(tmp_path)
    catalog = _catalog(folder)

    async def rotate(entry: AccountEntry, times: int) -> list[str | None]:
        pauses = PauseBoard(store, SETTINGS)
        rotator = Rotator(
            state=store,
            pacer=WritePacer(100, 1.0, 4),
            pauses=pauses,
            setup=RotationSetup(client=None, policy=SETTINGS, api=ApiSection()),
            fitted_dir=tmp_path / "fitted",
        )
        return [(await rotator.rotate(entry, catalog)).image for _ in range(times)]

    for order in ("sequential", "shuffle", "random"):
        entry = _entry(folder, order, account=order)
        listed = f"excluded for {order} ({folder}): a2.png"
        assert manual.exclude(store, entry, "a2.png") == f"{order}: a2.png excluded\n{listed}"
        again = manual.exclude(store, entry, "a2.png")
        assert again == f"{order}: a2.png was already excluded\n{listed}"
        sent = asyncio.run(rotate(entry, 12))
        assert "a2.png" not in sent, order
        assert set(sent) == {"a1.png", "a3.png", "a10.png"}, order
    entry = _entry(folder, "sequential", account="sequential")
    assert store.excluded_images(entry.entry_id) == [(entry.entry_id, "a2.png")]
    assert manual.include(store, entry, "a2.png") == (
        f"sequential: a2.png included again\nnone excluded for sequential ({folder})"
    )
    assert "a2.png" in asyncio.run(rotate(entry, 4))
    with pytest.raises(RotatorError, match="not excluded"):
        manual.include(store, entry, "a2.png")


def test_exclusions_are_per_entry(tmp_path: Path, store: StateStore) -> None:
    """Excluding an image for alice leaves bob, who shares the folder, free to show it."""
    folder = _folder(tmp_path)
    alice, bob = _entry(folder), _entry(folder, account="bob")
    manual.exclude(store, alice, "a1.png")
    assert manual.skip(store, bob, _catalog(folder)) == "a1.png"
    assert manual.skip(store, alice, _catalog(folder)) == "a2.png"


def test_resume_live_ends_pauses_and_resets_the_doubling(store: StateStore) -> None:
    """After resume the account's next pause starts at level 0 again, not doubled."""

    async def main() -> tuple[list[str], int, int]:
        pauses = PauseBoard(store, SETTINGS)
        for _ in range(3):
            pauses.pause(scope="account", account="alice", kind="account", reason="r", seconds=60)
            await pauses.end("account", "alice", "test")
        before = pauses.level_for("account", "alice", "account")
        pauses.pause(scope="account", account="alice", kind="account", reason="r", seconds=60)
        pauses.pause(scope="account", account="bob", kind="account", reason="r", seconds=60)
        ended = await manual.resume_live(pauses, store, "alice")
        after = pauses.level_for("account", "alice", "account")
        await pauses.close()
        return ended, before, after

    ended, before, after = asyncio.run(main())
    assert before == 3
    assert after == 0
    assert ended == ["alice"]
    assert [(p.account, p.kind, p.reason) for p in store.pauses()] == [("bob", "account", "r")]


def test_pause_offline_is_taken_up_by_a_daemon_as_manual(store: StateStore) -> None:
    """A pause written without a daemon is restored as kind manual, until resumed or its end."""
    assert manual.pause_offline(store, "alice", None) == "paused alice until resumed"
    assert manual.pause_offline(store, None, 5400) == "paused all accounts for 1h30m"

    async def main() -> list[tuple[str | None, str, str]]:
        pauses = PauseBoard(store, SETTINGS)
        pauses.restore()
        found = [(p.account, p.kind, p.reason) for p in pauses.all()]
        await pauses.close()
        return found

    assert sorted(asyncio.run(main()), key=str) == [
        ("alice", "manual", "paused by hand"),
        (None, "manual", "paused by hand"),
    ]
    _, alice = store.pauses()
    left = alice.until - dt.datetime.now(dt.UTC)
    assert left > dt.timedelta(days=365 * 50)
    assert manual.resume_offline(store, None) == ["all accounts", "alice"]
    assert store.pauses() == []


def test_a_database_without_the_exclusions_table(tmp_path: Path) -> None:
    """Read-only, a database no daemon of this version opened has no exclusions; writable, the
    table is made (the schema version stays what it was)."""
    state_dir = tmp_path / "state"
    StateStore.open(state_dir).close()
    with contextlib.closing(sqlite3.connect(state_dir / "rotator.db")) as conn:
        conn.execute("DROP TABLE excluded_images")
        conn.commit()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    with StateStore.open(state_dir, lock=False, readonly=True) as looking:
        assert looking.excluded_images() == []
    with StateStore.open(state_dir) as writable:
        assert writable.exclude_image(entry_id="e", image="a.png", now=dt.datetime.now(dt.UTC))
        assert writable.excluded_images() == [("e", "a.png")]
    with contextlib.closing(sqlite3.connect(state_dir / "rotator.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("a1.png", "a1.png"),
        ("sub/a1.png", "sub/a1.png"),
        ("../a1.png", None),
        (".", None),
        ("/elsewhere/a1.png", None),
    ],
)
def test_relative_image(tmp_path: Path, image: str, expected: str | None) -> None:
    """Relative names are folder-relative (no escaping with ..); absolute ones must be inside."""
    assert manual.relative_image(tmp_path / "pics", image) == expected
    inside = tmp_path / "pics" / "x" / "y.png"
    assert manual.relative_image(tmp_path / "pics", str(inside)) == "x/y.png"


def test_entries_of_unknown_account_is_a_config_error(tmp_path: Path) -> None:
    """An account with no entry is exit 2, naming it."""
    with pytest.raises(ConfigError, match="'carol'"):
        manual.entries_of([_entry(tmp_path)], "carol")
