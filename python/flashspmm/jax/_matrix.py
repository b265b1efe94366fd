"""JaxSparseMatrix: a compressed matrix as a JAX pytree (the blob a uint8 array leaf, the header static)."""

import os
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from .._matrix import SparseMatrix
from ._ffi import decompress_call, is_tracer, parse_header

__all__ = ["JaxSparseMatrix", "compress", "from_sparse", "load"]


@dataclass(frozen=True)
class _Static:
    """The pytree's static part (hashable; equal for equal matrices, so jit traces once per set of weights)."""

    header: bytes  # the 128 header bytes: the blob's own, or the launch header of a shard
    shards: int = 1  # > 1: the blob holds `shards` padded shard blobs, one per device along a mesh axis
    split: str = ""  # "rows" (W split by out features) or "cols" (by in features) when shards > 1
    nnz: int = -1  # stored values of the whole matrix (-1: the header's)
    axis: object = None  # the mesh axis the shards are spread over

    def __repr__(self):  # the header as its checksum: treedefs print this
        parts = [f"header={self.header[120:].hex()}"]
        if self.split:
            parts.append(f"shards={self.shards}, split={self.split}, axis={self.axis!r}")
        return f"_Static({', '.join(parts)})"


@jax.tree_util.register_pytree_with_keys_class
class JaxSparseMatrix:
    """A compressed sparse weight matrix W [M, K] (``nn.Linear`` layout) for JAX programs.

    A pytree: its one leaf is :attr:`blob`, the compressed bytes as a uint8 JAX array; the 128-byte header,
    shape, dtype and format are static. It can be passed into ``jax.jit`` functions, placed with
    ``jax.device_put``, pickled, and saved and restored with the rest of a model's parameters (the blob is
    an ordinary array leaf). Multiply with :func:`flashspmm.jax.linear`. Create one with
    :func:`flashspmm.jax.compress`, :func:`flashspmm.jax.from_sparse` or :func:`flashspmm.jax.load`; a
    matrix split over devices comes from :func:`flashspmm.jax.shard_rows` / :func:`~flashspmm.jax.shard_cols`.

    Two matrices with different headers are different pytree structures: a jitted function is traced once
    per set of weights, not per call.
    """

    __slots__ = ("blob", "_static")

    def __init__(self, blob, header: bytes, *, shards: int = 1, split: str = "", nnz: int = -1, axis=None):
        header = bytes(header)
        if len(header) != 128:
            raise ValueError(f"header must be the blob's 128 header bytes, got {len(header)}")
        parse_header(header)
        if shards < 1 or split not in ("", "rows", "cols") or (shards > 1 and not split):
            raise ValueError("shards must be 1, or > 1 with split='rows' or 'cols'")
        self.blob = blob
        self._static = _Static(header, int(shards), split, int(nnz), axis)

    # ---- pytree -----------------------------------------------------------------------------------------

    def tree_flatten_with_keys(self):
        return ((jax.tree_util.GetAttrKey("blob"), self.blob),), self._static

    def tree_flatten(self):
        return (self.blob,), self._static

    @classmethod
    def tree_unflatten(cls, static, children):
        # no checks: JAX rebuilds pytrees with placeholders (tracers, None, ShapeDtypeStructs) as leaves
        self = object.__new__(cls)
        self.blob = children[0]
        self._static = static
        return self

    def __reduce__(self):
        return (_rebuild, (self.blob, self._static))

    # ---- properties -------------------------------------------------------------------------------------

    @property
    def header(self) -> bytes:
        """The 128 header bytes (of one shard, for a split matrix: its launch header)."""
        return self._static.header

    @property
    def shards(self) -> int:
        """Number of shards (1 unless created by shard_rows / shard_cols)."""
        return self._static.shards

    @property
    def split(self) -> Optional[str]:
        """ "rows" or "cols" for a matrix from shard_rows / shard_cols, else None."""
        return self._static.split or None

    @property
    def axis(self):
        """The mesh axis a split matrix is spread over (None when not split)."""
        return self._static.axis

    @property
    def spec(self):
        """The PartitionSpec of the blob: P(axis) for a split matrix, P() otherwise (for shard_map in_specs)."""
        from jax.sharding import PartitionSpec

        return PartitionSpec(self.axis) if self.axis is not None else PartitionSpec()

    @property
    def shard_shape(self):
        """(M, K) of one shard (of the whole matrix when not split)."""
        info = parse_header(self.header)
        return (info.M, info.K)

    @property
    def shape(self):
        """(M, K) of the whole matrix: out features x in features."""
        m, k = self.shard_shape
        if self.split == "rows":
            return (m * self.shards, k)
        if self.split == "cols":
            return (m, k * self.shards)
        return (m, k)

    @property
    def dtype(self):
        """jnp.float16 or jnp.bfloat16 (inputs and outputs of linear have this dtype)."""
        return jnp.dtype(parse_header(self.header).dtype)

    @property
    def format(self) -> str:
        """ "bitmap" or "tiled_csl"."""
        return parse_header(self.header).format

    @property
    def nnz(self) -> int:
        """Stored nonzeros of the whole matrix."""
        return self._static.nnz if self._static.nnz >= 0 else parse_header(self.header).nnz

    @property
    def density(self) -> float:
        m, k = self.shape
        return self.nnz / (m * k)

    @property
    def shard_nbytes(self) -> int:
        """Bytes of one (padded) shard blob, or of the blob."""
        return parse_header(self.header).total_bytes

    @property
    def nbytes(self) -> int:
        """Bytes of the blob array (all shards)."""
        return self.shard_nbytes * self.shards

    # ---- conversion -------------------------------------------------------------------------------------

    def to_dense(self):
        """The dense matrix [M, K] (W's dtype), decompressed on W's device; usable under jax.jit.

        For a split matrix, call it inside shard_map (each device gets its shard) or use
        :meth:`to_sparse_shards` eagerly.
        """
        return to_dense(self)

    def to_sparse(self, device="cpu") -> SparseMatrix:
        """This matrix as a :class:`flashspmm.SparseMatrix` (eager: the blob is copied to the host and
        validated), e.g. for :func:`flashspmm.save_model` or the torch / cupy API."""
        if self.shards > 1:
            raise ValueError("this matrix is split over devices; use to_sparse_shards() for its shards")
        return SparseMatrix.from_blob(np.asarray(self.blob), device=device)

    def to_sparse_shards(self):
        """The shards of a split matrix as host :class:`flashspmm.SparseMatrix` objects (eager)."""
        host = np.asarray(self.blob).reshape(self.shards, self.shard_nbytes)
        out = []
        for row in host:
            # each shard's own blob is a prefix of its padded slot: its header says how long
            out.append(SparseMatrix.from_blob(row[: parse_header(row[:128].tobytes()).total_bytes]))
        return out

    def save(self, path) -> None:
        """Write the blob (bytes exactly as flashspmm.SparseMatrix.save does); load with flashspmm.jax.load."""
        self.to_sparse().save(path)

    def __repr__(self):
        m, k = self.shape
        where = ""
        if isinstance(self.blob, jax.Array) and not is_tracer(self.blob):
            where = f", device={','.join(sorted(str(d) for d in self.blob.devices()))}"
        shards = f", shards={self.shards} ({self.split})" if self.shards > 1 else ""
        return (
            f"JaxSparseMatrix(shape=({m}, {k}), dtype={self.dtype.name}, format={self.format}, nnz={self.nnz}"
            f"{shards}, nbytes={self.nbytes}{where})"
        )


