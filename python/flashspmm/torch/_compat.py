"""The core features this package relies on, with torch-specific checks: ``SparseMatrix.from_array`` (wraps a 1-D
uint8 array holding a blob without a copy: host arrays validated in full, CUDA arrays' header and tile offset
table) and ``SparseMatrix.blob_array`` (the array holding the blob: the torch tensor for a matrix compressed from
torch on a GPU)."""

from __future__ import annotations

import numpy as np
import torch

from .._matrix import SparseMatrix

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
    return SparseMatrix.from_array(blob)


def blob_array(W: SparseMatrix):
    """The array that holds W's blob (a torch tensor for matrices built by this package on a GPU)."""
    return W.blob_array


def as_torch(array, like: torch.Tensor) -> torch.Tensor:
    """``array`` as a torch tensor on ``like``'s device (numpy arrays are converted, DLPack objects imported)."""
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        if array.dtype.name == "bfloat16":  # ml_dtypes bfloat16: reinterpret the bits
            return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16).to(like.device)
        return torch.from_numpy(np.ascontiguousarray(array)).to(like.device)
    return torch.from_dlpack(array)
