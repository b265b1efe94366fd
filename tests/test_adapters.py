"""The array adapters on the CPU: which adapter each kind of object gets (and in which order), what they describe,
allocate and hand back, the error for anything else, and that no framework is imported before it is needed."""

import importlib.util

import numpy as np
import pytest

import flashspmm
from flashspmm import _adapters, _arrays
from flashspmm._adapters import cai, dlpack
from flashspmm._adapters import numpy as numpy_adapter
from flashspmm._adapters import torch as torch_adapter

HAVE_JAX = importlib.util.find_spec("jax") is not None


class CAIOnly:
    """An object with nothing but __cuda_array_interface__ (like a numba device array). Address 0: no memory is
    touched, and the interface allows it; the device is then the current one (0, or 0 without a driver)."""

    def __init__(self, shape=(3, 4), typestr="<f2", strides=None, stream=None, dtype=None):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (0, False),
            "strides": strides,
            "version": 3,
            "stream": stream,
        }
        if dtype is not None:
            self.dtype = dtype


class DLPackOnly:
    """An object with nothing but the DLPack protocol (its module has no from_dlpack)."""

    def __init__(self, array):
        self.array = array

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)


def _pretend(module, base=object, **attrs):
    """An instance of a class that says it lives in `module` (for the registry's module tests)."""
    return type("Pretend", (base,), dict(attrs, __module__=module))()


# ---- which adapter ---------------------------------------------------------------------------------------------


def test_registry_order():
    names = [a.name for a in _adapters.registry()]
    assert names == ["numpy", "external", "torch", "cupy", "dlpack", "cuda_array_interface", "dlpack"]
    assert _adapters.registry()[4] is dlpack.JAX and _adapters.registry()[6] is dlpack.ADAPTER


def test_numpy(rng):
    a = rng.standard_normal((5, 7)).astype(np.float16)[:, 1:6]
    assert _adapters.adapter_for(a) is numpy_adapter.ADAPTER
    info = _arrays.describe(a)
    assert (info.framework, info.device, info.stream, info.dtype) == ("numpy", "cpu", None, "float16")
    assert info.ptr == a.ctypes.data and info.shape == (5, 5) and info.strides == (7, 1)
    assert info.adapter is numpy_adapter.ADAPTER and info.contiguous_hint() == "np.ascontiguousarray(a)"
    copy = _arrays.reshape_copy(_arrays.describe(a[None]), (5, 5))
    assert isinstance(copy, np.ndarray) and copy.flags.c_contiguous and np.array_equal(copy, a)


def test_torch_cpu(rng):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(rng.standard_normal((4, 6)).astype(np.float16)).to(torch.bfloat16)
    assert _adapters.adapter_for(t) is torch_adapter.ADAPTER  # not DLPack, which torch tensors offer too
    info = _arrays.describe(t)
    assert (info.framework, info.device, info.stream, info.dtype) == ("torch", "cpu", None, "bfloat16")
    assert info.ptr == t.data_ptr() and info.strides == (6, 1) and not info.requires_grad
    assert info.contiguous_hint() == "a.contiguous()"
    copy = _arrays.reshape_copy(_arrays.describe(t.t()), (6, 4))
    assert isinstance(copy, torch.Tensor) and copy.is_contiguous() and torch.equal(copy, t.t())
    empty = _arrays.empty_like_framework(info, (2, 3))
    assert isinstance(empty, torch.Tensor) and empty.dtype == torch.bfloat16 and empty.device.type == "cpu"
    assert _arrays.record_use(t, 12345)  # host memory: nothing to order
    # from_host shares the numpy array's memory, bfloat16 included
    pytest.importorskip("ml_dtypes")
    host = rng.standard_normal((3, 5)).astype(np.float32).astype(_arrays.numpy_dtype("bfloat16"))
    back = _arrays.Origin.of(info).from_host(host)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.bfloat16 and back.data_ptr() == host.ctypes.data


def test_cai_only_object():
    obj = CAIOnly(shape=(3, 4), typestr="<f2", strides=(16, 2), stream=7)
    assert _adapters.adapter_for(obj) is cai.ADAPTER
    info = _arrays.describe(obj)
    assert info.framework == "cuda_array_interface" and info.is_cuda and info.device_index >= 0
    assert (info.shape, info.strides, info.dtype, info.stream, info.read_only) == ((3, 4), (8, 1), "float16", 7, False)
    bf = _arrays.describe(CAIOnly(typestr="<V2", dtype="bfloat16"))  # the opaque 2-byte type of bfloat16 arrays
    assert bf.dtype == "bfloat16" and bf.strides == (4, 1) and bf.stream == 0
    with pytest.raises(ValueError, match="flattened without a copy"):  # flashspmm cannot copy with this library
        _arrays.reshape_copy(info, (3, 4))
    assert _arrays.Origin.of(info).wrap(obj) is obj  # results need no unwrapping


