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
  not ours to judge and are ignored. ``ROTATOR_ACCOUNTS__...`` is refused: entries are
  set as a whole, through ``ROTATOR_ACCOUNTS``.
- Relative paths resolve against the config file's directory, wherever they came from.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self
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
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from rotator.durations import format_duration, parse_duration
from rotator.errors import ConfigError
from rotator.scheduling import Schedule, parse_schedule

ENV_PREFIX = "ROTATOR_"
CONFIG_ENV = "ROTATOR_CONFIG"
DEFAULT_CONFIG = Path("rotator.toml")
KEY_ENV = "XQUIK_API_KEY"
CREDENTIAL_NAME = "xquik-api-key"
SECRET_FILE_NAME = "xquik_api_key"  # noqa: S105 (a file name, not a password)
_DEFAULT_SECRETS_DIR = Path("/run/secrets")


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
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"{value!r} is not a valid URL") from None
    if not host or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not a valid URL (a host, and no query or fragment)")
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
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = _load_context().base_dir / path
    # normpath, not resolve(): an entry's id must not change when a symlink is repointed.
    return Path(os.path.normpath(path))


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
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. '127.0.0.1:9464')")
    return value.strip()


def _account(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value:
        raise ValueError("must not be empty")
    if any(char.isspace() for char in value):
        raise ValueError(f"{value!r} must not contain whitespace")
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
Zone = Annotated[ZoneInfo, BeforeValidator(_zone)]


# ---- sections ----


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class ApiSection(_Section):
    """Where and how to reach Xquik."""

    base_url: Annotated[str, BeforeValidator(_base_url)] = "https://xquik.com/api/v1"
    key_file: Annotated[Path | None, BeforeValidator(_path)] = None
    key: Annotated[SecretStr | None, BeforeValidator(_secret)] = None
    timeout: PositiveDuration = 30.0
    upload: Annotated[Literal["file", "url"], BeforeValidator(_lower)] = "file"
    public_base_url: Annotated[str | None, BeforeValidator(_public_url)] = None
    credits_per_call: Integer = Field(default=10, ge=0)


class RateLimitSection(_Section):
    """At most ``writes`` writes in any ``window``, ``concurrency`` at once."""

    writes: Integer = Field(default=30, ge=1)
    window: PositiveDuration = 60.0
    concurrency: Integer = Field(default=4, ge=1)


class RetrySection(_Section):
    """Backoff for retryable failures of one write."""

    initial: PositiveDuration = 5.0
    max: PositiveDuration = 300.0
    attempts: Integer = Field(default=4, ge=1)


class PauseSection(_Section):
    """How long to pause after billing, account and key problems."""

    credits: PositiveDuration = 900.0
    account: PositiveDuration = 3600.0
    auth: PositiveDuration = 900.0
    max: PositiveDuration = 43200.0


class WatchSection(_Section):
    """How image folders are watched."""

    mode: Annotated[Literal["auto", "native", "polling"], BeforeValidator(_lower)] = "auto"
    settle: Duration = 2.0
    poll_interval: PositiveDuration = 10.0
    rescan: PositiveDuration = 600.0


class ImagesSection(_Section):
    """How images are checked and fitted before upload."""

    fit: Annotated[Literal["auto", "always", "off"], BeforeValidator(_lower)] = "auto"
    size: Integer = Field(default=400, ge=16)
    crop: Annotated[Literal["center", "none"], BeforeValidator(_lower)] = "center"
    max_bytes: Integer = Field(default=716800, ge=1)
    max_source_bytes: Integer = Field(default=52428800, ge=1)
    max_pixels: Integer = Field(default=40000000, ge=1)


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


class AccountEntry(_Section):
    """One ``[[accounts]]`` entry: an account, a folder of images and a schedule."""

    account: Annotated[str, BeforeValidator(_account)]
    folder: Annotated[Path, BeforeValidator(_required_path)]
    schedule: Annotated[Schedule, BeforeValidator(_schedule)]
    timezone: Zone = ZoneInfo("UTC")
    order: Annotated[Literal["sequential", "shuffle", "random"], BeforeValidator(_lower)] = (
        "sequential"
    )
    jitter: Duration = 0.0
    public_base_url: Annotated[str | None, BeforeValidator(_public_url)] = None

    @property
    def entry_id(self) -> str:
        """Return the stable id of this entry: ``account:absolute folder``."""
        return f"{self.account}:{self.folder}"


# ---- the settings ----


@dataclasses.dataclass(frozen=True)
class _LoadContext:
    base_dir: Path
    config_path: Path
    environ: Mapping[str, str]
    key_warning: str | None = None  # set when api.key sits in a file others can read
    key_source: str = "api.key"


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
    accounts: Annotated[tuple[AccountEntry, ...], AfterValidator(_not_empty)] = ()

    _config_path: Path = PrivateAttr()
    _state_dir: Path = PrivateAttr()
    _key_warning: str | None = PrivateAttr(default=None)
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
        self._state_dir = _choose_state_dir(self.state.dir, context.environ)
        self._key_warning = context.key_warning
        self._key_source = context.key_source
        return self

    @property
    def config_path(self) -> Path:
        """Return the absolute path of the config file these settings came from."""
        return self._config_path

    @property
    def state_dir(self) -> Path:
        """Return the state directory: state.dir, else $STATE_DIRECTORY, else ./state."""
        return self._state_dir

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
    seen: dict[str, int] = {}
    for index, entry in enumerate(settings.accounts):
        if entry.entry_id in seen:
            problems.append(
                f"accounts[{index}]: same account {entry.account!r} and folder "
                f"'{entry.folder}' as accounts[{seen[entry.entry_id]}]"
            )
        seen.setdefault(entry.entry_id, index)
        if settings.api.upload == "url" and settings.public_base_url_for(entry) is None:
            problems.append(
                f"accounts[{index}].public_base_url: required when api.upload = 'url' "
                "(set it here or set api.public_base_url)"
            )
    return problems


def _choose_state_dir(configured: Path | None, environ: Mapping[str, str]) -> Path:
    if configured is not None:
        return configured
    # systemd sets STATE_DIRECTORY, colon-separated when StateDirectory= names several.
    first = environ.get("STATE_DIRECTORY", "").split(":")[0].strip()
    if first:
        return Path(os.path.normpath(Path.cwd() / first))
    return Path.cwd() / "state"


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
    ours, problems = _split_environ(environ)
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
        key_warning=_key_warning(path, data, from_env),
        key_source="ROTATOR_API__KEY" if "key" in from_env.get("api", {}) else "api.key",
    )
    # The environment comes first: pydantic-settings lets earlier sources win.
    sources = (_DataSource(Settings, from_env), _DataSource(Settings, data))
    token = _LOADING.set(context)
    try:
        return Settings(_build_sources=(sources, {}))
    except ValidationError as exc:
        lines = _format_errors(exc, ours)
        # from None: the chained ValidationError would carry input values, the key among them.
        raise ConfigError(_redact(lines, [data, from_env], environ)) from None
    finally:
        _LOADING.reset(token)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
        return tomllib.loads(text)
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


