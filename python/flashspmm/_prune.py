"""prune(): magnitude pruning of a dense weight matrix, returned in the caller's framework."""

from __future__ import annotations

import ctypes
import numbers

import numpy as np

from . import _arrays, _native
from ._arrays import ArrayLike
from ._matrix import DTYPES, _addr
from ._native import check, ffi, lib

__all__ = ["prune"]

_SCOPES = {"row": lib.FSPMM_PRUNE_ROW, "tensor": lib.FSPMM_PRUNE_TENSOR}


def prune(w: ArrayLike, sparsity: float, *, scope: str = "row") -> ArrayLike:
    """A copy of ``w`` with the entries of smallest magnitude set to zero.

    Exactly ``round(sparsity * n)`` entries are zero afterwards (round half to even), where n is the row
    length (``scope="row"``: every row gets the same sparsity) or the matrix size (``scope="tensor"``).
    Entries that are already zero count; NaN ranks above every number; ties go to the lower position, so the
    result is deterministic.

    Args:
        w: 2-D float16 or bfloat16 matrix [M, K] (numpy, torch, cupy, ``__cuda_array_interface__`` or DLPack).
        sparsity: fraction of zeros wanted, in [0, 1].
        scope: "row" or "tensor".

    Returns:
        the pruned copy, in w's framework and on w's device; ``w`` is not modified. Host matrices are pruned
        on the CPU (``fspmm_prune_host``); device matrices on their GPU (``fspmm_prune``), on their
        framework's current stream, into memory allocated by their framework, with the same result.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1], got {type(sparsity).__qualname__}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1] (e.g. 0.7 for 70 % zeros), got {sparsity}")
    if scope not in _SCOPES:
        raise ValueError(f"scope must be 'row' or 'tensor', got {scope!r}")
    info = _arrays.describe(w, "w")
    _arrays.require_half(info, "w")
    if info.ndim != 2 or 0 in info.shape:
        raise ValueError(f"w must be a non-empty 2-D matrix [M, K], got shape {info.shape}")
    m, k, ld = _arrays.matrix_view(info, "w")
    if info.is_cuda:
        return _prune_device(info, m, k, sparsity, _SCOPES[scope])
    # a contiguous copy of the (possibly strided) host matrix
    span = (m - 1) * ld + k
    flat = np.frombuffer((ctypes.c_uint16 * span).from_address(info.ptr), dtype=np.uint16)
    host = np.array(np.lib.stride_tricks.as_strided(flat, shape=(m, k), strides=(ld * 2, 2)))
    check(lib.fspmm_prune_host(_native.as_ptr(_addr(host)), m, k, k, DTYPES[info.dtype], sparsity, _SCOPES[scope]))
    return _arrays.Origin.of(info).from_host(host.view(_arrays.numpy_dtype(info.dtype)))


def _prune_device(info, m, k, sparsity, scope):
    """Prune a copy of a device matrix on its GPU; the copy and the workspace come from its framework."""
    stream = _arrays.resolve_stream(None, info)
    out = _arrays.empty_like_framework(info, (m, k))
    with _native.on_device(info.device_index):
        info.adapter.copy_into(info, out, stream)  # in stream order: torch and cupy copy, others through the C API
        ws_bytes = ffi.new("size_t *")
        check(lib.fspmm_prune_workspace_size(m, k, scope, ws_bytes))
        nbytes = int(ws_bytes[0])
        ws, ws_ptr = _arrays.workspace(info, nbytes, stream)
        check(
            lib.fspmm_prune(
                _native.as_ptr(_arrays.describe(out, "out").ptr),
                m,
                k,
                k,
                DTYPES[info.dtype],
                sparsity,
                scope,
                _native.as_ptr(ws_ptr),
                nbytes,
                _native.as_ptr(stream),
            )
        )
    del ws  # freed by its framework, ordered after the work on the stream
    return _arrays.to_caller(out, info, stream)
