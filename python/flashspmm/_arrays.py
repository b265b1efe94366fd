"""Minimal adapters between array libraries and the C API.

:func:`describe` turns an array (numpy; a torch tensor; a cupy array; any object with
``__cuda_array_interface__``) into an :class:`ArrayInfo`: address, shape, strides in elements, dtype name,
device and stream. :func:`empty_like_framework` allocates an output in the same library, on the same device.
torch and cupy are imported only when an object of theirs is passed in.
"""

import sys
import warnings
import weakref
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np

from . import _dlpack, _native
from ._native import ffi, lib

__all__ = ["ArrayInfo", "describe", "empty_like_framework", "to_caller", "DeviceBuffer", "resolve_stream",
           "numpy_dtype", "Origin", "workspace"]

Device = Union[str, Tuple[str, int]]  # "cpu" or ("cuda", index)

_HALF = ("float16", "bfloat16")


@dataclass
class ArrayInfo:
    """What the C API needs to know about one array.

    ``strides`` are in elements; ``device`` is ``"cpu"`` or ``("cuda", index)``; ``stream`` is the
    framework's current CUDA stream as an integer handle (0 = legacy default stream) or None on the CPU;
    ``framework`` is one of ``"numpy"``, ``"torch"``, ``"cupy"``, ``"cuda_array_interface"``, ``"dlpack"``.
    ``keep`` holds what must stay alive while ``ptr`` is used (a consumed DLPack tensor); ``read_only`` is
    the DLPack read-only flag.
    """

    obj: object
    ptr: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]
    dtype: str
    device: Device
    stream: Optional[int]
    framework: str
    keep: object = None
    read_only: bool = False
    requires_grad: bool = False  # a torch tensor that autograd would track (flashspmm computes no gradients)

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def is_cuda(self):
        return self.device != "cpu"

    @property
    def device_index(self):
        return self.device[1] if self.is_cuda else None

    @property
    def device_name(self):
        return "cpu" if self.device == "cpu" else f"cuda:{self.device[1]}"

    def contiguous_hint(self):
        """How to make this array contiguous, in its own framework's words."""
        if self.framework == "numpy":
            return "np.ascontiguousarray(a)"
        if self.framework == "cupy":
            return "cupy.ascontiguousarray(a)"
        return "a.contiguous()"


def _module_of(obj):
    return type(obj).__module__.split(".", 1)[0]


