"""Array adapters: one small module per array library, behind one registry.

flashspmm takes arrays from numpy, torch, cupy, JAX, any object with ``__cuda_array_interface__`` and any DLPack
producer. Each kind has an :class:`Adapter` (numpy.py, torch.py, cupy.py, cai.py, dlpack.py) that knows how to

- **wrap** an array at entry: :meth:`Adapter.describe` gives an :class:`ArrayInfo` (address, shape, strides in
  elements, dtype, device, stream), all the C API needs;
- allocate in the library's own memory, ordered on a stream: outputs (:meth:`~Adapter.empty`), workspaces
  (:meth:`~Adapter.workspace`), contiguous copies (:meth:`~Adapter.contiguous_copy`, :meth:`~Adapter.copy_into`);
- keep memory alive for queued work: :meth:`~Adapter.record_use`;
- **unwrap** results at exit: :meth:`~Adapter.wrap` and :meth:`~Adapter.from_host` hand back what the caller's
  library expects.

:func:`adapter_for` picks the adapter of an object (in a fixed order, see there); :func:`adapter_named` the adapter
of an :attr:`ArrayInfo.framework`. No library is imported here or by the adapter modules: torch, cupy and jax are
reached through ``sys.modules``, where they are once an object of theirs has been passed in.

The defaults of :class:`Adapter` serve libraries flashspmm cannot allocate with: host memory as numpy arrays, device
memory as :class:`~flashspmm._adapters.cai.DeviceBuffer` (``fspmm_device_malloc``), copies through the C API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np

from .. import _native
from .._native import check, lib

__all__ = [
    "Adapter",
    "ArrayInfo",
    "Device",
    "adapter_for",
    "adapter_named",
    "registry",
    "module_of",
    "numpy_dtype",
    "dtype_name",
    "c_strides",
    "byte_strides_to_elements",
]

Device = Union[str, tuple[str, int]]  # "cpu" or ("cuda", index)


# ---- framework-neutral helpers --------------------------------------------------------------------------------


def module_of(obj: Any) -> str:
    """The top-level module name of ``obj``'s type ("torch", "cupy", "jaxlib", ...)."""
    return type(obj).__module__.split(".", 1)[0]


def bfloat16_numpy() -> np.dtype | None:
    """The ml_dtypes bfloat16 numpy dtype, or None if ml_dtypes is not installed."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(name: str) -> np.dtype:
    """numpy dtype for "float16" / "bfloat16" (the latter needs ml_dtypes)."""
    if name == "float16":
        return np.dtype(np.float16)
    if name == "bfloat16":
        dt = bfloat16_numpy()
        if dt is None:
            raise ModuleNotFoundError(
                "bfloat16 numpy arrays need the ml_dtypes package: pip install ml_dtypes "
                "(or use to_dense(raw=True) for the raw uint16 bit patterns)"
            )
        return dt
    raise ValueError(f"unsupported dtype {name!r}")


def dtype_name(dtype: Any) -> str:
    """The name ("float16", "bfloat16", "uint8", ...) of a dtype given as a string or as a numpy, torch, JAX or
    ml_dtypes dtype or scalar type (``np.float16``, ``torch.bfloat16``, ``jnp.bfloat16``); no framework is
    imported. Names are not checked: the caller says which it accepts."""
    if isinstance(dtype, str):
        return dtype.replace("torch.", "")
    if isinstance(dtype, type):  # numpy / ml_dtypes scalar types (np.float16, ml_dtypes.bfloat16, jnp.bfloat16)
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            pass
    return str(getattr(dtype, "name", dtype)).replace("torch.", "")


def byte_strides_to_elements(strides, itemsize: int, what: str) -> tuple[int, ...]:
    out = []
    for s in strides:
        if s % itemsize:
            raise ValueError(f"{what} has a stride of {s} bytes, not a multiple of its {itemsize}-byte element")
        out.append(s // itemsize)
    return tuple(out)


def c_strides(shape) -> tuple[int, ...]:
    """Row-major strides (in elements) of ``shape``."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(strides))


# ---- what the C API needs to know about one array ------------------------------------------------------------


