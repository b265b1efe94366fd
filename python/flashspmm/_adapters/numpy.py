"""numpy arrays: host memory, read in place; results are numpy arrays."""

from __future__ import annotations

import numpy as np

from . import Adapter, ArrayInfo, byte_strides_to_elements

__all__ = ["NumpyAdapter", "ADAPTER"]


class NumpyAdapter(Adapter):
    name = "numpy"
    contiguous_hint = "np.ascontiguousarray(a)"

    def claims(self, obj, module):
        return isinstance(obj, np.ndarray)

    def describe(self, a, what="array"):
        if a.dtype.byteorder == ">":
            raise TypeError("big-endian arrays are not supported; convert with a.astype(a.dtype.newbyteorder('<'))")
        return ArrayInfo(
            obj=a,
            ptr=int(a.__array_interface__["data"][0]),
            shape=tuple(a.shape),
            strides=byte_strides_to_elements(a.strides, a.itemsize, "the array"),
            dtype=a.dtype.name,
            device="cpu",
            stream=None,
            framework="numpy",
            read_only=not a.flags.writeable,
        )

    def contiguous_copy(self, info, shape, stream):
        return np.ascontiguousarray(info.obj).reshape(shape)


ADAPTER = NumpyAdapter()