def test_flashspmm_device_arrays():
    view = flashspmm.ExternalArray(0x1000, (2, 8), "float16", 0, (8, 1), 5, False)
    assert _adapters.adapter_for(view) is cai.EXTERNAL  # before __cuda_array_interface__, which it has too
    info = _arrays.describe(view)
    assert (info.framework, info.device, info.stream, info.ptr) == ("external", ("cuda", 0), 5, 0x1000)
    assert info.adapter is cai.EXTERNAL
    buf = cai.DeviceBuffer((4, 2), "float16", 0, _ptr=0x2000)  # a view of memory it does not own: no allocation
    assert _arrays.DeviceBuffer is cai.DeviceBuffer
    assert _adapters.adapter_for(buf) is cai.ADAPTER
    assert buf.__cuda_array_interface__["shape"] == (4, 2)
    assert cai.ADAPTER.wrap(buf, 9) is buf and buf.ready_stream == 9  # a DLPack consumer will wait for stream 9


def test_dlpack_only_object(rng):
    a = rng.standard_normal((3, 5)).astype(np.float16)
    obj = DLPackOnly(a)
    assert _adapters.adapter_for(obj) is dlpack.ADAPTER
    info = _arrays.describe(obj)
    assert (info.framework, info.device, info.stream, info.ptr) == ("dlpack", "cpu", None, a.ctypes.data)
    assert info.keep is not None  # the consumed DLPack tensor, released when the info goes
    assert info.adapter.importer(obj) is None  # its module has no from_dlpack: results stay numpy
    y = _arrays.to_caller(np.ones((2, 2), np.float16), info)
    assert isinstance(y, np.ndarray)


def test_capsule(rng):
    a = rng.standard_normal((2, 3)).astype(np.float16)
    capsule = a.__dlpack__()
    assert _adapters.adapter_for(capsule) is dlpack.ADAPTER
    info = _arrays.describe(capsule)
    assert info.framework == "dlpack" and info.ptr == a.ctypes.data and info.shape == (2, 3)
    assert dlpack.ADAPTER.importer(capsule) is None
    with pytest.raises(ValueError, match="already consumed"):
        _arrays.describe(capsule)


@pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed")
def test_jax_cpu_array(rng):
    import jax
    import jax.dlpack

    # on the CPU even where JAX has a GPU (its default device there)
    x = jax.device_put(rng.standard_normal((3, 4)).astype(np.float16), jax.devices("cpu")[0])
    assert _adapters.adapter_for(x) is dlpack.JAX
    info = _arrays.describe(x)
    assert (info.framework, info.device, info.dtype, info.shape) == ("dlpack", "cpu", "float16", (3, 4))
    assert info.adapter.importer(x) is jax.dlpack.from_dlpack
    assert _arrays.is_immutable(x) and not _arrays.is_immutable(np.ones(1))
    host = rng.standard_normal((2, 2)).astype(np.float16)
    back = _arrays.Origin.of(info).from_host(host)  # through flashspmm's own DLPack export
    assert type(back).__module__.startswith("jax") and np.array_equal(np.asarray(back), host)


def test_order_between_interfaces():
    cai_dict = CAIOnly().__cuda_array_interface__
    both = {"__cuda_array_interface__": cai_dict, "__dlpack__": lambda self, **kw: None}
    # an object with both: __cuda_array_interface__ first, unless it is JAX's (only DLPack leads back to JAX)
    assert _adapters.adapter_for(_pretend("somelib", **both)) is cai.ADAPTER
    assert _adapters.adapter_for(_pretend("jaxlib.xla_extension", **both)) is dlpack.JAX
    assert _adapters.adapter_for(_pretend("jax._src.array", **both)) is dlpack.JAX
    # torch and cupy objects by module and the attribute their adapter reads
    assert _adapters.adapter_for(_pretend("torch", data_ptr=lambda self: 0, **both)) is torch_adapter.ADAPTER
    assert _adapters.adapter_for(_pretend("cupy._core.core", **both)) is _adapters.cupy.ADAPTER
    assert _adapters.adapter_for(_pretend("torch", **both)) is cai.ADAPTER  # no data_ptr: not a tensor
    # flashspmm's views before everything but numpy
    assert _adapters.adapter_for(_pretend("torch", _flashspmm_info=None, data_ptr=None)) is cai.EXTERNAL


