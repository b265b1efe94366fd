"""flashspmm for PyTorch models: sparse nn.Linear modules, sparsify(), safetensors checkpoints, a custom op.

Imported only on request (``import flashspmm.torch``); ``import flashspmm`` never imports torch.

    >>> import flashspmm.torch as fst
    >>> report = fst.sparsify(model, 0.5)                 # nn.Linear -> SparseLinear inside the blocks
    >>> print(report)                                      # per-matrix shapes, sparsity, bytes before / after
    >>> fst.save_sparse(model, "model-sparse")             # safetensors (blobs as uint8 tensors)
    >>> fst.load_sparse(other_model, "model-sparse", device="cuda")
    >>> model = torch.compile(model, mode="reduce-overhead", fullgraph=True)

Inference only: run under ``torch.no_grad()`` or ``torch.inference_mode()``.
"""

try:
    import torch as _torch  # noqa: F401  (a clear message when torch is missing)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("flashspmm.torch needs PyTorch: pip install torch (or pip install 'flashspmm[torch]')") from exc

from ._checkpoint import from_pretrained, load_sparse, read_sparse_bitmask, save_sparse
from ._modules import FusedSparseLinear, SparseLinear, SparseLinearSlice
from ._ops import register_matrix as register
from ._sparsify import (
    DEFAULT_FUSE_GROUPS,
    LayerReport,
    SparsifyReport,
    collect_input_norms,
    fuse_sparse,
    prune_weight,
    select_linears,
    sparsify,
    wanda_prune,
)

__all__ = [
    "SparseLinear",
    "FusedSparseLinear",
    "SparseLinearSlice",
    "sparsify",
    "fuse_sparse",
    "SparsifyReport",
    "LayerReport",
    "select_linears",
    "prune_weight",
    "wanda_prune",
    "collect_input_norms",
    "DEFAULT_FUSE_GROUPS",
    "save_sparse",
    "load_sparse",
    "from_pretrained",
    "read_sparse_bitmask",
    "register",
    "linear",
]


def linear(x: "_torch.Tensor", W, bias=None) -> "_torch.Tensor":
    """``x @ W.T + bias`` through the ``flashspmm::linear`` op for a :class:`flashspmm.SparseMatrix` W (any matrix
    from ``flashspmm.compress`` / ``load``, or ``SparseLinear.matrix``), like ``flashspmm.linear`` but traceable by
    torch.compile. W must stay alive while a compiled graph uses it."""
    import warnings

    import numpy as np

    from . import _compat, _ops

    blob = _compat.blob_array(W)
    if isinstance(blob, np.ndarray):  # a host matrix: a tensor over the same (read-only) memory, never written
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            blob = _torch.from_numpy(blob)
    elif not isinstance(blob, _torch.Tensor):
        blob = _torch.from_dlpack(blob)
    _ops.register_matrix(W)
    M, K = W.shape
    return _torch.ops.flashspmm.linear(x, blob, bias, M, K)


# tensor parallelism (torch.distributed); the module is flashspmm.torch.parallel
from .parallel import (  # noqa: E402
    ColumnParallelSparseLinear,
    RowParallelSparseLinear,
    load_sparse_parallel,
    parallelize,
    save_sparse_parallel,
)

__all__ += [
    "ColumnParallelSparseLinear",
    "RowParallelSparseLinear",
    "parallelize",
    "save_sparse_parallel",
    "load_sparse_parallel",
]
