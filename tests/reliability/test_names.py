"""File names that are not UTF-8, or hold newlines and control characters, break nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import DaemonFactory
from fake_xquik import FakeXquik
from harness import cli_env, make_image, run_cli, write_config

from rotator.catalog import Catalog
from rotator.images import FitSettings
from rotator.library import StateValidationCache
from rotator.names import escape_name
from rotator.state import StateStore

# Raw names as another system may have written them (bytes, as the file system holds them).
HOSTILE_NAMES = {
    b"caf\xe9.png": "caf\\xe9.png",
    b"line\nbreak.png": "line\\x0abreak.png",
    b"bell\x07tab\t.png": "bell\\x07tab\\x09.png",
    b"back\\slash.png": "back\\\\slash.png",
    b"\xff\xfe.png": "\\xff\\xfe.png",
    ("x" * 251).encode() + b".png": "x" * 251 + ".png",  # 255 bytes: the longest name
}


def _raw(folder: Path, name: bytes) -> Path:
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


def _hostile_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(HOSTILE_NAMES, start=1):
        make_image(_raw(folder, name), seed=seed)
    make_image(folder / "plain.png", seed=99)


def test_escape_name_is_one_to_one_and_printable() -> None:
    """Every hostile name gets a distinct, printable, UTF-8 escaped form."""
    escaped = [escape_name(os.fsdecode(name)) for name in HOSTILE_NAMES]
    assert escaped == list(HOSTILE_NAMES.values())
    assert len(set(escaped)) == len(escaped)
    for text in escaped:
        assert text.isprintable()
        text.encode("utf-8")  # strict: would raise on a surrogate


def test_hostile_names_are_catalogued_cached_and_readable(tmp_path: Path) -> None:
    """A scan through the real SQLite cache keeps every name; a second scan reuses the cache."""
    folder = tmp_path / "img"
    _hostile_folder(folder)
    events: list[tuple[str, dict[str, object]]] = []
    with StateStore.open(tmp_path / "state") as state:
        cache = StateValidationCache(state)
        catalog = Catalog(folder, FitSettings(), cache, lambda e, **f: events.append((e, f)))
        catalog.apply_scan(catalog.scan())
        names = {image.relative for image in catalog.usable()}
        assert names == {*HOSTILE_NAMES.values(), "plain.png"}
        assert catalog.rejected() == []
        for image in catalog.usable():
            assert catalog.read_image(image) == image.path.read_bytes()
        again = Catalog(folder, FitSettings(), cache, _ignore).scan()
        assert {result.relative for result in again.files} == names
    json.dumps([fields for _, fields in events], ensure_ascii=False).encode("utf-8")


def test_run_check_and_status_survive_a_non_utf8_name(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """run uploads a non-UTF-8 named file, a later arrival is picked up, check and status work."""
    folder = tmp_path / "img"
    folder.mkdir()
    data = make_image(_raw(folder, b"caf\xe9.png"), seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "img", "schedule": "every 1h"}],
    )
    env = cli_env(fake_xquik.api_key)
    checked = run_cli("check", "--config", str(config), env=env)
    assert checked.returncode == 0, checked.stderr
    assert "caf\\xe9.png" in checked.stdout
    daemon = start_daemon(config)
    uploaded = daemon.wait_for("avatar.uploaded", timeout=20)
    assert uploaded[0]["image"] == "caf\\xe9.png"
    write = fake_xquik.writes("alice")[0]
    assert write.file is not None
    assert write.file.data == data
    make_image(_raw(folder, b"na\xefve\n.png"), seed=2)
    daemon.wait_for("image.added", lambda e: e.get("path") == "na\\xefve\\x0a.png", timeout=20)
    assert daemon.stop() == 0
    assert not daemon.stderr_lines
    status = run_cli("status", "--config", str(config), env=env)
    assert status.returncode == 0, status.stderr
    assert "caf\\xe9.png" in status.stdout


def test_rotate_sends_a_non_utf8_name_chosen_by_path(tmp_path: Path, fake_xquik: FakeXquik) -> None:
    """rotate --image accepts a non-UTF-8 path and sends exactly that file."""
    folder = tmp_path / "img"
    folder.mkdir()
    make_image(folder / "a.png", seed=1)
    data = make_image(_raw(folder, b"\xff.png"), seed=2)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "img", "schedule": "every 1h"}],
    )
    done = run_cli(
        "rotate",
        "--config",
        str(config),
        "--image",
        str(_raw(folder, b"\xff.png")),
        env=cli_env(fake_xquik.api_key),
    )
    assert done.returncode == 0, done.stderr
    write = fake_xquik.writes("alice")[-1]
    assert write.file is not None
    assert write.file.data == data


def _ignore(event: str, **fields: object) -> None:
    """Drop catalog events."""
    del event, fields


def test_a_non_utf8_folder_from_the_environment_is_shown_escaped(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """A folder named by ROTATOR_ACCOUNTS with non-UTF-8 bytes works in rotate, check, status."""
    folder = _raw(tmp_path, b"\xe9t\xe9")
    make_image(folder / "a.png", seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[{"account": "alice", "folder": "unused", "schedule": "every 1h"}],
    )
    accounts = json.dumps(
        [{"account": "alice", "folder": str(folder), "schedule": "every 1h"}], ensure_ascii=False
    )
    env = cli_env(fake_xquik.api_key, {"ROTATOR_ACCOUNTS": accounts})
    rotated = run_cli("rotate", "--config", str(config), env=env)  # state keyed by the folder
    assert rotated.returncode == 0, rotated.stderr
    assert len(fake_xquik.writes("alice")) == 1
    for command in ("check", "status", "history"):
        done = run_cli(command, "--config", str(config), env=env)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        if command != "history":
            assert "\\xe9t\\xe9" in done.stdout


def test_url_mode_quotes_the_raw_bytes_of_a_non_utf8_name(
    tmp_path: Path, fake_xquik: FakeXquik, start_daemon: DaemonFactory
) -> None:
    """In url mode the URL carries the name's own bytes, percent-encoded (caf%E9.png)."""
    folder = tmp_path / "img"
    folder.mkdir()
    make_image(_raw(folder, b"caf\xe9 1.png"), seed=1)
    config = write_config(
        tmp_path / "rotator.toml",
        base_url=fake_xquik.base_url,
        entries=[
            {
                "account": "alice",
                "folder": "img",
                "schedule": "every 1h",
                "public_base_url": "https://cdn.example.com/a/",
            }
        ],
        sections={"api": {"upload": "url"}},
    )
    daemon = start_daemon(config)
    daemon.wait_for("avatar.uploaded", timeout=20)
    assert daemon.stop() == 0
    (write,) = fake_xquik.writes("alice")
    assert write.json == {"account": "alice", "url": "https://cdn.example.com/a/caf%E9%201.png"}
