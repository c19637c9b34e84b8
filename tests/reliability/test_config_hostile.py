"""Every config the loader accepts can run; every other one is one ``path: problem`` line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import cli_env, make_image, run_cli

from rotator.config import load_settings
from rotator.errors import ConfigError

ENTRY = '[[accounts]]\naccount = "alice"\nfolder = "img"\nschedule = "every 1h"\n'
KEY = "xq_" + "9f8e7d6c5b4a" * 5


def _problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "rotator.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("[images]\nmax_source_bytes = 9223372036854775808", "at most 1073741824"),
        ("[images]\nmax_pixels = 99999999999999", "at most 1000000000"),
        ("[images]\nmax_bytes = 800000", "images.max_bytes: must be at most 716800"),
        ("[images]\nsize = 100000", "images.size: must be at most 4096"),
        ("[rate_limit]\nconcurrency = 100000", "must be at most 64"),
        ("[retry]\nattempts = 1000000", "retry.attempts: must be at most 100"),
        ('[api]\ntimeout = "3000000d"', "api.timeout: must be at most 10m"),
        ("[pause]\nmax = 1e300", "pause.max: must be at most 30d"),
        ('[watch]\nrescan = "999d"', "watch.rescan: must be at most 7d"),
        ('[api]\nkey_file = "a\\u0000b"', "api.key_file: must not contain a NUL"),
        ('[state]\ndir = "s\\u0000"', "state.dir: must not contain a NUL"),
        (f'[state]\ndir = "{"d" * 256}"', "state.dir: has a name longer than 255 bytes"),
        ('[api]\nbase_url = "https://exa mple.com"', "api.base_url:"),
        ('[api]\nbase_url = "https://bad_host!/api"', "is not a host name"),
        ('[api]\nbase_url = "https://user:pw@xquik.com"', "must not carry a user"),
        ('[metrics]\nlisten = "bad host:9464"', "metrics.listen:"),
        ('[metrics]\nlisten = "::1:9464"', "metrics.listen:"),
        ('[metrics]\nlisten = "127.0.0.1:0"', "metrics.listen:"),
        ('[metrics]\nlisten = "[nothost]:9464"', "metrics.listen:"),
    ],
)
def test_out_of_bounds_values_name_the_key_and_the_bound(
    tmp_path: Path, section: str, expected: str
) -> None:
    """Each hostile value is refused with its dotted path and, for numbers, the bound."""
    problems = _problems(tmp_path, f"{section}\n{ENTRY}")
    assert any(expected in line for line in problems), problems


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (
            ENTRY + ENTRY.replace('"alice"', '"ALICE"'),
            "accounts[1]: same account 'ALICE' and folder",
        ),
        (
            ENTRY + ENTRY.replace('"alice"', '"@alice"'),
            "accounts[1]: same account '@alice' and folder",
        ),
        (ENTRY.replace('"alice"', '"al\\u0000ice"'), "accounts[0].account:"),
        (ENTRY.replace('"alice"', '"alice.bob"'), "is not an X username"),
        (ENTRY.replace('"img"', f'"{"f" * 300}"'), "accounts[0].folder: has a name longer"),
    ],
)
def test_accounts_are_checked_for_names_and_duplicates(
    tmp_path: Path, entries: str, expected: str
) -> None:
    """Duplicates ignore case and a leading @; NUL and non-username accounts are refused."""
    problems = _problems(tmp_path, entries)
    assert any(expected in line for line in problems), problems


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ROTATOR_ACCOUNTS", "null", "ROTATOR_ACCOUNTS: must be an array in JSON"),
        ("ROTATOR_API", "[1]", "ROTATOR_API: must be an object in JSON"),
        ("ROTATOR_ACCOUNTS", "[" * 5000 + "]" * 5000, "ROTATOR_ACCOUNTS: nested"),
        ("ROTATOR_API", '{"a":' * 40 + "1" + "}" * 40, "ROTATOR_API: nested more than"),
    ],
)
def test_environment_json_must_have_the_right_shape(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    """null, the wrong JSON type and deep nesting in a ROTATOR_* variable are one line each."""
    problems = _problems(tmp_path, ENTRY, {name: value})
    assert len(problems) == 1
    assert problems[0].startswith(expected)


def test_deeply_nested_toml_is_one_line(tmp_path: Path) -> None:
    """A TOML file nested thousands deep is refused without a RecursionError."""
    problems = _problems(tmp_path, "x = " + "[" * 3000 + "]" * 3000 + "\n" + ENTRY)
    assert len(problems) == 1
    assert "nested" in problems[0]


def test_bom_is_accepted(tmp_path: Path) -> None:
    """A config saved with a UTF-8 byte order mark loads like one without."""
    path = tmp_path / "rotator.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ENTRY.encode())
    assert load_settings(path, {}).accounts[0].account == "alice"


def test_fifo_as_config_is_refused_without_hanging(tmp_path: Path) -> None:
    """A FIFO named as the config file is refused at once, exit 2."""
    fifo = tmp_path / "rotator.toml"
    os.mkfifo(fifo)
    done = run_cli("check", "--config", str(fifo), env=cli_env(None), timeout=20)
    assert done.returncode == 2
    assert "is not a regular file" in done.stderr


def test_key_from_a_key_file_never_shows_in_config_errors(tmp_path: Path) -> None:
    """The key, read from api.key_file and pasted into other fields, is masked in every line."""
    (tmp_path / "key").write_text(KEY + "\n")
    (tmp_path / "key").chmod(0o600)
    make_image(tmp_path / "img" / "a.png", seed=1)
    text = (
        f'[api]\nkey_file = "key"\nbase_url = "https://{KEY}"\nupload = "{KEY}"\n'
        f'[log]\nlevel = "{KEY[:40]}"\n' + ENTRY.replace('"alice"', f'"{KEY}"')
    )
    (tmp_path / "rotator.toml").write_text(text)
    done = run_cli("check", "--config", str(tmp_path / "rotator.toml"), env=cli_env(None))
    assert done.returncode == 2
    assert done.stderr.count("\n") >= 3
    for start in range(len(KEY) - 12):
        assert KEY[start : start + 12] not in done.stderr
