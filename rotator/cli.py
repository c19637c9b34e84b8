"""The command line: parse arguments, call the command through the command table, exit codes.

Exit codes: 0 ok, 1 runtime failure or problems found, 2 usage or config error.
Nothing a user did produces a traceback, and no message carries the API key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import io
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from rotator import __version__
from rotator.durations import parse_duration
from rotator.errors import RotatorError
from rotator.logs import redact_text

MAX_PAUSE_SECONDS = 100 * 365 * 86400.0  # a pause without --for lasts this long


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error, a guess for a mistyped command, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        typo = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if typo:
            choices = re.findall(r"'?([a-z]+)'?", typo.group(2))
            guess = difflib.get_close_matches(typo.group(1), choices, n=1, cutoff=0.75)
            message = f"unknown command {typo.group(1)!r}" + (
                f"; did you mean {guess[0]!r}?" if guess else f" (commands: {', '.join(choices)})"
            )
        sys.stderr.write(f"rotator: {message} (see 'rotator {self._subcommand()}--help')\n")
        raise SystemExit(2)

    def _subcommand(self) -> str:
        name = self.prog.split(" ", 1)
        return f"{name[1]} " if len(name) > 1 else ""


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand."""
    parser = _Parser(
        prog="rotator",
        description="Rotate X account avatars on a schedule through the Xquik API.",
    )
    parser.add_argument("--version", action="version", version=f"rotator {__version__}")
    config_help = "config file (default: $ROTATOR_CONFIG, else ./rotator.toml)"
    # Accepted before the command too (`rotator --config P status`); after it wins.
    parser.add_argument("--config", metavar="PATH", dest="global_config", help=config_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        one = sub.add_parser(name, help=help_text, description=help_text)
        one.add_argument("--config", metavar="PATH", help=config_help)
        if name != "run":  # the daemon's output is its JSON log already
            one.add_argument("--json", action="store_true", help="print JSON for tools")
        return one

    run = command("run", "run the daemon")
    run.add_argument("--dry-run", action="store_true", help="do everything but the write")

    check = command("check", "validate the config and every image")
    check.add_argument("--online", action="store_true", help="also ask the API (free reads)")

    plan = command("plan", "show the next rotations and what they cost")
    plan.add_argument("--count", type=_positive_int, default=5, metavar="N")
    plan.add_argument(
        "--from",
        dest="start",
        type=_instant,
        metavar="INSTANT",
        help="plan from this ISO 8601 instant with its offset (default: now)",
    )

    rotate = command("rotate", "rotate now, once (through the daemon when it runs)")
    rotate.add_argument("--account", metavar="NAME", help="only this account's entries")
    rotate.add_argument("--image", metavar="PATH", help="send this image (in the entry's folder)")
    rotate.add_argument("--dry-run", action="store_true", help="do everything but the write")

    command("status", "show positions, pauses and errors from the state")

    history = command("history", "show what was sent when, and what came of it")
    history.add_argument("--account", metavar="NAME", help="only this account")
    history.add_argument(
        "--since", metavar="WHEN", help="a duration back from now (2d, 6h) or an ISO 8601 time"
    )
    history.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N rows (50)"
    )

    resume = command("resume", "end a pause by hand and reset its backoff")
    resume.add_argument("--account", metavar="NAME", help="end this account's pause only")

    pause = command("pause", "hold the writes of an account (or all) until resumed")
    pause.add_argument("--account", metavar="NAME", help="this account only (default: all)")
    pause.add_argument(
        "--for", dest="for_seconds", type=_duration, metavar="D", help="end by itself after D"
    )

    skip = command("skip", "move an account past the image it would send next")
    skip.add_argument("--account", metavar="NAME", required=True)

    for name, text in (
        ("exclude", "never pick an image until it is included again"),
        ("include", "let an excluded image be picked again"),
    ):
        one = command(name, text)
        one.add_argument("--account", metavar="NAME", required=True)
        one.add_argument("--image", metavar="PATH", required=True, help="in the entry's folder")

    command("reload", "make the running daemon re-read its config, and report the outcome")

    health = command("health", "exit 0 when the running daemon can do its job")
    health.add_argument(
        "--allow-paused",
        action="store_true",
        help="healthy while alive, even if a pause stops every rotation",
    )
    return parser


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
    if seconds > MAX_PAUSE_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than 100 years (leave --for out)")
    return seconds


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _instant(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 instant (such as 2026-03-08T06:30Z)"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no UTC offset (write it as 2026-03-08T06:30Z or ...-05:00)"
        )
    return value


def _call(args: argparse.Namespace) -> int:
    """Call the function of the command ``args`` names, with its arguments; return its code."""
    # Imported after parsing: --help, --version and usage errors stay quick.
    from rotator import commands  # noqa: PLC0415

    config = args.config
    as_json: bool = args.json if args.command != "run" else False  # run logs JSON anyway
    # The command table: each command of build_parser and the one function that runs it.
    table: dict[str, Callable[[], int]] = {
        "run": lambda: commands.run(config, dry_run=args.dry_run),
        "check": lambda: commands.check(config, online=args.online, as_json=as_json),
        "plan": lambda: commands.plan(config, count=args.count, start=args.start, as_json=as_json),
        "rotate": lambda: commands.rotate(
            config, account=args.account, image=args.image, dry_run=args.dry_run, as_json=as_json
        ),
        "status": lambda: commands.status(config, as_json=as_json),
        "history": lambda: commands.history(
            config, account=args.account, since=args.since, limit=args.limit, as_json=as_json
        ),
        "resume": lambda: commands.resume(config, account=args.account, as_json=as_json),
        "pause": lambda: commands.pause(
            config, account=args.account, for_seconds=args.for_seconds, as_json=as_json
        ),
        "skip": lambda: commands.skip(config, account=args.account, as_json=as_json),
        "exclude": lambda: commands.exclude(
            config, account=args.account, image=args.image, as_json=as_json
        ),
        "include": lambda: commands.include(
            config, account=args.account, image=args.image, as_json=as_json
        ),
        "reload": lambda: commands.reload(config, as_json=as_json),
        "health": lambda: commands.health(config, allow_paused=args.allow_paused, as_json=as_json),
    }
    return table[args.command]()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    for stream in (sys.stdout, sys.stderr):
        # A path from the environment may hold bytes that are not UTF-8: print them escaped.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    args.config = args.config or args.global_config
    try:
        return _call(args)
    except RotatorError as exc:
        problems = getattr(exc, "problems", None) or [str(exc)]
        for problem in problems:
            sys.stderr.write(f"rotator: {redact_text(str(problem))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception:  # a bug of ours: show it, but never the key
        text = redact_text(traceback.format_exc())
        sys.stderr.write(f"rotator: internal error (please report it):\n{text}")
        return 1
