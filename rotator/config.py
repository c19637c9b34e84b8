"""Load the settings: a TOML file, overridden by ``ROTATOR_<SECTION>__<KEY>`` variables.

This is the only module that imports pydantic and pydantic-settings. Every problem
becomes one line of a ``ConfigError`` (``<dotted path>: <what is wrong>``), built here
from pydantic's error locations; pydantic's own dump is never shown because it can
echo input values, the API key among them.

Environment rules:

- ``ROTATOR_<SECTION>__<KEY>`` sets one key (``ROTATOR_RETRY__ATTEMPTS=3``), matched
  without regard to case; ``ROTATOR_<SECTION>`` may hold a whole section as a JSON object
  and ``ROTATOR_ACCOUNTS`` the whole accounts list as a JSON array. Both beat the file.
- An unknown key inside a known section (``ROTATOR_API__BASE_ULR``) is an error naming
  the variable. Variables that name no section (``ROTATOR_CONFIG``, ``ROTATOR_FOO``) are
  not ours to judge and are ignored. ``ROTATOR_ACCOUNTS__...`` is rejected: entries are
  set as a whole, through ``ROTATOR_ACCOUNTS``.
- Relative paths resolve against the config file's directory, wherever they came from.

Why one module at this size: its one job is to turn a file and the environment into
checked settings. The models of every section and the loader belong together: pydantic's
validators read the load context (the file's directory, the environment) the loader
sets, and keeping both here keeps pydantic in one module. Error wording is
``rotator.config_errors``; everything about the key is ``rotator.keys``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from rotator.config_errors import closest, format_errors
from rotator.cron import Schedule, parse_schedule
from rotator.durations import format_duration, parse_duration
from rotator.errors import ConfigError
from rotator.keys import mask_keys, readable_key_warning
from rotator.names import escape_name

ENV_PREFIX = "ROTATOR_"
CONFIG_ENV = "ROTATOR_CONFIG"
DEFAULT_CONFIG = Path("rotator.toml")
MAX_CONFIG_BYTES = 1024 * 1024
MAX_NESTING = 16  # tables and lists inside one another; the config itself needs 3
MAX_NAME_BYTES = 255  # one path component (NAME_MAX)
MAX_PATH_BYTES = 4096  # a whole path (PATH_MAX)
ENDPOINT_MAX_BYTES = 700 * 1024  # what the avatar endpoint accepts
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_X_USERNAME = re.compile(r"@?[A-Za-z0-9_]{1,15}")
_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0


# ---- value parsers (each raises ValueError with a user-facing message) ----


def _no_bool(value: object) -> object:
    # TOML `true` would otherwise pass as the integer 1.
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    return value


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _above_zero(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be above zero")
    return seconds


def _at_most(limit: float) -> Callable[[float], float]:
    """Return a validator rejecting durations over ``limit`` seconds, naming the bound."""

    def check(seconds: float) -> float:
        if seconds > limit:
            raise ValueError(f"must be at most {format_duration(limit)}")
        return seconds

    return check


def _valid_host(host: str) -> bool:
    """Tell whether ``host`` is an IP address or a DNS name that could resolve."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url(value: object, *, allow_loopback_http: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    url = value.strip().rstrip("/")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise ValueError(f"{value!r} is not a valid URL (it contains a space or control character)")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{value!r} is not a valid URL") from None
    if not host or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not a valid URL (a host, and no query or fragment)")
    if not _valid_host(host):
        raise ValueError(f"{value!r} is not a valid URL ({host!r} is not a host name)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{parts.scheme}://…@{host}: a URL must not carry a user or password")
    if parts.scheme == "https" or (
        allow_loopback_http and parts.scheme == "http" and _is_loopback(host)
    ):
        return url
    if allow_loopback_http:
        raise ValueError(f"{value!r} must use https (http only for a loopback host)")
    raise ValueError(f"{value!r} must be an https:// URL")


def _base_url(value: object) -> str:
    url = _url(value, allow_loopback_http=True)
    if url is None:
        raise ValueError("must not be empty")
    return url


def _public_url(value: object) -> str | None:
    return _url(value, allow_loopback_http=False)


