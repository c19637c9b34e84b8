"""A hostile server that echoes the key back never gets it stored or printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_xquik import FakeXquik, Reply
from harness import cli_env, make_image, run_cli, write_config
from hypothesis import given
from hypothesis import strategies as st

from rotator.redaction import FRAGMENT, add_secret, redact, safe_code, safe_token

SECRET = "xq_" + "5eC4e7" * 11  # the hostile server's echo target: 69 characters


def _fragments(key: str) -> list[str]:
    return [key[i : i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1)]


def _echoes(key: str) -> list[Reply]:
    """Answers that carry the key in every place a server can put text."""
    half = len(key) // 2
    return [
        Reply(status=400, json={"error": key, "message": "bad"}, headers={"X-Request-Id": key}),
        Reply(
            status=422,
            json={"error": {"code": "invalid_image", "message": f"{key[:half]}\n{key[half:]}"}},
            headers={"X-Request-Id": f"req-{key[5:40]}"},
        ),
        Reply(status=400, json={"error": f"Bad {key} Code", "message": f"key was {key}"}),
        Reply(status=500, body=f"oops {key}".encode(), content_type="text/plain"),
        # A write-action record whose id and statusUrl carry the key: not kept, not printed.
        Reply(
            status=200,
            json={
                "object": "x_write_action",
                "id": key,
                "action": "update_avatar",
                "status": "failed",
                "terminal": True,
                "retryable": False,
                "safeToRetry": False,
                "statusUrl": f"/api/v1/x/write-actions/{key}",
                "error": "x_write_failed",
            },
        ),
    ]


def _assert_clean(text: str | bytes, key: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    assert key not in text
    for fragment in _fragments(key):
        assert fragment not in text, f"a fragment of the key leaked: {fragment!r}"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("rate_limited", "rate_limited"),
        ("x_write_ambiguous", "x_write_ambiguous"),
        ("Rate Limited", "unknown"),
        ("a" * 65, "unknown"),
        ("bad\ncode", "unknown"),
        ("", "unknown"),
        (None, None),
    ],
)
def test_error_codes_must_look_like_codes(code: str | None, expected: str | None) -> None:
    """Only ^[a-z0-9_]{1,64}$ is kept as a code; anything else is "unknown"."""
    assert safe_code(code) == expected


def test_redact_masks_the_key_split_and_in_fragments() -> None:
    """The key, the key split by a newline, and any 12-character run of it are masked."""
    half = len(SECRET) // 2
    for text in (SECRET, f"a {SECRET[:half]}\n{SECRET[half:]} b", f"id-{SECRET[7:30]}-x"):
        _assert_clean(redact(text, [SECRET]), SECRET)
    assert redact("nothing to see", [SECRET]) == "nothing to see"


KEYS = st.text(alphabet="ab.*+?()[]|\\^$x_5", min_size=4, max_size=40)


def _masked_by_rule(text: str, key: str) -> str:
    """The rule, character by character: every character inside an occurrence of the key
    (or of a FRAGMENT-long run of it) is masked, and each masked stretch is one mask."""
    runs = _fragments(key) if len(key) > FRAGMENT else [key]
    hidden = [
        any(
            text.startswith(run, start)
            for run in runs
            for start in range(max(0, index - len(run) + 1), index + 1)
        )
        for index in range(len(text))
    ]
    out = ""
    for index, char in enumerate(text):
        if not hidden[index]:
            out += char
        elif index == 0 or not hidden[index - 1]:
            out += "[REDACTED]"
    return out


@given(key=KEYS, data=st.data())
def test_redact_masks_every_character_of_every_run_of_the_key(
    key: str, data: st.DataObject
) -> None:
    """Whatever pieces of the key a text holds, each of its characters inside a run of the
    key (FRAGMENT long, or the whole of a shorter key) is masked, and nothing else is.

    Regex metacharacters in the key are plain characters.
    """
    pieces = data.draw(
        st.lists(
            st.one_of(
                st.text(alphabet="ab.*x_ \n", max_size=15),
                st.tuples(st.integers(0, len(key)), st.integers(0, len(key))).map(
                    lambda span: key[min(span) : max(span)]
                ),
            ),
            max_size=6,
        )
    )
    text = "".join(pieces)
    assert redact(text, [key]) == _masked_by_rule(text, key)


def test_echoed_key_is_never_stored_or_printed(tmp_path: Path) -> None:
    """rotate, status, status --json and the SQLite files never hold the echoed key."""
    with FakeXquik(accounts=["alice"], api_key=SECRET) as server:
        make_image(tmp_path / "img" / "a.png", seed=1)
        make_image(tmp_path / "img" / "b.png", seed=2)
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=server.base_url,
            entries=[{"account": "alice", "folder": "img", "schedule": "every 1h"}],
            sections={"retry": {"attempts": 1}},
        )
        env = cli_env(SECRET)
        outputs = []
        for reply in _echoes(SECRET):
            server.script(reply, reply, reply)
            done = run_cli("rotate", "--config", str(config), env=env)
            outputs += [done.stdout, done.stderr]
            server.clear_scripts()
        for command in (("status",), ("status", "--json"), ("history",), ("history", "--json")):
            done = run_cli(*command, "--config", str(config), env=env)
            assert done.returncode == 0, done.stderr
            outputs += [done.stdout, done.stderr]
        assert "unknown" in "".join(outputs)
    for text in outputs:
        _assert_clean(text, SECRET)
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            _assert_clean(path.read_bytes(), SECRET)


def test_check_online_never_prints_an_echoed_key(tmp_path: Path) -> None:
    """check --online with every read answering the key back prints no part of it."""
    with FakeXquik(accounts=["alice"], api_key=SECRET) as server:
        make_image(tmp_path / "img" / "a.png", seed=1)
        config = write_config(
            tmp_path / "rotator.toml",
            base_url=server.base_url,
            entries=[{"account": "alice", "folder": "img", "schedule": "every 1h"}],
        )
        for endpoint in ("account", "credits", "x/accounts"):
            server.script_read(
                endpoint,
                Reply(
                    status=401, json={"error": SECRET, "message": f"{SECRET[:30]}\n{SECRET[30:]}"}
                ),
            )
        done = run_cli("check", "--online", "--config", str(config), env=cli_env(SECRET))
        assert done.returncode == 1
        _assert_clean(done.stdout + done.stderr, SECRET)


@pytest.mark.parametrize(
    ("token", "kept"),
    [
        ("xwa_01HZX", True),
        ("/api/v1/x/write-actions/xwa_01HZX", True),
        (SECRET, False),
        (f"/api/v1/x/write-actions/{SECRET[3:20]}", False),
        ("has space", False),
        ("x" * 513, False),
    ],
)
def test_ids_from_the_server_are_kept_only_when_plain_and_free_of_the_key(
    token: str, kept: bool
) -> None:
    """A write-action id or statusUrl carrying the key (or odd bytes) is dropped, not masked."""
    add_secret(SECRET)
    assert safe_token(token) == (token if kept else None)
