"""Keep the API key out of everything stored or printed, server echoes included.

A hostile or broken server may echo the key back: as the error code, inside a message,
in ``X-Request-Id``, split across lines. Every value that came from the server passes
through here before it is stored (SQLite) or printed: error codes must look like codes
(else ``"unknown"``), and any text has the key and every long fragment of it masked.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterable

REDACTED = "[REDACTED]"
UNKNOWN_CODE = "unknown"
FRAGMENT = 12  # a run of this many characters of the key is masked wherever it shows
_MIN_SECRET = 4  # masking a very short string would garble ordinary text
_CODE = re.compile(r"[a-z0-9_]{1,64}")

_registered: list[str] = []  # only ever appended to (under the lock): read without one
_lock = threading.Lock()


def add_secret(value: str) -> None:
    """Register a value (the API key) that must never be stored or printed."""
    if len(value) >= _MIN_SECRET:
        with _lock:
            if value not in _registered:
                _registered.append(value)


def redact(text: str, secrets: Iterable[str | None] = (), *, mask: str = REDACTED) -> str:
    """Return ``text`` with the given and the registered secrets, and long fragments, masked."""
    if not text:
        return text
    wanted = tuple(_registered)
    if secrets:
        given = (s for s in secrets if isinstance(s, str) and len(s) >= _MIN_SECRET)
        wanted = (*given, *wanted)
    if not wanted:
        return text
    pattern = _pieces_pattern(wanted)
    if pattern.search(text) is None:  # nearly every text: one scan in C, nothing to mask
        return text
    masked = [False] * len(text)
    for found in pattern.finditer(text):
        start = found.start()
        masked[start : start + len(found[1])] = [True] * len(found[1])
    out: list[str] = []
    for index, char in enumerate(text):
        if not masked[index]:
            out.append(char)
        elif index == 0 or not masked[index - 1]:
            out.append(mask)
    return "".join(out)


@functools.lru_cache(maxsize=32)
def _pieces_pattern(secrets: tuple[str, ...]) -> re.Pattern[str]:
    """Return a pattern that matches where each secret, or a FRAGMENT-long piece of one, starts.

    The lookahead finds overlapping pieces too, so a longer run of the key is masked
    whole. Longest first: a match covers as much as it can from where it starts.
    """
    pieces: set[str] = set()
    for secret in secrets:
        if len(secret) > FRAGMENT:
            pieces.update(secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1))
        else:
            pieces.add(secret)
    ordered = sorted(pieces, key=lambda piece: (-len(piece), piece))
    return re.compile("(?=(" + "|".join(re.escape(piece) for piece in ordered) + "))")


def redact_optional(text: object, secrets: Iterable[str | None] = ()) -> str | None:
    """Return ``redact(str(text))``, or None for None (request ids, optional fields)."""
    return None if text is None else redact(str(text), secrets)


def safe_code(code: object) -> str | None:
    """Return a server's error code if it looks like one (``^[a-z0-9_]{1,64}$``), else "unknown".

    None stays None (no code given). Anything else (the key, a sentence, a newline) is
    never stored or printed as a code.
    """
    if code is None:
        return None
    text = str(code)
    return text if _CODE.fullmatch(text) and redact(text) == text else UNKNOWN_CODE


_TOKEN = re.compile(r"[!-~]{1,512}")  # printable ASCII without spaces: ids and paths


def safe_token(value: object) -> str | None:
    """Return a server-given id or URL path if it is a plain token free of the key, else None.

    Write-action ids and ``statusUrl``s are kept (in the state) and used again (to poll);
    one that carries the key, or anything but printable ASCII, is not kept at all: a
    masked id would be useless for polling, and the write is then treated as one whose
    fate is unknown.
    """
    if value is None:
        return None
    text = str(value)
    return text if _TOKEN.fullmatch(text) and redact(text) == text else None
