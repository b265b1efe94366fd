"""linear(): y = alpha * x @ W.T + bias + beta * out, on the host (numpy) or a GPU (torch, cupy, ...)."""

import numbers

from . import _arrays, _native
from ._arrays import ArrayInfo
from ._matrix import SparseMatrix
from ._native import check, ffi, lib

__all__ = ["linear"]


def _same_device_or_raise(info, what, ref):
    if info.device != ref.device:
        raise ValueError(f"{what} is on {info.device_name} but x is on {ref.device_name}; put them on one device")


def _half_like_w(info, what, W):
    _arrays.require_half(info, what)
    if info.dtype != W.dtype:
        raise TypeError(f"{what} has dtype {info.dtype} but W has dtype {W.dtype}; convert {what} to {W.dtype}")


def _as_rows(info, what, allow_copy):
    """View an array [..., C] as a 2-D [rows, C] ArrayInfo (copying only when allowed)."""
    if info.ndim == 1:
        stride = info.strides[0]
        if info.shape[0] > 1 and stride != 1:
            raise ValueError(f"{what} must have unit stride on its last dimension; make it contiguous first: "
                             f"{info.contiguous_hint()}")
        return ArrayInfo(obj=info.obj, ptr=info.ptr, shape=(1, info.shape[0]), strides=(info.shape[0], 1),
                         dtype=info.dtype, device=info.device, stream=info.stream, framework=info.framework)
    flat = _arrays.flatten_leading(info)
    if flat is not None:
        return flat
    if not allow_copy:
        raise ValueError(f"{what}'s leading dimensions cannot be flattened into rows without a copy; "
                         f"pass a contiguous {what}")
    rows = 1
    for n in info.shape[:-1]:
        rows *= n
    copy = _arrays.reshape_copy(info, (rows, info.shape[-1]))
    return _arrays.describe(copy, what)


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__qualname__}")
    return float(value)


def linear(x, W, bias=None, *, out=None, alpha=1.0, beta=0.0, split_k=0, stream=None):
    """y = alpha * x @ W.T + bias + beta * out, like ``torch.nn.functional.linear`` with a sparse W.

    Args:
        x: activations [..., K] (1-D [K] gives a 1-D result; more leading dimensions are flattened into rows
            and restored). A numpy array with a CPU matrix W (computed by the C++ reference), or a CUDA array
            (torch, cupy, any ``__cuda_array_interface__`` object) on W's GPU. Same dtype as W; unit stride on
            the last dimension, any row stride.
        W: a :class:`SparseMatrix` [M, K].
        bias: optional [M] array, same dtype and device as x.
        out: optional output [..., M] (same leading shape as x); required when ``beta != 0``. With
            ``beta == 0`` its old contents are never read.
        alpha, beta: scalars (fp32 accumulation).
        split_k: GPU only: 0 = automatic, else the number of K slices (1 = none).
        stream: GPU only: a cudaStream_t as an int, or an object with ``.cuda_stream`` (torch) or ``.ptr``
            (cupy); default: x's framework's current stream.

    Returns:
        ``out`` if given, else a new array in x's framework and on its device.
    """
    if not isinstance(W, SparseMatrix):
        raise TypeError(f"W must be a flashspmm.SparseMatrix (from flashspmm.compress or load), "
                        f"got {type(W).__qualname__}")
    alpha = _number(alpha, "alpha")
    beta = _number(beta, "beta")
    if isinstance(split_k, bool) or not isinstance(split_k, numbers.Integral):
        raise TypeError(f"split_k must be an int, got {type(split_k).__qualname__}")
    if split_k < 0:
        raise ValueError(f"split_k must be >= 0 (0 = automatic), got {split_k}")

    M, K = W.shape
    xi = _arrays.describe(x, "x")
    _half_like_w(xi, "x", W)
    if xi.ndim == 0:
        raise ValueError("x must have at least 1 dimension ([K] or [N, K])")
    if xi.shape[-1] != K:
        raise ValueError(f"x.shape[-1] = {xi.shape[-1]} does not match W's in features: W is [M={M}, K={K}], "
                         f"x must be [..., {K}] (got shape {xi.shape})")

    if W.device == "cpu" and xi.is_cuda:
        raise ValueError(f"W is on the CPU but x is on {xi.device_name}: move W first, W = W.to('{xi.device_name}')")
    if W.device != "cpu" and not xi.is_cuda:
        raise ValueError(f"W is on {W.device} but x is a host array: move x to {W.device}, or use W.to('cpu') "
                         f"for the CPU reference")
    if W.device != "cpu" and W.device != xi.device_name:
        raise ValueError(f"W is on {W.device} but x is on {xi.device_name}: use W.to('{xi.device_name}')")

    if beta != 0.0 and out is None:
        raise ValueError(f"beta = {beta} needs an `out` array to accumulate into")

    out_shape = tuple(xi.shape[:-1]) + (M,)
    x2 = _as_rows(xi, "x", allow_copy=True)
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
        if _arrays._module_of(out) in ("jax", "jaxlib"):  # JAX exports legacy capsules without a read-only flag
            raise ValueError("out is read-only: JAX arrays are immutable; omit out and use the returned array")
        result = out
        oi = _arrays.describe(out, "out")
        _half_like_w(oi, "out", W)
        _same_device_or_raise(oi, "out", xi)
        if oi.framework == "numpy" and not out.flags.writeable:
            raise ValueError("out is a read-only numpy array")
        if oi.read_only:
            raise ValueError("out is read-only (its DLPack producer says so; JAX arrays are immutable): "
                             "omit out and use the returned array")
        if tuple(oi.shape) != out_shape:
            raise ValueError(f"out must have shape {out_shape} (x's leading dimensions + W's out features {M}), "
                             f"got {tuple(oi.shape)}")
    o2 = _as_rows(oi, "out", allow_copy=False)
    _, _, ldy = _arrays.matrix_view(o2, "out")

    if N == 0 or M == 0:
        return result

    if not xi.is_cuda:
        blob = W.blob()
        check(lib.fspmm_linear_host(_native.as_ptr(blob.__array_interface__["data"][0]), blob.size,
                                    _native.as_ptr(x2.ptr), N, ldx, _native.as_ptr(bias_ptr),
                                    _native.as_ptr(o2.ptr), ldy, alpha, beta))
        return result if out is not None else _arrays.to_caller(result, xi)

    stream_handle = _arrays.resolve_stream(stream, xi)
    with _native.on_device(xi.device_index):
        ws_bytes = ffi.new("size_t *")
        check(lib.fspmm_linear_workspace_size(W.header, N, int(split_k), ws_bytes))
        ws, ws_ptr = _arrays.workspace(xi, int(ws_bytes[0]), stream_handle)
        check(lib.fspmm_linear(W.header, _native.as_ptr(W.data_ptr), _native.as_ptr(x2.ptr), N, ldx,
                               _native.as_ptr(bias_ptr), _native.as_ptr(o2.ptr), ldy, alpha, beta, int(split_k),
                               _native.as_ptr(ws_ptr), int(ws_bytes[0]), _native.as_ptr(stream_handle)))
    del ws  # the framework's allocator orders its reuse after the stream
    if isinstance(result, _arrays.DeviceBuffer):
        result.ready_stream = stream_handle
    return result if out is not None else _arrays.to_caller(result, xi)
