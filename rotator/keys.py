"""Everything about the API key: where it may be, reading it, holding it, masking it.

The places are env, key file, systemd credential, Docker secret and api.key, in that
order. The key is held in a ``Secret`` from the moment it is read, so it never shows in
a repr, a log line or an exception message. The same places are searched to blank a key
out of config errors (``mask_keys``), and a key in a config file other users can read
gets a warning (``readable_key_warning``). Nothing here imports pydantic or
``rotator.config``: the settings are read through ``KeySettings``, which they satisfy.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from rotator.errors import ConfigError
from rotator.redaction import redact

KEY_ENV = "XQUIK_API_KEY"
CREDENTIAL_NAME = "xquik-api-key"
SECRET_FILE_NAME = "xquik_api_key"  # noqa: S105 (a file name, not a password)
_DEFAULT_SECRETS_DIR = Path("/run/secrets")
NO_KEY = (
    f"no API key found: set {KEY_ENV}, or api.key_file in the config, or a systemd "
    f"credential '{CREDENTIAL_NAME}', or the secret file "
    f"{_DEFAULT_SECRETS_DIR / SECRET_FILE_NAME}"
)


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


# The settings as find_api_key reads them, typed by shape: importing rotator.config here
# would make config and keys import each other. pydantic's SecretStr is a _Revealable.
class _Revealable(Protocol):
    def get_secret_value(self) -> str: ...


class _KeyFields(Protocol):
    @property
    def key_file(self) -> Path | None: ...

    @property
    def key(self) -> _Revealable | None: ...


class KeySettings(Protocol):
    """What ``find_api_key`` reads of the settings (``rotator.config.Settings`` has it)."""

    @property
    def api(self) -> _KeyFields: ...

    @property
    def key_source(self) -> str: ...

    @property
    def key_warning(self) -> str | None: ...


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
    settings: KeySettings,
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
    settings: KeySettings,
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
            settings.key_source,
            settings.key_warning,
        )
    return None


_MAX_KEY_FILE = 4096  # a key file is tiny; anything bigger is not read for masking


def readable_key_warning(path: Path, data: dict[str, Any], from_env: dict[str, Any]) -> str | None:
    """Return a warning when the config file at ``path`` holds api.key and others can read it.

    ``data`` is the file's TOML, ``from_env`` what ``ROTATOR_*`` variables set (a key set
    there wins, and the file's is not used).
    """
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


def mask_keys(
    lines: list[str],
    sources: list[dict[str, Any]],
    environ: Mapping[str, str],
    base_dir: Path | None = None,
) -> list[str]:
    """Blank out any key a message might quote (a key pasted in the wrong field).

    Every place a key can come from is looked at: $XQUIK_API_KEY, api.key, the file named
    by api.key_file, the systemd credential and the Docker secret. ``sources`` are the
    raw tables read (the TOML file, the environment's), since the settings could not be
    built. The key and its long fragments are masked.
    """
    secrets: list[str] = []
    key_files = [
        Path(environ.get("CREDENTIALS_DIRECTORY", "") or "/nonexistent") / CREDENTIAL_NAME,
        _DEFAULT_SECRETS_DIR / SECRET_FILE_NAME,
    ]
    for value in [environ.get(KEY_ENV)]:
        if isinstance(value, str):
            secrets.append(value.strip())
    for data in sources:
        api = data.get("api")
        if not isinstance(api, dict):
            continue
        key, key_file = api.get("key"), api.get("key_file")
        if isinstance(key, str):
            secrets.append(key.strip())
        if isinstance(key_file, str) and key_file.strip() and "\x00" not in key_file:
            path = Path(key_file.strip()).expanduser()
            key_files.append(path if path.is_absolute() or base_dir is None else base_dir / path)
    secrets += [text for text in map(_small_file_text, key_files) if text]
    return [redact(line, secrets, mask="[redacted]") for line in lines]


def _small_file_text(path: Path) -> str | None:
    """Return the stripped text of a small regular file, or None (never raise, never block)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, _MAX_KEY_FILE)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip().removeprefix("\ufeff").strip() or None
