"""The array functions the rest of flashspmm calls, over the per-framework adapters of flashspmm._adapters.

:func:`describe` turns an array (numpy; a torch tensor; a cupy array; a JAX array; any object with
``__cuda_array_interface__`` or ``__dlpack__``) into an :class:`ArrayInfo`: address, shape, strides in elements,
dtype name, device and stream. :func:`empty_like_framework` allocates an output in the same library, on the same
device, and :func:`to_caller` hands a result back in it. What differs between libraries is in the adapters (one
module each); what is left here is framework-neutral: layout checks, stream arguments, the :class:`Origin` of a
result. torch, cupy and jax are imported only when an object of theirs is passed in.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np

from . import _adapters
from ._adapters import ArrayInfo, Device, adapter_for, adapter_named, numpy_dtype
from ._adapters import c_strides as _c_strides  # noqa: F401  (kept for callers of the old private name)
from ._adapters import module_of as _module_of
from ._adapters.cai import DeviceBuffer, free_device
from ._adapters.dlpack import JAX_MODULES, HostExport

__all__ = [
    "ArrayInfo",
    "Device",
    "describe",
    "empty_like_framework",
    "to_caller",
    "DeviceBuffer",
    "HostExport",
    "free_device",
    "resolve_stream",
    "numpy_dtype",
    "Origin",
    "workspace",
    "require_half",
    "matrix_view",
    "flatten_leading",
    "reshape_copy",
    "framework_of",
    "record_use",
    "torch_record_stream",
    "owner_stream",
    "used_on",
    "host_uint8_view",
    "is_immutable",
    "ArrayLike",
    "DeviceLike",
    "DTypeLike",
    "StreamLike",
]

# Type aliases of the public API (documentation for readers and type checkers; nothing is checked against them).
ArrayLike = Any  # numpy / torch / cupy / JAX array, __cuda_array_interface__ or __dlpack__ object, DLPack capsule
DeviceLike = Union[str, int, Any]  # "cpu", "cuda", "cuda:N", N, or a torch.device
DTypeLike = Any  # "float16" / "bfloat16" (...), or a numpy / torch / JAX / ml_dtypes dtype
StreamLike = Any  # an int cudaStream_t, or an object with .cuda_stream (torch) or .ptr (cupy)

_HALF = ("float16", "bfloat16")


def describe(obj: Any, what: str = "array") -> ArrayInfo:
    """Describe ``obj`` as an :class:`ArrayInfo`; TypeError if it is not an array flashspmm understands."""
    return adapter_for(obj, what).describe(obj, what)


def require_half(info: ArrayInfo, what: str) -> None:
    """TypeError unless the array is float16 or bfloat16."""
    if info.dtype not in _HALF:
        raise TypeError(f"{what} has dtype {info.dtype}; flashspmm supports float16 and bfloat16")


def matrix_view(info: ArrayInfo, what: str) -> tuple[int, int, int]:
    """Check a 2-D array is row-major with unit stride on its last dimension; return (rows, cols, ld)."""
    if info.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {info.shape}")
    rows, cols = info.shape
    if rows == 0 or cols == 0:  # empty: strides carry no meaning
        return rows, cols, max(cols, 1)
    if cols > 1 and info.strides[1] != 1:
        raise ValueError(
            f"{what} must have unit stride on its last dimension (row-major), got strides {info.strides} "
            f"(elements); make it contiguous first: {info.contiguous_hint()}"
        )
    ld = info.strides[0]
    if rows <= 1:
        ld = max(cols, 1)
    elif ld < cols:
        raise ValueError(
            f"{what} rows overlap or run backwards (row stride {ld} < {cols} columns); make it contiguous "
            f"first: {info.contiguous_hint()}"
        )
    return rows, cols, ld


def flatten_leading(info: ArrayInfo) -> ArrayInfo | None:
    """Collapse all dimensions but the last into one, without copying; None if the strides do not allow it."""
    if info.ndim == 2:
        return info
    if info.ndim < 2:
        raise ValueError("flatten_leading needs at least 2 dimensions")
    shape, strides = info.shape, info.strides
    rows = 1
    for n in shape[:-1]:
        rows *= n
    for i in range(len(shape) - 2):
        if shape[i] > 1 and shape[i + 1] > 1 and strides[i] != strides[i + 1] * shape[i + 1]:
            return None
    # the row stride: that of the innermost leading dimension with extent > 1 (any if all are 1)
    row_stride = shape[-1]
    for i in range(len(shape) - 2, -1, -1):
        if shape[i] > 1:
            row_stride = strides[i]
            break
    return ArrayInfo(
        obj=info.obj,
        ptr=info.ptr,
        shape=(rows, shape[-1]),
        strides=(row_stride, strides[-1]),
        dtype=info.dtype,
        device=info.device,
        stream=info.stream,
        framework=info.framework,
    )


def reshape_copy(info: ArrayInfo, shape: tuple[int, ...], stream: int | None = None) -> Any:
    """A C-contiguous copy of the array reshaped to ``shape``, in its own framework; on a CUDA device the copy
    is made on ``stream`` (its memory is then ordered on that stream). ValueError where the framework has none."""
    return info.adapter.contiguous_copy(info, shape, stream)


def framework_of(obj: Any) -> str | None:
    """ "torch", "cupy", "numpy" or the module name of an array object (None for None)."""
    if obj is None:
        return None
    if isinstance(obj, np.ndarray):
        return "numpy"
    return _module_of(obj)


def record_use(array: Any, stream: int) -> bool:
    """Keep ``array``'s memory from being reused before work queued on ``stream`` has run; False when its
    library cannot (the caller then waits for ``stream`` before it lets the array go)."""
    return adapter_for(array).record_use(array, stream)


def torch_record_stream(tensor: Any, stream: int) -> None:
    """Tell torch's caching allocator that ``tensor`` is used on ``stream`` (when that is not its own)."""
    _adapters.torch.ADAPTER.record_use(tensor, stream)


