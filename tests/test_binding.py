"""The binding layer: the boundary to the compiled code, its stubs, and the handle's state."""

from __future__ import annotations

import ast
import errno
import importlib.metadata
import inspect
import re
from pathlib import Path

import pytest

import shmslice
from shmslice import _binding, _fastpath
from shmslice._binding import ffi, lib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "shmslice"
CSRC = ROOT / "csrc"


def _stub_members(stub: str, class_name: str | None) -> set[str]:
    """Names declared in ``class_name`` of a stub file (module level if None)."""
    tree = ast.parse((PACKAGE / stub).read_text())
    body: list[ast.stmt] = tree.body
    if class_name is not None:
        [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
        body = cls.body
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _header_names() -> set[str]:
    """Every function and constant csrc/shmslice.h and ss_status.def give the cffi module."""
    header = (CSRC / "shmslice.h").read_text()
    functions = set(re.findall(r"^[a-z][\w ]*?\**\b(ss_\w+)\(", header, re.M))
    macros = set(re.findall(r"^#define (SS_[A-Z_]+) \d+", header, re.M))
    statuses = set(re.findall(r"^SS_STATUS\((\w+),", (CSRC / "ss_status.def").read_text(), re.M))
    return functions | macros | statuses


def test_core_stub_declares_exactly_the_header() -> None:
    # A function added to the header without a stub line (or a stale stub line)
    # fails here rather than as an Any that mypy cannot check.
    header = _header_names()
    assert "ss_lock" in header and "SS_ECLOSED" in header and "SS_SHARED" in header
    assert _stub_members("_core.pyi", "_Lib") == header
    missing = sorted(name for name in header if not hasattr(lib, name))
    assert missing == []


def test_fastpath_stub_matches_the_module() -> None:
    for name in _stub_members("_fastpath.pyi", None) - {"ManagerBase", "RegionLock"}:
        assert callable(getattr(_fastpath, name)), name
    declared = _stub_members("_fastpath.pyi", "ManagerBase") - {"_lock_slow", "_raise_status"}
    assert sorted(n for n in declared if not hasattr(_fastpath.ManagerBase, n)) == []
    assert sorted(n for n in _stub_members("_fastpath.pyi", "RegionLock")
                  if not hasattr(_fastpath.RegionLock, n)) == []


def test_methods_the_fast_path_calls_by_name_exist_on_lock_manager() -> None:
    # fastpath.c looks these up on the LockManager instance at run time.
    source = (CSRC / "fastpath.c").read_text()
    called = set(re.findall(r'PyUnicode_InternFromString\("(_\w+)"\)', source))
    assert called == {"_lock_slow", "_raise_status"}
    arity = {"_lock_slow": 4, "_raise_status": 1}   # arguments after self, as fastpath.c passes them
    for name in called:
        params = inspect.signature(getattr(shmslice.LockManager, name)).parameters
        assert len(params) - 1 == arity[name], name


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_binding_imports_the_compiled_modules() -> None:
    compiled = {"shmslice._core", "shmslice._fastpath"}
    offenders = sorted(str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
                       if path.name != "_binding.py" and _imports(path) & compiled)
    assert offenders == []


@pytest.mark.parametrize(("status", "exc_type"), [
    (lib.SS_ETIMEDOUT, shmslice.LockTimeout),
    (lib.SS_EDEADLK, shmslice.DeadlockError),
    (lib.SS_EFULL, shmslice.LockTableFull),
    (lib.SS_ECORRUPT, shmslice.CorruptLockTable),
    (lib.SS_EUNSAFE, shmslice.UnsafeLockTable),
    (lib.SS_ENOENT, FileNotFoundError),
    (lib.SS_EINVAL, ValueError),
    (lib.SS_ECLOSED, ValueError),
    (lib.SS_ENOTOWNER, shmslice.ShmSliceError),
])
def test_statuses_become_their_exceptions(status: int, exc_type: type[Exception]) -> None:
    with pytest.raises(exc_type):
        _binding.check(status, "/some/file")
    assert _binding.check(0) == 0 and _binding.check(7) == 7


def test_a_system_error_carries_errno_and_path(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir) as mgr:
        rc = lib.ss_resize(mgr._handle._cdata, -1, 10, ffi.new("ss_entry_info *"))   # bad fd
        with pytest.raises(OSError) as err:   # noqa: PT011 - the errno is checked below
            _binding.check(rc, str(data_file))
        assert err.value.errno == errno.EBADF and err.value.filename == str(data_file)


def test_the_handle_is_the_one_record_of_open_and_writable(data_file: Path, lock_dir: Path) -> None:
    mgr = shmslice.LockManager(data_file, lock_dir)
    handle = mgr._handle
    assert (mgr.closed, mgr.writable) == (handle.closed, handle.writable) == (False, True)
    lk = mgr.lock(0, 10)   # the C fast path, served by the handle
    mgr.close()
    assert mgr.closed and handle.closed and not lk.locked   # fast path detached with it
    with pytest.raises(ValueError, match="closed"):
        mgr.lock(0, 10)
    with pytest.raises(ValueError, match="closed"):
        mgr.locks()
    mgr.close()   # twice is harmless


def test_mapped_file_shares_its_managers_handle(data_file: Path, lock_dir: Path) -> None:
    mf = shmslice.open(data_file, "r+", lock_dir=lock_dir)
    assert mf._handle is mf.lock_manager._handle
    mf.lock_manager.close()
    assert mf.closed
    with pytest.raises(ValueError, match="closed"):
        mf.size   # noqa: B018 - the property access is the test


def test_waiting_defaults_agree() -> None:
    defaults = {cls.__name__: inspect.signature(cls.locks).parameters["waiting"].default
                for cls in (shmslice.LockManager, shmslice.TableView)}
    assert defaults == {"LockManager": False, "TableView": False}


def test_table_view_lists_waiting_requests_only_when_asked(data_file: Path, lock_dir: Path) -> None:
    with shmslice.LockManager(data_file, lock_dir) as mgr, mgr.lock(0, 10):
        with shmslice.TableView(mgr.table_path) as view:
            assert [e.kind for e in view.locks()] == [e.kind for e in mgr.locks()] == ["exclusive"]
            assert view.locks(waiting=True) == mgr.locks(waiting=True)
        assert view.closed
        with pytest.raises(ValueError, match="closed"):
            view.locks()


def test_version_has_one_source() -> None:
    assert importlib.metadata.version("shmslice") == shmslice.__version__


def test_package_ships_its_type_information() -> None:
    assert (PACKAGE / "py.typed").is_file()
    for stub in ("_core.pyi", "_fastpath.pyi"):
        assert (PACKAGE / stub).is_file()
