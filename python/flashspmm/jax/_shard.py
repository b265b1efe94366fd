"""Matrices split over a mesh axis for shard_map: by out features (rows) or by in features (columns).

Every device along the axis holds one shard, compressed separately (on its GPU for GPU meshes). The shards
have different sizes, so each one's blob is padded to the largest, and they share a launch header (see
_ffi.launch_header): one SPMD program then runs every shard. The blob leaf is the concatenation of the padded
blobs, split P(axis): inside shard_map each device sees exactly its own.
"""

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._ffi import is_tracer, launch_header, parse_header
from ._matrix import JaxSparseMatrix, _sparse_compress

__all__ = ["shard_rows", "shard_cols"]


def shard_rows(w, mesh: Mesh, axis, *, format: str = "auto", dtype: Optional[str] = None) -> JaxSparseMatrix:
    """W [M, K] split by out features over mesh axis ``axis`` (tensor parallelism, column-parallel layer).

    Device i along the axis holds rows [i·M/D, (i+1)·M/D) (D = the axis size; M must be a multiple of D),
    replicated over the other mesh axes. In ``jax.shard_map(..., in_specs=(P(), W.spec))`` with x replicated,
    ``flashspmm.jax.linear(x, W)`` gives each device its [..., M/D] slice of the output; ``out_specs=P(None,
    axis)`` (for 2-D x) concatenates them. Eager: the blobs' sizes depend on the values.
    """
    return _shard(w, mesh, axis, "rows", format, dtype)


def shard_cols(w, mesh: Mesh, axis, *, format: str = "auto", dtype: Optional[str] = None) -> JaxSparseMatrix:
    """W [M, K] split by in features over mesh axis ``axis`` (tensor parallelism, row-parallel layer).

    Device i along the axis holds columns [i·K/D, (i+1)·K/D) (K must be a multiple of D). Inside shard_map,
    with x split the same way (its last dimension by ``axis``), ``flashspmm.jax.linear(x, W)`` is each
    device's partial sum of the output; ``jax.lax.psum(y, axis)`` adds them up.
    """
    return _shard(w, mesh, axis, "cols", format, dtype)


def _pieces(w, count: int, split: str):
    shape = tuple(getattr(w, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"w must be a 2-D matrix [M, K], got shape {shape}")
    M, K = shape
    n = M if split == "rows" else K
    if n % count:
        what = "M (rows, out features)" if split == "rows" else "K (columns, in features)"
        raise ValueError(
            f"{what} = {n} is not a multiple of the mesh axis size {count}: every device needs a shard "
            f"of the same shape (pad W, or use a mesh axis whose size divides {n})"
        )
    step = n // count
    if split == "rows":
        return [w[i * step : (i + 1) * step] for i in range(count)]
    return [w[:, i * step : (i + 1) * step] for i in range(count)]


def _compress_shard(piece, device, format: str, dtype):
    """Compress one shard: on its GPU (JAX's device) when the mesh is on GPUs, else on the host."""
    if isinstance(piece, (jax.Array, np.ndarray)) and device.platform != "cpu":
        piece = jax.device_put(piece, device)
    return _sparse_compress(piece, format=format, dtype=dtype)


def _shard(w, mesh: Mesh, axis, split: str, format: str, dtype) -> JaxSparseMatrix:
    if is_tracer(w):
        raise TypeError(
            "shard_rows / shard_cols run eagerly (the blob sizes depend on the data): call them outside "
            "jax.jit and pass the result into the jitted function"
        )
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh (e.g. jax.make_mesh((4,), ('tp',))), got {type(mesh).__qualname__}"
        )
    if axis not in mesh.axis_names:
        raise ValueError(f"axis {axis!r} is not an axis of the mesh (its axes are {mesh.axis_names})")
    count = int(mesh.shape[axis])
    pieces = _pieces(w, count, split)
    # the first device along `axis` of each shard's slice of the mesh compresses it
    devices = np.moveaxis(np.asarray(mesh.devices), mesh.axis_names.index(axis), 0).reshape(count, -1)
    matrices = [_compress_shard(p, devices[i, 0], format, dtype) for i, p in enumerate(pieces)]
    formats = {m.format for m in matrices}
    if len(formats) > 1:  # "auto" or "smallest" chose differently per shard: one program needs one format
        chosen = max(matrices, key=lambda m: m.nbytes).format
        matrices = [
            m if m.format == chosen else _compress_shard(p, devices[i, 0], chosen, dtype)
            for i, (m, p) in enumerate(zip(matrices, pieces))
        ]
    blobs = [np.asarray(m.blob()) for m in matrices]
    header = launch_header([b[:128].tobytes() for b in blobs])
    slot = parse_header(header).total_bytes
    host = np.zeros((count, slot), dtype=np.uint8)
    for i, b in enumerate(blobs):
        host[i, : b.size] = b
    host = host.reshape(-1)
    sharding = NamedSharding(mesh, PartitionSpec(axis))
    blob = jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    return JaxSparseMatrix(blob, header, shards=count, split=split, nnz=sum(m.nnz for m in matrices), axis=axis)
