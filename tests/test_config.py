"""Tests for rotator.config: TOML + environment loading, checks, errors and key discovery."""

from __future__ import annotations

import hashlib
import os
import tomllib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rotator.config import (
    AccountEntry,
    Settings,
    choose_state_dir,
    load_settings,
    resolve_config_path,
)
from rotator.errors import ConfigError
from rotator.keys import ApiKey, find_api_key

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
KEY = "xq_" + "5e" * 32  # shaped like a real key: it must never show up anywhere
ENTRY = '[[accounts]]\naccount = "alice"\nfolder = "imgs"\nschedule = "every 30s"\n'


def write_config(folder: Path, text: str, *, mode: int = 0o600) -> Path:
    """Write a config file with the given text and permission bits."""
    path = folder / "rotator.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    """Return the problem lines load_settings raises for a config."""
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    return info.value.problems


def no_key_files(tmp_path: Path) -> Path:
    """Return an empty secrets dir, so /run/secrets on this machine plays no part."""
    empty = tmp_path / "no-secrets"
    empty.mkdir(exist_ok=True)
    return empty


# ---- the example config ----


def _hours(field: str) -> set[int]:
    """Expand a crontab hour field made of numbers, ranges and commas (crontab(5))."""
    hours: set[int] = set()
    for part in field.split(","):
        low, _, high = part.partition("-")
        hours.update(range(int(low), int(high or low) + 1))
    return hours


def test_example_config_entries_of_one_account_take_turns() -> None:
    """Prove the example's day and night entries of one account never fire in the same hour."""
    settings = load_settings(EXAMPLE, {})
    entries = [entry for entry in settings.accounts if entry.account == "myxaccount"]
    assert len(entries) == 2
    assert len({entry.timezone for entry in entries}) == 1  # one clock for both windows
    fields = [entry.schedule.text.split() for entry in entries]
    assert all(len(f) == 5 and f[2:] == ["*", "*", "*"] for f in fields), fields
    day, night = (_hours(f[1]) for f in fields)
    assert day.isdisjoint(night)
    assert day | night == set(range(24))


def test_example_config_loads_as_is() -> None:
    """Prove config.example.toml loads unchanged and points at the shipped sample folders."""
    settings = load_settings(EXAMPLE, {})
    assert len(settings.accounts) >= 2
    assert {entry.account for entry in settings.accounts} >= {"myxaccount"}
    assert any(entry.schedule.every is None for entry in settings.accounts)
    for entry in settings.accounts:
        assert entry.folder.is_dir()
        assert entry.folder.is_relative_to(REPO / "examples")
    assert len({entry.entry_id for entry in settings.accounts}) == len(settings.accounts)


def test_example_config_documents_every_key() -> None:
    """Prove the example sets every key of every section and of an accounts entry."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    sections = {name: field for name, field in Settings.model_fields.items() if name != "accounts"}
    assert set(data) == set(Settings.model_fields)
    for name, field in sections.items():
        model = field.annotation
        assert model is not None
        assert set(data[name]) == set(model.model_fields), name
    for entry in data["accounts"]:
        assert set(entry) == set(AccountEntry.model_fields)


def test_example_images_are_small_distinct_pngs_and_jpegs() -> None:
    """Prove the sample images are 4-6 distinct PNG/JPEG files well under 700 KB."""
    images = sorted(p for p in (REPO / "examples").rglob("*") if p.is_file())
    images = [p for p in images if p.suffix.lower() in {".png", ".jpg", ".jpeg"}]
    assert 4 <= len(images) <= 6
    assert {p.suffix.lower() for p in images} >= {".png", ".jpg"}
    digests = set()
    for image in images:
        data = image.read_bytes()
        assert len(data) < 700 * 1024 // 2
        if image.suffix.lower() == ".png":
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
        else:
            assert data.startswith(b"\xff\xd8\xff")
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == len(images)


# ---- defaults ----


def test_every_section_has_the_documented_defaults(tmp_path: Path) -> None:
    """Prove a config with only one entry gets every default the issue lists."""
    settings = load_settings(write_config(tmp_path, ENTRY), {})
    api = settings.api
    assert api.base_url == "https://xquik.com/api/v1"
    assert (api.key_file, api.key, api.public_base_url) == (None, None, None)
    assert (api.timeout, api.upload, api.credits_per_call) == (30.0, "file", 10)
    assert (settings.rate_limit.writes, settings.rate_limit.window) == (30, 60.0)
    assert settings.rate_limit.concurrency == 4
    assert (settings.retry.initial, settings.retry.max, settings.retry.attempts) == (5.0, 300.0, 4)
    pause = settings.pause
    assert (pause.credits, pause.account, pause.auth, pause.max) == (900.0, 3600.0, 900.0, 43200.0)
    watch = settings.watch
    assert (watch.mode, watch.settle, watch.poll_interval, watch.rescan) == (
        "auto",
        2.0,
        10.0,
        600.0,
    )
    images = settings.images
    assert (images.fit, images.size, images.crop) == ("auto", 400, "center")
    assert (images.max_bytes, images.max_source_bytes, images.max_pixels) == (
        716800,
        52428800,
        40000000,
    )
    assert settings.state.dir is None
    assert (settings.log.level, settings.log.format) == ("info", "json")
    assert settings.metrics.listen is None
    assert settings.metrics.address is None


def test_entry_defaults_and_parsed_types(tmp_path: Path) -> None:
    """Prove an entry's optional keys default and its values come out parsed."""
    settings = load_settings(write_config(tmp_path, ENTRY), {})
    (entry,) = settings.accounts
    assert entry.timezone == ZoneInfo("UTC")
    assert isinstance(entry.timezone, ZoneInfo)
    assert (entry.order, entry.jitter, entry.public_base_url) == ("sequential", 0.0, None)
    assert entry.schedule.every == 30.0
    assert entry.folder == tmp_path / "imgs"
    assert entry.entry_id == f"alice:{tmp_path / 'imgs'}"


