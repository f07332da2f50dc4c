"""Type stubs for the cffi extension shmslice._core (declarations: csrc/shmslice.h)."""

from typing import Any

ffi: Any
lib: Any