@dataclass
class ArrayInfo:
    """What the C API needs to know about one array.

    ``strides`` are in elements; ``device`` is ``"cpu"`` or ``("cuda", index)``; ``stream`` is the
    framework's current CUDA stream as an integer handle (0 = legacy default stream) or None on the CPU;
    ``framework`` names the adapter that described it: ``"numpy"``, ``"torch"``, ``"cupy"``,
    ``"cuda_array_interface"``, ``"external"`` (a :func:`flashspmm.from_pointer` view) or ``"dlpack"`` (JAX and
    other DLPack producers). ``keep`` holds what must stay alive while ``ptr`` is used (a consumed DLPack tensor);
    ``read_only`` is the DLPack read-only flag.
    """

    obj: object
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    device: Device
    stream: int | None
    framework: str
    keep: object = None
    read_only: bool = False
    requires_grad: bool = False  # a torch tensor that autograd would track (flashspmm computes no gradients)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_cuda(self) -> bool:
        return self.device != "cpu"

    @property
    def device_index(self) -> int | None:
        return self.device[1] if self.is_cuda else None

    @property
    def device_name(self) -> str:
        return "cpu" if self.device == "cpu" else f"cuda:{self.device[1]}"

    @property
    def adapter(self) -> Adapter:
        """The adapter of this array's framework (results, copies and workspaces for it are made there)."""
        return adapter_named(self.framework)

    def contiguous_hint(self) -> str:
        """How to make this array contiguous, in its own framework's words."""
        return self.adapter.contiguous_hint


# ---- the interface --------------------------------------------------------------------------------------------


class Adapter:
    """How flashspmm reads, allocates and hands back the arrays of one library.

    ``name`` is the :attr:`ArrayInfo.framework` of the arrays it describes. ``device_index`` is None for the
    host, else a CUDA device index; ``stream`` is an integer ``cudaStream_t`` (0: the legacy default stream).
    dtypes are named by strings ("float16", "bfloat16", "uint8").
    """

    name = "generic"
    contiguous_hint = "a.contiguous()"  # how to make an array contiguous, in the library's words (for messages)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"

    def claims(self, obj: Any, module: str) -> bool:
        """Whether this adapter takes ``obj`` (``module``: :func:`module_of` ``obj``); see :func:`adapter_for`."""
        return False

    def describe(self, obj: Any, what: str = "array") -> ArrayInfo:
        """The :class:`ArrayInfo` of ``obj`` (``what`` names it in messages)."""
        raise TypeError(f"{what}: flashspmm cannot read arrays of type {type(obj).__qualname__}")

    def empty(self, shape: tuple[int, ...], dtype: str, device_index: int | None) -> Any:
        """An uninitialised array of this library on that device, its memory ordered on the library's current
        stream (the default: a numpy array on the host, a DeviceBuffer on a GPU)."""
        if device_index is None:
            return np.empty(shape, dtype=np.dtype(np.uint8) if dtype == "uint8" else numpy_dtype(dtype))
        return DeviceBuffer(shape, dtype, device_index)

    def current_stream(self, device_index: int | None) -> int:
        """The library's current CUDA stream on that device (0 on the host or where the library has none)."""
        return 0

    def workspace(self, nbytes: int, info: ArrayInfo, stream: int) -> tuple[Any, int]:
        """``nbytes`` (> 0) of scratch memory on ``info``'s device, safe to use on ``stream``: (array, address).

        Drop the array after queueing the work: its memory must not be reused before ``stream`` has run it
        (DeviceBuffer memory goes back through ``cudaFree``, which waits for the device)."""
        ws = DeviceBuffer((nbytes,), "uint8", info.device_index)
        return ws, ws.ptr

    def contiguous_copy(self, info: ArrayInfo, shape: tuple[int, ...], stream: int | None) -> Any:
        """A C-contiguous copy of ``info``'s array reshaped to ``shape``, made (on a GPU) on ``stream`` so its
        memory is ordered there."""
        raise ValueError("this array's leading dimensions cannot be flattened without a copy; make it contiguous")

    def copy_into(self, info: ArrayInfo, out: Any, stream: int) -> None:
        """``out[...] = `` the 2-D device matrix of ``info``, in ``stream`` order (``out``: a C-contiguous array
        of the same shape from :meth:`empty`). The default copies row by row through the C API."""
        rows, cols = info.shape
        dst = adapter_for(out).describe(out, "out").ptr
        ld = info.strides[0]
        if ld == cols or rows == 1:
            check(
                lib.fspmm_memcpy(
                    _native.as_ptr(dst),
                    _native.as_ptr(info.ptr),
                    rows * cols * 2,
                    lib.FSPMM_COPY_DEVICE_TO_DEVICE,
                    _native.as_ptr(stream),
                )
            )
            return
        for r in range(rows):
            check(
                lib.fspmm_memcpy(
                    _native.as_ptr(dst + r * cols * 2),
                    _native.as_ptr(info.ptr + r * ld * 2),
                    cols * 2,
                    lib.FSPMM_COPY_DEVICE_TO_DEVICE,
                    _native.as_ptr(stream),
                )
            )

    def owner_stream(self, array: Any) -> int:
        """The stream the array's allocator orders the reuse of its memory on (0: memory returned through
        ``cudaFree``, which waits for the device)."""
        return 0

    def record_use(self, array: Any, stream: int) -> bool:
        """Keep ``array``'s memory from being reused before work queued on ``stream`` has run.

        True when that is taken care of (the library's allocator now orders the reuse after ``stream``, or
        ``stream`` is the one it orders on anyway); False when the caller must wait for ``stream`` itself
        before it lets the array go."""
        return stream == self.owner_stream(array)

    def importer(self, obj: Any) -> Callable[[Any], Any] | None:
        """The function that turns a DLPack export back into an array of ``obj``'s library, where results reach
        that library only through DLPack (JAX); None elsewhere."""
        return None

    def wrap(self, result: Any, stream: int | None = None, importer: Callable | None = None) -> Any:
        """``result`` (from :meth:`empty`, written on ``stream``) as the caller's library sees it, zero-copy.

        A :class:`DeviceBuffer` remembers ``stream``: a DLPack consumer gets it ready on its own stream."""
        if isinstance(result, DeviceBuffer) and stream is not None:
            result.ready_stream = stream
        return result

    def from_host(self, array: np.ndarray) -> Any:
        """A host numpy array (float16 / bfloat16) as this library's CPU array where it has one flashspmm can
        make without a copy, else the numpy array itself (then handed to :meth:`wrap`)."""
        return array