def _split_environ(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Return the variables that are ours, and problems with the ones that are not usable."""
    ours: dict[str, str] = {}
    problems: list[str] = []
    for name, value in environ.items():
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        section, _, key = upper[len(ENV_PREFIX) :].lower().partition("__")
        field = Settings.model_fields.get(section)
        if field is None:
            continue  # not a section of ours: someone else's variable
        if section == "accounts" and key:
            problems.append(
                f"{name}: entries cannot be set one key at a time; set ROTATOR_ACCOUNTS"
            )
            continue
        if not key:
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                kind = "an array" if section == "accounts" else "an object"
                problems.append(f"{name}: must be {kind} in JSON ({exc.msg})")
                continue
        ours[name] = value
    return ours, problems


def _key_warning(path: Path, data: dict[str, Any], from_env: dict[str, Any]) -> str | None:
    api = data.get("api")
    key = api.get("key") if isinstance(api, dict) else None
    if not isinstance(key, str) or not key.strip() or "key" in from_env.get("api", {}):
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return (
            f"the API key is in {path}, which other users can read: move it to a file named by "
            f"api.key_file (or set {KEY_ENV}) and chmod 600 the file that holds it"
        )
    return None


# ---- error lines ----

_TYPE_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "dict_type": "must be a table",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


def _dotted(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif "[" not in part:  # skip pydantic's validator tags such as function-after[...]
            path += f".{part}" if path else part
    return path


def _message(error: Any, path: str) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if path == "api.key":
        # Never echo anything of the key's value: only _secret's own fixed message passes.
        return "must be a string" if kind in ("string_type", "value_error") else "is not usable"
    if path == "accounts" and kind in ("tuple_type", "list_type"):
        return "must be a list of [[accounts]] tables"
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    if kind == "greater_than_equal":
        return "must not be negative" if context["ge"] == 0 else f"must be at least {context['ge']}"
    if kind == "greater_than":
        return f"must be more than {context['gt']}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {context['expected']}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _env_name(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """Return the variable a value at ``loc`` came from, if one set it."""
    by_upper = {name.upper(): name for name in environ}
    head = [str(part).upper() for part in loc[:2] if isinstance(part, str)]
    for depth in (2, 1):
        if len(head) >= depth:
            candidate = ENV_PREFIX + "__".join(head[:depth])
            if candidate in by_upper:
                return by_upper[candidate]
    return None


def _format_errors(exc: ValidationError, environ: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if not loc:  # our cross-section check: lines already carry their paths
            lines.extend(_message(error, "").splitlines())
            continue
        path = _dotted(loc)
        line = f"{path}: {_message(error, path)}"
        env_name = _env_name(loc, environ)
        if env_name:
            line += f" (from {env_name})"
        if line not in lines:
            lines.append(line)
    return lines


def _redact(
    lines: list[str], sources: list[dict[str, Any]], environ: Mapping[str, str]
) -> list[str]:
    """Blank out any key value a message might still quote (a key pasted in the wrong field)."""
    secrets: list[object] = [environ.get(KEY_ENV)]
    for data in sources:
        api = data.get("api")
        secrets.append(api.get("key") if isinstance(api, dict) else None)
    for secret in secrets:
        if isinstance(secret, str) and len(secret.strip()) >= 4:
            lines = [line.replace(secret.strip(), "[redacted]") for line in lines]
    return lines


# ---- the API key ----


class Secret:
    """Hold a string that never shows in repr, str or logs; ``reveal()`` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True)