def test_values_are_parsed(tmp_path: Path) -> None:
    """Prove durations, zones, enums and the metrics address are parsed from the file."""
    text = (
        '[api]\ntimeout = "1m30s"\n[metrics]\nlisten = "[::1]:9464"\n[log]\nlevel = "DEBUG"\n'
        '[[accounts]]\naccount = "alice"\nfolder = "imgs"\nschedule = "0 */6 * * *"\n'
        'timezone = "Europe/Berlin"\norder = "shuffle"\njitter = "2m"\n'
    )
    settings = load_settings(write_config(tmp_path, text), {})
    assert settings.api.timeout == 90.0
    assert settings.metrics.address == ("::1", 9464)
    assert settings.log.level == "debug"
    (entry,) = settings.accounts
    assert (entry.timezone, entry.order, entry.jitter) == (
        ZoneInfo("Europe/Berlin"),
        "shuffle",
        120,
    )
    assert entry.schedule.every is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    """Prove settings and sections cannot be changed after loading."""
    settings = load_settings(write_config(tmp_path, ENTRY), {})
    with pytest.raises(ValueError, match="frozen"):
        settings.api.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        settings.log = settings.log  # type: ignore[misc]


# ---- environment ----


def test_env_overrides_nested_keys_over_the_file(tmp_path: Path) -> None:
    """Prove ROTATOR_<SECTION>__<KEY> beats the file, key by key, case-insensitively."""
    text = '[retry]\nattempts = 5\ninitial = "1s"\n' + ENTRY
    environ = {
        "ROTATOR_RETRY__ATTEMPTS": "3",
        "ROTATOR_API__BASE_URL": "http://127.0.0.1:8080/api/v1/",
        "rotator_log__level": "WARNING",
        "ROTATOR_WATCH__MODE": "polling",
        "ROTATOR_API__TIMEOUT": "5s",
    }
    settings = load_settings(write_config(tmp_path, text), environ)
    assert settings.retry.attempts == 3
    assert settings.retry.initial == 1.0  # the file's value for a key the env left alone
    assert settings.api.base_url == "http://127.0.0.1:8080/api/v1"
    assert settings.log.level == "warning"
    assert settings.watch.mode == "polling"
    assert settings.api.timeout == 5.0


def test_env_accounts_json_replaces_the_list(tmp_path: Path) -> None:
    """Prove ROTATOR_ACCOUNTS (JSON) replaces every file entry; relative folders still resolve."""
    environ = {
        "ROTATOR_ACCOUNTS": '[{"account": "bob", "folder": "b", "schedule": "every 5m"},'
        ' {"account": "carol", "folder": "/srv/c", "schedule": "0 9 * * 1-5",'
        ' "timezone": "Asia/Tokyo"}]'
    }
    settings = load_settings(write_config(tmp_path, ENTRY), environ)
    assert [e.account for e in settings.accounts] == ["bob", "carol"]
    assert settings.accounts[0].folder == tmp_path / "b"
    assert settings.accounts[1].timezone == ZoneInfo("Asia/Tokyo")