# ---- the registry ---------------------------------------------------------------------------------------------

# The adapter modules subclass Adapter, defined above. Below, `numpy`, `torch` and `cupy` name these modules, never
# the libraries (which are only ever reached through sys.modules).
from . import cai, cupy, dlpack, numpy, torch  # noqa: E402
from .cai import DeviceBuffer  # noqa: E402

# The order matters where an object fits several adapters: flashspmm's own from_pointer views know their device
# (before any interface); torch and cupy arrays offer __cuda_array_interface__ too, but their own adapters keep
# results, streams and allocators in the library; JAX GPU arrays also offer __cuda_array_interface__, but only
# DLPack leads back to a JAX result; any other __cuda_array_interface__ object is read through it before DLPack.
_REGISTRY = (numpy.ADAPTER, cai.EXTERNAL, torch.ADAPTER, cupy.ADAPTER, dlpack.JAX, cai.ADAPTER, dlpack.ADAPTER)
_BY_NAME = {a.name: a for a in _REGISTRY if a is not dlpack.JAX}  # JAX's DLPack adapter differs in `claims` only
_GENERIC = Adapter()  # an ArrayInfo made by hand with another framework name: flashspmm's own memory


def registry() -> tuple[Adapter, ...]:
    """The adapters in the order :func:`adapter_for` tries them."""
    return _REGISTRY


def adapter_for(obj: Any, what: str = "array") -> Adapter:
    """The adapter for ``obj``, tried in order: a numpy array; a flashspmm ExternalArray (``_flashspmm_info``); a
    torch tensor; a cupy array; a JAX array (DLPack); any ``__cuda_array_interface__`` object; any ``__dlpack__``
    object or DLPack capsule. TypeError, saying what is accepted, for anything else."""
    if isinstance(obj, np.ndarray):  # the common host case first, without the module name
        return numpy.ADAPTER
    module = module_of(obj)
    for adapter in _REGISTRY:
        if adapter.claims(obj, module):
            return adapter
    raise TypeError(
        f"{what} must be a numpy array, a torch tensor, a cupy array, an object with __cuda_array_interface__ "
        f"or __dlpack__ (JAX, ...); got {type(obj).__module__}.{type(obj).__qualname__}"
    )


def adapter_named(framework: str) -> Adapter:
    """The adapter whose :attr:`Adapter.name` is ``framework`` (the generic one for an unknown name)."""
    return _BY_NAME.get(framework, _GENERIC)
