"""Find the API key: env, key file, systemd credential, Docker secret, api.key.

The key is held in a ``Secret`` from the moment it is read, so it never shows in a
repr, a log line or an exception message. Nothing here imports pydantic: the settings
are only read (``api.key_file``, ``api.key``, ``key_source``, ``key_warning``).
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rotator.errors import ConfigError

if TYPE_CHECKING:
    # Type-only: rotator.config imports KEY_ENV from here, so a runtime import would loop.
    from rotator.config import Settings

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
            settings.key_source,
            settings.key_warning,
        )
    return None