def test_env_section_as_json_object(tmp_path: Path) -> None:
    """Prove a whole section can come from one JSON variable, and a key variable beats it."""
    environ = {
        "ROTATOR_RATE_LIMIT": '{"writes": 10, "window": "30s"}',
        "ROTATOR_RATE_LIMIT__WRITES": "7",
    }
    settings = load_settings(write_config(tmp_path, ENTRY), environ)
    assert (settings.rate_limit.writes, settings.rate_limit.window) == (7, 30.0)


def test_env_unrelated_and_config_variables_are_ignored(tmp_path: Path) -> None:
    """Prove ROTATOR_CONFIG and ROTATOR_* names of no section do not disturb loading."""
    environ = {
        "ROTATOR_CONFIG": "/elsewhere/rotator.toml",
        "ROTATOR_FOO": "1",
        "ROTATOR_FOO__BAR": "2",
        "ROTATOR_LOGFILE": "x",
        "PATH": "/usr/bin",
    }
    settings = load_settings(write_config(tmp_path, ENTRY), environ)
    assert settings.config_path == tmp_path / "rotator.toml"


def test_env_unknown_key_in_known_section_is_named(tmp_path: Path) -> None:
    """Prove a misspelt key under a known section is an error naming the variable."""
    problems = problems_of(write_config(tmp_path, ENTRY), {"ROTATOR_API__BASE_ULR": "x"})
    assert problems == [
        "api.base_ulr: unknown key; did you mean 'base_url'? (from ROTATOR_API__BASE_ULR)"
    ]


def test_env_bad_value_names_the_variable(tmp_path: Path) -> None:
    """Prove a bad value from the environment names the variable it came from."""
    problems = problems_of(
        write_config(tmp_path, ENTRY),
        {"ROTATOR_RATE_LIMIT__WRITES": "many", "ROTATOR_PAUSE__AUTH": "later"},
    )
    assert "rate_limit.writes: must be an integer (from ROTATOR_RATE_LIMIT__WRITES)" in problems
    assert any(
        line.startswith("pause.auth: 'later' is not a duration") and "ROTATOR_PAUSE__AUTH" in line
        for line in problems
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"ROTATOR_ACCOUNTS": "[{"}, "ROTATOR_ACCOUNTS: must be an array in JSON"),
        ({"ROTATOR_API": "nope"}, "ROTATOR_API: must be an object in JSON"),
        ({"ROTATOR_ACCOUNTS__0__FOLDER": "x"}, "ROTATOR_ACCOUNTS__0__FOLDER: entries cannot"),
    ],
)
def test_env_unusable_structured_values(
    tmp_path: Path, environ: dict[str, str], expected: str
) -> None:
    """Prove broken JSON and per-entry variables give one line naming the variable."""
    (line,) = problems_of(write_config(tmp_path, ENTRY), environ)
    assert line.startswith(expected)


def test_env_accounts_entry_errors_name_the_variable(tmp_path: Path) -> None:
    """Prove a problem inside ROTATOR_ACCOUNTS gets an entry path and the variable name."""
    environ = {"ROTATOR_ACCOUNTS": '[{"account": "bob", "schedule": "every 5m"}]'}
    problems = problems_of(write_config(tmp_path, ENTRY), environ)
    assert problems == ["accounts[0].folder: required (from ROTATOR_ACCOUNTS)"]


# ---- unknown keys and bad values ----


def test_unknown_sections_are_named_with_a_guess(tmp_path: Path) -> None:
    """Prove [ratelimit] is an unknown section with rate_limit suggested."""
    problems = problems_of(write_config(tmp_path, "[ratelimit]\nwrites = 3\n" + ENTRY))
    assert problems == ["ratelimit: unknown section; did you mean 'rate_limit'?"]


def test_environment_variables_that_set_nothing_are_warnings(tmp_path: Path) -> None:
    """Prove ROTATOR_RATELIMIT__WRITES loads with a warning naming the real variable."""
    environ = {"ROTATOR_RATELIMIT__WRITES": "3", "ROTATOR_COLOUR": "x", "ROTATOR_CONFIG": "y"}
    settings = load_settings(write_config(tmp_path, ENTRY), environ)
    assert settings.env_warnings == (
        "ROTATOR_RATELIMIT__WRITES sets nothing and is ignored (no section 'ratelimit'); "
        "did you mean ROTATOR_RATE_LIMIT__WRITES?",
        "ROTATOR_COLOUR sets nothing and is ignored (no section 'colour')",
    )
    assert settings.rate_limit.writes == 30


