"""linear(): y = alpha * x @ W.T + bias + beta * out, on the host (numpy) or a GPU (torch, cupy, ...).

Two paths share one C call. The torch fast path (a CUDA tensor of W's dtype on W's device, the current stream,
no ``out``) checks only what it must and passes addresses as integers to a second cffi declaration of
``fspmm_linear``, so one call costs little more than ``torch.nn.functional.linear`` on the host. Every other
input goes through the general path: the array adapters, a copy of x when its rows cannot be flattened, and
the stream and ownership rules of the README.
"""

from __future__ import annotations

import numbers
import sys

from . import _arrays, _native
from ._arrays import ArrayInfo, ArrayLike, StreamLike
from ._matrix import DECODERS, KERNELS, SparseMatrix, _choice, _split_count
from ._native import check, lib

__all__ = ["linear"]


def _same_device_or_raise(info, what, ref):
    if info.device != ref.device:
        raise ValueError(f"{what} is on {info.device_name} but x is on {ref.device_name}; put them on one device")


def _half_like_w(info, what, W):
    _arrays.require_half(info, what)
    if info.dtype != W.dtype:
        raise TypeError(f"{what} has dtype {info.dtype} but W has dtype {W.dtype}; convert {what} to {W.dtype}")


def _as_rows(info, what, allow_copy, stream=None):
    """View an array [..., C] as a 2-D [rows, C] ArrayInfo (copying, ordered on ``stream``, only when allowed)."""
    if info.ndim == 1:
        stride = info.strides[0]
        if info.shape[0] > 1 and stride != 1:
            raise ValueError(
                f"{what} must have unit stride on its last dimension; make it contiguous first: "
                f"{info.contiguous_hint()}"
            )
        return ArrayInfo(
            obj=info.obj,
            ptr=info.ptr,
            shape=(1, info.shape[0]),
            strides=(info.shape[0], 1),
            dtype=info.dtype,
            device=info.device,
            stream=info.stream,
            framework=info.framework,
            keep=info.keep,
        )
    flat = _arrays.flatten_leading(info)
    if flat is not None:
        return flat
    if not allow_copy:
        raise ValueError(
            f"{what}'s leading dimensions cannot be flattened into rows without a copy; pass a contiguous {what}"
        )
    rows = 1
    for n in info.shape[:-1]:
        rows *= n
    copy = _arrays.reshape_copy(info, (rows, info.shape[-1]), stream)
    return _arrays.describe(copy, what)


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__qualname__}")
    return float(value)


def _grad_error():
    return ValueError(
        "flashspmm.linear computes no gradients, but x requires grad: call it under torch.no_grad() "
        "or torch.inference_mode(), or pass x.detach()"
    )


# ---- the torch fast path -------------------------------------------------------------------------------
_torch = None  # the torch module once a tensor has been seen (never imported by flashspmm itself)
_raw_stream = None


def _torch_fast(x, W, bias, alpha, split_k, kernel, decoder):
    """The result for a CUDA tensor on the current stream, or None where the general path must decide."""
    global _raw_stream
    torch = _torch
    dtype = W._torch_dtype
    if dtype is None:
        dtype = W._torch_dtype = getattr(torch, W.dtype)
    if x.dtype is not dtype or not x.is_cuda or x.dim() == 0:
        return None
    device = x.device
    if device.index != W._device_index:
        return None
    M, K = W.shape
    if x.shape[-1] != K:
        return None
    if x.dim() == 2 and (x.stride(1) == 1 or K == 1):
        x2 = x
    elif x.is_contiguous():
        x2 = x.view(-1, K)
    else:
        return None
    N = x2.shape[0]
    if N == 0:
        return None
    if x.requires_grad and torch.is_grad_enabled():
        raise _grad_error()
    bias_ptr = 0
    if bias is not None:
        if (
            type(bias) is not type(x)
            or bias.dtype is not dtype
            or bias.device != device
            or bias.dim() != 1
            or bias.shape[0] != M
            or (M > 1 and bias.stride(0) != 1)
        ):
            return None  # the general path says what is wrong
        bias_ptr = bias.data_ptr()
    entry = W._entries.get((N, split_k, kernel, decoder)) or W._entry(N, split_k, kernel, decoder)
    y = torch.empty(x.shape[:-1] + (M,), dtype=dtype, device=device)
    if _raw_stream is None:
        _raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None) or (
            lambda index: torch.cuda.current_stream(index).cuda_stream
        )
    stream = _raw_stream(device.index)
    ws_bytes = entry.workspace
    ws_ptr = 0
    plan = entry.address
    if entry.keep and stream == 0:
        # On the default stream, a small workspace kept for this plan (calls on one stream run in order). Only
        # there: side streams are where CUDA graphs are captured and where torch.compile's CUDA graph trees
        # allocate from a private pool, whose memory must not outlive the call.
        ws = W._kept.get(plan)
        if ws is None or ws.numel() < ws_bytes:
            ws = W._kept[plan] = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
        ws_ptr = ws.data_ptr()
    elif ws_bytes:
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)  # freed in the current stream's order
        ws_ptr = ws.data_ptr()
    ldx = x2.stride(0) if N > 1 else K
    status = _native.lib_addr.fspmm_linear(
        plan, x2.data_ptr(), N, K, ldx, bias_ptr, y.data_ptr(), M, M, alpha, 0.0, ws_ptr, ws_bytes, stream
    )
    if status:
        check(status)
    return y


