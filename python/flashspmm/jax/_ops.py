"""linear(): y = alpha * x @ W.T + bias + beta * out with a JaxSparseMatrix, under jit, vmap, scan and grad.

Layers, outside in: argument checks (at trace time, with the fix in the message) -> ``jax.custom_vjp`` (the
gradient for x, bias and out; none for the blob) -> ``jax.custom_batching.custom_vmap`` (batch dimensions of x
are folded into its rows, so a vmapped call is one kernel launch) -> the FFI call (_ffi.linear_call).
"""

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from .._matrix import SparseMatrix
from ._ffi import decompress_call, is_tracer, linear_call, match_varying
from ._matrix import JaxSparseMatrix, check_blob

__all__ = ["linear"]


@dataclasses.dataclass(frozen=True)
class _Call:
    """Everything static about one linear call (a custom_vjp non-differentiable argument)."""

    header: bytes
    dtype: str
    alpha: float
    beta: float
    split_k: int
    has_bias: bool
    has_out: bool


def _static_number(value, what: str) -> float:
    if is_tracer(value) or isinstance(value, jax.Array):
        raise TypeError(
            f"{what} must be a Python number: it is compiled into the call. For a traced {what}, "
            f"scale instead (e.g. {what} * linear(x, W))"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__qualname__}")
    return float(value)


def _as_array(a, what: str):
    if isinstance(a, jax.Array):  # tracers included
        return a
    if isinstance(a, (np.ndarray, np.generic, list, tuple)):
        return jnp.asarray(a)
    raise TypeError(
        f"{what} must be a JAX or numpy array, got {type(a).__module__}.{type(a).__qualname__} "
        f"(convert it with jnp.asarray)"
    )


def _require_dtype(a, what: str, W: JaxSparseMatrix) -> None:
    if a.dtype != W.dtype:
        raise TypeError(
            f"{what} has dtype {a.dtype} but W holds {W.dtype.name}: convert it with "
            f"{what}.astype(jnp.{W.dtype.name}) (x, bias, out and W share one dtype)"
        )


def _devices(a):
    """The devices of a concrete, committed JAX array (None for tracers and uncommitted arrays)."""
    if is_tracer(a) or not isinstance(a, jax.Array) or not getattr(a, "committed", False):
        return None
    return a.sharding.device_set


def _require_same_devices(W: JaxSparseMatrix, arrays) -> None:
    w_devices = _devices(W.blob)
    if w_devices is None:
        return
    for what, a in arrays:
        devices = _devices(a)
        if devices is not None and devices != w_devices:
            names = ", ".join(sorted(str(d) for d in devices))
            w_names = ", ".join(sorted(str(d) for d in w_devices))
            raise ValueError(
                f"{what} is on {names} but W is on {w_names}: put them on one device, e.g. "
                f"W = jax.device_put(W, {what}.sharding) (or move {what} to W's device)"
            )


def linear(x, W: JaxSparseMatrix, bias=None, *, alpha: float = 1.0, beta: float = 0.0, out=None, split_k: int = 0):
    """y = alpha * x @ W.T + bias + beta * out, like ``flashspmm.linear``, as a JAX operation.

    Works eagerly and under ``jax.jit``, ``jax.vmap`` (batch dimensions of x become rows: one launch),
    ``lax.scan`` / ``fori_loop`` and ``jax.shard_map`` (with one shard of a split W on each device, see
    :func:`flashspmm.jax.shard_rows`). On a GPU it is an XLA custom call on XLA's stream that allocates
    nothing and can be captured in a command buffer; on the CPU backend it runs the C++ reference
    implementation (the same bits as ``flashspmm.linear`` on numpy).

    ``jax.grad`` gives the gradients for x, bias and out: the one for x multiplies by the dense W,
    decompressed for the backward pass (the library has no transposed sparse product); W has none (its
    blob is integer data).

    Args:
        x: [..., K] array of W's dtype (float16 or bfloat16).
        W: a :class:`JaxSparseMatrix` [M, K] (inside shard_map: one shard).
        bias: optional [M] array of W's dtype.
        alpha, beta: Python numbers (compiled into the call; fp32 accumulation).
        out: [..., M] array accumulated into, required when beta != 0 (JAX arrays are immutable: a new array
            is returned; XLA reuses out's buffer when it is donated).
        split_k: GPU: 0 = automatic (chosen when the call is traced), else the number of K slices.

    Returns:
        [..., M] array of W's dtype.
    """
    if isinstance(W, SparseMatrix):
        raise TypeError(
            "W is a flashspmm.SparseMatrix; convert it once with W = flashspmm.jax.from_sparse(W) "
            "(or compress with flashspmm.jax.compress)"
        )
    if not isinstance(W, JaxSparseMatrix):
        raise TypeError(f"W must be a flashspmm.jax.JaxSparseMatrix, got {type(W).__qualname__}")
    alpha = _static_number(alpha, "alpha")
    beta = _static_number(beta, "beta")
    if isinstance(split_k, bool) or not isinstance(split_k, numbers.Integral) or is_tracer(split_k):
        raise TypeError(f"split_k must be a Python int, got {type(split_k).__qualname__}")
    if not 0 <= split_k <= 65535:
        raise ValueError(f"split_k must be 0 (automatic) or a number of K slices up to 65535, got {split_k}")
    check_blob(W, "linear")
    M, K = W.shard_shape

    x = _as_array(x, "x")
    _require_dtype(x, "x", W)
    if x.ndim == 0 or x.shape[-1] != K:
        shard = (
            " (one shard of a matrix split by columns: split x the same way, in_spec P(None, axis))"
            if W.split == "cols"
            else ""
        )
        raise ValueError(
            f"x.shape[-1] does not match W's in features: W is [M={M}, K={K}]{shard}, x must be "
            f"[..., {K}], got shape {tuple(x.shape)}"
        )
    out_shape = tuple(x.shape[:-1]) + (M,)
    checked = [("x", x)]
    if bias is not None:
        bias = _as_array(bias, "bias")
        _require_dtype(bias, "bias", W)
        if tuple(bias.shape) != (M,):
            raise ValueError(f"bias must have shape ({M},) (W's out features), got {tuple(bias.shape)}")
        checked.append(("bias", bias))
    if beta != 0.0:
        if out is None:
            raise ValueError(f"beta = {beta} needs `out`, the [..., {M}] array to accumulate into")
        out = _as_array(out, "out")
        _require_dtype(out, "out", W)
        if tuple(out.shape) != out_shape:
            raise ValueError(
                f"out must have shape {out_shape} (x's leading dimensions + W's out features {M}), "
                f"got {tuple(out.shape)}"
            )
        checked.append(("out", out))
    else:
        out = None  # with beta == 0 the old values are not used
    _require_same_devices(W, checked)

    if math.prod(out_shape) == 0:
        return jnp.zeros(out_shape, W.dtype)
    call = _Call(W.header, W.dtype.name, alpha, beta, int(split_k), bias is not None, out is not None)
    if not any(is_tracer(a) for a in (x, W.blob, bias, out)):
        # an eager call: run the compiled call (cached per matrix and shapes) instead of re-tracing the
        # custom_vjp / custom_vmap wrappers every time
        return _linear_compiled(call, x, W.blob, bias, out)
    # inside shard_map the operands must vary over the same mesh axes; casting them here, outside the
    # custom_vjp, lets JAX transpose the casts (a psum of the gradient of a replicated x)
    x, blob, bias, out = _unpack(call, match_varying(_pack(call, x, W.blob, bias, out)))
    return _linear(call, x, blob, bias, out)