def _path(value: object) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str | Path):
        raise ValueError("must be a path (a string)")
    text = str(value)
    if "\x00" in text:
        raise ValueError("must not contain a NUL character")
    encoded = os.fsencode(text)
    if len(encoded) > MAX_PATH_BYTES:
        raise ValueError(f"is longer than {MAX_PATH_BYTES} bytes")
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise ValueError(f"has a name longer than {MAX_NAME_BYTES} bytes")
    if text.startswith("~"):
        try:
            text = str(Path(text).expanduser())
        except RuntimeError:  # "~nosuchuser"
            raise ValueError(f"{text!r}: the home folder of that user is unknown") from None
    if not os.path.isabs(text):
        # Joined as text: one Path per entry, not three (10,000 entries load in a blink).
        text = os.path.join(_load_context().base_dir, text)
    # normpath, not resolve(): an entry's id must not change when a symlink is repointed.
    return Path(os.path.normpath(text))


def _required_path(value: object) -> Path:
    path = _path(value)
    if path is None:
        raise ValueError("must not be empty")
    return path


def _secret(value: object) -> SecretStr | None:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return SecretStr(value.strip())


def _listen(value: object) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string such as '127.0.0.1:9464'")
    host, sep, port = value.strip().rpartition(":")
    if (
        not sep
        or not port.isascii()
        or not port.isdigit()
        or not 0 < int(port) < 65536
        or not _listen_host(host)
    ):
        raise ValueError(f"{value!r} is not host:port (e.g. '127.0.0.1:9464' or '[::1]:9464')")
    return value.strip()


def _listen_host(host: str) -> bool:
    """Tell whether ``host`` can be bound: an IP (IPv6 in brackets) or a host name."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return isinstance(ipaddress.ip_address(host[1:-1]), ipaddress.IPv6Address)
        except ValueError:
            return False
    return ":" not in host and bool(host) and _valid_host(host)


def _account(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value:
        raise ValueError("must not be empty")
    if any(char.isspace() for char in value):
        raise ValueError(f"{value!r} must not contain whitespace")
    if not _X_USERNAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not an X username (1 to 15 letters, digits or _, maybe after @)"
        )
    return value


def _not_empty(entries: tuple[AccountEntry, ...]) -> tuple[AccountEntry, ...]:
    if not entries:
        raise ValueError("at least one [[accounts]] entry is required")
    return entries


def _schedule(value: object) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string: a 5-field cron expression or 'every <duration>'")
    return parse_schedule(value)


def _zone(value: object) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string naming an IANA time zone")
    try:
        return ZoneInfo(value.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not a known IANA time zone") from None


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_above_zero)]
Integer = Annotated[int, BeforeValidator(_no_bool)]


def _duration(limit: float, *, positive: bool = True) -> Any:
    """Return a duration type (above zero unless told) of at most ``limit`` seconds."""
    checks = [AfterValidator(_above_zero)] if positive else []
    return Annotated[
        float, BeforeValidator(parse_duration), *checks, AfterValidator(_at_most(limit))
    ]


Zone = Annotated[ZoneInfo, BeforeValidator(_zone)]


# ---- sections ----


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class ApiSection(_Section):
    """Where and how to reach Xquik."""

    base_url: Annotated[str, BeforeValidator(_base_url)] = "https://xquik.com/api/v1"
    key_file: Annotated[Path | None, BeforeValidator(_path)] = None
    key: Annotated[SecretStr | None, BeforeValidator(_secret)] = None
    timeout: _duration(10 * _MINUTE) = 30.0  # type: ignore[valid-type]
    upload: Annotated[Literal["file", "url"], BeforeValidator(_lower)] = "file"
    public_base_url: Annotated[str | None, BeforeValidator(_public_url)] = None
    credits_per_call: Integer = Field(default=10, ge=0, le=1_000_000)


class RateLimitSection(_Section):
    """At most ``writes`` writes in any ``window``, ``concurrency`` at once."""

    writes: Integer = Field(default=30, ge=1, le=100_000)
    window: _duration(_DAY) = 60.0  # type: ignore[valid-type]
    concurrency: Integer = Field(default=4, ge=1, le=64)


class RetrySection(_Section):
    """Backoff for retryable failures of one write."""

    initial: _duration(_DAY) = 5.0  # type: ignore[valid-type]
    max: _duration(_DAY) = 300.0  # type: ignore[valid-type]
    attempts: Integer = Field(default=4, ge=1, le=100)


class PauseSection(_Section):
    """How long to pause after billing, account and key problems."""

    credits: _duration(30 * _DAY) = 900.0  # type: ignore[valid-type]
    account: _duration(30 * _DAY) = 3600.0  # type: ignore[valid-type]
    auth: _duration(30 * _DAY) = 900.0  # type: ignore[valid-type]
    max: _duration(30 * _DAY) = 43200.0  # type: ignore[valid-type]


class WatchSection(_Section):
    """How image folders are watched."""

    mode: Annotated[Literal["auto", "native", "polling"], BeforeValidator(_lower)] = "auto"
    settle: _duration(_HOUR, positive=False) = 2.0  # type: ignore[valid-type]
    poll_interval: _duration(_HOUR) = 10.0  # type: ignore[valid-type]
    rescan: _duration(7 * _DAY) = 600.0  # type: ignore[valid-type]


class ImagesSection(_Section):
    """How images are checked and fitted before upload."""

    fit: Annotated[Literal["auto", "always", "off"], BeforeValidator(_lower)] = "auto"
    size: Integer = Field(default=400, ge=16, le=4096)
    crop: Annotated[Literal["center", "none"], BeforeValidator(_lower)] = "center"
    max_bytes: Integer = Field(default=ENDPOINT_MAX_BYTES, ge=1024, le=ENDPOINT_MAX_BYTES)
    max_source_bytes: Integer = Field(default=52428800, ge=1, le=1024**3)
    max_pixels: Integer = Field(default=40000000, ge=1, le=1_000_000_000)
    min_size: Integer = Field(default=100, ge=1, le=4096)
    max_decoded_bytes: Integer = Field(default=128 * 1024**2, ge=1024**2, le=4 * 1024**3)


class StateSection(_Section):
    """Where the state database lives (None: see ``Settings.state_dir``)."""

    dir: Annotated[Path | None, BeforeValidator(_path)] = None


class LogSection(_Section):
    """Log level and format."""

    level: Annotated[Literal["debug", "info", "warning", "error"], BeforeValidator(_lower)] = "info"
    format: Annotated[Literal["json", "console"], BeforeValidator(_lower)] = "json"


class MetricsSection(_Section):
    """The Prometheus endpoint; ``listen`` None means off."""

    listen: Annotated[str | None, BeforeValidator(_listen)] = None

    @property
    def address(self) -> tuple[str, int] | None:
        """Return ``(host, port)`` to bind, or None when metrics are off."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _command(value: object) -> tuple[str, ...] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} cannot be split into words ({exc})") from None
    elif isinstance(value, list | tuple) and all(isinstance(word, str) for word in value):
        words = list(value)
    else:
        raise ValueError("must be a command line (a string) or a list of strings")
    if not words or not words[0].strip():
        raise ValueError("must name a program")
    return tuple(words)


