"""flashspmm: unstructured-sparse LLM weights on NVIDIA Tensor Cores.

Compress a pruned weight matrix once, keep it compressed on the GPU, and multiply with it:

    >>> import numpy as np, flashspmm
    >>> W = flashspmm.compress(w_fp16)            # [M, K] numpy / torch / cupy, float16 or bfloat16
    >>> y = flashspmm.linear(x, W, bias)         # like torch.nn.functional.linear

The heavy lifting is in the C library libflashspmm.so (loaded through cffi); see include/flashspmm.h for the
C API and docs/FORMATS.md for the blob layout.
"""

from __future__ import annotations

import os
from typing import Any

from . import _native
from ._linear import linear
from ._matrix import SparseMatrix, compress, load
from ._model import load_model, save_model
from ._native import Error
from ._pointer import ExternalArray, from_pointer
from ._prune import prune

__all__ = [
    "Error",
    "SparseMatrix",
    "ExternalArray",
    "compress",
    "load",
    "linear",
    "prune",
    "from_pointer",
    "save_model",
    "load_model",
    "info",
    "cmake_dir",
    "include_dir",
    "library_path",
    "device_count",
    "set_host_threads",
    "__version__",
]

__version__ = _native.version_string()


def device_count() -> int:
    """Number of CUDA devices the library can use (0 without a GPU or driver)."""
    return _native.device_count()


def set_host_threads(threads: int) -> None:
    """Threads used by the CPU functions (compress, to_dense, CPU linear); 0 = all hardware threads."""
    _native.check(_native.lib.fspmm_set_host_threads(int(threads)))


def cmake_dir() -> str:
    """Folder holding flashspmmConfig.cmake: pass it as ``-Dflashspmm_DIR=...`` to CMake."""
    return os.path.join(_native.package_dir, "cmake")


def include_dir() -> str:
    """Folder holding flashspmm.h."""
    return os.path.join(_native.package_dir, "include")


def library_path() -> str:
    """Path of the loaded libflashspmm.so."""
    return os.path.abspath(_native.library_path)


def info() -> dict[str, Any]:
    """A dict describing the installation: version, build info, CUDA device count, paths."""
    try:
        devices = _native.device_count()
    except Error as exc:  # report, don't fail: info() is what people run when something is wrong
        devices = f"error: {exc}"
    return {
        "version": __version__,
        "build": _native.build_info(),
        "device_count": devices,
        "library": library_path(),
        "include_dir": include_dir(),
        "cmake_dir": cmake_dir(),
    }
