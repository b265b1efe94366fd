"""cupy arrays: results, copies and workspaces come from cupy's memory pool on the array's device, in the order of
the stream they are made for; streams are cupy's. cupy is reached through ``sys.modules`` (never imported here)."""

from __future__ import annotations

import sys
import warnings

from . import Adapter, ArrayInfo, byte_strides_to_elements

__all__ = ["CupyAdapter", "ADAPTER", "external_stream"]


def external_stream(handle):
    """A cupy stream object for a raw ``cudaStream_t`` (a context manager that makes it current)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ExternalStream.*")
        return sys.modules["cupy"].cuda.ExternalStream(handle)


def _stream_now():
    """cupy's current stream on the current device."""
    return int(sys.modules["cupy"].cuda.get_current_stream().ptr)


class CupyAdapter(Adapter):
    name = "cupy"
    contiguous_hint = "cupy.ascontiguousarray(a)"

    def claims(self, obj, module):
        return module == "cupy" and hasattr(obj, "__cuda_array_interface__")

    def describe(self, a, what="array"):
        index = int(a.device.id)
        return ArrayInfo(
            obj=a,
            ptr=int(a.data.ptr),
            shape=tuple(a.shape),
            strides=byte_strides_to_elements(a.strides, a.itemsize, "the array"),
            dtype=a.dtype.name,
            device=("cuda", index),
            stream=self.current_stream(index),
            framework="cupy",
        )

    def empty(self, shape, dtype, device_index):
        if device_index is None:
            return super().empty(shape, dtype, device_index)
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(device_index):  # cupy has no bfloat16: its bit patterns as uint16
            return cupy.empty(shape, dtype="uint16" if dtype == "bfloat16" else dtype)

    def current_stream(self, device_index):
        if device_index is None:
            return 0
        with sys.modules["cupy"].cuda.Device(device_index):
            return _stream_now()

    def workspace(self, nbytes, info, stream):
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(info.device_index):
            if stream == _stream_now():
                ws = cupy.empty(nbytes, dtype=cupy.uint8)
            else:  # allocate in that stream's order
                with external_stream(stream):
                    ws = cupy.empty(nbytes, dtype=cupy.uint8)
        return ws, int(ws.data.ptr)

    def contiguous_copy(self, info, shape, stream):
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(info.device_index):
            if stream is not None and stream != info.stream:
                with external_stream(stream):
                    return cupy.ascontiguousarray(info.obj).reshape(shape)
            return cupy.ascontiguousarray(info.obj).reshape(shape)

    def copy_into(self, info, out, stream):
        with sys.modules["cupy"].cuda.Device(info.device_index):
            if stream != info.stream:
                with external_stream(stream):
                    out[...] = info.obj
                return
            out[...] = info.obj

    def owner_stream(self, array):
        return _stream_now()  # cupy's memory pool orders the reuse of its memory on the current stream


ADAPTER = CupyAdapter()
