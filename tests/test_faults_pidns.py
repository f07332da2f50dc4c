"""A holder in another PID namespace (a container sharing the lock directory).

Its pid, as it recorded it, is its pid in its own namespace (1 here): the API
reports 0 ("not known here") and the CLI says it is another namespace's
process instead of blaming this namespace's pid 1 (init).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shmslice
from shmslice import LockTimeout
from tests.support import ROOT, child_env, run_python, stop_popen

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare(1) for a PID namespace")


def test_holder_in_another_pid_namespace(data_file: Path, lock_dir: Path) -> None:
    helper = ROOT / "tests" / "cli_helpers.py"
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(helper),
         str(data_file), str(lock_dir), "exclusive:0:100", "pin:200:300"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env())
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline().split()
        if not line:
            pytest.skip(f"cannot run in a new PID namespace: {holder.stderr.read() if holder.stderr else ''}")
        assert line == ["ready", "1"]      # pid 1 in its own namespace
        with shmslice.LockManager(data_file, lock_dir=lock_dir) as mgr:
            infos = mgr.locks()
            assert [(e.kind, e.pid, e.alive) for e in infos] == [("exclusive", 0, True),
                                                                 ("pin", 0, True)]
            with pytest.raises(LockTimeout, match="a process of another PID namespace"):
                mgr.lock(0, 10, timeout=0)
            with pytest.raises(BufferError, match="a process of another PID namespace"):
                mgr.resize_file(250)
        done = run_python("-m", "shmslice", "locks", data_file, "--lock-dir", lock_dir,
                          timeout=60)
        assert done.returncode == 0, done.stderr
        assert "another PID namespace" in done.stdout
        assert "systemd" not in done.stdout and " init" not in done.stdout
        done = run_python("-m", "shmslice", "locks", data_file, "--lock-dir", lock_dir,
                          "--json", timeout=60)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert [(e["pid"], e["process"]) for e in doc["entries"]] == [(0, "elsewhere")] * 2
    finally:
        stop_popen(holder)
