"""The ``shmslice`` command itself: its parser, and ``main``, which turns outcomes into exit statuses."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from shmslice import __version__
from shmslice.cli.arguments import Parser
from shmslice.cli.commands import COMMANDS
from shmslice.cli.errors import PROG, CommandError, describe_error, error_line
from shmslice.errors import ShmSliceError

__all__ = ["build_parser", "main"]


def build_parser() -> Parser:
    """The ``shmslice`` argument parser: every command module adds its own subcommand."""
    parser = Parser(
        prog=PROG,
        description="Inspect and tidy shmslice lock tables, or run the demo.",
        epilog="Exit status: 0 success, 1 runtime error, 2 usage error.")
    parser.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")

    tables = Parser(add_help=False)
    tables.add_argument(
        "--lock-dir", metavar="DIR",
        help="directory of lock tables (default: $SHMSLICE_DIR, else /dev/shm/shmslice)")
    as_json = Parser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for programs")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub, [tables, as_json])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shmslice`` command; returns its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        check = getattr(args, "check", None)
        if check is not None:
            check(parser.subparser_for(args.command), args)
    except SystemExit as exc:
        # -h, -V and usage errors: argparse has printed what it had to say.
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return int(args.func(args))
    except CommandError as err:
        error_line(args.command, str(err))
    except BrokenPipeError:
        # The reader went away (`shmslice ls | head -1`): stop quietly, and keep
        # Python from failing again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except (ShmSliceError, OSError, BufferError) as err:
        # BufferError: the library refuses to shrink a file another process still uses.
        error_line(args.command, describe_error(err))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 1