def _webhook(value: object) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    # Unlike api.base_url a query is allowed (tokens of chat webhooks live there); it is
    # never logged, so it is never echoed in an error either.
    parts = urlsplit(value.strip())
    host = parts.hostname or ""
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("is not a valid URL (the port is not a number)") from None
    if parts.scheme not in ("http", "https") or not host or parts.fragment:
        raise ValueError("is not a valid http(s) URL (a scheme, a host and no fragment)")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ValueError(f"must use https (http only for a loopback host, not {host!r})")
    return value.strip()


_EVENT_NAME = re.compile(r"[a-z_]+(\.[a-z_]+)+")
DEFAULT_NOTIFY_EVENTS = (
    "pause.started",
    "pause.ended",
    "rotation.skipped",
    "avatar.uncertain",
    "daemon.reload_failed",
    "daemon.crashed",
)


def _events(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of event names such as 'pause.started'")
    names = tuple(dict.fromkeys(item.strip() for item in value))
    for name in names:
        if name != "*" and not _EVENT_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an event name (such as 'pause.started', or '*')")
    return names


@pydantic_dataclass(
    frozen=True,
    slots=True,
    config=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
)
class AccountEntry:
    """One ``[[accounts]]`` entry: an account, a folder of images and a schedule.

    A slotted pydantic dataclass, not a model: validated the same, but an agency's
    10,000 entries hold one object each instead of four (a model's ``__dict__``, its
    fields-set and extras): about 4 MiB less.
    """

    # The keys of an [[accounts]] table, as a model would name them (set below).
    model_fields: ClassVar[dict[str, object]]

    account: Annotated[str, BeforeValidator(_account)]
    folder: Annotated[Path, BeforeValidator(_required_path)]
    schedule: Annotated[Schedule, BeforeValidator(_schedule)]
    timezone: Zone = ZoneInfo("UTC")
    order: Annotated[Literal["sequential", "shuffle", "random"], BeforeValidator(_lower)] = (
        "sequential"
    )
    jitter: _duration(_DAY, positive=False) = 0.0  # type: ignore[valid-type]
    public_base_url: Annotated[str | None, BeforeValidator(_public_url)] = None

    @property
    def entry_id(self) -> str:
        """Return the stable id of this entry: ``account:absolute folder`` (escaped)."""
        return f"{self.account}:{escape_name(str(self.folder))}"


AccountEntry.model_fields = {field.name: field for field in dataclasses.fields(AccountEntry)}


class NotifySection(_Section):
    """Where chosen events are sent: a command, a webhook, or both (neither: off)."""

    command: Annotated[tuple[str, ...] | None, BeforeValidator(_command)] = None
    webhook: Annotated[str | None, BeforeValidator(_webhook)] = None
    events: Annotated[tuple[str, ...], BeforeValidator(_events)] = DEFAULT_NOTIFY_EVENTS
    timeout: PositiveDuration = 10.0
    attempts: Integer = Field(default=3, ge=1, le=10)
    queue: Integer = Field(default=100, ge=1)


# ---- the settings ----


@dataclasses.dataclass(frozen=True)
class _LoadContext:
    base_dir: Path
    config_path: Path
    environ: Mapping[str, str]
    key_warning: str | None = None  # set when api.key sits in a file others can read
    key_source: str = "api.key"
    env_warnings: tuple[str, ...] = ()  # ROTATOR_* variables that set nothing


# BaseSettings validates through its own __init__, which drops a validation context,
# so load_settings hands the config file's whereabouts to the validators this way.
_LOADING: ContextVar[_LoadContext | None] = ContextVar("rotator_config_loading", default=None)


def _load_context() -> _LoadContext:
    context = _LOADING.get()
    if context is not None:
        return context
    # Settings built directly (not through load_settings) resolve against the cwd.
    return _LoadContext(Path.cwd(), Path.cwd() / DEFAULT_CONFIG, os.environ)


class Settings(BaseSettings):
    """Every setting of the rotator; build it with ``load_settings``.

    ``Settings(**values)`` also works (init values over ``os.environ``, paths against the
    cwd), but ``Settings.model_validate`` must not be used: BaseSettings routes it through
    ``__init__``, which reads ``os.environ``.
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        arbitrary_types_allowed=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    api: ApiSection = ApiSection()
    rate_limit: RateLimitSection = RateLimitSection()
    retry: RetrySection = RetrySection()
    pause: PauseSection = PauseSection()
    watch: WatchSection = WatchSection()
    images: ImagesSection = ImagesSection()
    state: StateSection = StateSection()
    log: LogSection = LogSection()
    metrics: MetricsSection = MetricsSection()
    notify: NotifySection = NotifySection()
    accounts: Annotated[tuple[AccountEntry, ...], AfterValidator(_not_empty)] = ()

    _config_path: Path = PrivateAttr()
    _state_dir: Path = PrivateAttr()
    _key_warning: str | None = PrivateAttr(default=None)
    _env_warnings: tuple[str, ...] = PrivateAttr(default=())
    _key_source: str = PrivateAttr(default="api.key")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],  # noqa: ARG003 (pydantic-settings' hook signature)
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (no .env files: by design)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (keys: find_api_key)
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Use init arguments over the environment; the TOML file is merged by load_settings."""
        return (init_settings, env_settings)

    @model_validator(mode="after")
    def _check_across_sections(self) -> Self:
        context = _load_context()
        problems = [*_cross_problems(self)]
        if problems:
            raise ValueError("\n".join(problems))
        self._config_path = context.config_path
        self._state_dir = choose_state_dir(self.state.dir, context.environ, context.config_path)
        self._key_warning = context.key_warning
        self._env_warnings = context.env_warnings
        self._key_source = context.key_source
        return self

    @property
    def config_path(self) -> Path:
        """Return the absolute path of the config file these settings came from."""
        return self._config_path

    @property
    def state_dir(self) -> Path:
        """Return the state directory (see ``choose_state_dir``)."""
        return self._state_dir

    @property
    def key_source(self) -> str:
        """Return where api.key was set: ``api.key`` (the file) or ``ROTATOR_API__KEY``."""
        return self._key_source

    @property
    def env_warnings(self) -> tuple[str, ...]:
        """Return one line per ``ROTATOR_*`` variable that names no setting (a typo?)."""
        return self._env_warnings

    @property
    def key_warning(self) -> str | None:
        """Return a warning when api.key sits in a config file other users can read."""
        return self._key_warning

    def public_base_url_for(self, entry: AccountEntry) -> str | None:
        """Return the HTTPS prefix an entry's images are served under (url upload)."""
        return entry.public_base_url or self.api.public_base_url


def _cross_problems(settings: Settings) -> list[str]:
    """Return the problems no single key shows, one ``path: what`` line each."""
    problems = []
    if settings.retry.max < settings.retry.initial:
        problems.append(
            f"retry.max: must not be less than retry.initial "
            f"({format_duration(settings.retry.initial)})"
        )
    pause = settings.pause
    for name in ("credits", "account", "auth"):
        seconds = getattr(pause, name)
        if pause.max < seconds:
            problems.append(
                f"pause.max: must not be less than pause.{name} ({format_duration(seconds)})"
            )
    seen: dict[tuple[str, Path], int] = {}
    for index, entry in enumerate(settings.accounts):
        # X usernames ignore case, and "@alice" is alice.
        same = (entry.account.removeprefix("@").casefold(), entry.folder)
        if same in seen:
            problems.append(
                f"accounts[{index}]: same account {entry.account!r} and folder "
                f"'{entry.folder}' as accounts[{seen[same]}]"
            )
        seen.setdefault(same, index)
        if settings.api.upload == "url" and settings.public_base_url_for(entry) is None:
            problems.append(
                f"accounts[{index}].public_base_url: required when api.upload = 'url' "
                "(set it here or set api.public_base_url)"
            )
    return problems


SYSTEM_CONFIG_DIR = Path("/etc/rotator")  # the unit's ConfigurationDirectory=rotator
SYSTEM_STATE_DIR = Path("/var/lib/rotator")  # the unit's StateDirectory=rotator


def choose_state_dir(configured: Path | None, environ: Mapping[str, str], config: Path) -> Path:
    """Return where the state lives; the daemon and every command use this one rule.

    First match: ``state.dir``; ``$STATE_DIRECTORY`` (set by systemd for the service);
    ``/var/lib/rotator`` for a config in ``/etc/rotator`` (the unit's directories, so
    ``sudo rotator status`` finds the service's state without the variable); else
    ``state`` beside the config file, wherever the command is run from.
    """
    if configured is not None:
        return configured
    # systemd sets STATE_DIRECTORY, colon-separated when StateDirectory= names several.
    first = environ.get("STATE_DIRECTORY", "").split(":")[0].strip()
    if first:
        return Path(os.path.normpath(Path.cwd() / first))
    if config.parent == SYSTEM_CONFIG_DIR:
        return SYSTEM_STATE_DIR
    return config.parent / "state"


class _DataSource(PydanticBaseSettingsSource):
    """Hand already-read data (the TOML file, the parsed environment) to pydantic-settings."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(
        self,
        field: FieldInfo,  # noqa: ARG002 (the abstract method's signature)
        field_name: str,
    ) -> tuple[Any, str, bool]:
        """Return the value given for one field."""
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        # Everything, unknown top-level keys included, so that extra="forbid" names them.
        return dict(self._data)


class _MappingEnvSource(EnvSettingsSource):
    """Read ``ROTATOR_*`` variables from a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # _load_env_vars runs inside super().__init__
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


# ---- loading ----


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str]) -> Path:
    """Return the config path: ``--config``, else ``$ROTATOR_CONFIG``, else ./rotator.toml."""
    for candidate in (cli_value, environ.get(CONFIG_ENV)):
        if candidate and candidate.strip():
            return Path(candidate.strip()).expanduser()
    return DEFAULT_CONFIG


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and check the settings from a TOML file and the environment.

    Raise ``ConfigError`` with one ``<dotted path>: <problem>`` line per problem.
    """
    environ = os.environ if environ is None else environ
    data = _read_toml(path)
    ours, problems, env_warnings = _split_environ(environ)
    if problems:
        raise ConfigError(problems)
    try:
        from_env = _MappingEnvSource(Settings, ours)()
    except SettingsError:
        raise ConfigError(
            "environment: a ROTATOR_* variable holds JSON that cannot be read"
        ) from None
    context = _LoadContext(
        base_dir=path.absolute().parent,
        config_path=path.absolute(),
        environ=environ,
        key_warning=readable_key_warning(path, data, from_env),
        key_source="ROTATOR_API__KEY" if "key" in from_env.get("api", {}) else "api.key",
        env_warnings=tuple(env_warnings),
    )
    # The environment comes first: pydantic-settings lets earlier sources win.
    sources = (_DataSource(Settings, from_env), _DataSource(Settings, data))
    token = _LOADING.set(context)
    try:
        return Settings(_build_sources=(sources, {}))
    except ValidationError as exc:
        errors = [_as_model_error(error) for error in exc.errors(include_url=False)]
        lines = format_errors(errors, ours, env_prefix=ENV_PREFIX, known_keys=_known_keys)
        # from None: the chained ValidationError would carry input values, the key among them.
        raise ConfigError(mask_keys(lines, [data, from_env], environ, context.base_dir)) from None
    finally:
        _LOADING.reset(token)


# An [[accounts]] entry is a dataclass: its errors named as a model's would be.
_DATACLASS_ERRORS = {
    "unexpected_keyword_argument": "extra_forbidden",
    "dataclass_type": "model_type",
    "dataclass_args_type": "model_type",
}


def _as_model_error(error: ErrorDetails) -> ErrorDetails:
    """Return a validation error with a dataclass's error type put as a model's."""
    kind = _DATACLASS_ERRORS.get(error["type"])
    return error if kind is None else {**error, "type": kind}


def _known_keys(table: tuple[int | str, ...]) -> list[str]:
    """Return the keys allowed in the table at a location (``()``, ``("api",)``, ...)."""
    if not table:
        return list(Settings.model_fields)
    field = Settings.model_fields.get(str(table[0]))
    if table[0] == "accounts":
        return list(AccountEntry.model_fields)
    model = field.annotation if field is not None else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = _read_config_bytes(path).decode("utf-8").removeprefix("\ufeff")
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a config file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    if _depth(data) > MAX_NESTING:
        raise ConfigError(f"{path}: nested more than {MAX_NESTING} levels deep")
    return data


def _read_config_bytes(path: Path) -> bytes:
    """Read the config file; reject a FIFO, a device or a huge file (they would hang us)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{path}: is not a regular file (a pipe or a device?)")
        data = os.pread(fd, MAX_CONFIG_BYTES + 1, 0)
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KB; not a config file")
    return data