# ---- gradient ---------------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear(call: _Call, x, blob, bias, out):
    return _batched(call, x, blob, bias, out)


def _linear_fwd(call: _Call, x, blob, bias, out):
    return _batched(call, x, blob, bias, out), blob


def _linear_bwd(call: _Call, blob, dy):
    # y = alpha * x W^T + bias + beta * out, so dx = alpha * dy W (with W dense: there is no sparse W^T product),
    # dbias = the sum of dy over rows, dout = beta * dy; the blob is integer data (a float0 zero cotangent).
    dense = decompress_call(call.header, blob, call.dtype)
    dx = (jnp.matmul(dy, dense, preferred_element_type=jnp.float32) * call.alpha).astype(call.dtype)
    dblob = np.zeros(blob.shape, dtype=jax.dtypes.float0)
    dbias = None
    if call.has_bias:
        dbias = jnp.sum(dy.astype(jnp.float32), axis=tuple(range(dy.ndim - 1))).astype(call.dtype)
    dout = (dy.astype(jnp.float32) * call.beta).astype(call.dtype) if call.has_out else None
    return dx, dblob, dbias, dout


_linear.defvjp(_linear_fwd, _linear_bwd)
_linear_compiled = jax.jit(_linear, static_argnums=0)


# ---- batching ---------------------------------------------------------------------------------------------


def _pack(call: _Call, x, blob, bias, out):
    return [x, blob] + ([bias] if call.has_bias else []) + ([out] if call.has_out else [])


def _unpack(call: _Call, args):
    x, blob, rest = args[0], args[1], list(args[2:])
    bias = rest.pop(0) if call.has_bias else None
    out = rest.pop(0) if call.has_out else None
    return x, blob, bias, out


def _batched(call: _Call, x, blob, bias, out):
    """The FFI call, with a vmap rule that folds batch dimensions into the rows of x."""

    @jax.custom_batching.custom_vmap
    def f(*args):
        x, blob, bias, out = _unpack(call, args)
        return linear_call(
            call.header, x, blob, bias, out, alpha=call.alpha, beta=call.beta, split_k=call.split_k, dtype=call.dtype
        )

    f.def_vmap(functools.partial(_vmap_rule, call))
    return f(*_pack(call, x, blob, bias, out))


def _vmap_rule(call: _Call, axis_size: int, in_batched, *args):
    x, blob, bias, out = _unpack(call, args)
    x_b, blob_b, bias_b, out_b = _unpack(call, in_batched)
    if blob_b:
        raise ValueError(
            "jax.vmap over W is not supported: W's blob has a batch dimension. Map over x only "
            "(close over W, or pass it with in_axes=None), or loop over the matrices with lax.map"
        )
    # batched arguments have their batch dimension first; give the others one too
    if not x_b:
        x = jnp.broadcast_to(x, (axis_size,) + tuple(x.shape))
    if call.has_out and not out_b:
        out = jnp.broadcast_to(out, (axis_size,) + tuple(out.shape))
    if call.has_bias and bias_b:
        # a bias per batch element: the product without it, then the bias added in float32 (rounded twice)
        y = _batched(dataclasses.replace(call, has_bias=False), x, blob, None, out)
        b = bias.astype(jnp.float32).reshape((axis_size,) + (1,) * (y.ndim - 2) + (bias.shape[-1],))
        return (y.astype(jnp.float32) + b).astype(call.dtype), True
    return _batched(call, x, blob, bias, out), True
