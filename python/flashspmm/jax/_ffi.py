"""The XLA FFI targets of libflashspmm (registered at import) and the calls that stage them out.

The handlers live in the library (src/api/xla_ffi.cpp); this module wraps their function pointers in
capsules for ``jax.ffi.register_ffi_target`` and builds the ``jax.ffi.ffi_call`` of a linear or decompress.
The CUDA linear has one more result than the CPU one (its split-K workspace, sized at trace time), so a
linear is staged out with ``lax.platform_dependent``: only the branch of the platform being compiled for is
lowered.
"""

import functools
import math
import struct
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _native
from .._native import check, ffi

try:  # the public name, where this JAX still has it
    from jax.core import Tracer
except ImportError:  # pragma: no cover
    from jax._src.core import Tracer

__all__ = [
    "LINEAR",
    "DECOMPRESS",
    "HeaderInfo",
    "parse_header",
    "launch_header",
    "linear_call",
    "decompress_call",
    "cuda_workspace",
    "is_tracer",
    "match_varying",
]

LINEAR = "flashspmm_linear"
DECOMPRESS = "flashspmm_decompress"

# The 128-byte blob header (docs/FORMATS.md), little-endian.
_HEADER = struct.Struct("<IHBBqqqIIqqQQQQQQI12sQ")
assert _HEADER.size == 128
_MAGIC = 0x4D505346
_DTYPES = {1: "float16", 2: "bfloat16"}
_FORMATS = {1: "tiled_csl", 2: "bitmap"}
_MASK64 = (1 << 64) - 1


class HeaderInfo(NamedTuple):
    """The header fields flashspmm.jax needs, from the 128 header bytes."""

    M: int
    K: int
    dtype: str  # "float16" or "bfloat16"
    format: str  # "bitmap" or "tiled_csl"
    nnz: int
    total_bytes: int
    data_offset: int
    data_bytes: int
    max_tile_bytes: int


@functools.lru_cache(maxsize=4096)
def parse_header(header: bytes) -> HeaderInfo:
    """Fields of a header (which was checked by the library when its blob was validated)."""
    f = _HEADER.unpack(header)
    if f[0] != _MAGIC or f[3] not in _DTYPES or f[2] not in _FORMATS:
        raise ValueError("not a flashspmm blob header (bad magic, dtype or format)")
    return HeaderInfo(
        M=f[4],
        K=f[5],
        dtype=_DTYPES[f[3]],
        format=_FORMATS[f[2]],
        nnz=f[6],
        total_bytes=f[15],
        data_offset=f[13],
        data_bytes=f[14],
        max_tile_bytes=f[17],
    )