def _depth(value: object, level: int = 0) -> int:
    """Return how deeply tables and lists nest in ``value`` (stops counting past the limit)."""
    if level > MAX_NESTING:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level + 1)
    return level


def _split_environ(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
    """Return the variables that are ours, problems with unusable ones, and warnings.

    A ``ROTATOR_*`` variable that names no section sets nothing: most likely a typo
    (``ROTATOR_RATELIMIT__WRITES``), so it is a warning, with the closest real name.
    """
    ours: dict[str, str] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        section, _, key = upper[len(ENV_PREFIX) :].lower().partition("__")
        field = Settings.model_fields.get(section)
        if field is None:
            warning = f"{name} sets nothing and is ignored (no section {section!r})"
            guess = closest(section, Settings.model_fields)
            if guess is not None:
                warning += f"; did you mean {ENV_PREFIX}{guess.upper()}"
                warning += f"__{key.upper()}?" if key else "?"
            warnings.append(warning)
            continue
        if section == "accounts" and key:
            problems.append(
                f"{name}: entries cannot be set one key at a time; set ROTATOR_ACCOUNTS"
            )
            continue
        if not key:
            kind = "an array" if section == "accounts" else "an object"
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(f"{name}: must be {kind} in JSON ({exc.msg})")
                continue
            except RecursionError:
                problems.append(f"{name}: nested too deeply")
                continue
            if not isinstance(parsed, list if section == "accounts" else dict):
                problems.append(f"{name}: must be {kind} in JSON")
                continue
            if _depth(parsed) > MAX_NESTING:
                problems.append(f"{name}: nested more than {MAX_NESTING} levels deep")
                continue
        ours[name] = value
    return ours, problems, warnings
