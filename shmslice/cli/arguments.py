"""The argument parser every subcommand shares, and the argument types they check their values with."""

from __future__ import annotations

import argparse
from typing import NoReturn, TypeAlias

from shmslice.cli.formatting import parse_size

__all__ = ["Parser", "Subcommands", "positive_float", "positive_int", "size_arg"]


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (and exit status 2)."""

    def subparser_for(self, command: str) -> argparse.ArgumentParser:
        """The parser of subcommand ``command`` (for checks argparse cannot express)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen: argparse.ArgumentParser = action.choices[command]
                return chosen
        raise KeyError(command)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def size_arg(text: str) -> int:
    try:
        value = parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return value



#: What a command module's ``register`` adds its subcommand to.
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"