def test_unknown_keys_everywhere_are_reported(tmp_path: Path) -> None:
    """Prove unknown keys at the top, in a section and in an entry each get a line and a guess."""
    text = (
        'colour = "blue"\n[retry]\nattemps = 3\n[[accounts]]\naccount = "a"\n'
        'folder = "f"\nshedule = "every 5m"\n'
    )
    problems = problems_of(write_config(tmp_path, text))
    assert "colour: unknown key" in problems  # nothing close enough to guess
    assert "retry.attemps: unknown key; did you mean 'attempts'?" in problems
    assert "accounts[0].shedule: unknown key; did you mean 'schedule'?" in problems
    assert "accounts[0].schedule: required" in problems


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[api]\ntimeout = "soon"', "api.timeout: 'soon' is not a duration ("),
        ("[api]\ntimeout = 0", "api.timeout: must be above zero"),
        ('[rate_limit]\nwindow = "0s"', "rate_limit.window: must be above zero"),
        ("[rate_limit]\nwrites = 0", "rate_limit.writes: must be at least 1"),
        ('[rate_limit]\nwrites = "many"', "rate_limit.writes: must be an integer"),
        ("[rate_limit]\nwrites = true", "rate_limit.writes: must be an integer"),
        ("[rate_limit]\nwrites = 2.5", "rate_limit.writes: must be an integer"),
        ("[rate_limit]\nconcurrency = 0", "rate_limit.concurrency: must be at least 1"),
        ("[retry]\nattempts = 0", "retry.attempts: must be at least 1"),
        ("[api]\ncredits_per_call = -1", "api.credits_per_call: must not be negative"),
        ("[images]\nsize = 8", "images.size: must be at least 16"),
        ('[api]\nupload = "ftp"', "api.upload: 'ftp' is not one of 'file' or 'url'"),
        ('[watch]\nmode = "inotify"', "watch.mode: 'inotify' is not one of"),
        ('[log]\nlevel = "loud"', "log.level: 'loud' is not one of"),
        ('[log]\nformat = "xml"', "log.format: 'xml' is not one of"),
        ('[images]\nfit = "maybe"', "images.fit: 'maybe' is not one of"),
        ('[metrics]\nlisten = "nope"', "metrics.listen: 'nope' is not host:port"),
        ('[metrics]\nlisten = "127.0.0.1:99999"', "metrics.listen: '127.0.0.1:99999' is not"),
        ('[api]\nbase_url = "http://xquik.com/api/v1"', "api.base_url: 'http://xquik.com/api/v1'"),
        ('[api]\nbase_url = ""', "api.base_url: must not be empty"),
        ('[api]\nbase_url = "ftp://127.0.0.1/x"', "api.base_url: 'ftp://127.0.0.1/x' must use"),
        ('[api]\npublic_base_url = "http://cdn.example"', "api.public_base_url: 'http://cdn"),
        ('[retry]\ninitial = "10m"', "retry.max: must not be less than retry.initial (10m)"),
        ('[pause]\nmax = "30m"', "pause.max: must not be less than pause.account (1h)"),
        ("api = 5", "api: must be a table"),
        ("[state]\ndir = 5", "state.dir: must be a path (a string)"),
    ],
)
def test_bad_section_values_give_one_clear_line(tmp_path: Path, toml: str, expected: str) -> None:
    """Prove each bad section value becomes a '<path>: <what>' line starting as expected."""
    problems = problems_of(write_config(tmp_path, toml + "\n" + ENTRY))
    assert any(line.startswith(expected) for line in problems), problems


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('schedule = "61 * * * *"', 'accounts[0].schedule: "61 * * * *" is not a valid cron'),
        ('schedule = "* * * * * *"', 'accounts[0].schedule: "* * * * * *" is not a valid cron'),
        ('schedule = "every soon"', "accounts[0].schedule: 'every soon' is not a valid schedule"),
        ('timezone = "Mars/Olympus"', "accounts[0].timezone: 'Mars/Olympus' is not a known IANA"),
        ('timezone = "../etc"', "accounts[0].timezone: '../etc' is not a known IANA time zone"),
        ('order = "backwards"', "accounts[0].order: 'backwards' is not one of"),
        ('jitter = "-1s"', "accounts[0].jitter: '-1s' is not a duration"),
        ('account = "my account"', "accounts[0].account: 'my account' must not contain whitespace"),
        ('account = ""', "accounts[0].account: must not be empty"),
        ('folder = ""', "accounts[0].folder: must not be empty"),
        ('public_base_url = "ftp://x"', "accounts[0].public_base_url: 'ftp://x' must be an https"),
    ],
)
def test_bad_entry_values_give_one_clear_line(tmp_path: Path, entry: str, expected: str) -> None:
    """Prove each bad entry value becomes an 'accounts[i].<key>: <what>' line."""
    key = entry.split(" ", 1)[0]
    base = {"account": '"alice"', "folder": '"imgs"', "schedule": '"every 30s"'}
    base.pop(key, None)
    lines = [f"{k} = {v}" for k, v in base.items()]
    text = '[[accounts]]\naccount = "zed"\nfolder = "z"\nschedule = "every 1m"\n'
    text += "[[accounts]]\n" + "\n".join([*lines, entry]) + "\n"
    problems = problems_of(write_config(tmp_path, text))
    expected = expected.replace("accounts[0]", "accounts[1]")
    assert any(line.startswith(expected) for line in problems), problems


