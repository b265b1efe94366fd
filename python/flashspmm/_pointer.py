"""from_pointer(): memory given as a raw address (for callers with C pointers rather than array objects)."""

from __future__ import annotations

import ctypes
import numbers
from collections.abc import Sequence

import numpy as np

from . import _adapters
from ._arrays import DeviceLike, DTypeLike

__all__ = ["ExternalArray", "from_pointer"]

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "uint16": 2, "int16": 2, "uint8": 1}


class ExternalArray:
    """A view of device memory owned by someone else, described by address, shape, dtype and strides.

    Made by :func:`from_pointer`; accepted wherever flashspmm takes an array, and readable by other libraries
    through ``__cuda_array_interface__`` (v3). flashspmm never frees the memory: the caller keeps it alive
    for as long as the view (and any work queued on it) is in use.
    """

    def __init__(
        self,
        ptr: int,
        shape: tuple[int, ...],
        dtype: str,
        device_index: int,
        strides: tuple[int, ...],
        stream: int,
        readonly: bool,
    ):
        self.ptr, self.shape, self.dtype = ptr, shape, dtype
        self.device_index, self.strides, self.stream, self.readonly = device_index, strides, stream, readonly

    def _flashspmm_info(self) -> _adapters.ArrayInfo:
        """The :class:`flashspmm._adapters.ArrayInfo` of this view (read by the "external" adapter)."""
        return _adapters.ArrayInfo(
            obj=self,
            ptr=self.ptr,
            shape=self.shape,
            strides=self.strides,
            dtype=self.dtype,
            device=("cuda", self.device_index),
            stream=self.stream,
            framework="external",
            read_only=self.readonly,
        )

    @property
    def __cuda_array_interface__(self) -> dict:
        typestr = {"float16": "<f2", "bfloat16": "<V2", "uint16": "<u2", "int16": "<i2", "uint8": "|u1"}[self.dtype]
        item = _ITEMSIZE[self.dtype]
        return {
            "shape": self.shape,
            "typestr": typestr,
            "data": (self.ptr, self.readonly),
            "strides": tuple(s * item for s in self.strides),
            "version": 3,
            "stream": self.stream or None,
        }

    def __repr__(self):
        return (
            f"ExternalArray(ptr=0x{self.ptr:x}, shape={self.shape}, dtype={self.dtype}, "
            f"device=cuda:{self.device_index}, strides={self.strides})"
        )


def _int(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(value).__qualname__}")
    return int(value)


def from_pointer(
    ptr: int,
    shape: int | Sequence[int],
    dtype: DTypeLike,
    *,
    device: DeviceLike = "cuda",
    strides: Sequence[int] | None = None,
    stream: int | None = None,
    readonly: bool = False,
) -> np.ndarray | ExternalArray:
    """An array view of memory at a raw address, for callers that hold C pointers rather than array objects.

    Args:
        ptr: the address (int), e.g. from ``cudaMalloc`` or ``ctypes``; not 0, aligned to the element size.
        shape: tuple of non-negative ints.
        dtype: "float16", "bfloat16", "uint16", "int16" or "uint8", as a string or a numpy / torch / JAX dtype.
        device: "cuda", "cuda:N" or N for device memory (a view with ``__cuda_array_interface__``), or "cpu"
            for host memory (a numpy array on that memory, zero-copy).
        strides: in elements, one per dimension; default C-contiguous.
        stream: device views: the stream (int ``cudaStream_t``) the memory is ready on; flashspmm runs on it
            unless given another ``stream=``. Default: the legacy default stream.
        readonly: refuse the view as an output.

    The memory is not copied and not owned: keep it alive while the view is used.
    """
    from ._matrix import _parse_device  # late import: _matrix imports _arrays

    ptr = _int(ptr, "ptr")
    name = _adapters.dtype_name(dtype)
    if name not in _ITEMSIZE:
        raise ValueError(f"dtype must be one of {', '.join(_ITEMSIZE)}, got {dtype!r}")
    dtype = name
    item = _ITEMSIZE[dtype]
    if ptr <= 0 or ptr % item:
        raise ValueError(f"ptr = 0x{ptr:x} is not a valid address of {dtype} elements (non-zero, {item}-byte aligned)")
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    shape = tuple(_int(n, "shape entries") for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"shape entries must be >= 0, got {shape}")
    if strides is None:
        strides = _adapters.c_strides(shape)
    strides = tuple(_int(s, "strides entries") for s in strides)
    if len(strides) != len(shape):
        raise ValueError(f"strides {strides} must have one entry per dimension of shape {shape}")
    if any(s < 0 for s in strides):
        raise ValueError(f"negative strides are not supported, got {strides}")
    index = _parse_device(device)
    if index is None:
        span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
        if readonly:
            raise ValueError("readonly host views are not supported: pass a read-only numpy array instead")
        buf = (ctypes.c_char * max(span * item, 1)).from_address(ptr)
        flat = np.frombuffer(buf, dtype=np.uint8)[: span * item]
        np_dtype = (
            np.dtype(np.uint8)
            if dtype == "uint8"
            else (_adapters.numpy_dtype(dtype) if dtype in ("float16", "bfloat16") else np.dtype(dtype))
        )
        base = flat.view(np_dtype)
        return np.lib.stride_tricks.as_strided(base, shape=shape, strides=tuple(s * item for s in strides))
    if stream is not None:
        stream = _int(stream, "stream")
    return ExternalArray(ptr, shape, dtype, index, strides, stream or 0, bool(readonly))