def owner_stream(owner: Any) -> int:
    """The stream an array's memory is ordered on by its allocator (cupy: the current stream; else 0)."""
    return adapter_for(owner).owner_stream(owner)


def used_on(stream: int, info: ArrayInfo, *arrays: Any) -> None:
    """Arrays allocated by flashspmm in ``info``'s framework for a call queued on ``stream``: keep the
    allocator from reusing their memory before that stream has run (torch: record_stream; cupy arrays were
    allocated in that stream's order and flashspmm buffers are freed through cudaFree, which waits)."""
    if stream == info.stream:
        return
    adapter = info.adapter
    for a in arrays:
        if a is not None:
            adapter.record_use(a, stream)


def host_uint8_view(info: ArrayInfo) -> np.ndarray:
    """A numpy view of a 1-D host uint8 array described by ``info`` (no copy)."""
    if info.framework == "numpy":
        return info.obj
    import ctypes

    n = info.shape[0]
    return np.frombuffer((ctypes.c_uint8 * max(n, 1)).from_address(info.ptr), dtype=np.uint8)[:n]


def is_immutable(obj: Any) -> bool:
    """Whether obj is an array of a library whose arrays cannot be written (JAX)."""
    return _module_of(obj) in JAX_MODULES


def workspace(info: ArrayInfo, nbytes: int, stream_handle: int) -> tuple[Any, int]:
    """A workspace of nbytes in info's framework, safe to use on stream_handle: (array, device address).

    (None, 0) when nbytes is 0.
    """
    if nbytes == 0:
        return None, 0
    return info.adapter.workspace(nbytes, info, stream_handle)


def empty_like_framework(info: ArrayInfo, shape: tuple[int, ...], dtype: str | None = None) -> Any:
    """An uninitialised array of ``shape`` in ``info``'s framework and device (dtype defaults to info's)."""
    return info.adapter.empty(shape, dtype or info.dtype, info.device_index)


class Origin:
    """The array library and device that results go back to, without a reference to the caller's array.

    A device :class:`flashspmm.SparseMatrix` remembers the origin of the matrix it was compressed from, so
    ``to_dense()`` can answer in the same framework. ``framework`` is an :attr:`ArrayInfo.framework`;
    ``from_dlpack`` the importer of a DLPack producer (:meth:`flashspmm._adapters.Adapter.importer`).
    """

    __slots__ = ("framework", "device_index", "_from_dlpack", "_adapter")

    def __init__(self, framework: str, device_index: int | None, from_dlpack: Callable | None = None):
        self.framework = framework
        self.device_index = device_index
        self._from_dlpack = from_dlpack
        self._adapter = adapter_named(framework)

    @classmethod
    def of(cls, info: ArrayInfo) -> Origin:
        return cls(info.framework, info.device_index, info.adapter.importer(info.obj))

    @property
    def is_cuda(self) -> bool:
        return self.device_index is not None

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        """An uninitialised array (dtype "float16", "bfloat16" or "uint8") on this origin's device."""
        return self._adapter.empty(shape, dtype, self.device_index)

    def stream(self) -> int:
        """The framework's current CUDA stream on this device as an int (0: the legacy default stream)."""
        return self._adapter.current_stream(self.device_index)

    def wrap(self, result: Any, stream: int | None = None) -> Any:
        """``result`` (allocated by :meth:`empty`, written on ``stream``) as the caller's framework sees it
        (zero-copy; a DLPack consumer gets it ready on its own stream)."""
        return self._adapter.wrap(result, stream, self._from_dlpack)

    def from_host(self, array: np.ndarray) -> Any:
        """A host numpy array (float16 / bfloat16) as this origin's framework's CPU array (no copy)."""
        return self._adapter.wrap(self._adapter.from_host(array), None, self._from_dlpack)


def to_caller(result: Any, info: ArrayInfo, stream: int | None = None) -> Any:
    """``result`` (allocated by flashspmm for ``info``'s call, written on ``stream``) in the input's own library,
    zero-copy: torch CPU results are torch already; DLPack producers (JAX) get it through their from_dlpack."""
    return Origin.of(info).wrap(result, stream)


def resolve_stream(stream: Any, info: ArrayInfo) -> int:
    """Stream handle for a device call: the given one (int, or object with .cuda_stream / .ptr),
    else the array framework's current stream."""
    if stream is None:
        return info.stream or 0
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(
        f"stream must be an int handle (cudaStream_t) or an object with .cuda_stream (torch) or .ptr (cupy); "
        f"got {type(stream).__qualname__}"
    )