def _bfloat16_numpy():
    """The ml_dtypes bfloat16 numpy dtype, or None if ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(name):
    """numpy dtype for "float16" / "bfloat16" (the latter needs ml_dtypes)."""
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        dt = _bfloat16_numpy()
        if dt is None:
            raise ModuleNotFoundError(
                "bfloat16 numpy arrays need the ml_dtypes package: pip install ml_dtypes "
                "(or use to_dense(raw=True) for the raw uint16 bit patterns)")
        return dt
    raise ValueError(f"unsupported dtype {name!r}")


def _byte_strides_to_elements(strides, itemsize, what):
    out = []
    for s in strides:
        if s % itemsize:
            raise ValueError(f"{what} has a stride of {s} bytes, not a multiple of its {itemsize}-byte element")
        out.append(s // itemsize)
    return tuple(out)


def _c_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


def _describe_numpy(a):
    if a.dtype.byteorder == ">":
        raise TypeError("big-endian arrays are not supported; convert with a.astype(a.dtype.newbyteorder('<'))")
    return ArrayInfo(
        obj=a, ptr=int(a.__array_interface__["data"][0]), shape=tuple(a.shape),
        strides=_byte_strides_to_elements(a.strides, a.itemsize, "the array"),
        dtype=a.dtype.name, device="cpu", stream=None, framework="numpy", read_only=not a.flags.writeable)


def _describe_torch(t):
    torch = sys.modules["torch"]
    dtype = str(t.dtype).replace("torch.", "")
    if t.device.type == "cuda":
        index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        device = ("cuda", index)
        stream = int(torch.cuda.current_stream(index).cuda_stream)
    elif t.device.type == "cpu":
        device, stream = "cpu", None
    else:
        raise ValueError(f"torch tensors on {t.device.type!r} are not supported; use a CUDA or CPU tensor")
    return ArrayInfo(obj=t, ptr=int(t.data_ptr()), shape=tuple(t.shape), strides=tuple(t.stride()),
                     dtype=dtype, device=device, stream=stream, framework="torch",
                     requires_grad=bool(t.requires_grad and torch.is_grad_enabled()))


def _describe_cupy(a):
    cupy = sys.modules["cupy"]
    index = int(a.device.id)
    with cupy.cuda.Device(index):
        stream = int(cupy.cuda.get_current_stream().ptr)
    return ArrayInfo(obj=a, ptr=int(a.data.ptr), shape=tuple(a.shape),
                     strides=_byte_strides_to_elements(a.strides, a.itemsize, "the array"),
                     dtype=a.dtype.name, device=("cuda", index), stream=stream, framework="cupy")


def _typestr_dtype(obj, typestr):
    """dtype name from a __cuda_array_interface__ typestr, with the bfloat16 special case."""
    if typestr[1:] == "V2":  # opaque 2-byte type: bfloat16 in frameworks that know it
        name = str(getattr(obj, "dtype", ""))
        if "bfloat16" in name:
            return "bfloat16"
        return "void16"
    try:
        return np.dtype(typestr).name
    except TypeError:
        return typestr


def _describe_cai(obj):
    cai = obj.__cuda_array_interface__
    shape = tuple(int(n) for n in cai["shape"])
    dtype = _typestr_dtype(obj, cai["typestr"])
    itemsize = int(cai["typestr"][2:]) if cai["typestr"][2:].isdigit() else 1
    if cai.get("strides") is None:
        strides = _c_strides(shape)
    else:
        strides = _byte_strides_to_elements(cai["strides"], itemsize, "the array")
    ptr = int(cai["data"][0])
    # The interface does not name the device: ask the driver which one holds the memory.
    try:
        index = _native.pointer_device(ptr) if ptr else _native.get_device()
    except _native.Error:  # no driver or device: the array cannot be used on a GPU anyway; say so later
        index = 0
    if index < 0:
        raise ValueError("this __cuda_array_interface__ array points at host memory; pass a numpy array for host "
                         "data")
    stream = cai.get("stream")
    return ArrayInfo(obj=obj, ptr=ptr, shape=shape, strides=strides, dtype=dtype, device=("cuda", index),
                     stream=0 if stream is None else int(stream), framework="cuda_array_interface",
                     read_only=bool(cai["data"][1]))


def _describe_dlpack(obj, what):
    """Any object with ``__dlpack__`` (JAX arrays, ...) or a DLPack capsule, consumed without a copy.

    For CUDA producers flashspmm asks for the legacy default stream (``stream=1`` in the protocol) and runs
    on it unless ``stream=`` is given to :func:`flashspmm.linear`.
    """
    device = None
    if not _dlpack.is_capsule(obj) and hasattr(obj, "__dlpack_device__"):
        device = obj.__dlpack_device__()
    cuda = device is not None and int(device[0]) in (_dlpack.DEVICE_CUDA, _dlpack.DEVICE_CUDA_MANAGED)
    imported = _dlpack.import_array(obj, stream=1 if cuda else None)
    if imported.device_type in (_dlpack.DEVICE_CPU, _dlpack.DEVICE_CUDA_HOST):
        where, stream = "cpu", None
    elif imported.device_type in (_dlpack.DEVICE_CUDA, _dlpack.DEVICE_CUDA_MANAGED):
        where, stream = ("cuda", imported.device_id), 0
    else:
        raise ValueError(f"{what} lives on DLPack device type {imported.device_type}; flashspmm reads CPU and "
                         f"CUDA memory")
    return ArrayInfo(obj=obj, ptr=imported.ptr, shape=imported.shape, strides=imported.strides,
                     dtype=imported.dtype, device=where, stream=stream, framework="dlpack", keep=imported,
                     read_only=imported.read_only)


def describe(obj, what="array"):
    """Describe ``obj`` as an :class:`ArrayInfo`; TypeError if it is not an array flashspmm understands."""
    if isinstance(obj, np.ndarray):
        return _describe_numpy(obj)
    if hasattr(obj, "_flashspmm_info"):  # flashspmm.from_pointer views know their device
        return obj._flashspmm_info()
    module = _module_of(obj)
    if module == "torch" and hasattr(obj, "data_ptr"):
        return _describe_torch(obj)
    if module == "cupy" and hasattr(obj, "__cuda_array_interface__"):
        return _describe_cupy(obj)
    if module in ("jax", "jaxlib") and hasattr(obj, "__dlpack__"):
        # JAX GPU arrays also offer __cuda_array_interface__, but only DLPack leads back to a JAX result
        return _describe_dlpack(obj, what)
    if hasattr(obj, "__cuda_array_interface__"):
        return _describe_cai(obj)
    if hasattr(obj, "__dlpack__") or _dlpack.is_capsule(obj):
        return _describe_dlpack(obj, what)
    raise TypeError(
        f"{what} must be a numpy array, a torch tensor, a cupy array, an object with __cuda_array_interface__ "
        f"or __dlpack__ (JAX, ...); got {type(obj).__module__}.{type(obj).__qualname__}")


def require_half(info, what):
    """TypeError unless the array is float16 or bfloat16."""
    if info.dtype not in _HALF:
        raise TypeError(f"{what} has dtype {info.dtype}; flashspmm supports float16 and bfloat16")


def matrix_view(info, what):
    """Check a 2-D array is row-major with unit stride on its last dimension; return (rows, cols, ld)."""
    if info.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {info.shape}")
    rows, cols = info.shape
    if rows == 0 or cols == 0:  # empty: strides carry no meaning
        return rows, cols, max(cols, 1)
    if cols > 1 and info.strides[1] != 1:
        raise ValueError(
            f"{what} must have unit stride on its last dimension (row-major), got strides {info.strides} "
            f"(elements); make it contiguous first: {info.contiguous_hint()}")
    ld = info.strides[0]
    if rows <= 1:
        ld = max(cols, 1)
    elif ld < cols:
        raise ValueError(
            f"{what} rows overlap or run backwards (row stride {ld} < {cols} columns); make it contiguous "
            f"first: {info.contiguous_hint()}")
    return rows, cols, ld


def flatten_leading(info):
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
    return ArrayInfo(obj=info.obj, ptr=info.ptr, shape=(rows, shape[-1]), strides=(row_stride, strides[-1]),
                     dtype=info.dtype, device=info.device, stream=info.stream, framework=info.framework)


def reshape_copy(info, shape, stream=None):
    """A C-contiguous copy of the array reshaped to ``shape``, in its own framework; on a CUDA device the copy
    is made on ``stream`` (its memory is then ordered on that stream)."""
    obj = info.obj
    if info.framework == "numpy":
        return np.ascontiguousarray(obj).reshape(shape)
    if info.framework == "torch":
        torch = sys.modules["torch"]
        if info.is_cuda and stream is not None and stream != info.stream:
            with torch.cuda.stream(_torch_external_stream(stream, obj.device)):
                return obj.contiguous().reshape(shape)
        return obj.contiguous().reshape(shape)
    if info.framework == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(info.device_index):
            if stream is not None and stream != info.stream:
                with _cupy_external_stream(stream):
                    return cupy.ascontiguousarray(obj).reshape(shape)
            return cupy.ascontiguousarray(obj).reshape(shape)
    raise ValueError("this array's leading dimensions cannot be flattened without a copy; make it contiguous")


def _torch_external_stream(handle, device):
    # ExternalStream is deprecated in newer torch but still the way to wrap a raw handle
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ExternalStream.*")
        return sys.modules["torch"].cuda.ExternalStream(handle, device=device)


def _cupy_external_stream(handle):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ExternalStream.*")
        return sys.modules["cupy"].cuda.ExternalStream(handle)


def framework_of(obj):
    """"torch", "cupy", "numpy" or the module name of an array object (None for None)."""
    if obj is None:
        return None
    if isinstance(obj, np.ndarray):
        return "numpy"
    return _module_of(obj)


def torch_record_stream(tensor, stream):
    """Tell torch's caching allocator that ``tensor`` is used on ``stream`` (when that is not its own)."""
    torch = sys.modules["torch"]
    if tensor.device.type != "cuda" or stream == int(torch.cuda.current_stream(tensor.device).cuda_stream):
        return
    tensor.record_stream(_torch_external_stream(stream, tensor.device))