def _rebuild(blob, static):
    return JaxSparseMatrix.tree_unflatten(static, (blob,))


def _default_device(w):
    """The device a matrix compressed from `w` goes to: w's own for a single-device JAX array, else None
    (JAX's default device, uncommitted)."""
    if isinstance(w, jax.Array) and not is_tracer(w):
        devices = w.devices()
        if len(devices) != 1:
            raise ValueError(
                "w is split over several devices; compress its shards with flashspmm.jax.shard_rows "
                "or shard_cols, or gather it first"
            )
        return next(iter(devices)) if w.committed else None
    return None


def from_sparse(W: SparseMatrix, device=None) -> JaxSparseMatrix:
    """A :class:`flashspmm.SparseMatrix` (host or GPU) as a :class:`JaxSparseMatrix` on ``device`` (a
    ``jax.Device`` or sharding; default: JAX's default device). Eager: the blob goes through host memory."""
    if isinstance(W, JaxSparseMatrix):
        return W if device is None else jax.device_put(W, device)
    if not isinstance(W, SparseMatrix):
        raise TypeError(f"W must be a flashspmm.SparseMatrix, got {type(W).__qualname__}")
    blob = np.asarray(W.blob())
    return JaxSparseMatrix(jax.device_put(blob, device), blob[:128].tobytes())