def test_entry_index_shows_in_the_path(tmp_path: Path) -> None:
    """Prove problems in the second entry are reported against accounts[1]."""
    text = ENTRY + '[[accounts]]\naccount = "bob"\nfolder = "b"\ntimezone = "Mars/Olympus"\n'
    problems = problems_of(write_config(tmp_path, text))
    assert problems == [
        "accounts[1].schedule: required",
        "accounts[1].timezone: 'Mars/Olympus' is not a known IANA time zone",
    ]


@pytest.mark.parametrize("text", ["", "[api]\n", "accounts = []\n"])
def test_accounts_are_required(tmp_path: Path, text: str) -> None:
    """Prove a config without any [[accounts]] entry is refused with one line."""
    problems = problems_of(write_config(tmp_path, text))
    assert problems == ["accounts: at least one [[accounts]] entry is required"]


def test_accounts_as_a_single_table_is_a_type_error(tmp_path: Path) -> None:
    """Prove [accounts] (one table, not an array of tables) gets a short type message."""
    text = '[accounts]\naccount = "a"\nfolder = "f"\nschedule = "every 1m"\n'
    problems = problems_of(write_config(tmp_path, text))
    assert problems == ["accounts: must be a list of [[accounts]] tables"]


def test_many_problems_are_reported_together_as_plain_lines(tmp_path: Path) -> None:
    """Prove every problem is reported at once, one line each, without pydantic's wording."""
    text = (
        '[api]\ntimeout = "soon"\n[retry]\nattemps = 1\n[log]\nlevel = 3\n'
        '[[accounts]]\naccount = "a"\nfolder = "f"\nschedule = "61 * * * *"\n'
    )
    problems = problems_of(write_config(tmp_path, text))
    assert len(problems) == 4
    for line in problems:
        assert "\n" not in line
        assert ": " in line
        for noise in ("Value error", "pydantic", "input_value", "errors.pydantic.dev", "type="):
            assert noise not in line


# ---- URLs ----


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://xquik.com/api/v1/", "https://xquik.com/api/v1"),
        ("http://127.0.0.1:8080/api/v1", "http://127.0.0.1:8080/api/v1"),
        ("http://127.9.9.9/", "http://127.9.9.9"),
        ("http://localhost:9000/api/v1/", "http://localhost:9000/api/v1"),
        ("http://[::1]:9000/api/v1", "http://[::1]:9000/api/v1"),
    ],
)
def test_base_url_https_or_loopback_http(tmp_path: Path, url: str, stored: str) -> None:
    """Prove https is accepted, http only for loopback hosts, and a trailing slash is dropped."""
    settings = load_settings(write_config(tmp_path, f'[api]\nbase_url = "{url}"\n' + ENTRY), {})
    assert settings.api.base_url == stored


@pytest.mark.parametrize(
    "url", ["http://xquik.com/api/v1", "http://10.0.0.1/api", "http://localhost.evil.example/"]
)
def test_base_url_plain_http_elsewhere_is_refused(tmp_path: Path, url: str) -> None:
    """Prove http to a non-loopback host is refused."""
    problems = problems_of(write_config(tmp_path, f'[api]\nbase_url = "{url}"\n' + ENTRY))
    assert problems == [f"api.base_url: {url!r} must use https (http only for a loopback host)"]


def test_url_upload_needs_a_public_base_url(tmp_path: Path) -> None:
    """Prove upload = 'url' without any public base URL names the entry lacking one."""
    text = '[api]\nupload = "url"\n' + ENTRY
    text += '[[accounts]]\naccount = "bob"\nfolder = "b"\nschedule = "every 1m"\n'
    text += 'public_base_url = "https://cdn.example/b/"\n'
    problems = problems_of(write_config(tmp_path, text))
    assert problems == [
        "accounts[0].public_base_url: required when api.upload = 'url' "
        "(set it here or set api.public_base_url)"
    ]