def owner_stream(owner):
    """The stream an array's memory is ordered on by its allocator (cupy: the current stream; else 0)."""
    if framework_of(owner) == "cupy":
        return int(sys.modules["cupy"].cuda.get_current_stream().ptr)
    return 0


def used_on(stream, info, *arrays):
    """Arrays allocated by flashspmm in ``info``'s framework for a call queued on ``stream``: keep torch's
    allocator from reusing their memory before that stream has run (cupy and flashspmm buffers are ordered
    by their own stream or freed only when collected)."""
    if info.framework != "torch" or stream == info.stream:
        return
    for a in arrays:
        if a is not None and framework_of(a) == "torch":
            torch_record_stream(a, stream)


def host_uint8_view(info):
    """A numpy view of a 1-D host uint8 array described by ``info`` (no copy)."""
    if info.framework == "numpy":
        return info.obj
    import ctypes

    n = info.shape[0]
    return np.frombuffer((ctypes.c_uint8 * max(n, 1)).from_address(info.ptr), dtype=np.uint8)[:n]


def is_immutable(obj):
    """Whether obj is an array of a library whose arrays cannot be written (JAX)."""
    return _module_of(obj) in ("jax", "jaxlib")


class HostExport:
    """A host numpy array exported through flashspmm's own DLPack capsule (numpy's refuses bfloat16)."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)

    def __dlpack_device__(self):
        return (_dlpack.DEVICE_CPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if copy:
            raise BufferError("flashspmm exports without copying (copy=True is not supported)")
        a = self.array
        dtype = "bfloat16" if a.dtype.name == "bfloat16" else a.dtype.name
        versioned = max_version is not None and tuple(max_version) >= (1, 0)
        return _dlpack.export_capsule(int(a.__array_interface__["data"][0]), a.shape, dtype, _dlpack.DEVICE_CPU, 0,
                                      owner=self, versioned=versioned)


class DeviceBuffer:
    """Device memory from fspmm_device_malloc exposing ``__cuda_array_interface__`` (v3).

    Used for outputs and workspaces when the input array comes from a framework flashspmm cannot allocate
    with (anything that only offers ``__cuda_array_interface__``). Freed when garbage collected.
    """

    def __init__(self, shape, dtype, device_index, _base=None, _ptr=None):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = dtype
        self.device_index = int(device_index)
        self.itemsize = 1 if dtype == "uint8" else 2
        count = 1
        for n in self.shape:
            count *= n
        self.nbytes = count * self.itemsize
        self._base = _base
        self.ready_stream = None  # the stream whose work last wrote the buffer (set by linear)
        if _ptr is not None:
            self.ptr = _ptr
            return
        p = ffi.new("void **")
        with _native.on_device(self.device_index):
            _native.check(lib.fspmm_device_malloc(p, self.nbytes))
        self.ptr = int(ffi.cast("uintptr_t", p[0]))
        if self.ptr:
            fin = weakref.finalize(self, free_device, self.ptr, self.device_index)
            fin.atexit = False

    def reshape(self, shape):
        shape = tuple(int(n) for n in shape)
        return DeviceBuffer(shape, self.dtype, self.device_index, _base=self, _ptr=self.ptr)

    def __dlpack_device__(self):
        return (_dlpack.DEVICE_CUDA, self.device_index)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """Export as a DLPack capsule (zero-copy; the buffer lives until the consumer releases it).

        The data is made ready for the consumer's ``stream`` by waiting for the stream flashspmm wrote it on.
        """
        if copy:
            raise BufferError("flashspmm DeviceBuffer exports without copying (copy=True is not supported)")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"this buffer is on cuda:{self.device_index}; it cannot be exported to {dl_device}")
        if stream != -1 and self.ready_stream is not None:
            with _native.on_device(self.device_index):
                _native.check(lib.fspmm_stream_synchronize(_native.as_ptr(self.ready_stream)))
        versioned = max_version is not None and tuple(max_version) >= (1, 0)
        return _dlpack.export_capsule(self.ptr, self.shape, self.dtype, _dlpack.DEVICE_CUDA, self.device_index,
                                      owner=self, versioned=versioned)

    @property
    def __cuda_array_interface__(self):
        typestr = {"float16": "<f2", "bfloat16": "<V2", "uint8": "|u1"}[self.dtype]
        return {"shape": self.shape, "typestr": typestr, "data": (self.ptr, False), "strides": None,
                "version": 3, "stream": None}

    def __repr__(self):
        return f"DeviceBuffer(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device_index})"


def workspace(info, nbytes, stream_handle):
    """A workspace of nbytes in info's framework, safe to use on stream_handle: (array, device address).

    (None, 0) when nbytes is 0.
    """
    if nbytes == 0:
        return None, 0
    if info.framework == "torch":
        torch = sys.modules["torch"]
        device = info.obj.device
        ws = torch.empty(nbytes, dtype=torch.uint8, device=device)
        torch_record_stream(ws, stream_handle)  # the allocator orders its reuse after that stream too
        return ws, int(ws.data_ptr())
    if info.framework == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(info.device_index):
            if stream_handle == int(cupy.cuda.get_current_stream().ptr):
                ws = cupy.empty(nbytes, dtype=cupy.uint8)
            else:  # allocate in that stream's order
                with _cupy_external_stream(stream_handle):
                    ws = cupy.empty(nbytes, dtype=cupy.uint8)
        return ws, int(ws.data.ptr)
    ws = DeviceBuffer((nbytes,), "uint8", info.device_index)
    return ws, ws.ptr


def free_device(ptr, device_index):
    """Free device memory from fspmm_device_malloc; for weakref finalizers (never raises)."""
    try:
        with _native.on_device(device_index):
            lib.fspmm_device_free(ffi.cast("void *", ptr))
    except Exception:  # never raise from a finalizer
        pass


def empty_like_framework(info, shape, dtype=None):
    """An uninitialised array of ``shape`` in ``info``'s framework and device (dtype defaults to info's)."""
    return Origin.of(info).empty(shape, dtype or info.dtype)


class Origin:
    """The array library and device that results go back to, without a reference to the caller's array.

    A device :class:`flashspmm.SparseMatrix` remembers the origin of the matrix it was compressed from, so
    ``to_dense()`` can answer in the same framework.
    """

    __slots__ = ("framework", "device_index", "_from_dlpack")

    def __init__(self, framework, device_index, from_dlpack=None):
        self.framework = framework
        self.device_index = device_index
        self._from_dlpack = from_dlpack

    @classmethod
    def of(cls, info):
        from_dlpack = None
        if info.framework == "dlpack" and not _dlpack.is_capsule(info.obj):
            from_dlpack = _from_dlpack_of(info.obj)
        return cls(info.framework, info.device_index, from_dlpack)

    @property
    def is_cuda(self):
        return self.device_index is not None

    def empty(self, shape, dtype):
        """An uninitialised array (dtype "float16", "bfloat16" or "uint8") on this origin's device."""
        if self.framework == "torch":
            torch = sys.modules["torch"]
            device = f"cuda:{self.device_index}" if self.is_cuda else "cpu"
            return torch.empty(shape, dtype=getattr(torch, dtype), device=device)
        if self.framework == "cupy" and self.is_cuda:
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(self.device_index):  # cupy has no bfloat16: its bit patterns as uint16
                return cupy.empty(shape, dtype="uint16" if dtype == "bfloat16" else dtype)
        if not self.is_cuda:  # numpy, or a CPU DLPack producer (handed back through wrap)
            return np.empty(shape, dtype=np.dtype(np.uint8) if dtype == "uint8" else numpy_dtype(dtype))
        return DeviceBuffer(shape, dtype, self.device_index)

    def stream(self):
        """The framework's current CUDA stream on this device as an int (0: the legacy default stream)."""
        if self.framework == "torch" and self.is_cuda:
            return int(sys.modules["torch"].cuda.current_stream(self.device_index).cuda_stream)
        if self.framework == "cupy" and self.is_cuda:
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(self.device_index):
                return int(cupy.cuda.get_current_stream().ptr)
        return 0

    def wrap(self, result, stream=None):
        """``result`` (allocated by :meth:`empty`, written on ``stream``) as the caller's framework sees it
        (zero-copy; a DLPack consumer gets it ready on its own stream)."""
        if self._from_dlpack is None:
            return result
        if isinstance(result, DeviceBuffer):
            result.ready_stream = stream
        elif isinstance(result, np.ndarray):
            result = HostExport(result)
        return self._from_dlpack(result)

    def from_host(self, array):
        """A host numpy array (float16 / bfloat16) as this origin's framework's CPU array (no copy)."""
        if self.framework == "torch":
            torch = sys.modules["torch"]
            if array.dtype.name == "bfloat16":
                return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
            return torch.from_numpy(array)
        return self.wrap(array)


def _from_dlpack_of(obj):
    """The ``from_dlpack`` of the library that made ``obj`` (None if unknown)."""
    module = _module_of(obj)
    if module in ("jax", "jaxlib"):
        import jax.dlpack

        return jax.dlpack.from_dlpack
    lib_module = sys.modules.get(module)
    return getattr(lib_module, "from_dlpack", None)


def to_caller(result, info, stream=None):
    """``result`` (allocated by flashspmm for ``info``'s call, written on ``stream``) in the input's own library,
    zero-copy: torch CPU results are torch already; DLPack producers (JAX) get it through their from_dlpack."""
    if isinstance(result, DeviceBuffer) and stream is not None:
        result.ready_stream = stream
    if info.framework != "dlpack" or _dlpack.is_capsule(info.obj):
        return result
    return Origin.of(info).wrap(result, stream)


def resolve_stream(stream, info):
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
        f"got {type(stream).__qualname__}")
