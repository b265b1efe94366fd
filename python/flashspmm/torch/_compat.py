"""Bridges to core features this package relies on: ``SparseMatrix.from_array`` and ``SparseMatrix.blob_array``.

The core offers (or will offer) both:

- ``SparseMatrix.from_array(blob)`` wraps a 1-D uint8 array that holds a blob without copying it (host arrays
  validated in full; CUDA arrays: header and tile offset table), keeping a reference to the array;
- ``W.blob_array``: the array that holds the blob (the torch tensor for a matrix compressed from torch on a GPU).

When the installed core has them they are used as they are. Otherwise the functions below do the same through
today's API. SHIM: the fallback branches (``_from_array_shim``, ``_blob_array_shim``) are to be deleted once the
core's versions are on every supported install.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _arrays, _native
from .._matrix import SparseMatrix
from .._native import Error, check, ffi, lib

__all__ = ["from_array", "blob_array", "as_torch"]

_HEADER_BYTES = 128


def from_array(blob: torch.Tensor) -> SparseMatrix:
    """A SparseMatrix over the blob held by ``blob`` (1-D uint8 torch tensor, CPU or CUDA), without a copy."""
    if not isinstance(blob, torch.Tensor):
        raise TypeError(f"blob must be a torch tensor, got {type(blob).__qualname__}")
    if blob.dtype != torch.uint8 or blob.dim() != 1:
        raise TypeError(f"a blob must be a 1-D uint8 tensor, got dtype {blob.dtype} and shape {tuple(blob.shape)}")
    if not blob.is_contiguous():
        raise ValueError("a blob tensor must be contiguous; use blob.contiguous()")
    if hasattr(SparseMatrix, "from_array"):
        return SparseMatrix.from_array(blob)
    return _from_array_shim(blob)


def blob_array(W: SparseMatrix):
    """The array that holds W's blob (a torch tensor for matrices built by this package on a GPU)."""
    if hasattr(type(W), "blob_array"):
        return W.blob_array
    return _blob_array_shim(W)


def as_torch(array, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a torch tensor on ``like``'s device (numpy results of today's CPU paths are converted)."""
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":  # ml_dtypes bfloat16: reinterpret the bits
            return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16).to(like.device)
        return torch.from_numpy(np.ascontiguousarray(array)).to(like.device)
    return torch.from_dlpack(array)


# ---- SHIM: today's API -------------------------------------------------------------------------------------

def _from_array_shim(blob: torch.Tensor) -> SparseMatrix:
    if blob.device.type == "cpu":
        # a numpy view of the tensor's memory (its base keeps the storage alive), validated in full
        view = blob.detach().numpy()
        return SparseMatrix._from_validated_host(view)
    if blob.device.type != "cuda":
        raise ValueError(f"blob tensors on {blob.device.type!r} are not supported; use a CPU or CUDA tensor")
    index = blob.device.index if blob.device.index is not None else torch.cuda.current_device()
    if blob.data_ptr() % 16:
        raise ValueError("a device blob must start 16-byte aligned; pass a tensor that owns its memory "
                         "(blob.clone())")
    size = blob.numel()
    if size < _HEADER_BYTES:
        raise Error(lib.FSPMM_ERR_CORRUPT_BUFFER, f"a blob needs at least {_HEADER_BYTES} bytes, the tensor "
                                                  f"holds {size}")
    head = blob[:_HEADER_BYTES].cpu().numpy()
    header = ffi.new("fspmm_header_t *")
    check(lib.fspmm_header_read(_native.as_ptr(head.__array_interface__["data"][0]), head.size, header))
    total = int(header.total_bytes)
    if total > size:
        raise Error(lib.FSPMM_ERR_CORRUPT_BUFFER,
                    f"the blob header says {total} bytes but the tensor holds {size}: truncated blob")
    first, nbytes = int(header.offsets_offset), int(header.offsets_bytes)
    offsets = blob[first:first + nbytes].cpu().numpy().view(np.uint64).astype(np.int64)
    data_bytes = int(header.data_bytes)
    steps = np.diff(offsets)
    if (offsets[0] != 0 or offsets[-1] != data_bytes or (steps < 0).any() or (offsets % 16).any()
            or (steps.size and int(steps.max()) != int(header.max_tile_bytes))):
        raise Error(lib.FSPMM_ERR_CORRUPT_BUFFER, "the blob's tile offset table is inconsistent with its header "
                                                  "(corrupted blob)")
    return SparseMatrix._new(header, device_ptr=int(blob.data_ptr()), device_index=index, owner=blob,
                             origin=_arrays.Origin("torch", index))


def _blob_array_shim(W: SparseMatrix):
    if W.device == "cpu":
        return W.blob()
    owner = getattr(W, "_owner", None)
    if isinstance(owner, torch.Tensor):
        return owner
    # a matrix in memory from fspmm_device_malloc (flashspmm.load(..., device=...)): copy it into torch memory
    out = torch.empty(W.nbytes, dtype=torch.uint8, device=W.device)
    with _native.on_device(int(W.device.split(":")[1])):
        check(lib.fspmm_memcpy(_native.as_ptr(out.data_ptr()), _native.as_ptr(W.data_ptr), W.nbytes,
                               lib.FSPMM_COPY_DEVICE_TO_DEVICE, ffi.NULL))
    return out
