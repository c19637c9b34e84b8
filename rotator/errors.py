"""The one exception tree of rotator.

::

    RotatorError                 base of everything we raise on purpose
    ├── ConfigError              the config (file, env or CLI) is unusable: exit 2
    │   └── MissingKeyError      no API key found and not --dry-run: exit 2
    ├── StateError               the state directory cannot be used
    │   ├── NoStateError         no state where the config says it lives: exit 1
    │   ├── StateLockedError     another daemon holds the state dir: exit 2
    │   └── StateVersionError    the state was written by a newer rotator: exit 2
    ├── ImageError               one image file cannot be read or used
    └── ApiError                 the Xquik client failed outside an HTTP answer
        └── ApiReadError         a free read (credits, account, X accounts) failed

Third-party exceptions are translated into these at the edge of the one module
that imports the library (``raise ConfigError(...) from exc``). Every message is
written for a user and never contains the API key.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Base class for every error rotator raises on purpose."""

    exit_code = 1


class ConfigError(RotatorError):
    """The configuration is unusable; ``problems`` holds one line per problem."""

    exit_code = 2

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class MissingKeyError(ConfigError):
    """No API key was found and the command needs one."""


class StateError(RotatorError):
    """The state directory or database cannot be used."""

    exit_code = 2


class NoStateError(StateError):
    """A command that reads the state found none: the daemon never ran with this config."""

    exit_code = 1


class StateLockedError(StateError):
    """Another rotator daemon already uses this state directory."""


class StateVersionError(StateError):
    """The state database was written by a newer rotator."""


class ImageError(RotatorError):
    """One image file cannot be read, decoded or fitted."""


class ApiError(RotatorError):
    """The Xquik client failed in a way that is not an HTTP answer."""


class ApiReadError(ApiError):
    """A free read failed; ``status`` and ``code`` say how when the API answered."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)
