"""Objects with ``__cuda_array_interface__`` (v3) that no other adapter claims (numba device arrays, ...), and
flashspmm's own device arrays: :class:`DeviceBuffer` (memory from ``fspmm_device_malloc``, the results and
workspaces made for such inputs) and :func:`flashspmm.from_pointer` views (``ExternalArray``, which describe
themselves). flashspmm cannot allocate with these libraries: results are DeviceBuffers (the :class:`Adapter`
defaults), on the legacy default stream unless the interface names a stream.
"""

from __future__ import annotations

import weakref

import numpy as np

from .. import _dlpack, _native
from .._native import ffi, lib
from . import Adapter, ArrayInfo, byte_strides_to_elements, c_strides

__all__ = ["CAIAdapter", "ExternalAdapter", "ADAPTER", "EXTERNAL", "DeviceBuffer", "free_device"]


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


class CAIAdapter(Adapter):
    name = "cuda_array_interface"

    def claims(self, obj, module):
        return hasattr(obj, "__cuda_array_interface__")

    def describe(self, obj, what="array"):
        cai = obj.__cuda_array_interface__
        shape = tuple(int(n) for n in cai["shape"])
        dtype = _typestr_dtype(obj, cai["typestr"])
        itemsize = int(cai["typestr"][2:]) if cai["typestr"][2:].isdigit() else 1
        if cai.get("strides") is None:
            strides = c_strides(shape)
        else:
            strides = byte_strides_to_elements(cai["strides"], itemsize, "the array")
        ptr = int(cai["data"][0])
        # The interface does not name the device: ask the driver which one holds the memory.
        try:
            index = _native.pointer_device(ptr) if ptr else _native.get_device()
        except _native.Error:  # no driver or device: the array cannot be used on a GPU anyway; say so later
            index = 0
        if index < 0:
            raise ValueError(
                "this __cuda_array_interface__ array points at host memory; pass a numpy array for host data"
            )
        stream = cai.get("stream")
        return ArrayInfo(
            obj=obj,
            ptr=ptr,
            shape=shape,
            strides=strides,
            dtype=dtype,
            device=("cuda", index),
            stream=0 if stream is None else int(stream),
            framework="cuda_array_interface",
            read_only=bool(cai["data"][1]),
        )


class ExternalAdapter(CAIAdapter):
    """:func:`flashspmm.from_pointer` device views: they know their device and stream (``_flashspmm_info``)."""

    name = "external"

    def claims(self, obj, module):
        return hasattr(obj, "_flashspmm_info")

    def describe(self, obj, what="array"):
        return obj._flashspmm_info()


def free_device(ptr: int, device_index: int) -> None:
    """Free device memory from fspmm_device_malloc; for weakref finalizers (never raises)."""
    try:
        with _native.on_device(device_index):
            lib.fspmm_device_free(ffi.cast("void *", ptr))
    except Exception:  # never raise from a finalizer
        pass


class DeviceBuffer:
    """Device memory from fspmm_device_malloc exposing ``__cuda_array_interface__`` (v3) and ``__dlpack__``.

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
        self.ready_stream = None  # the stream whose work last wrote the buffer (set when it is handed back)
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
        return _dlpack.export_capsule(
            self.ptr, self.shape, self.dtype, _dlpack.DEVICE_CUDA, self.device_index, owner=self, versioned=versioned
        )

    @property
    def __cuda_array_interface__(self):
        typestr = {"float16": "<f2", "bfloat16": "<V2", "uint8": "|u1"}[self.dtype]
        return {
            "shape": self.shape,
            "typestr": typestr,
            "data": (self.ptr, False),
            "strides": None,
            "version": 3,
            "stream": None,
        }

    def __repr__(self):
        return f"DeviceBuffer(shape={self.shape}, dtype={self.dtype}, device=cuda:{self.device_index})"


ADAPTER = CAIAdapter()
EXTERNAL = ExternalAdapter()
