"""The subcommands of ``shmslice``, a module each: ``run(args)`` beside the ``register`` that parses it."""

from __future__ import annotations

from shmslice.cli.commands import demo, info, locks, ls, prune, reap

#: In the order ``shmslice -h`` lists them.
COMMANDS = (locks, ls, reap, prune, info, demo)

__all__ = ["COMMANDS"]