def test_url_upload_with_public_base_urls(tmp_path: Path) -> None:
    """Prove the API-wide public base URL serves entries without their own override."""
    text = '[api]\nupload = "url"\npublic_base_url = "https://cdn.example/avatars/"\n' + ENTRY
    text += '[[accounts]]\naccount = "bob"\nfolder = "b"\nschedule = "every 1m"\n'
    text += 'public_base_url = "https://other.example/b"\n'
    settings = load_settings(write_config(tmp_path, text), {})
    first, second = settings.accounts
    assert settings.public_base_url_for(first) == "https://cdn.example/avatars"
    assert settings.public_base_url_for(second) == "https://other.example/b"


# ---- entries and paths ----


def test_duplicate_entry_is_refused(tmp_path: Path) -> None:
    """Prove two entries with the same account and (resolved) folder are refused by index."""
    text = ENTRY + f'[[accounts]]\naccount = "alice"\nfolder = "{tmp_path / "imgs"}/"\n'
    text += 'schedule = "every 1h"\n'
    problems = problems_of(write_config(tmp_path, text))
    assert problems == [
        f"accounts[1]: same account 'alice' and folder '{tmp_path / 'imgs'}' as accounts[0]"
    ]


def test_shared_account_or_shared_folder_is_fine(tmp_path: Path) -> None:
    """Prove one account may have several folders and one folder several accounts."""
    text = ENTRY + '[[accounts]]\naccount = "alice"\nfolder = "night"\nschedule = "0 22 * * *"\n'
    text += '[[accounts]]\naccount = "bob"\nfolder = "imgs"\nschedule = "every 1m"\n'
    settings = load_settings(write_config(tmp_path, text), {})
    ids = [entry.entry_id for entry in settings.accounts]
    assert ids == [
        f"alice:{tmp_path / 'imgs'}",
        f"alice:{tmp_path / 'night'}",
        f"bob:{tmp_path / 'imgs'}",
    ]


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prove folder, key_file and state.dir resolve against the config file, not the cwd."""
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = '[api]\nkey_file = "secret/key"\n[state]\ndir = "../var/state"\n'
    text += (
        '[[accounts]]\naccount = "a"\nfolder = "./avatars/../avatars/a"\nschedule = "every 1m"\n'
    )
    settings = load_settings(write_config(config_dir, text), {})
    assert settings.api.key_file == config_dir / "secret" / "key"
    assert settings.state.dir == tmp_path / "var" / "state"
    assert settings.state_dir == tmp_path / "var" / "state"
    assert settings.accounts[0].folder == config_dir / "avatars" / "a"
    assert settings.config_path == config_dir / "rotator.toml"


def test_relative_config_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prove a relative config path still yields absolute paths for everything."""
    write_config(tmp_path, ENTRY)
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("rotator.toml"), {})
    assert settings.config_path == tmp_path / "rotator.toml"
    assert settings.accounts[0].folder == tmp_path / "imgs"


def test_state_dir_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove state_dir: state.dir, else the first $STATE_DIRECTORY path, else beside the config."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where the command runs from must not matter
    plain = write_config(tmp_path, ENTRY)
    assert load_settings(plain, {}).state_dir == tmp_path / "state"
    systemd = {"STATE_DIRECTORY": "/var/lib/rotator:/var/lib/other"}
    assert load_settings(plain, systemd).state_dir == Path("/var/lib/rotator")
    explicit = write_config(tmp_path, '[state]\ndir = "/srv/state"\n' + ENTRY)
    assert load_settings(explicit, systemd).state_dir == Path("/srv/state")


def test_a_config_in_etc_rotator_keeps_its_state_where_the_unit_does() -> None:
    """Prove /etc/rotator/rotator.toml means /var/lib/rotator (the unit's StateDirectory=)."""
    system = Path("/etc/rotator/rotator.toml")
    assert choose_state_dir(None, {}, system) == Path("/var/lib/rotator")
    assert choose_state_dir(None, {"STATE_DIRECTORY": "/run/x"}, system) == Path("/run/x")
    assert choose_state_dir(Path("/srv/s"), {}, system) == Path("/srv/s")
    assert choose_state_dir(None, {}, Path("/etc/other/rotator.toml")) == Path("/etc/other/state")


# ---- the file itself ----


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    """Prove a TOML syntax error is one line naming the file and the line/column."""
    path = write_config(tmp_path, '[api]\ntimeout = "30s"\nupload = = "file"\n')
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: invalid TOML: ")
    assert "(at line 3, column" in line