def linear(
    x: ArrayLike,
    W: SparseMatrix,
    bias: ArrayLike | None = None,
    *,
    out: ArrayLike | None = None,
    alpha: float = 1.0,
    beta: float = 0.0,
    split_k: int = 0,
    kernel: str = "auto",
    decoder: str = "auto",
    stream: StreamLike | None = None,
) -> ArrayLike:
    """y = alpha * x @ W.T + bias + beta * out, like ``torch.nn.functional.linear`` with a sparse W.

    Args:
        x: activations [..., K] (1-D [K] gives a 1-D result; more leading dimensions are flattened into rows
            and restored). A host array (numpy, torch CPU, JAX CPU, ...) with a CPU matrix W (computed by the
            C++ reference), or a CUDA array (torch, cupy, JAX, any ``__cuda_array_interface__`` object) on W's
            GPU. Same dtype as W; unit stride on the last dimension, any row stride.
        W: a :class:`SparseMatrix` [M, K].
        bias: optional [M] array, same dtype and device as x.
        out: optional output [..., M] (same leading shape as x); required when ``beta != 0``. With
            ``beta == 0`` its old contents are never read.
        alpha, beta: scalars (fp32 accumulation).
        split_k: GPU only: 0 = automatic, else the number of K slices (1 = none).
        kernel: GPU only: "auto", "tensor_core" (the pipelined Tensor Core kernel), "cuda_core" (serves N = 1;
            Tiled-CSL matrices N <= 16) or "streaming" (Tensor Cores, a tile stream per warp: bitmap matrices, serves N <= 16).
        decoder: GPU, bitmap matrices only: "auto", "direct", "scatter" or "rows".
        stream: GPU only: a cudaStream_t as an int, or an object with ``.cuda_stream`` (torch) or ``.ptr``
            (cupy); default: x's framework's current stream.

    Returns:
        ``out`` if given, else a new array in x's framework and on its device.

    The launch plan for each N (and options) is made once and cached on W.
    """
    global _torch
    if not isinstance(W, SparseMatrix):
        raise TypeError(
            f"W must be a flashspmm.SparseMatrix (from flashspmm.compress or load), got {type(W).__qualname__}"
        )
    kernel_code = _choice(kernel, KERNELS, "kernel")
    decoder_code = _choice(decoder, DECODERS, "decoder")
    split_k = _split_count(split_k)
    alpha = _number(alpha, "alpha")
    beta = _number(beta, "beta")
    if _torch is None and "torch" in sys.modules:
        _torch = sys.modules["torch"]
    if (
        _torch is not None
        and out is None
        and stream is None
        and beta == 0.0
        and W._ptr is not None
        and isinstance(x, _torch.Tensor)
    ):
        y = _torch_fast(x, W, bias, alpha, split_k, kernel_code, decoder_code)
        if y is not None:
            return y
    return _linear_general(x, W, bias, out, alpha, beta, split_k, kernel_code, decoder_code, stream)


