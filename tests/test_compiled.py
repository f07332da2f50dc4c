"""The first layer: the compiled modules load -- in this process and in a child -- and answer."""

from __future__ import annotations

from pathlib import Path

import shmslice
from shmslice._binding import ffi, lib
from tests.support import run_python


def test_compiled_modules_load_from_the_package() -> None:
    from shmslice import _binding, _core, _fastpath

    package = Path(shmslice.__file__).parent
    for module in (_core, _fastpath):
        assert module.__file__ is not None
        compiled = Path(module.__file__)
        assert compiled.parent == package and compiled.suffix == ".so", compiled
    # Importing the binding handed the fast path the core's entry points.
    assert isinstance(_binding.ManagerBase, type) and callable(_binding.fast_pin)


def test_core_loads_and_status_table_is_complete() -> None:
    names = {ffi.string(lib.ss_status_name(code)).decode() for code in range(0, -13, -1)}
    assert "SS_ETIMEDOUT" in names and "SS_UNKNOWN" not in names
    assert ffi.string(lib.ss_status_name(-99)) == b"SS_UNKNOWN"


def test_a_child_process_imports_the_same_build(tmp_path: Path) -> None:
    # Run elsewhere than the checkout: only the environment the helper gives tells the
    # child where shmslice is (installed or not).
    r = run_python("-c", "import shmslice, shmslice._core, shmslice._fastpath; print(shmslice.__file__)",
                   timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == Path(shmslice.__file__).resolve()
