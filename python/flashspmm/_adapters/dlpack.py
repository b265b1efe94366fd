"""DLPack producers: JAX arrays, any object with ``__dlpack__``, and DLPack capsules, consumed without a copy (the
ctypes code is in flashspmm._dlpack). flashspmm cannot allocate with these libraries: results are its own memory
(numpy arrays on the host, DeviceBuffers on a GPU) handed back through the producer's ``from_dlpack`` (JAX's
``jax.dlpack.from_dlpack``, else ``<module>.from_dlpack`` where the producer's module has one). jax is reached
through ``sys.modules`` or imported when a JAX array is passed in.

For CUDA producers flashspmm asks for the legacy default stream (``stream=1`` in the protocol) and runs on it
unless ``stream=`` is given to :func:`flashspmm.linear`.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import _dlpack
from . import Adapter, ArrayInfo, module_of
from .cai import DeviceBuffer

__all__ = ["DLPackAdapter", "ADAPTER", "JAX", "JAX_MODULES", "HostExport"]

JAX_MODULES = ("jax", "jaxlib")  # the modules JAX's array types live in


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
        return _dlpack.export_capsule(
            int(a.__array_interface__["data"][0]),
            a.shape,
            dtype,
            _dlpack.DEVICE_CPU,
            0,
            owner=self,
            versioned=versioned,
        )


class DLPackAdapter(Adapter):
    """``modules``: claim only objects of these modules (JAX, ahead of ``__cuda_array_interface__``); None: any
    ``__dlpack__`` object or capsule (after it)."""

    name = "dlpack"

    def __init__(self, modules=None):
        self.modules = modules

    def __repr__(self):
        return f"<DLPackAdapter {self.name!r} of {', '.join(self.modules)}>" if self.modules else super().__repr__()

    def claims(self, obj, module):
        if self.modules is not None:
            return module in self.modules and hasattr(obj, "__dlpack__")
        return hasattr(obj, "__dlpack__") or _dlpack.is_capsule(obj)

    def describe(self, obj, what="array"):
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
            raise ValueError(
                f"{what} lives on DLPack device type {imported.device_type}; flashspmm reads CPU and CUDA memory"
            )
        return ArrayInfo(
            obj=obj,
            ptr=imported.ptr,
            shape=imported.shape,
            strides=imported.strides,
            dtype=imported.dtype,
            device=where,
            stream=stream,
            framework="dlpack",
            keep=imported,
            read_only=imported.read_only,
        )

    def importer(self, obj):
        """The ``from_dlpack`` of the library that made ``obj`` (None for a capsule or an unknown library)."""
        if _dlpack.is_capsule(obj):
            return None
        module = module_of(obj)
        if module in JAX_MODULES:
            import jax.dlpack

            return jax.dlpack.from_dlpack
        return getattr(sys.modules.get(module), "from_dlpack", None)

    def wrap(self, result, stream=None, importer=None):
        if importer is None:  # a capsule, or a producer without from_dlpack: flashspmm's own array
            return super().wrap(result, stream)
        if isinstance(result, DeviceBuffer):
            result.ready_stream = stream
        elif isinstance(result, np.ndarray):
            result = HostExport(result)
        return importer(result)


ADAPTER = DLPackAdapter()
JAX = DLPackAdapter(JAX_MODULES)