def _linear_general(x, W, bias, out, alpha, beta, split_k, kernel, decoder, stream):
    M, K = W.shape
    xi = _arrays.describe(x, "x")
    _half_like_w(xi, "x", W)
    if xi.ndim == 0:
        raise ValueError("x must have at least 1 dimension ([K] or [N, K])")
    if xi.shape[-1] != K:
        raise ValueError(
            f"x.shape[-1] = {xi.shape[-1]} does not match W's in features: W is [M={M}, K={K}], "
            f"x must be [..., {K}] (got shape {xi.shape})"
        )
    if xi.requires_grad:
        raise _grad_error()

    if W.device == "cpu" and xi.is_cuda:
        raise ValueError(f"W is on the CPU but x is on {xi.device_name}: move W first, W = W.to('{xi.device_name}')")
    if W.device != "cpu" and not xi.is_cuda:
        raise ValueError(
            f"W is on {W.device} but x is a host array: move x to {W.device}, or use W.to('cpu') for the CPU reference"
        )
    if W.device != "cpu" and W.device != xi.device_name:
        raise ValueError(f"W is on {W.device} but x is on {xi.device_name}: use W.to('{xi.device_name}')")

    if beta != 0.0 and out is None:
        raise ValueError(f"beta = {beta} needs an `out` array to accumulate into")

    stream_handle = _arrays.resolve_stream(stream, xi) if xi.is_cuda else None
    out_shape = tuple(xi.shape[:-1]) + (M,)
    x2 = _as_rows(xi, "x", allow_copy=True, stream=stream_handle)
    N, _, ldx = _arrays.matrix_view(x2, "x")

    bias_ptr = 0
    if bias is not None:
        bi = _arrays.describe(bias, "bias")
        _half_like_w(bi, "bias", W)
        _same_device_or_raise(bi, "bias", xi)
        if bi.shape != (M,):
            raise ValueError(f"bias must have shape ({M},) (W's out features), got {bi.shape}")
        if M > 1 and bi.strides[0] != 1:
            raise ValueError(f"bias must be contiguous; use {bi.contiguous_hint()}")
        bias_ptr = bi.ptr

    if out is None:
        result = _arrays.empty_like_framework(xi, out_shape)
        oi = _arrays.describe(result, "out")
    else:
        if _arrays.is_immutable(out):
            raise ValueError("out is read-only: JAX arrays are immutable; omit out and use the returned array")
        result = out
        oi = _arrays.describe(out, "out")
        _half_like_w(oi, "out", W)
        _same_device_or_raise(oi, "out", xi)
        if oi.read_only:
            raise ValueError(
                "out is read-only (a read-only numpy array, or a DLPack producer says so: JAX arrays "
                "are immutable): omit out and use the returned array"
            )
        if tuple(oi.shape) != out_shape:
            raise ValueError(
                f"out must have shape {out_shape} (x's leading dimensions + W's out features {M}), "
                f"got {tuple(oi.shape)}"
            )
    o2 = _as_rows(oi, "out", allow_copy=False)
    _, _, ldy = _arrays.matrix_view(o2, "out")

    if N == 0 or M == 0:
        return result if out is not None else _arrays.to_caller(result, xi, stream_handle)

    if not xi.is_cuda:
        check(
            lib.fspmm_linear_host(
                W._handle,
                _native.as_ptr(x2.ptr),
                N,
                K,
                ldx,
                _native.as_ptr(bias_ptr),
                _native.as_ptr(o2.ptr),
                M,
                ldy,
                alpha,
                beta,
            )
        )
        return result if out is not None else _arrays.to_caller(result, xi)

    entry = W._entry(N, split_k, kernel, decoder)
    ws, ws_ptr = _arrays.workspace(xi, entry.workspace, stream_handle)
    status = _native.lib_addr.fspmm_linear(
        entry.address, x2.ptr, N, K, ldx, bias_ptr, o2.ptr, M, ldy, alpha, beta, ws_ptr, entry.workspace, stream_handle
    )
    check(status)
    # Everything the kernel reads or writes stays alive until it has run: the framework's allocator orders the
    # reuse of the workspace, the output and a copy of x after `stream` (record_stream where it is a side
    # stream), and the blob's owner is told about the stream too.
    _arrays.used_on(stream_handle, xi, ws, result if out is None else None, x2.obj if x2.obj is not xi.obj else None)
    W._read_on(stream_handle)
    if isinstance(result, _arrays.DeviceBuffer):
        result.ready_stream = stream_handle
    return result if out is not None else _arrays.to_caller(result, xi, stream_handle)
