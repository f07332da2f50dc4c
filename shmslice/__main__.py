"""``python -m shmslice``: the same command as the ``shmslice`` console script."""

import sys

from shmslice.cli import main

if __name__ == "__main__":
    # Guarded: multiprocessing's spawn start method imports this module as
    # __mp_main__ in every worker of `shmslice demo`, which must not re-run it.
    sys.exit(main())