def test_missing_config_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """Prove a config file that does not exist gives one line with its path."""
    path = tmp_path / "nope.toml"
    assert problems_of(path) == [f"{path}: config file not found"]


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    """Prove a directory given as the config file gives one line naming it."""
    assert problems_of(tmp_path) == [f"{tmp_path}: is a directory, not a config file"]


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    """Prove a binary config file is refused as invalid TOML, not with a traceback."""
    path = tmp_path / "rotator.toml"
    path.write_bytes(b"\xff\xfe\x00junk")
    assert problems_of(path) == [f"{path}: invalid TOML: the file is not UTF-8 text"]


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        ("/etc/rotator/a.toml", {"ROTATOR_CONFIG": "/b.toml"}, Path("/etc/rotator/a.toml")),
        (None, {"ROTATOR_CONFIG": "/b.toml"}, Path("/b.toml")),
        ("", {"ROTATOR_CONFIG": "/b.toml"}, Path("/b.toml")),
        (None, {}, Path("rotator.toml")),
        (None, {"ROTATOR_CONFIG": ""}, Path("rotator.toml")),
    ],
)
def test_resolve_config_path(cli: str | None, environ: dict[str, str], expected: Path) -> None:
    """Prove the config path is --config, else $ROTATOR_CONFIG, else ./rotator.toml."""
    assert resolve_config_path(cli, environ) == expected


# ---- the API key ----


@pytest.fixture
def key_sources(tmp_path: Path) -> dict[str, Path]:
    """Create a key file, a credentials dir and a secrets dir, each with its own key."""
    key_file = tmp_path / "key.txt"
    key_file.write_text("  xq_from_key_file\n", encoding="utf-8")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "xquik-api-key").write_text("xq_from_credentials\n", encoding="utf-8")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "xquik_api_key").write_text("xq_from_secret_file", encoding="utf-8")
    return {"key_file": key_file, "credentials": credentials, "secrets": secrets}


def test_key_discovery_order(tmp_path: Path, key_sources: dict[str, Path]) -> None:
    """Prove the order env > key_file > credentials > secret file > api.key, one step at a time."""
    text = f'[api]\nkey_file = "{key_sources["key_file"]}"\nkey = "xq_from_toml"\n' + ENTRY
    settings = load_settings(write_config(tmp_path, text), {})
    environ = {
        "XQUIK_API_KEY": " xq_from_env ",
        "CREDENTIALS_DIRECTORY": str(key_sources["credentials"]),
    }
    secrets = key_sources["secrets"]

    def found() -> tuple[str, str] | None:
        key = find_api_key(settings, environ, secrets_dir=secrets)
        return None if key is None else (key.reveal(), key.source)

    assert found() == ("xq_from_env", "XQUIK_API_KEY")
    del environ["XQUIK_API_KEY"]
    assert found() == ("xq_from_key_file", "api.key_file")
    key_sources["key_file"].write_text("\n", encoding="utf-8")  # empty counts as not found
    assert found() == ("xq_from_credentials", "credentials")
    del environ["CREDENTIALS_DIRECTORY"]
    assert found() == ("xq_from_secret_file", "secret file")
    (secrets / "xquik_api_key").unlink()
    assert found() == ("xq_from_toml", "api.key")


def test_no_key_anywhere_is_none(tmp_path: Path) -> None:
    """Prove find_api_key returns None when no source holds a non-empty key."""
    settings = load_settings(write_config(tmp_path, ENTRY), {})
    environ = {"XQUIK_API_KEY": "   ", "CREDENTIALS_DIRECTORY": str(tmp_path / "missing")}
    assert find_api_key(settings, environ, secrets_dir=no_key_files(tmp_path)) is None


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_key_file_names_the_path(tmp_path: Path, kind: str) -> None:
    """Prove an unreadable api.key_file raises ConfigError naming the path only."""
    key_file = tmp_path / "key"
    if kind == "directory":
        key_file.mkdir()
    text = f'[api]\nkey_file = "{key_file}"\nkey = "{KEY}"\n' + ENTRY
    settings = load_settings(write_config(tmp_path, text), {})
    with pytest.raises(ConfigError) as info:
        find_api_key(settings, {}, secrets_dir=no_key_files(tmp_path))
    (line,) = info.value.problems
    assert line.startswith(f"api.key_file: cannot read {key_file}")
    assert KEY not in line


def test_unreadable_secret_file_is_an_error(tmp_path: Path) -> None:
    """Prove a secret file that exists but cannot be read is an error, not silently skipped."""
    secrets = tmp_path / "secrets"
    (secrets / "xquik_api_key").mkdir(parents=True)
    settings = load_settings(write_config(tmp_path, ENTRY), {})
    with pytest.raises(ConfigError, match="secret file: cannot read"):
        find_api_key(settings, {}, secrets_dir=secrets)


