"""The ``flashspmm::linear`` custom operator: flashspmm.linear as a PyTorch op that torch.compile can trace.

Design. An operator's arguments can only be tensors and plain values, but the library multiplies with a
:class:`flashspmm.SparseMatrix`. The op therefore takes the **blob tensor itself** (the module's uint8 buffer)
plus the static sizes, and finds the live matrix that wraps that very memory in a registry keyed by
``(device, data_ptr)``:

- Passing the blob tensor (not an opaque key) makes the dependency visible to torch: torch.compile and CUDA
  graph trees see the buffer as an input of the op (a module buffer, hence a static input whose address is
  checked before every replay), it stays alive as long as a graph uses it, and after ``module.to(device)`` the op
  is simply called with the new buffer.
- The registry holds weak references to matrices, and every matrix holds a reference to the tensor whose memory
  it wraps (``SparseMatrix.from_array``). So while an entry is alive, its address belongs to that tensor and
  cannot be reused by another allocation: a hit is always the right matrix. :class:`SparseLinear` registers its
  matrix when it is created, moved or loaded, and holds the only strong reference, so nothing outlives the module.
- The static ints (out/in features) let the fake implementation give the output shape without reading the blob,
  and are the same for every layer of one shape, so compiling one decoder layer serves all of them (no per-layer
  constants, no recompilation).
- A miss (the op called directly on a blob no module owns) validates the blob and wraps it for that one call; it
  is refused while a CUDA graph is being captured, where the validation's device-to-host copies are illegal.

The op has a CPU implementation (the C++ reference of flashspmm.linear) and a CUDA one (the GPU kernels), and
no derivative: inference only. With autograd recording and an input that requires grad, it raises an error
naming ``torch.no_grad()`` / ``torch.inference_mode()``.
"""

from __future__ import annotations

import threading
import weakref
from typing import Optional

import torch

from .. import _linear
from .._matrix import SparseMatrix
from . import _compat

__all__ = ["register_matrix", "lookup_matrix", "linear_op"]

_REGISTRY: dict[tuple, weakref.ref] = {}
_LOCK = threading.Lock()

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _key(device: torch.device, ptr: int) -> tuple:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return ("cuda", index, int(ptr))
    return (device.type, 0, int(ptr))


def _matrix_key(W: SparseMatrix) -> tuple:
    return _key(torch.device(W.device), W.data_ptr)


def register_matrix(W: SparseMatrix) -> None:
    """Make ``W`` the matrix the op uses for the blob memory it wraps (weakly: W's owner keeps it alive)."""
    key = _matrix_key(W)

    def _drop(ref, key=key):
        with _LOCK:
            if _REGISTRY.get(key) is ref:
                del _REGISTRY[key]

    with _LOCK:
        _REGISTRY[key] = weakref.ref(W, _drop)


def lookup_matrix(blob: torch.Tensor) -> Optional[SparseMatrix]:
    """The live registered matrix whose blob starts at ``blob``'s address, or None."""
    ref = _REGISTRY.get(_key(blob.device, blob.data_ptr()))
    W = ref() if ref is not None else None
    if W is None or W.nbytes > blob.numel():
        return None
    return W


def _matrix_for(blob: torch.Tensor) -> SparseMatrix:
    W = lookup_matrix(blob)
    if W is not None:
        return W
    if blob.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "flashspmm::linear: this blob tensor belongs to no live flashspmm.torch.SparseLinear, and a blob "
            "cannot be validated while a CUDA graph is being captured; build the layer with SparseLinear (or "
            "call flashspmm.torch.register(W) for a SparseMatrix) before capturing"
        )
    return _compat.from_array(blob)


@torch.library.custom_op("flashspmm::linear", mutates_args=())
def linear_op(
    x: torch.Tensor, blob: torch.Tensor, bias: Optional[torch.Tensor], out_features: int, in_features: int
) -> torch.Tensor:
    """y = x @ W.T + bias, W the compressed matrix held by ``blob`` (see the module docstring)."""
    if x.device != blob.device:
        raise ValueError(
            f"x is on {x.device} but the sparse matrix is on {blob.device}: move the module "
            f"(module.to('{x.device}')) or the input"
        )
    W = _matrix_for(blob)
    if W.shape != (out_features, in_features):
        raise ValueError(
            f"the blob holds a {W.shape[0]} x {W.shape[1]} matrix, the caller expected {out_features} x {in_features}"
        )
    y = _linear.linear(x, W, bias)
    return _compat.as_torch(y, x)


@linear_op.register_fake
def _(x, blob, bias, out_features, in_features):
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"flashspmm::linear: x has dtype {x.dtype}; the matrix needs float16 or bfloat16 inputs")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"flashspmm::linear: x must be [..., {in_features}], got shape {tuple(x.shape)}")
    if bias is not None and (bias.shape != (out_features,) or bias.dtype != x.dtype):
        raise ValueError(
            f"flashspmm::linear: bias must be [{out_features}] of dtype {x.dtype}, got {tuple(bias.shape)} {bias.dtype}"
        )
    return x.new_empty((*x.shape[:-1], out_features))


def _no_grad_please(ctx, inputs, output):
    raise RuntimeError(
        "flashspmm::linear has no derivative (compressed weights are for inference): an input requires grad "
        "while autograd is recording. Run the model under torch.no_grad() or torch.inference_mode(), or detach "
        "the input."
    )


def _backward(ctx, grad):  # never reached: _no_grad_please refuses the forward first
    raise RuntimeError("flashspmm::linear has no derivative")


linear_op.register_autograd(_backward, setup_context=_no_grad_please)
