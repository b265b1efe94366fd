"""SparseLinear (an nn.Linear whose weight is a compressed flashspmm matrix) and the fused sibling modules."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import compress
from .._matrix import SparseMatrix
from . import _compat, _ops

__all__ = ["SparseLinear", "FusedSparseLinear", "SparseLinearSlice", "blob_tensor"]

_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def blob_tensor(W: SparseMatrix) -> torch.Tensor:
    """W's blob as a torch uint8 tensor on W's device: the array holding it when that is a torch tensor, else a
    copy (host matrices hold a read-only numpy array, which a module buffer cannot be)."""
    array = _compat.blob_array(W)
    if isinstance(array, torch.Tensor):
        return array
    if isinstance(array, np.ndarray):
        return torch.from_numpy(np.array(array[: W.nbytes], copy=True))
    return torch.from_dlpack(array)[: W.nbytes]


def _check_half(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor, got {type(t).__qualname__}")
    if t.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(
            f"{what} has dtype {t.dtype}; flashspmm stores float16 or bfloat16 weights: convert the "
            f"layer first (e.g. linear.half() or linear.to(torch.bfloat16))"
        )


class SparseLinear(nn.Module):
    """``y = x @ W.T + bias`` with W a compressed unstructured-sparse flashspmm matrix (inference only).

    A drop-in for ``nn.Linear`` in inference: ``in_features`` / ``out_features``, any leading batch shape, float16
    or bfloat16 (the weight's dtype), on the CPU (the library's C++ reference) or a CUDA device (its kernels).

    State: the blob (header, tile offsets, tiles; docs/FORMATS.md) is the persistent uint8 buffer ``blob`` and the
    bias the parameter ``bias``; shape, dtype, format and nnz are read from the blob's header. So ``state_dict()``,
    ``load_state_dict()`` and ``torch.save`` work unchanged; a loaded blob is validated before it replaces the old
    one. ``.to(device)`` / ``.cuda()`` / ``.cpu()`` move the blob; a dtype change (``.float()``, ``.half()`` of a
    bfloat16 matrix, ...) raises TypeError: compressed values keep their dtype.

    The forward pass is the custom operator ``torch.ops.flashspmm.linear`` (see ``_ops``), which torch.compile
    traces without graph breaks (also with ``fullgraph=True`` and ``mode="reduce-overhead"``).
    """

    blob: torch.Tensor
    bias: Optional[nn.Parameter]

    def __init__(self, blob: torch.Tensor, bias: Optional[torch.Tensor] = None):
        """Wrap a blob tensor (1-D uint8, CPU or CUDA; validated) and an optional bias [out_features]."""
        super().__init__()
        if isinstance(blob, torch.Tensor) and blob.device.type == "meta":
            raise ValueError("a SparseLinear cannot be built from a meta tensor: the blob's header is needed")
        W = _compat.from_array(blob)
        if blob.numel() > W.nbytes:  # keep exactly the blob (a longer buffer would be saved with its tail)
            blob = blob[: W.nbytes].clone()
            W = _compat.from_array(blob)
        self._init(blob, bias, W)

    @classmethod
    def _from_matrix(cls, W: SparseMatrix, blob: torch.Tensor, bias: Optional[torch.Tensor]) -> SparseLinear:
        """A module over ``blob`` when ``W`` already wraps it (no second validation)."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._init(blob, bias, W)
        return self

    def _init(self, blob: torch.Tensor, bias: Optional[torch.Tensor], W: SparseMatrix) -> None:
        self.register_buffer("blob", blob)
        self.__dict__["_matrix"] = None
        self._set_matrix(W)
        if bias is not None:
            bias = self._check_bias(bias)
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_dense(
        cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, format: str = "auto"
    ) -> SparseLinear:
        """Compress a dense (already pruned) weight [out_features, in_features] on its device."""
        _check_half(weight, "weight")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
        with torch.no_grad():
            W = compress(weight.detach(), format=format)
        blob = blob_tensor(W)
        if blob.device != weight.device:
            blob = blob.to(weight.device)
        if blob.device.type == "cuda" and blob.data_ptr() == W.data_ptr:
            return cls._from_matrix(W, blob, bias)
        return cls._from_matrix(_compat.from_array(blob), blob, bias)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        sparsity: Optional[float] = None,
        method: str = "magnitude",
        format: str = "auto",
        act_norms: Optional[torch.Tensor] = None,
    ) -> SparseLinear:
        """A SparseLinear with ``linear``'s weight, pruned first when ``sparsity`` is given.

        method: "magnitude" (flashspmm.prune: the smallest |w| of every row) or "wanda" (the smallest
        |w_ij| * ||x_j||_2 of every row; ``act_norms`` [in_features] gives ||x_j||_2, see :func:`sparsify`
        for collecting them). ``linear`` is not modified.
        """
        from ._sparsify import prune_weight

        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__qualname__}")
        weight = linear.weight.detach()
        _check_half(weight, "linear.weight")
        if sparsity is not None:
            weight = prune_weight(weight, sparsity, method=method, act_norms=act_norms)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_dense(weight, bias, format=format)

    # ---- metadata -----------------------------------------------------------------------------------------

    def _set_matrix(self, W: Optional[SparseMatrix]) -> None:
        self.__dict__["_matrix"] = W
        if W is None:
            return
        _ops.register_matrix(W)
        self.out_features, self.in_features = W.shape
        self.__dict__["_dtype"] = _TORCH_DTYPES[W.dtype]
        self.format = W.format
        self.nnz = W.nnz

    def _check_bias(self, bias: torch.Tensor) -> torch.Tensor:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch tensor, got {type(bias).__qualname__}")
        if tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
        if bias.dtype != self.dtype:
            raise TypeError(f"bias has dtype {bias.dtype} but the matrix is {self.dtype}; convert the bias")
        if bias.device != self.blob.device:
            raise ValueError(f"bias is on {bias.device} but the matrix is on {self.blob.device}")
        return bias.contiguous()

    @property
    def matrix(self) -> Optional[SparseMatrix]:
        """The :class:`flashspmm.SparseMatrix` over ``blob`` (None on the meta device)."""
        return self.__dict__["_matrix"]

    @property
    def dtype(self) -> torch.dtype:
        """The weight's dtype (torch.float16 or torch.bfloat16); inputs must have it too."""
        return self.__dict__["_dtype"]

    @property
    def device(self) -> torch.device:
        return self.blob.device

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed weight (the blob)."""
        return int(self.blob.numel())

    @property
    def density(self) -> float:
        return self.nnz / (self.out_features * self.in_features)

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense [out_features, in_features] tensor on the module's device (for checks)."""
        W = self.matrix
        if W is None:
            raise ValueError("a SparseLinear on the meta device has no data to decompress")
        dense = W.to_dense()
        if isinstance(dense, np.ndarray):
            return _compat.as_torch(dense, self.blob)
        return dense

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"dtype={str(self.dtype).replace('torch.', '')}, format={self.format}, density={self.density:.3f}, "
            f"nbytes={self.nbytes}"
        )

    # ---- forward ------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.flashspmm.linear(x, self.blob, self.bias, self.out_features, self.in_features)

    # ---- moves, loads, copies -----------------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-wrap the blob buffer after it was replaced or moved (no-op when the matrix still wraps it)."""
        blob = self._buffers["blob"]
        if blob.device.type == "meta":
            self.__dict__["_matrix"] = None
            return
        W = self.matrix
        if W is not None and _ops.lookup_matrix(blob) is W and W.device == _device_name(blob):
            return
        self._set_matrix(_compat.from_array(blob))

    def _apply(self, fn, recurse=True):
        # Refuse dtype changes before anything moves: fn is opaque, so ask it what it does to a tensor of
        # the weight's dtype on the blob's device.
        probe = fn(torch.empty(0, dtype=self.dtype, device=self.blob.device))
        if isinstance(probe, torch.Tensor) and probe.dtype != self.dtype:
            raise TypeError(
                f"{type(self).__name__} holds a compressed {str(self.dtype).replace('torch.', '')} "
                f"matrix; it cannot be converted to {probe.dtype}. Convert the dense model before "
                f"sparsifying it, or keep this layer's dtype"
            )
        result = super()._apply(fn, recurse)
        self._refresh()
        return result

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "blob"
        if key not in state_dict:
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
            return
        incoming = state_dict[key]
        device = self.blob.device
        try:
            if not isinstance(incoming, torch.Tensor):
                raise TypeError(f"expected a uint8 tensor, got {type(incoming).__qualname__}")
            if device.type == "meta":  # a skeleton: the blob goes where the incoming tensor is
                device = incoming.device
            # a copy on this module's device, validated before it replaces anything
            blob = incoming.detach().to(device=device, dtype=incoming.dtype, copy=True).contiguous()
            W = _compat.from_array(blob)
            if W.shape != (self.out_features, self.in_features):
                raise ValueError(
                    f"it holds a {W.shape[0]} x {W.shape[1]} matrix, this layer is "
                    f"{self.out_features} x {self.in_features}"
                )
            if _TORCH_DTYPES[W.dtype] != self.dtype:
                raise TypeError(f"it holds a {W.dtype} matrix, this layer is {self.dtype}")
        except Exception as exc:  # reported like torch's own size mismatches
            error_msgs.append(f"cannot load {key}: {exc}")
            return
        if blob.numel() > W.nbytes:
            blob = blob[: W.nbytes].clone()
            W = _compat.from_array(blob)
        rest = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if key in missing_keys:
            missing_keys.remove(key)
        self._buffers["blob"] = blob
        self._set_matrix(W)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_matrix"] = None  # rebuilt from the blob buffer (cffi handles are not picklable)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._refresh()


