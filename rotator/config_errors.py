"""Turn pydantic's validation errors into ``<dotted path>: <what is wrong>`` lines.

Nothing here imports pydantic: it reads the plain error dicts of
``ValidationError.errors()``. pydantic's own messages are replaced where they could
echo an input value; ``rotator.keys.mask_keys`` then blanks out any API key a line
might still quote.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

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

# pydantic's other bound errors: where its context holds the bound, and how to say it.
_BOUND_MESSAGES = {
    "greater_than": ("gt", "must be more than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
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
    if kind in _BOUND_MESSAGES:
        bound, text = _BOUND_MESSAGES[kind]
        return text.format(context[bound])
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
