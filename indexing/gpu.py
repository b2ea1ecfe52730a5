"""Where a FAISS index runs: GPU detection, the "auto"/True/False choice, CPU <-> GPU copies.

A GPU index keeps a CPU twin (made lazily) for filtered searches that many GPU builds reject;
index files are always written from a CPU copy so they load anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from indexing.errors import IndexingError

try:
    import faiss
except ImportError:  # FAISS is an extra (faiss-cpu or faiss-gpu both install `faiss`): say which to add
    raise IndexingError(
        "FAISS is not installed; install it with `pip install 'etp-search[cpu]'` (or `[gpu]` for faiss-gpu)") from None

logger = logging.getLogger(__name__)



def gpu_available() -> bool:
    """True when this faiss build has GPU symbols and sees at least one device."""
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu") \
        and faiss.get_num_gpus() > 0


def resolve_use_gpu(use_gpu: bool | str) -> bool:
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


_GPU_RES: Any = None


def _gpu_resources() -> Any:
    global _GPU_RES
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()
    return _GPU_RES


def is_gpu_index(index: Any) -> bool:
    return type(index).__name__.startswith("Gpu") or bool(getattr(index, "_etp_on_gpu", False))


def to_gpu(index: Any) -> Any:
    """Copy a CPU index to GPU 0; index types the GPU cannot hold stay on CPU (logged)."""
    if is_gpu_index(index):
        return index
    try:
        gpu = faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    except Exception as e:  # e.g. PQ code sizes the GPU kernels do not support
        logger.warning("keeping the index on CPU: faiss could not move it to the GPU (%s)", e)
        return index
    gpu._etp_cpu = index  # CPU twin for filtered searches the GPU index cannot take
    return gpu


def to_cpu(index: Any) -> Any:
    """CPU version of an index (itself when already on CPU)."""
    if not is_gpu_index(index):
        return index
    return faiss.index_gpu_to_cpu(index)



def cpu_twin(index: Any, make: bool = False) -> Any | None:
    """The CPU copy a GPU index keeps for filtered searches (made now when ``make``)."""
    twin = getattr(index, "_etp_cpu", None)
    if twin is None and make and is_gpu_index(index):
        twin = index._etp_cpu = faiss.index_gpu_to_cpu(index)
    return twin
