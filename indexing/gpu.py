"""Where a FAISS index runs: GPU detection, the "auto"/True/False choice, CPU <-> GPU copies.

A GPU index may have a CPU twin (the CPU index it was copied from, or one made lazily) for filtered
searches that many GPU builds reject. The twins live in one mapping here, ``_TWINS``, keyed weakly by
the GPU index, so nothing is hung on the SWIG objects and a twin goes when its GPU index does. Index
files are always written from a CPU copy so they load anywhere.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Literal, Union

from indexing.errors import IndexingError

try:
    import faiss
except ImportError:  # FAISS is an extra (faiss-cpu or faiss-gpu both install `faiss`): say which to add
    raise IndexingError(
        "FAISS is not installed; install it with `pip install 'etp-search[cpu]'` (or `[gpu]` for faiss-gpu)") from None

logger = logging.getLogger(__name__)

#: Where an index should run: "auto" (a GPU when faiss sees one), True / "true" (a GPU or an error), False / "false".
UseGpu = Union[bool, Literal["auto", "true", "false"]]

#: GPU index -> its CPU twin. Weak keys: dropping the GPU index drops the twin.
_TWINS: weakref.WeakKeyDictionary[faiss.Index, faiss.Index] = weakref.WeakKeyDictionary()


def gpu_available() -> bool:
    """True when this faiss build has GPU symbols and sees at least one device."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu") \
        and faiss.get_num_gpus() > 0


def resolve_use_gpu(use_gpu: UseGpu) -> bool:
    """Turn "auto" / True / False into a decision; True without a GPU is a user error."""
    if use_gpu == "auto":
        return gpu_available()
    if use_gpu is True or use_gpu == "true":
        if not gpu_available():
            raise IndexingError("a GPU index was requested but faiss sees no GPU; install the faiss-gpu build "
                                "(pip install 'etp-search[gpu]') or drop --gpu")
        return True
    if use_gpu is False or use_gpu == "false":
        return False
    raise IndexingError(f"use_gpu must be 'auto', True or False, not {use_gpu!r}")


_GPU_RES: Any = None  # faiss.StandardGpuResources, which CPU builds lack


def _gpu_resources() -> Any:
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    return _GPU_RES


def is_gpu_index(index: faiss.Index) -> bool:
    """A faiss GPU index (GpuIndexFlat, GpuIndexIVF...)."""
    return type(index).__name__.startswith("Gpu")


def to_gpu(index: faiss.Index, keep_twin: bool = True) -> faiss.Index:
    """Copy a CPU index to GPU 0; index types the GPU cannot hold stay on CPU (logged).

    With ``keep_twin`` the CPU index is kept as the copy's twin for filtered searches; pass False
    when it is about to be trained or filled through the GPU copy (the twin would be left behind).
    """
    if is_gpu_index(index):
        return index
    try:
        gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    except Exception as e:  # e.g. PQ code sizes the GPU kernels do not support
        logger.warning("keeping the index on CPU: faiss could not move it to the GPU (%s)", e)
        return index
    if keep_twin:
        _TWINS[gpu] = index
    return gpu


def to_cpu(index: faiss.Index) -> faiss.Index:
    """CPU version of an index (itself when already on CPU)."""
    if not is_gpu_index(index):
        return index
    return faiss.index_gpu_to_cpu(index)


def cpu_twin(index: faiss.Index, make: bool = False) -> faiss.Index | None:
    """The CPU copy a GPU index keeps for filtered searches (made now when ``make``); None for a CPU
    index, or for a GPU index without a twin yet."""
    if not is_gpu_index(index):
        return None
    twin = _TWINS.get(index)
    if twin is None and make:
        twin = _TWINS[index] = faiss.index_gpu_to_cpu(index)
    return twin
