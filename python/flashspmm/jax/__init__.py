"""flashspmm for JAX: sparse linear layers inside jax.jit, vmap, scan and shard_map.

    >>> import jax, flashspmm.jax as fj
    >>> W = fj.compress(fj.prune(w, 0.7))            # eager: a JaxSparseMatrix pytree on w's device
    >>> y = jax.jit(fj.linear)(x, W)                 # an XLA custom call (GPU kernel or CPU reference)

The library's XLA FFI handlers (src/api/xla_ffi.cpp) are registered with JAX when this module is imported;
``import flashspmm`` alone never imports JAX. ``compress``, ``prune``, ``shard_rows`` and ``shard_cols`` are
eager (the size of a blob depends on the values); ``linear`` and ``to_dense`` are JAX operations.
"""

import jax  # noqa: F401  (a clear ImportError when JAX is missing)

from .._prune import prune
from ._ffi import DECOMPRESS, LINEAR
from ._matrix import JaxSparseMatrix, compress, from_sparse, load, to_dense
from ._ops import linear
from ._shard import shard_cols, shard_rows

__all__ = [
    "JaxSparseMatrix",
    "compress",
    "from_sparse",
    "load",
    "linear",
    "to_dense",
    "prune",
    "shard_rows",
    "shard_cols",
    "LINEAR",
    "DECOMPRESS",
]