def compress(w, *, format: str = "auto", dtype: Optional[str] = None, device=None) -> JaxSparseMatrix:
    """Compress a dense W [M, K] (float16 / bfloat16) into a :class:`JaxSparseMatrix` (eager).

    ``w`` may be a JAX array (compressed on its GPU by the GPU encoder, or on the CPU for CPU arrays), numpy
    array, torch tensor, ... as for :func:`flashspmm.compress`. The result is on ``device`` if given, else on
    w's device (for a committed single-device JAX array) or JAX's default device. Not jittable: the blob's
    size depends on the values of w.
    """
    target = device if device is not None else _default_device(w)
    return from_sparse(_sparse_compress(w, format=format, dtype=dtype), device=target)


def _sparse_compress(w, **kwargs):
    from .. import compress as sparse_compress

    if is_tracer(w):
        raise TypeError(
            "flashspmm.jax.compress cannot run under jax.jit or other transformations (the blob "
            "size depends on the data): compress the weights once, eagerly, and pass the "
            "JaxSparseMatrix into the jitted function"
        )
    return sparse_compress(w, **kwargs)


def load(path, *, device=None) -> JaxSparseMatrix:
    """Read a blob written by :meth:`JaxSparseMatrix.save` or :meth:`flashspmm.SparseMatrix.save` (validated)."""
    from .. import load as sparse_load

    return from_sparse(sparse_load(os.fspath(path)), device=device)


def to_dense(W: JaxSparseMatrix):
    """The dense matrix of W (or of the local shard, inside shard_map); usable under jax.jit."""
    if not isinstance(W, JaxSparseMatrix):
        raise TypeError(f"W must be a flashspmm.jax.JaxSparseMatrix, got {type(W).__qualname__}")
    check_blob(W, "to_dense")
    if not is_tracer(W.blob):  # eager: the compiled call, cached per matrix
        return _decompress_compiled(W.header, W.blob, W.dtype.name)
    return decompress_call(W.header, W.blob, W.dtype)


_decompress_compiled = jax.jit(decompress_call, static_argnums=(0, 2))


def check_blob(W: JaxSparseMatrix, what: str) -> None:
    """Trace-time check that W's blob leaf is one (shard's) blob: uint8, 1-D, the header's size."""
    blob = W.blob
    shape = getattr(blob, "shape", None)
    dtype = getattr(blob, "dtype", None)
    if shape is None or dtype != np.uint8 or len(shape) != 1:
        raise TypeError(
            f"W.blob must be a 1-D uint8 array, got {type(blob).__qualname__} "
            f"{getattr(blob, 'dtype', '')}{list(shape) if shape is not None else ''}"
        )
    n = W.shard_nbytes
    if shape[0] == n:
        return
    if W.shards > 1 and shape[0] == n * W.shards:
        axis = "out features (rows)" if W.split == "rows" else "in features (columns)"
        raise ValueError(
            f"{what}: W is split by {axis} into {W.shards} shards over a mesh axis; call it inside "
            f"jax.shard_map with W's in_spec P(axis) so that each device sees its own shard"
        )
    raise ValueError(
        f"{what}: W.blob holds {shape[0]} bytes but W's header says {n}; the blob and header do not belong together"
    )