def _checksum(data: bytes) -> int:
    """The blob checksum of docs/FORMATS.md ("Checksum") over a multiple of 8 bytes."""
    total = 0
    for i, (word,) in enumerate(struct.iter_unpack("<Q", data)):
        z = (word + i * 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        total = (total + (z ^ (z >> 31))) & _MASK64
    return total


def launch_header(headers) -> bytes:
    """One header under which every shard of a split matrix can be launched.

    The shards have one shape, format and dtype; the result is the header of the largest one with the largest
    nnz, max_tile_bytes and data_bytes of all (so the kernels reserve room for any shard's tiles), total_bytes
    of the padded blobs, no payload checksum (each shard's blob keeps its own) and a fresh header checksum.
    """
    fields = [list(_HEADER.unpack(h)) for h in headers]
    first = fields[0]
    for f in fields[1:]:
        if (f[2], f[3], f[4], f[5]) != (first[2], first[3], first[4], first[5]):
            raise ValueError("the shards differ in format, dtype or shape; they cannot share one launch header")
    out = list(max(fields, key=lambda f: f[15]))
    out[6] = max(f[6] for f in fields)  # nnz
    out[14] = max(f[14] for f in fields)  # data_bytes
    out[15] = out[13] + out[14]  # total_bytes = data_offset + data_bytes
    out[16] = 0  # payload_checksum: not one blob's
    out[17] = max(f[17] for f in fields)  # max_tile_bytes
    body = _HEADER.pack(*out)[:120]
    return body + struct.pack("<Q", _checksum(body))


def _handler_capsule(name: str):
    try:
        fn = _native.lib.fspmm_xla_handler
    except AttributeError:
        raise ImportError(
            "flashspmm.jax needs a libflashspmm with XLA FFI handlers (fspmm_xla_handler); rebuild "
            "and reinstall flashspmm (pip install .)"
        ) from None
    ptr = fn(name.encode())
    if ptr == ffi.NULL:
        raise ImportError(f"libflashspmm has no XLA FFI handler {name!r}; rebuild and reinstall flashspmm")
    return jax.ffi.pycapsule(int(ffi.cast("uintptr_t", ptr)))


def _register():
    for target, kind in ((LINEAR, "linear"), (DECOMPRESS, "decompress")):
        jax.ffi.register_ffi_target(target, _handler_capsule(f"{kind}_cpu"), platform="cpu", api_version=1)
        # JAX keeps a CUDA registration until a CUDA backend appears, so this is safe without a GPU too
        jax.ffi.register_ffi_target(target, _handler_capsule(f"{kind}_cuda"), platform="CUDA", api_version=1)


_register()


@functools.lru_cache(maxsize=4096)
def cuda_workspace(header: bytes, n: int, split_k: int) -> Tuple[int, int]:
    """(workspace bytes, K slices) of a CUDA linear with n rows of x, planned on the library's current device.

    Resolving split_k here (0 = automatic, chosen for this device's multiprocessor count) and passing the
    slice count to the handler keeps the workspace size right on any device the program later runs on.
    Without a CUDA device (a CPU-only machine, where the CUDA branch is traced but never compiled) the answer
    is no workspace.
    """
    if _native.device_count() == 0:
        return 0, split_k
    size = ffi.new("size_t *")
    splits = ffi.new("int *")
    src = ffi.from_buffer(header)
    check(_native.lib.fspmm_xla_linear_workspace(src, n, split_k, size, splits))
    return int(size[0]), int(splits[0])


def is_tracer(a) -> bool:
    """Whether `a` is an abstract value being traced (under jit, vmap, grad, ...), not a concrete array."""
    return isinstance(a, Tracer)


# ---- varying manual axes (inside shard_map) ------------------------------------------------------------------


def _varying(a) -> frozenset:
    """The mesh axes `a` varies over inside shard_map (empty elsewhere)."""
    t = jax.typeof(a)
    mat = getattr(t, "mat", None)  # newer JAX: the manual axis type; older JAX: `vma`
    if mat is not None:
        return frozenset(getattr(mat, "varying", ()))
    return frozenset(getattr(t, "vma", ()))


def _cast_varying(a, axes: frozenset):
    """`a` marked as varying over `axes` (the FFI call needs all operands to vary over the same axes)."""
    missing = tuple(sorted(axes - _varying(a), key=str))
    if not missing:
        return a
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(a, missing, to="varying")
    return jax.lax.pvary(a, missing)


def match_varying(operands):
    """The operands, each marked as varying over every mesh axis any of them varies over."""
    axes = frozenset().union(*(_varying(a) for a in operands))
    return [_cast_varying(a, axes) for a in operands] if axes else list(operands)


def _result(like, shape, dtype):
    """The type of a result shaped `shape`: plain outside shard_map, varying like `like` inside it."""
    dtype = jnp.dtype(dtype)  # names too ("bfloat16" needs JAX's dtype table)
    if not _varying(like):
        return jax.ShapeDtypeStruct(shape, dtype)
    return jax.typeof(like).update(shape=tuple(shape), dtype=dtype, weak_type=False)


# ---- the calls ------------------------------------------------------------------------------------------------


def _words(header: bytes) -> np.ndarray:
    return np.frombuffer(header, dtype="<i8").copy()


def linear_call(header: bytes, x, blob, bias, out, *, alpha: float, beta: float, split_k: int, dtype):
    """y = alpha * x @ W.T + bias + beta * out as an FFI call (arguments already checked)."""
    info = parse_header(header)
    operands = [x, blob] + ([bias] if bias is not None else []) + ([out] if out is not None else [])
    operands = match_varying(operands)
    x = operands[0]
    out_shape = tuple(x.shape[:-1]) + (info.M,)
    y_type = _result(x, out_shape, dtype)
    n = math.prod(x.shape[:-1])
    attrs = dict(
        header=_words(header), alpha=np.float32(alpha), beta=np.float32(beta), has_bias=np.int32(bias is not None)
    )
    aliases: Optional[dict] = {len(operands) - 1: 0} if out is not None else None

    def cpu(*ops):
        return jax.ffi.ffi_call(LINEAR, y_type, input_output_aliases=aliases)(*ops, split_k=np.int32(split_k), **attrs)

    def cuda(*ops):
        ws_bytes, splits = cuda_workspace(header, n, split_k)
        ws_type = _result(ops[1], (ws_bytes,), np.uint8)
        y, _ = jax.ffi.ffi_call(LINEAR, (y_type, ws_type), input_output_aliases=aliases)(
            *ops, split_k=np.int32(splits), **attrs
        )
        return y

    return jax.lax.platform_dependent(*operands, cpu=cpu, cuda=cuda)


def decompress_call(header: bytes, blob, dtype):
    """The dense [M, K] matrix of a blob as an FFI call."""
    info = parse_header(header)
    call = jax.ffi.ffi_call(DECOMPRESS, _result(blob, (info.M, info.K), dtype), vmap_method="sequential")
    return call(blob, header=_words(header))
