"""cffi build script: compiles csrc/ into the extension module shmslice._core.

Out-of-line API mode.  The cdef is csrc/shmslice.h with its preprocessor lines
dropped, plus the status constants generated from csrc/ss_status.def, so the C
declarations exist in exactly one place.  Set SHMSLICE_SANITIZE=1 to build the
core with AddressSanitizer and UndefinedBehaviorSanitizer and with the core's
debug assertions (SS_DEBUG) on.
"""

import os
import re
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"


def _cdef() -> str:
    header = (CSRC / "shmslice.h").read_text()
    body = "\n".join(line for line in header.splitlines() if not line.lstrip().startswith("#"))
    names = re.findall(r"^SS_STATUS\((\w+),", (CSRC / "ss_status.def").read_text(), re.M)
    constants = "\n".join(f"#define {name} ..." for name in names)
    macros = re.findall(r"^#define (SS_[A-Z_]+) \d+", header, re.M)
    constants += "\n" + "\n".join(f"#define {name} ..." for name in macros)
    return body + "\n" + constants + "\n"


def _compile_args() -> tuple[list[str], list[str]]:
    args = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wconversion", "-Wshadow"]
    link: list[str] = []
    if os.environ.get("SHMSLICE_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        args = [a for a in args if a != "-O2"] + ["-O1", "-g", "-DSS_DEBUG"] + san
        link += san
    return args, link


ffibuilder = FFI()
ffibuilder.cdef(_cdef())
_extra_compile, _extra_link = _compile_args()
ffibuilder.set_source(
    "shmslice._core",
    '#include "shmslice.h"\n',
    sources=[str((CSRC / "shmslice.c").relative_to(HERE))],
    include_dirs=[str(CSRC.relative_to(HERE))],
    extra_compile_args=_extra_compile,
    extra_link_args=_extra_link,
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
