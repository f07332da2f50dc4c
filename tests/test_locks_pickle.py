"""A pickled LockManager attaches to the same table in the process that unpickles it."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import pytest

import shmslice


def try_exclusive(mgr: shmslice.LockManager) -> tuple[str, str]:
    """Child body: (outcome of an exclusive try-lock on [0, 10), the table it used)."""
    try:
        lk = mgr.lock(0, 10, timeout=0)
    except shmslice.LockTimeout:
        outcome = "conflict"
    else:
        lk.release()
        outcome = "granted"
    table = mgr.table_path
    mgr.close()
    return outcome, table


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_unpickled_manager_conflicts_with_the_parents_lock(data_file: Path, tmp_path: Path,
                                                           method: str) -> None:
    # A lock directory other than the default ($SHMSLICE_DIR, set by conftest):
    # a copy that forgot it would attach to the default directory's table.
    lock_dir = tmp_path / "chosen-locks"
    mgr = shmslice.LockManager(data_file, lock_dir=lock_dir)
    assert os.path.dirname(mgr.table_path) != os.environ["SHMSLICE_DIR"]
    held = mgr.lock(0, 10)
    try:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(1) as pool:
            outcome, table = pool.apply_async(try_exclusive, (mgr,)).get(timeout=60)
        assert (outcome, table) == ("conflict", mgr.table_path)
    finally:
        held.release()
        mgr.close()


def test_pickle_round_trip_keeps_path_and_lock_directory(data_file: Path, tmp_path: Path) -> None:
    lock_dir = tmp_path / "chosen-locks"
    with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
        copy = pickle.loads(pickle.dumps(mgr))
        try:
            assert copy is not mgr
            assert (copy.path, copy.table_path) == (mgr.path, mgr.table_path)
            with mgr.lock(0, 10), pytest.raises(shmslice.LockTimeout):
                copy.lock(5, 6, timeout=0)   # same table, another owner
        finally:
            copy.close()
