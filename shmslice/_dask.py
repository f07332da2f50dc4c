"""dask's hooks for slices and arrays, loaded by dask itself (no import by the user).

pyproject.toml names :func:`register` in dask's ``dask.sizeof`` entry-point
group, which dask runs when ``dask.sizeof`` is imported (``import dask`` does):

* ``sizeof`` of a :class:`~shmslice.ByteBufferSlice` or a
  :class:`~shmslice.arrays.MappedArray` is the size of the descriptor it
  pickles as, not the size of the region: the bytes live in the shared page
  cache, not in the worker's heap, so dask's memory manager should neither
  count them against the worker nor spill them;
* ``normalize_token`` (dask's cache keys) of a ``MappedArray`` calls its
  ``__dask_tokenize__``: without this dask would key the array, like any
  ndarray, by hashing all its bytes.  Slices have ``__dask_tokenize__``
  themselves, which dask calls without help.

The array hooks are registered lazily (when dask first meets a shmslice
object of a type it does not know), so numpy is not imported for them.
"""

from __future__ import annotations

import importlib
import pickle
from typing import Any

from shmslice.slices import ByteBufferSlice

__all__ = ["register"]


def descriptor_size(obj: Any) -> int:
    """Bytes ``obj`` travels as: the length of its pickle (a descriptor)."""
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def register(sizeof: Any) -> None:
    """Entry point of the ``dask.sizeof`` group: dask passes its ``sizeof`` dispatcher."""
    sizeof.register(ByteBufferSlice)(descriptor_size)

    def register_arrays() -> None:
        try:
            from shmslice.arrays import MappedArray
        except ImportError:   # no numpy: there are no arrays to size
            return
        sizeof.register(MappedArray)(descriptor_size)
        if normalize_token is not None:
            normalize_token.register(MappedArray)(lambda a: a.__dask_tokenize__())

    # (dask is untyped: its dispatchers are Any here, imported by name.)
    normalize_token: Any
    try:
        normalize_token = importlib.import_module("dask.tokenize").normalize_token
    except ImportError:   # a dask without dask.tokenize: sizes only
        normalize_token = None
    sizeof.register_lazy("shmslice")(register_arrays)
    if normalize_token is not None:
        normalize_token.register_lazy("shmslice")(register_arrays)
