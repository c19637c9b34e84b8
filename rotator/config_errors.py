"""Turn pydantic's validation errors into ``<dotted path>: <what is wrong>`` lines.

Nothing here imports pydantic: it reads the plain error dicts of
``ValidationError.errors()``. pydantic's own messages are replaced where they could
echo an input value, and any API key a line might still quote is blanked out.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from rotator.keys import CREDENTIAL_NAME, KEY_ENV, SECRET_FILE_NAME
from rotator.redaction import redact as redact_secrets

_MAX_KEY_FILE = 4096  # a key file is tiny; anything bigger is not read for masking

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


def _message(error: Mapping[str, Any], path: str) -> str:
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
    if kind == "less_than_equal":
        return f"must be at most {context['le']}"
    if kind == "less_than":
        return f"must be less than {context['lt']}"
    if kind == "literal_error":
        return f"{error['input']!r} is not one of {context['expected']}"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _env_name(
    loc: tuple[int | str, ...], environ: Mapping[str, str], env_prefix: str
) -> str | None:
    """Return the variable a value at ``loc`` came from, if one set it."""
    by_upper = {name.upper(): name for name in environ}
    head = [str(part).upper() for part in loc[:2] if isinstance(part, str)]
    for depth in (2, 1):
        if len(head) >= depth:
            candidate = env_prefix + "__".join(head[:depth])
            if candidate in by_upper:
                return by_upper[candidate]
    return None


KnownKeys = Callable[[tuple[int | str, ...]], Iterable[str]]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """Return the one of ``choices`` that ``word`` is most likely a typo of, if any is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def format_errors(
    errors: Iterable[Mapping[str, Any]],
    environ: Mapping[str, str],
    *,
    env_prefix: str,
    known_keys: KnownKeys | None = None,
) -> list[str]:
    """Return one ``path: problem`` line per error, naming the variable that set the value.

    ``errors`` is ``ValidationError.errors(include_url=False)``; ``environ`` holds the
    ``{env_prefix}*`` variables that were read; ``known_keys`` names the keys allowed in
    the table at a location, so an unknown key gets a suggestion (``shedule``).
    """
    lines: list[str] = []
    for error in errors:
        loc = tuple(error["loc"])
        if not loc:  # our cross-section check: lines already carry their paths
            lines.extend(_message(error, "").splitlines())
            continue
        path = _dotted(loc)
        line = f"{path}: {_message(error, path)}"
        if (
            error["type"] == "extra_forbidden"
            and len(loc) == 1
            and isinstance(error["input"], dict)
        ):
            line = f"{path}: unknown section"  # a [table] at the top level
        if error["type"] == "extra_forbidden" and known_keys is not None:
            guess = closest(str(loc[-1]).lower(), known_keys(loc[:-1]))
            if guess is not None:
                line += f"; did you mean {guess!r}?"
        env_name = _env_name(loc, environ, env_prefix)
        if env_name:
            line += f" (from {env_name})"
        if line not in lines:
            lines.append(line)
    return lines


def redact(
    lines: list[str],
    sources: list[dict[str, Any]],
    environ: Mapping[str, str],
    base_dir: Path | None = None,
) -> list[str]:
    """Blank out any key a message might quote (a key pasted in the wrong field).

    Every place a key can come from is looked at: $XQUIK_API_KEY, api.key, the file named
    by api.key_file, the systemd credential and the Docker secret. The key and its long
    fragments are masked.
    """
    secrets: list[str] = []
    key_files = [
        Path(environ.get("CREDENTIALS_DIRECTORY", "") or "/nonexistent") / CREDENTIAL_NAME,
        Path("/run/secrets") / SECRET_FILE_NAME,
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
    return [redact_secrets(line, secrets, mask="[redacted]") for line in lines]


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