def _device_name(t: torch.Tensor) -> str:
    if t.device.type == "cuda":
        return f"cuda:{t.device.index if t.device.index is not None else torch.cuda.current_device()}"
    return t.device.type


class FusedSparseLinear(SparseLinear):
    """Sibling projections that read the same input (q, k, v; gate, up) as one compressed matrix.

    The rows of the parts are stacked ([q; k; v]), so one library call computes every output; ``forward``
    returns the parts, split along the last dimension (views, no copy). In a model, the original children are
    replaced by :class:`SparseLinearSlice` modules that return their part, so the model's own forward code runs
    unchanged (see :meth:`piece`).
    """

    def __init__(
        self,
        blob: torch.Tensor,
        bias: Optional[torch.Tensor],
        splits: Sequence[int],
        names: Optional[Sequence[str]] = None,
    ):
        super().__init__(blob, bias)
        self._init_parts(splits, names)

    @classmethod
    def _from_matrix_parts(cls, W, blob, bias, splits, names):
        self = cls._from_matrix(W, blob, bias)
        self._init_parts(splits, names)
        return self

    def _init_parts(self, splits: Sequence[int], names: Optional[Sequence[str]]) -> None:
        splits = tuple(int(s) for s in splits)
        if not splits or min(splits) <= 0 or sum(splits) != self.out_features:
            raise ValueError(f"splits {splits} must be positive and add up to out_features = {self.out_features}")
        self.splits = splits
        self.names = tuple(names) if names is not None else tuple(f"part{i}" for i in range(len(splits)))
        if len(self.names) != len(splits):
            raise ValueError("names and splits must have the same length")
        self._clear_cache()

    def _clear_cache(self) -> None:
        self._cache_input = None
        self._cache_out = None
        self._cache_left = 0

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        y = super().forward(x)
        return tuple(torch.split(y, self.splits, dim=-1))

    def piece(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Part ``index`` of ``self(x)``, computing ``self(x)`` once for all parts of one input tensor.

        Why keyed on the input tensor's identity: in the models' own code the siblings are called one after the
        other on the same tensor (``self.q_proj(h)``, ``self.k_proj(h)``, ...), so the first call computes all
        parts and the others take theirs. The result is kept only until every part has been taken, and an
        input that is not the same tensor object recomputes, so every call returns exactly
        ``x @ W_part.T + b_part`` whatever the caller does (different inputs per sibling give separate calls).
        torch.compile traces the identity test and the bookkeeping away (identity of traced tensors is known
        at trace time), leaving one op per group in the graph. Not thread-safe: one forward at a time per model.
        Tensors modified in place between sibling calls are not detected; the models do not do that.
        """
        if self._cache_input is not x:
            self._cache_out = self.forward(x)
            self._cache_input = x
            self._cache_left = len(self.splits)
        out = self._cache_out[index]
        self._cache_left -= 1
        if self._cache_left <= 0:
            self._clear_cache()
        return out

    def extra_repr(self) -> str:
        parts = ", ".join(f"{n}={s}" for n, s in zip(self.names, self.splits))
        return f"{super().extra_repr()}, parts=({parts})"

    def __getstate__(self):
        state = super().__getstate__()
        state.update(_cache_input=None, _cache_out=None, _cache_left=0)
        return state


class SparseLinearSlice(nn.Module):
    """One part of a :class:`FusedSparseLinear`, in the place of the original projection (e.g. ``k_proj``).

    It holds no tensors (the fused module, registered once in the parent, does), so ``state_dict()`` stores the
    fused matrix once. Calling it returns its part of the fused product (see :meth:`FusedSparseLinear.piece`).
    """

    def __init__(self, fused: FusedSparseLinear, index: int):
        super().__init__()
        # a plain attribute, not a submodule: the fused module is registered once, in the parent
        self.__dict__["_fused"] = fused
        self.index = int(index)

    @property
    def fused(self) -> FusedSparseLinear:
        return self.__dict__["_fused"]

    @property
    def in_features(self) -> int:
        return self.fused.in_features

    @property
    def out_features(self) -> int:
        return self.fused.splits[self.index]

    @property
    def dtype(self) -> torch.dtype:
        return self.fused.dtype

    @property
    def device(self) -> torch.device:
        return self.fused.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.piece(x, self.index)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, part {self.index} of "
            f"{'+'.join(self.fused.names)}"
        )
