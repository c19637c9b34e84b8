"""The parts bundle: built from the settings in one go, swapped whole by a reload."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from fake_xquik import FakeXquik, Reply
from PIL import Image
from structlog.testing import capture_logs

from rotator.catalog import Catalog, MemoryValidationCache
from rotator.config import Settings, load_settings
from rotator.keys import find_api_key
from rotator.logs import emit
from rotator.metrics import Metrics
from rotator.parts import Parts, build_parts
from rotator.state import StateStore


def _settings(tmp_path: Path, fake: FakeXquik, **api: object) -> Settings:
    lines = [
        "[api]",
        f'base_url = "{fake.base_url}"',
        'timeout = "5s"',
        *(f"{name} = {value}" for name, value in api.items()),
        "[rate_limit]",
        "writes = 5",
        "[state]",
        f'dir = "{tmp_path / "state"}"',
        "[images]",
        "min_size = 16",
        "[[accounts]]",
        'account = "alice"',
        f'folder = "{tmp_path / "pictures"}"',
        'schedule = "every 1h"',
    ]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_settings(path, {"XQUIK_API_KEY": fake.api_key})


def _png(tmp_path: Path) -> None:
    folder = tmp_path / "pictures"
    folder.mkdir(exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    (folder / "1.png").write_bytes(buffer.getvalue())


def _success_without_billing() -> Reply:
    """A 200 success whose record says nothing of billing: the write counts credits_per_call."""
    return Reply(
        status=200,
        json={
            "id": "xwa_1",
            "writeActionId": "xwa_1",
            "status": "success",
            "terminal": True,
            "success": True,
        },
    )


def test_a_reload_that_changes_credits_per_call_reaches_the_running_rotator(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """Parts rebuilt with a new credits_per_call and swapped in: the running rotator counts it."""
    _png(tmp_path)
    before = _settings(tmp_path, fake_xquik, credits_per_call=10)
    key = find_api_key(before, {"XQUIK_API_KEY": fake_xquik.api_key})
    fake_xquik.script(_success_without_billing(), _success_without_billing())

    async def go() -> tuple[list[Any], bool, bool]:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            held: list[Parts] = []
            first = build_parts(
                before,
                key,
                state=state,
                state_dir=tmp_path / "state",
                dry_run=False,
                in_force=lambda: held[-1],
            )
            held.append(first)
            # Fed as the daemon feeds it: the credits per call of the bundle in force.
            metrics = Metrics(credits_per_call=lambda: held[-1].rotation.credits_per_call)
            rotator = first.rotator
            catalog = Catalog(tmp_path / "pictures", first.fit, MemoryValidationCache(), emit)
            catalog.apply_scan(await asyncio.to_thread(catalog.scan))
            entry = before.accounts[0]
            results = [await rotator.rotate(entry, catalog, wait_for_pauses=False)]
            after = _settings(tmp_path, fake_xquik, credits_per_call=3)
            held.append(
                build_parts(
                    after,
                    key,
                    state=state,
                    state_dir=tmp_path / "state",
                    dry_run=False,
                    in_force=lambda: held[-1],
                    carried=first,
                )
            )
            results.append(await rotator.rotate(entry, catalog, wait_for_pauses=False))
            metrics.observe({"event": "avatar.uploaded", "account": "alice"})  # no billing
            assert metrics.registry.get_sample_value("rotator_credits_spent_total") == 3.0
            carried = held[-1].rotator is rotator and held[-1].pauses is first.pauses
            same_client = held[-1].client is first.client
            await first.pauses.close()
            assert first.client is not None
            await first.client.aclose()
            return results, carried, same_client

    with capture_logs() as logs:
        results, carried, same_client = asyncio.run(go())
    assert [result.kind for result in results] == ["uploaded", "uploaded"]
    uploaded = [event["credits"] for event in logs if event["event"] == "avatar.uploaded"]
    assert uploaded == [10, 3], "the second write counts the reloaded credits_per_call"
    assert carried, "the rotator and the pause board live on across the swap"
    assert same_client, "an unchanged key, base_url and timeout keep the client"


def test_a_swap_carries_the_pacer_with_new_limits_and_a_new_key_gets_a_new_client(
    tmp_path: Path, fake_xquik: FakeXquik
) -> None:
    """The pacer lives on under the new [rate_limit]; a changed key makes a new client."""
    before = _settings(tmp_path, fake_xquik)
    old_key = find_api_key(before, {"XQUIK_API_KEY": fake_xquik.api_key})
    new_key = find_api_key(before, {"XQUIK_API_KEY": "xq_" + "1" * 64})

    async def go() -> None:
        with StateStore.open(tmp_path / "state", lock=True) as state:
            held: list[Parts] = []

            def build(settings: Settings, key: Any, carried: Parts | None) -> Parts:
                return build_parts(
                    settings,
                    key,
                    state=state,
                    state_dir=tmp_path / "state",
                    dry_run=False,
                    in_force=lambda: held[-1],
                    carried=carried,
                )

            held.append(build(before, old_key, None))
            first = held[0]
            assert (first.pacer.writes, first.policy.attempts) == (5, before.retry.attempts)
            (tmp_path / "config.toml").write_text(
                (tmp_path / "config.toml")
                .read_text(encoding="utf-8")
                .replace("writes = 5", "writes = 2\nconcurrency = 1"),
                encoding="utf-8",
            )
            after = load_settings(tmp_path / "config.toml", {})
            held.append(build(after, new_key, first))
            second = held[-1]
            assert second.pacer is first.pacer
            assert (second.pacer.writes, second.pacer.concurrency) == (2, 1)
            assert second.client is not None
            assert second.client is not first.client
            assert second.rotator.setup.client is second.client, (
                "the rotator uses the bundle in force"
            )
            assert second.key is new_key
            for parts in (first, second):
                assert parts.client is not None
                await parts.client.aclose()
            await first.pauses.close()

    asyncio.run(go())