class ApiKey:
    """The API key, where it came from, and a warning about how it is stored."""

    value: Secret
    source: str  # XQUIK_API_KEY | api.key_file | credentials | secret file | api.key
    warning: str | None = None

    def reveal(self) -> str:
        """Return the key itself, for the HTTP header."""
        return self.value.reveal()


_SENDABLE_KEY = re.compile(r"[!-~]+")  # printable ASCII without spaces: fits a header


def _looks_like_a_key(name: str) -> bool:
    """Tell whether a file name is probably the key itself, pasted in the wrong place."""
    return name.startswith("xq_") or (
        len(name) >= 32 and name.replace("_", "").replace("-", "").isalnum()
    )


def _read_key(path: Path, label: str, *, missing_ok: bool) -> str | None:
    if not path.exists() and _looks_like_a_key(path.name):
        # Naming the path would print the key: say what is wrong without it.
        raise ConfigError(
            f"{label}: looks like the API key itself, not a file name; put the key in a "
            "file (chmod 600) and name that file here, or set XQUIK_API_KEY"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as exc:
        if missing_ok:
            return None
        raise ConfigError(f"{label}: cannot read {path} (no such file)") from exc
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path} ({exc.strerror})") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: {path} is not UTF-8 text") from None
    return text.strip().removeprefix("\ufeff").strip() or None


def find_api_key(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    secrets_dir: Path = _DEFAULT_SECRETS_DIR,
) -> ApiKey | None:
    """Return the first API key found, or None.

    Order: $XQUIK_API_KEY, api.key_file, $CREDENTIALS_DIRECTORY/xquik-api-key,
    {secrets_dir}/xquik_api_key, api.key. Surrounding whitespace is stripped and an
    empty key counts as not found. An unreadable api.key_file, or a key that cannot be
    sent in an HTTP header (a second line, a space), raises ``ConfigError``.
    """
    key = _find_api_key(settings, environ, secrets_dir=secrets_dir)
    if key is not None and not _SENDABLE_KEY.fullmatch(key.reveal()):
        raise ConfigError(
            f"the API key from {key.source} has characters that cannot be sent "
            "(a second line or a space?): the file must hold the key alone"
        )
    return key


def _find_api_key(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    secrets_dir: Path = _DEFAULT_SECRETS_DIR,
) -> ApiKey | None:
    environ = os.environ if environ is None else environ
    from_env = environ.get(KEY_ENV, "").strip()
    if from_env:
        return ApiKey(Secret(from_env), KEY_ENV)
    if settings.api.key_file is not None:
        key = _read_key(settings.api.key_file, "api.key_file", missing_ok=False)
        if key:
            return ApiKey(Secret(key), "api.key_file")
    credentials = environ.get("CREDENTIALS_DIRECTORY", "").strip()
    if credentials:
        key = _read_key(Path(credentials) / CREDENTIAL_NAME, "credentials", missing_ok=True)
        if key:
            return ApiKey(Secret(key), "credentials")
    key = _read_key(secrets_dir / SECRET_FILE_NAME, "secret file", missing_ok=True)
    if key:
        return ApiKey(Secret(key), "secret file")
    if settings.api.key is not None:
        return ApiKey(
            Secret(settings.api.key.get_secret_value()),
            settings._key_source,
            settings._key_warning,
        )
    return None