@pytest.mark.parametrize("obj", [[1.0, 2.0], 3.0, "x", None, memoryview(b"ab")])
def test_unknown_objects_are_a_type_error(obj):
    with pytest.raises(TypeError) as info:
        _arrays.describe(obj, "x")
    message = str(info.value)
    assert message.startswith("x must be a numpy array, a torch tensor, a cupy array")
    assert "__cuda_array_interface__" in message and "__dlpack__" in message and "JAX" in message
    assert type(obj).__qualname__ in message
    W = flashspmm.compress(np.eye(8, dtype=np.float16))
    with pytest.raises(TypeError, match="x must be a numpy array"):
        flashspmm.linear(obj, W)


def test_adapter_named_and_the_generic_defaults():
    for adapter in _adapters.registry():
        assert _adapters.adapter_named(adapter.name).name == adapter.name
    assert _adapters.adapter_named("dlpack") is dlpack.ADAPTER
    generic = _adapters.adapter_named("something else")
    assert type(generic) is _adapters.Adapter
    host = generic.empty((2, 3), "float16", None)  # flashspmm's own memory: numpy on the host
    assert isinstance(host, np.ndarray) and host.dtype == np.float16 and host.shape == (2, 3)
    assert generic.empty((4,), "uint8", None).dtype == np.uint8
    assert generic.current_stream(0) == 0 and generic.importer(host) is None
    assert generic.record_use(host, 0) and not generic.record_use(host, 99)  # other streams: the caller waits
    assert generic.from_host(host) is host and generic.wrap(host) is host
    origin = _arrays.Origin("torch", None)  # the constructor other modules use
    assert origin.framework == "torch" and not origin.is_cuda and origin.stream() == 0


def test_dtype_names():
    assert _adapters.dtype_name("float16") == "float16" and _adapters.dtype_name("torch.bfloat16") == "bfloat16"
    assert _adapters.dtype_name(np.float16) == "float16" and _adapters.dtype_name(np.dtype("uint8")) == "uint8"
    ml_dtypes = pytest.importorskip("ml_dtypes")
    assert _adapters.dtype_name(ml_dtypes.bfloat16) == "bfloat16"


def test_from_pointer_takes_framework_dtypes(rng):
    a = rng.standard_normal((3, 4)).astype(np.float16)
    dtypes = [np.float16, np.dtype(np.float16), "float16"]
    if importlib.util.find_spec("torch") is not None:
        import torch

        dtypes.append(torch.float16)
    for dtype in dtypes:
        v = flashspmm.from_pointer(a.ctypes.data, a.shape, dtype, device="cpu")
        assert v.dtype == np.float16 and np.array_equal(v, a), dtype
    raw = flashspmm.from_pointer(a.ctypes.data, a.shape, np.uint16, device="cpu")
    assert raw.dtype == np.uint16 and np.array_equal(raw, a.view(np.uint16))
    with pytest.raises(ValueError, match="dtype must be one of"):
        flashspmm.from_pointer(a.ctypes.data, a.shape, np.float32, device="cpu")


# ---- no framework imported before it is needed ----------------------------------------------------------------


def test_no_framework_is_imported(run_py):
    code = """
import sys
import numpy as np
import flashspmm
import flashspmm._adapters.numpy, flashspmm._adapters.torch, flashspmm._adapters.cupy
import flashspmm._adapters.cai, flashspmm._adapters.dlpack
from flashspmm import _arrays

class DLPackOnly:
    def __init__(self, a):
        self.a = a
    def __dlpack_device__(self):
        return self.a.__dlpack_device__()
    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

w = np.eye(16, dtype=np.float16)
W = flashspmm.compress(w)
for x in (w, DLPackOnly(w), w.__dlpack__()):
    _arrays.describe(x)
    flashspmm.linear(x if not type(x).__name__ == "PyCapsule" else w.__dlpack__(), W)
flashspmm.prune(DLPackOnly(w), 0.5)
W.to_dense()
loaded = sorted(m for m in ("torch", "cupy", "jax", "jaxlib") if m in sys.modules)
print("LOADED", loaded)
"""
    result = run_py(code)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout, result.stdout
