"""torch tensors (CUDA and CPU): results, copies and workspaces are torch tensors from its caching allocator,
on the tensor's device; streams are torch's. torch is reached through ``sys.modules`` (never imported here)."""

from __future__ import annotations

import sys
import warnings

import numpy as np

from . import Adapter, ArrayInfo

__all__ = ["TorchAdapter", "ADAPTER", "external_stream"]


def external_stream(handle, device):
    """A torch stream object for a raw ``cudaStream_t`` on ``device``."""
    # ExternalStream is deprecated in newer torch but still the way to wrap a raw handle
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ExternalStream.*")
        return sys.modules["torch"].cuda.ExternalStream(handle, device=device)


class TorchAdapter(Adapter):
    name = "torch"

    def claims(self, obj, module):
        return module == "torch" and hasattr(obj, "data_ptr")

    def describe(self, t, what="array"):
        torch = sys.modules["torch"]
        dtype = str(t.dtype).replace("torch.", "")
        if t.device.type == "cuda":
            index = t.device.index if t.device.index is not None else torch.cuda.current_device()
            device = ("cuda", index)
            stream = self.current_stream(index)
        elif t.device.type == "cpu":
            device, stream = "cpu", None
        else:
            raise ValueError(f"torch tensors on {t.device.type!r} are not supported; use a CUDA or CPU tensor")
        return ArrayInfo(
            obj=t,
            ptr=int(t.data_ptr()),
            shape=tuple(t.shape),
            strides=tuple(t.stride()),
            dtype=dtype,
            device=device,
            stream=stream,
            framework="torch",
            requires_grad=bool(t.requires_grad and torch.is_grad_enabled()),
        )

    def empty(self, shape, dtype, device_index):
        torch = sys.modules["torch"]
        device = f"cuda:{device_index}" if device_index is not None else "cpu"
        return torch.empty(shape, dtype=getattr(torch, dtype), device=device)

    def current_stream(self, device_index):
        if device_index is None:
            return 0
        return int(sys.modules["torch"].cuda.current_stream(device_index).cuda_stream)

    def workspace(self, nbytes, info, stream):
        torch = sys.modules["torch"]
        ws = torch.empty(nbytes, dtype=torch.uint8, device=info.obj.device)
        self.record_use(ws, stream)  # the allocator orders its reuse after that stream too
        return ws, int(ws.data_ptr())

    def contiguous_copy(self, info, shape, stream):
        torch = sys.modules["torch"]
        obj = info.obj
        if info.is_cuda and stream is not None and stream != info.stream:
            with torch.cuda.stream(external_stream(stream, obj.device)):
                return obj.contiguous().reshape(shape)
        return obj.contiguous().reshape(shape)

    def copy_into(self, info, out, stream):
        torch = sys.modules["torch"]
        with torch.no_grad():  # the result is a plain tensor, as from the host path
            if info.is_cuda and stream != info.stream:
                with torch.cuda.stream(external_stream(stream, info.obj.device)):
                    out.copy_(info.obj)
                return
            out.copy_(info.obj)

    def record_use(self, tensor, stream):
        """Tell torch's caching allocator that ``tensor`` is used on ``stream`` (when that is not its own)."""
        torch = sys.modules["torch"]
        if tensor.device.type != "cuda" or stream == int(torch.cuda.current_stream(tensor.device).cuda_stream):
            return True
        tensor.record_stream(external_stream(stream, tensor.device))
        return True

    def from_host(self, array):
        torch = sys.modules["torch"]
        if array.dtype.name == "bfloat16":  # torch.from_numpy does not know ml_dtypes' bfloat16: share the bits
            return torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(torch.bfloat16)
        return torch.from_numpy(array)


ADAPTER = TorchAdapter()