def test_key_in_group_readable_config_warns(tmp_path: Path) -> None:
    """Prove api.key in a file others can read comes with a warning to move and chmod it."""
    path = write_config(tmp_path, f'[api]\nkey = "{KEY}"\n' + ENTRY, mode=0o640)
    key = find_api_key(load_settings(path, {}), {}, secrets_dir=no_key_files(tmp_path))
    assert key is not None
    assert key.source == "api.key"
    assert key.reveal() == KEY
    assert key.warning is not None
    for advice in ("api.key_file", "XQUIK_API_KEY", "chmod 600", str(path)):
        assert advice in key.warning
    assert KEY not in key.warning


def test_key_in_private_config_does_not_warn(tmp_path: Path) -> None:
    """Prove api.key in a chmod-600 file is used without a warning."""
    path = write_config(tmp_path, f'[api]\nkey = "{KEY}"\n' + ENTRY, mode=0o600)
    key = find_api_key(load_settings(path, {}), {}, secrets_dir=no_key_files(tmp_path))
    assert key is not None
    assert key.warning is None


def test_key_from_rotator_env_does_not_warn(tmp_path: Path) -> None:
    """Prove api.key set by ROTATOR_API__KEY is labelled so and not blamed on the file."""
    path = write_config(tmp_path, ENTRY, mode=0o644)
    settings = load_settings(path, {"ROTATOR_API__KEY": KEY})
    key = find_api_key(settings, {}, secrets_dir=no_key_files(tmp_path))
    assert key is not None
    assert (key.reveal(), key.source, key.warning) == (KEY, "ROTATOR_API__KEY", None)


def test_key_never_shows_in_reprs(tmp_path: Path) -> None:
    """Prove the key is absent from the repr/str of settings, sections and ApiKey."""
    path = write_config(tmp_path, f'[api]\nkey = "{KEY}"\n' + ENTRY, mode=0o644)
    settings = load_settings(path, {})
    key = find_api_key(settings, {}, secrets_dir=no_key_files(tmp_path))
    assert isinstance(key, ApiKey)
    shown = [repr(settings), str(settings), repr(settings.api), str(settings.api)]
    shown += [repr(key), str(key), repr(key.value), str(key.value), f"{key.value}"]
    for text in shown:
        assert KEY not in text
    assert settings.api.key is not None


@pytest.mark.parametrize(
    "toml",
    [
        f'[api]\nkey = "{KEY}"\ntimeout = "soon"\n',
        f'[api]\nkey = "{KEY}"\n[log]\nlevel = "{KEY}"\n',
        f'[api]\nkey = "{KEY}"\npublic_base_url = "{KEY}"\n',
        f'[api]\nkey = "{KEY}"\n[[accounts]]\naccount = "{KEY} x"\nfolder = "f"\n',
        "[api]\nkey = 12345678901234\n",
        f'[api]\nkey = ["{KEY}"]\n',
    ],
)
def test_key_never_shows_in_errors(tmp_path: Path, toml: str) -> None:
    """Prove no error line quotes the key, even when it was pasted into another field."""
    problems = problems_of(write_config(tmp_path, toml + ENTRY))
    assert problems
    text = "\n".join(problems)
    assert KEY not in text
    assert "12345678901234" not in text


def test_key_type_error_says_what_without_the_value(tmp_path: Path) -> None:
    """Prove a non-string api.key gets a short message and no value."""
    problems = problems_of(write_config(tmp_path, "[api]\nkey = 12345678901234\n" + ENTRY))
    assert problems == ["api.key: must be a string"]


def test_key_from_env_never_shows_in_errors(tmp_path: Path) -> None:
    """Prove a key set by environment never appears in an error line either."""
    environ = {"ROTATOR_API__KEY": KEY, "ROTATOR_LOG__LEVEL": KEY, "XQUIK_API_KEY": KEY}
    problems = problems_of(write_config(tmp_path, ENTRY), environ)
    assert problems
    assert KEY not in "\n".join(problems)


def test_default_environ_is_the_process_environment(tmp_path: Path) -> None:
    """Prove load_settings reads os.environ when no mapping is given (here: nothing of ours)."""
    ours = [name for name in os.environ if name.upper().startswith("ROTATOR_")]
    if ours:
        pytest.skip("the process environment sets ROTATOR_* variables")
    settings = load_settings(write_config(tmp_path, ENTRY))
    assert settings.accounts[0].account == "alice"
