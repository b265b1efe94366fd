"""Tensor parallelism on torch.distributed: column- and row-parallel sparse linears, parallelize(), per-rank shards.

Megatron's pattern, with each rank holding a compressed flashspmm matrix for its own shard only:

- :class:`ColumnParallelSparseLinear` holds the rows ``[r * M / P, (r + 1) * M / P)`` of W (M out features, P
  ranks, r this rank) and its part of the bias. ``gather_output=True`` all-gathers the outputs (every rank gets
  the whole ``[..., M]``); ``False`` keeps them sharded (``[..., M / P]``) for a row-parallel layer after it.
- :class:`RowParallelSparseLinear` holds the columns ``[r * K / P, (r + 1) * K / P)`` of W (a slice of the input
  features). ``input_is_parallel=True`` takes that slice of the input (a column-parallel layer's sharded output);
  ``False`` takes the whole input and slices it. The partial products are summed over the ranks by one
  all-reduce; the bias (the same on every rank) is added once, after the reduce.
- :func:`parallelize` shards a LLaMA-family transformers model: q/k/v and gate/up column-parallel with their
  outputs kept sharded (and fused per rank, as :func:`flashspmm.torch.sparsify` fuses them), o and down
  row-parallel, so every decoder layer needs one all-reduce after the attention and one after the MLP; the
  attention then runs ``num_heads / P`` query heads and ``num_key_value_heads / P`` key/value heads per rank.
- :func:`save_sparse_parallel` writes one safetensors file per rank (``tp-rank-0000r-of-0000P.safetensors``,
  written by :func:`flashspmm.torch.save_sparse`) whose metadata records the rank, the world size and the
  sharding; :func:`load_sparse_parallel` loads the matching file on each rank.

The process group is the caller's: ``torch.distributed.init_process_group("nccl")`` under torchrun on GPUs, gloo
on CPUs (the CPU reference linear). Each rank slices the dense weight itself and prunes and compresses only its
shard, so no rank ever holds another rank's compressed matrix.

Pruning a shard: ``sparsity`` zeros the smallest entries of every row *of the shard*. A column-parallel shard's
rows are whole rows of W, so it gets exactly the pattern single-process pruning gives; a row-parallel shard's rows
are K / P long, so each rank zeros ``round(sparsity * K / P)`` entries of its part of every row (every rank then
holds the same number of nonzeros, which balances the ranks' work). To reproduce a single-process sparse model
exactly, prune the dense model first and call :func:`parallelize` without ``sparsity``.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import re
import secrets
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import nn

from ._modules import FusedSparseLinear, SparseLinear, SparseLinearSlice, _check_half
from ._sparsify import DEFAULT_FUSE_GROUPS, LayerReport, SparsifyReport, collect_input_norms, prune_weight

__all__ = [
    "ColumnParallelSparseLinear",
    "ColumnParallelFusedSparseLinear",
    "RowParallelSparseLinear",
    "parallelize",
    "save_sparse_parallel",
    "load_sparse_parallel",
    "DEFAULT_TP_PLAN",
    "shard_file_name",
]

# Module name patterns (``*`` stands for one name component, e.g. a layer number) -> style, in the notation of
# transformers' ``base_model_tp_plan`` (a LLaMA config's own plan has exactly these entries).
DEFAULT_TP_PLAN: Dict[str, str] = {
    "layers.*.self_attn.q_proj": "colwise",
    "layers.*.self_attn.k_proj": "colwise",
    "layers.*.self_attn.v_proj": "colwise",
    "layers.*.self_attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
}
_STYLES = ("colwise", "rowwise")
# Attributes of an attention module that count heads, divided by the world size where a module has them
# (transformers 5.x LlamaAttention has none: it reshapes with -1 and keeps only head_dim and the q/kv ratio).
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads", "num_kv_heads")
# Projections whose sharding must agree: (column-parallel children, the row-parallel child after them).
_PAIRED = ((("q_proj", "k_proj", "v_proj"), "o_proj"), (("gate_proj", "up_proj"), "down_proj"))
_TP_VERSION = 1
_TP_KEY = "flashspmm_tp"
_SHARD_RE = re.compile(r"tp-rank-(\d{5})-of-(\d{5})\.safetensors")


# ---- process groups ------------------------------------------------------------------------------------------


def _group_info(group) -> Tuple[Optional[dist.ProcessGroup], int, int]:
    """(group, this process's rank in it, its size); clear errors when torch.distributed is not set up."""
    if not dist.is_available():
        raise RuntimeError(
            "this torch build has no torch.distributed; tensor parallelism needs a build with it "
            "(the standard Linux wheels have it)"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group('nccl') "
            "first (on GPUs, launched with torchrun; 'gloo' on CPUs), or pass group="
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup or None, got {type(group).__qualname__}")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the given process group: build the layers on its ranks only")
    return group, rank, dist.get_world_size(group)


def _backend(group) -> str:
    try:
        return str(dist.get_backend(group))
    except Exception:  # a backend torch cannot name: assume it handles the tensors it is given
        return ""


def _check_device(group, device: torch.device, what: str) -> None:
    if _backend(group) == "nccl" and device.type != "cuda":
        raise ValueError(
            f"{what} is on {device}, but the process group uses NCCL, which reduces CUDA tensors only: "
            f"move it to this rank's GPU first (e.g. .to(f'cuda:{{local_rank}}')) or pass device="
        )


def _comm_device(group) -> torch.device:
    """Where small control tensors of a collective live: the current GPU for NCCL, else the CPU."""
    if _backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _GroupRef:
    """A layer's process group. copy.deepcopy shares it (process groups cannot be copied); pickling keeps only
    the default group (restored as the default group of the unpickling process)."""

    __slots__ = ("group",)

    def __init__(self, group):
        self.group = group

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __reduce__(self):
        if self.group is None or (dist.is_initialized() and self.group is dist.group.WORLD):
            return (_GroupRef, (None,))
        raise TypeError(
            "a tensor-parallel layer over a process group other than the default one cannot be "
            "pickled (process groups are not picklable); save the model with "
            "flashspmm.torch.save_sparse_parallel instead"
        )


# ---- collectives -----------------------------------------------------------------------------------------------

# all_gather_single is the newer name of all_gather_into_tensor (same arguments; the old one warns in new torch)
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def _all_gather_last_dim(y: torch.Tensor, group, world: int) -> torch.Tensor:
    """[..., m] on every rank -> [..., world * m], rank r's block at [r * m, (r + 1) * m)."""
    y = y.contiguous()
    out = y.new_empty((world * y.numel(),))
    _all_gather_flat(out, y.reshape(-1), group=group)  # the flat, concatenated form: every backend takes it
    return out.view(world, *y.shape).movedim(0, -2).reshape(*y.shape[:-1], world * y.shape[-1])


# ---- the layers --------------------------------------------------------------------------------------------------


def _shard_range(total: int, world: int, rank: int, what: str) -> Tuple[int, int]:
    if total % world:
        raise ValueError(
            f"{what} = {total} is not divisible by the world size {world}: every rank must hold an "
            f"equal shard (pick a world size that divides it)"
        )
    size = total // world
    return rank * size, (rank + 1) * size


class _TensorParallel:
    """What the parallel layers share: the process group, this rank, the world size, the full layer's shape."""

    style = ""  # "colwise" or "rowwise"

    def _init_parallel(self, group, total: Optional[int]) -> None:
        group, rank, world = _group_info(group)
        local = self.out_features if self.style == "colwise" else self.in_features
        what = "out_features" if self.style == "colwise" else "in_features"
        if total is not None and int(total) != local * world:
            raise ValueError(
                f"this shard has {what} = {local}, so {world} ranks hold {local * world}, but the layer "
                f"has {what} = {total}: the shard was made for a world size of {total / local:g} "
                f"(shard and process group do not match)"
            )
        self.__dict__["_tp_group"] = _GroupRef(group)
        self.tp_rank = rank
        self.tp_world_size = world
        _check_device(group, self.blob.device, type(self).__name__)

    @property
    def group(self) -> Optional[dist.ProcessGroup]:
        """The process group (None: the default group)."""
        return self.__dict__["_tp_group"].group

    @property
    def total_out_features(self) -> int:
        """Out features of the whole layer (``out_features`` is this rank's matrix)."""
        return self.out_features * (self.tp_world_size if self.style == "colwise" else 1)

    @property
    def total_in_features(self) -> int:
        """In features of the whole layer (``in_features`` is this rank's matrix)."""
        return self.in_features * (self.tp_world_size if self.style == "rowwise" else 1)

    @property
    def shard(self) -> Tuple[int, int]:
        """[start, stop) of this rank's rows (column-parallel) or columns (row-parallel) of the whole W."""
        size = self.out_features if self.style == "colwise" else self.in_features
        return self.tp_rank * size, (self.tp_rank + 1) * size

    def _tp_record(self) -> dict:
        record = {
            "style": self.style,
            "total_shape": [self.total_out_features, self.total_in_features],
            "shard": list(self.shard),
        }
        if self.style == "colwise":
            record["gather_output"] = bool(self.gather_output)
        else:
            record["input_is_parallel"] = bool(self.input_is_parallel)
        return record

    def _tp_repr(self) -> str:
        total = (
            f"total_out_features={self.total_out_features}"
            if self.style == "colwise"
            else f"total_in_features={self.total_in_features}"
        )
        return f"{self.style}, rank={self.tp_rank} of {self.tp_world_size}, {total}"

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        before = len(error_msgs)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        for i in range(before, len(error_msgs)):
            error_msgs[i] += (
                f" (this layer is rank {self.tp_rank}'s shard of {self.tp_world_size}: a state dict "
                f"of another world size or rank does not fit; load per-rank shards with "
                f"flashspmm.torch.load_sparse_parallel)"
            )


def _dense_shard(weight: torch.Tensor, dim: int, start: int, stop: int, device) -> torch.Tensor:
    shard = weight.detach().narrow(dim, start, stop - start)
    if device is not None:
        shard = shard.to(device)
    return shard.contiguous()


class ColumnParallelSparseLinear(_TensorParallel, SparseLinear):
    """The rows of W for this rank: ``y[..., shard] = x @ W[shard].T + bias[shard]`` (see the module docstring).

    ``out_features`` / ``in_features`` describe this rank's matrix, ``total_out_features`` the whole layer.
    ``gather_output=True``: the forward all-gathers the ranks' outputs into ``[..., total_out_features]``;
    ``False``: it returns this rank's ``[..., out_features]``. State (``blob``, ``bias``) is this rank's shard.
    """

    style = "colwise"

    def __init__(
        self,
        blob: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        group=None,
        gather_output: bool = True,
        total_out_features: Optional[int] = None,
    ):
        """Wrap this rank's compressed shard (a blob, see SparseLinear) and its bias shard [out_features];
        ``total_out_features`` (optional) is checked against out_features x world size."""
        super().__init__(blob, bias)
        self.gather_output = bool(gather_output)
        self._init_parallel(group, total_out_features)

    @classmethod
    def _wrap(cls, layer: SparseLinear, group, gather_output: bool, total: Optional[int]):
        self = cls._from_matrix(layer.matrix, layer.blob, layer.bias)
        self.gather_output = bool(gather_output)
        self._init_parallel(group, total)
        return self

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        group=None,
        gather_output: bool = True,
        sparsity: Optional[float] = None,
        method: str = "magnitude",
        format: str = "auto",
        act_norms: Optional[torch.Tensor] = None,
        device=None,
    ) -> ColumnParallelSparseLinear:
        """This rank's shard of the whole dense ``weight`` [M, K] (and ``bias`` [M]), pruned when ``sparsity`` is
        given (``method`` "magnitude" or "wanda" with ``act_norms`` [K]), compressed on ``device`` (default: the
        weight's). Every rank calls it with the same weight."""
        group, rank, world = _group_info(group)
        _check_half(weight, "weight")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
        start, stop = _shard_range(weight.shape[0], world, rank, "out_features")
        shard = _dense_shard(weight, 0, start, stop, device)
        _check_device(group, shard.device, "the weight")
        # the bias shard is copied: a view would keep the whole dense bias alive and share its memory
        bias_shard = None if bias is None else _dense_shard(bias, 0, start, stop, shard.device).clone()
        with torch.no_grad():
            if sparsity is not None:
                shard = prune_weight(shard, sparsity, method=method, act_norms=act_norms)
            layer = SparseLinear.from_dense(shard, bias_shard, format=format)
        del shard
        return cls._wrap(layer, group, gather_output, weight.shape[0])

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        group=None,
        gather_output: bool = True,
        sparsity: Optional[float] = None,
        method: str = "magnitude",
        format: str = "auto",
        act_norms: Optional[torch.Tensor] = None,
        device=None,
    ) -> ColumnParallelSparseLinear:
        """:meth:`from_dense` of ``linear``'s weight and bias (``linear`` is not modified)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__qualname__}")
        return cls.from_dense(
            linear.weight,
            linear.bias,
            group=group,
            gather_output=gather_output,
            sparsity=sparsity,
            method=method,
            format=format,
            act_norms=act_norms,
            device=device,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.gather_output and self.tp_world_size > 1:
            y = _all_gather_last_dim(y, self.group, self.tp_world_size)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._tp_repr()}, gather_output={self.gather_output}"


class ColumnParallelFusedSparseLinear(_TensorParallel, FusedSparseLinear):
    """Column-parallel siblings (q, k, v; gate, up) fused on each rank: this rank's rows of every part, stacked
    (``[q_r; k_r; v_r]``), as one matrix; outputs stay sharded (``gather_output`` is False). In a model the
    children are :class:`flashspmm.torch.SparseLinearSlice` modules, as after ``sparsify``. ``splits`` are this
    rank's rows per part, ``total_splits`` the whole layers'."""

    style = "colwise"
    gather_output = False

    @classmethod
    def _wrap(cls, layer: FusedSparseLinear, group, total_splits: Optional[Sequence[int]]):
        self = cls._from_matrix_parts(layer.matrix, layer.blob, layer.bias, layer.splits, layer.names)
        self._init_parallel(group, None if total_splits is None else sum(int(s) for s in total_splits))
        if total_splits is not None and [int(s) for s in total_splits] != [s * self.tp_world_size for s in self.splits]:
            raise ValueError(
                f"this shard's parts have {list(self.splits)} rows, so {self.tp_world_size} ranks "
                f"hold {[s * self.tp_world_size for s in self.splits]}, but the layers have "
                f"{list(total_splits)} (shard and process group do not match)"
            )
        return self

    @classmethod
    def from_linears(
        cls,
        linears: Sequence[nn.Linear],
        names: Optional[Sequence[str]] = None,
        *,
        group=None,
        sparsity: Optional[float] = None,
        method: str = "magnitude",
        format: str = "auto",
        act_norms: Optional[torch.Tensor] = None,
        device=None,
    ) -> ColumnParallelFusedSparseLinear:
        """This rank's rows of each of ``linears`` (same in_features), each part pruned on its own as
        ``sparsify`` prunes fused siblings, stacked and compressed as one matrix on ``device``."""
        group, rank, world = _group_info(group)
        linears = list(linears)
        if len(linears) < 2 or not all(isinstance(m, nn.Linear) for m in linears):
            raise TypeError("linears must be two or more torch.nn.Linear modules")
        if len({m.in_features for m in linears}) != 1:
            raise ValueError(f"fused layers must have the same in_features, got {[m.in_features for m in linears]}")
        names = list(names) if names is not None else [f"part{i}" for i in range(len(linears))]
        shards, biases = [], []
        with torch.no_grad():
            for name, m in zip(names, linears):
                _check_half(m.weight, f"{name}.weight")
                start, stop = _shard_range(m.out_features, world, rank, f"{name}.out_features")
                shard = _dense_shard(m.weight, 0, start, stop, device)
                _check_device(group, shard.device, f"{name}.weight")
                if sparsity is not None:
                    shard = prune_weight(shard, sparsity, method=method, act_norms=act_norms)
                shards.append(shard)
                biases.append(None if m.bias is None else _dense_shard(m.bias, 0, start, stop, shard.device))
            weight = torch.cat(shards, dim=0)
            splits = [s.shape[0] for s in shards]
            del shards
            bias = None
            if any(b is not None for b in biases):
                bias = torch.cat([b if b is not None else weight.new_zeros(n) for b, n in zip(biases, splits)])
            base = SparseLinear.from_dense(weight, bias, format=format)
        del weight
        fused = FusedSparseLinear._from_matrix_parts(base.matrix, base.blob, base.bias, splits, names)
        return cls._wrap(fused, group, [m.out_features for m in linears])

    @property
    def total_splits(self) -> Tuple[int, ...]:
        return tuple(s * self.tp_world_size for s in self.splits)

    def _tp_record(self) -> dict:
        record = super()._tp_record()
        record["parts"] = [[n, s] for n, s in zip(self.names, self.total_splits)]
        return record

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._tp_repr()}"


class RowParallelSparseLinear(_TensorParallel, SparseLinear):
    """The columns of W for this rank: ``y = all_reduce(x[..., shard] @ W[:, shard].T) + bias``.

    ``in_features`` is this rank's slice of the input, ``total_in_features`` the whole layer's;
    ``out_features`` is the whole output (every rank returns all of it). ``input_is_parallel=True``: x is this
    rank's slice ``[..., in_features]`` (a column-parallel layer's sharded output); ``False``: x is the whole
    ``[..., total_in_features]``. The bias (replicated: the same on every rank) is added once, after the reduce.
    """

    style = "rowwise"

    def __init__(
        self,
        blob: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        group=None,
        input_is_parallel: bool = True,
        total_in_features: Optional[int] = None,
    ):
        """Wrap this rank's compressed shard [out_features, in_features] and the whole bias [out_features];
        ``total_in_features`` (optional) is checked against in_features x world size."""
        super().__init__(blob, bias)
        self.input_is_parallel = bool(input_is_parallel)
        self._init_parallel(group, total_in_features)

    @classmethod
    def _wrap(cls, layer: SparseLinear, group, input_is_parallel: bool, total: Optional[int]):
        self = cls._from_matrix(layer.matrix, layer.blob, layer.bias)
        self.input_is_parallel = bool(input_is_parallel)
        self._init_parallel(group, total)
        return self

    @classmethod
    def from_dense(
        cls,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor] = None,
        *,
        group=None,
        input_is_parallel: bool = True,
        sparsity: Optional[float] = None,
        method: str = "magnitude",
        format: str = "auto",
        act_norms: Optional[torch.Tensor] = None,
        device=None,
    ) -> RowParallelSparseLinear:
        """This rank's columns of the whole dense ``weight`` [M, K] (the whole ``bias`` [M] is kept), pruned per
        shard row when ``sparsity`` is given (Wanda: ``act_norms`` are the whole layer's [K]), compressed on
        ``device`` (default: the weight's). Every rank calls it with the same weight."""
        group, rank, world = _group_info(group)
        _check_half(weight, "weight")
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
        start, stop = _shard_range(weight.shape[1], world, rank, "in_features")
        shard = _dense_shard(weight, 1, start, stop, device)
        _check_device(group, shard.device, "the weight")
        bias = None if bias is None else bias.detach().to(shard.device).clone()
        with torch.no_grad():
            if sparsity is not None:
                if act_norms is not None:
                    act_norms = torch.as_tensor(act_norms).reshape(-1)
                    if act_norms.numel() != weight.shape[1]:
                        raise ValueError(
                            f"act_norms must have {weight.shape[1]} entries (the whole layer's "
                            f"in_features), got {act_norms.numel()}"
                        )
                    act_norms = act_norms[start:stop]
                shard = prune_weight(shard, sparsity, method=method, act_norms=act_norms)
            layer = SparseLinear.from_dense(shard, bias, format=format)
        del shard
        return cls._wrap(layer, group, input_is_parallel, weight.shape[1])

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        group=None,
        input_is_parallel: bool = True,
        sparsity: Optional[float] = None,
        method: str = "magnitude",
        format: str = "auto",
        act_norms: Optional[torch.Tensor] = None,
        device=None,
    ) -> RowParallelSparseLinear:
        """:meth:`from_dense` of ``linear``'s weight and bias (``linear`` is not modified)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__qualname__}")
        return cls.from_dense(
            linear.weight,
            linear.bias,
            group=group,
            input_is_parallel=input_is_parallel,
            sparsity=sparsity,
            method=method,
            format=format,
            act_norms=act_norms,
            device=device,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            if x.shape[-1] != self.total_in_features:
                raise ValueError(
                    f"x must be [..., {self.total_in_features}] (the whole input: input_is_parallel "
                    f"is False), got shape {tuple(x.shape)}"
                )
            start, stop = self.shard
            x = x[..., start:stop].contiguous()
        elif x.shape[-1] != self.in_features:
            hint = (
                " (the whole input? build the layer with input_is_parallel=False)"
                if x.shape[-1] == self.total_in_features
                else ""
            )
            raise ValueError(
                f"x must be this rank's slice [..., {self.in_features}] of the input, got shape {tuple(x.shape)}{hint}"
            )
        # the bias is left out of the partial products and added once after the sum over the ranks
        y = torch.ops.flashspmm.linear(x, self.blob, None, self.out_features, self.in_features)
        if self.tp_world_size > 1:
            dist.all_reduce(y, group=self.group)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._tp_repr()}, input_is_parallel={self.input_is_parallel}"


# ---- the model level ---------------------------------------------------------------------------------------------


def _compile_plan(plan: Optional[Mapping[str, str]]) -> List[Tuple[re.Pattern, str, str]]:
    plan = DEFAULT_TP_PLAN if plan is None else plan
    if not isinstance(plan, Mapping) or not plan:
        raise TypeError("plan must be a non-empty mapping of module name patterns to 'colwise' / 'rowwise'")
    compiled = []
    for pattern, style in plan.items():
        if style not in _STYLES:
            raise ValueError(
                f"plan entry {pattern!r}: style {style!r} is not supported; flashspmm shards Linear "
                f"layers 'colwise' or 'rowwise' (replicated modules are simply left out of the plan)"
            )
        parts = [r"[^.]+" if p == "*" else re.escape(p) for p in str(pattern).split(".")]
        # a pattern names the end of a module name: "layers.*.mlp.up_proj" matches "model.layers.3.mlp.up_proj"
        compiled.append((re.compile(r"(?:^|.*\.)" + r"\.".join(parts) + "$"), style, pattern))
    return compiled


def _style_of(name: str, compiled) -> Optional[str]:
    for regex, style, _ in compiled:
        if regex.match(name):
            return style
    return None


def _sharded_layers(model: nn.Module, compiled, world: int) -> Dict[str, str]:
    """{module name: style} of the layers the plan shards, checked (type, dtype, device, divisibility)."""
    chosen = {}
    for name, m in model.named_modules():
        style = _style_of(name, compiled)
        if style is None:
            continue
        if isinstance(m, (SparseLinear, SparseLinearSlice)):
            raise TypeError(
                f"{name} is already compressed ({type(m).__name__}); parallelize takes the dense model "
                f"and compresses each rank's shard itself (call it instead of sparsify, not after)"
            )
        if not isinstance(m, nn.Linear):
            raise TypeError(f"the plan makes {name} {style}, but it is a {type(m).__name__}, not an nn.Linear")
        if m.weight.device.type == "meta":
            raise ValueError(
                f"{name} is on the meta device: parallelize needs the dense weights (to load shards "
                f"saved before, use load_sparse_parallel)"
            )
        _check_half(m.weight, f"{name}.weight")
        if m.bias is not None and m.bias.dtype != m.weight.dtype:
            raise TypeError(f"{name}.bias has dtype {m.bias.dtype} but its weight is {m.weight.dtype}")
        if style == "colwise":
            _shard_range(m.out_features, world, 0, f"{name}.out_features")
        else:
            _shard_range(m.in_features, world, 0, f"{name}.in_features")
        chosen[name] = style
    if not chosen:
        raise ValueError(
            "the plan matches no module of this model (its names are patterns like "
            "'layers.*.self_attn.q_proj'; pass plan= for other module names)"
        )
    return chosen


def _units(model: nn.Module, chosen: Dict[str, str], fuse: bool) -> List[Tuple[str, List[str], str, str]]:
    """(parent name, [child names], style, fused module name or "") in module order; column-parallel siblings
    that read one input (q/k/v, gate/up) become one unit when ``fuse``."""
    by_parent: Dict[str, Dict[str, str]] = {}
    for name, style in chosen.items():
        parent, _, child = name.rpartition(".")
        by_parent.setdefault(parent, {})[child] = style
    units, taken = [], set()
    for name, style in chosen.items():
        parent, _, child = name.rpartition(".")
        if (parent, child) in taken:
            continue
        unit = (parent, [child], style, "")
        siblings = by_parent[parent]
        if fuse and style == "colwise":
            for names, fused_name in DEFAULT_FUSE_GROUPS:
                if child in names and all(siblings.get(n) == "colwise" for n in names):
                    mods = [model.get_submodule(f"{parent}.{n}".lstrip(".")) for n in names]
                    if all(
                        m.in_features == mods[0].in_features
                        and m.weight.dtype == mods[0].weight.dtype
                        and m.weight.device == mods[0].weight.device
                        for m in mods
                    ):
                        attr = fused_name
                        while hasattr(model.get_submodule(parent), attr):
                            attr += "_"
                        unit = (parent, list(names), style, attr)
                    break
        taken.update((parent, c) for c in unit[1])
        units.append(unit)
    return units


def _head_dim(module: nn.Module, config) -> Optional[int]:
    for source in (module, config):
        value = getattr(source, "head_dim", None)
        if isinstance(value, int) and value > 0:
            return value
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def _attention_changes(model: nn.Module, chosen: Dict[str, str], world: int) -> Dict[str, Dict[str, List[int]]]:
    """Checks the plan's head and pairing consistency; returns {attention module: {attribute: [total, local]}}."""
    parents = sorted({name.rpartition(".")[0] for name in chosen})
    changes: Dict[str, Dict[str, List[int]]] = {}
    for parent in parents:
        module = model.get_submodule(parent)
        here = {name.rpartition(".")[2]: style for name, style in chosen.items() if name.rpartition(".")[0] == parent}
        for cols, row in _PAIRED:
            present = [c for c in cols if isinstance(getattr(module, c, None), nn.Module)]
            sharded = [c for c in present if here.get(c) == "colwise"]
            if not sharded:
                continue
            if len(sharded) != len(present) or here.get(row) != "rowwise":
                raise ValueError(
                    f"the plan shards {', '.join(f'{parent}.{c}' for c in sharded)} column-wise, so "
                    f"{', '.join(present)} must all be 'colwise' and {row} 'rowwise' (Megatron's "
                    f"pattern: sharded outputs go into the row-parallel layer)"
                )
        if here.get("q_proj") != "colwise":
            continue
        config = getattr(module, "config", None)
        if config is None:
            config = getattr(model, "config", None)
        head_dim = _head_dim(module, config)
        if head_dim is None:
            raise ValueError(
                f"{parent}: the head size is unknown (no head_dim attribute or config), so the heads "
                f"cannot be checked against the world size"
            )
        counts = {}
        for proj in ("q_proj", "k_proj"):
            if not isinstance(getattr(module, proj, None), nn.Linear):
                continue
            rows = getattr(module, proj).out_features
            if rows % head_dim:
                raise ValueError(f"{parent}.{proj} has {rows} outputs, not a multiple of head_dim {head_dim}")
            counts[proj] = rows // head_dim
        heads, kv_heads = counts["q_proj"], counts.get("k_proj", counts["q_proj"])
        if heads % world or kv_heads % world:
            raise ValueError(
                f"{parent} has {heads} attention heads and {kv_heads} key/value heads; tensor "
                f"parallelism over {world} ranks gives each rank whole heads, so both must be "
                f"divisible by the world size {world}"
            )
        change = {}
        for attr in _HEAD_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                if value % world:
                    raise ValueError(f"{parent}.{attr} = {value} is not divisible by the world size {world}")
                change[attr] = [value, value // world]
        changes[parent] = change
    return changes


def _set_attention(model: nn.Module, changes: Mapping[str, Mapping[str, Sequence[int]]], local: bool) -> None:
    for parent, attrs in changes.items():
        module = model.get_submodule(parent)
        for attr, (total, per_rank) in attrs.items():
            setattr(module, attr, int(per_rank if local else total))


def _dense_bytes(linears: Sequence[nn.Linear], world: int) -> int:
    """This rank's share of the dense weights' bytes."""
    return sum(m.weight.numel() * m.weight.element_size() for m in linears) // world


def parallelize(
    model: nn.Module,
    *,
    group=None,
    sparsity: Optional[float] = None,
    method: str = "magnitude",
    format: str = "auto",
    plan: Optional[Mapping[str, str]] = None,
    fuse: bool = True,
    calibration=None,
    device=None,
    progress: bool = False,
) -> SparsifyReport:
    """Shard ``model`` tensor-parallel over ``group`` in place, compressing this rank's shards; returns the report
    of this rank's matrices.

    Every rank calls it with the same dense model (float16 or bfloat16 Linears; e.g. loaded from the same
    checkpoint). The plan's column-parallel layers keep their outputs sharded and the row-parallel ones take
    sharded inputs, so the model's own forward code runs unchanged on every rank, with one all-reduce per
    row-parallel layer (LLaMA: one after the attention, one after the MLP). Attention modules of sharded q/k/v
    run with ``num_heads / P`` and ``num_key_value_heads / P`` heads: their head-count attributes, where they
    have any, are divided (transformers 5.x's LlamaAttention has none: it infers the heads from the shapes).
    Embeddings, norms and the LM head stay as they are (the same on every rank). ``model.config`` is unchanged:
    use the default dynamic KV cache, or a static cache that sizes itself on first use (transformers 5.x).

    Args:
        group: the torch.distributed process group (default: the default group).
        sparsity: fraction of zeros per shard row; None compresses the weights as they are (prune first).
        method: "magnitude" or "wanda" (activation norms from ``calibration``, collected on the dense model).
        format: "auto", "bitmap" or "tiled_csl".
        plan: {module name pattern: "colwise" | "rowwise"}; default :data:`DEFAULT_TP_PLAN` (LLaMA, Mistral,
            Qwen2 names; transformers' ``config.base_model_tp_plan`` can be passed where it has only these styles).
        fuse: fuse each rank's q/k/v and gate/up shards into one matrix (as ``sparsify`` does).
        device: compress the shards there (e.g. this rank's GPU with the dense model on the CPU); the rest of
            the model stays where it is (move it with ``model.to(device)``).
        progress: a tqdm progress bar.

    Everything is checked before the first layer changes: the process group, the plan's layers (nn.Linear,
    dtype, dimensions divisible by the world size), the heads, the q/k/v -> o and gate/up -> down pairing.
    """
    group, rank, world = _group_info(group)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
    if getattr(model, "_flashspmm_tp", None) is not None:
        raise ValueError("this model is already tensor-parallel (parallelize or load_sparse_parallel ran on it)")
    if method not in ("magnitude", "wanda"):
        raise ValueError(f"method must be 'magnitude' or 'wanda', got {method!r}")
    if sparsity is not None and method == "wanda" and calibration is None:
        raise ValueError("method='wanda' needs calibration= (an iterable of input batches, e.g. token id tensors)")
    device = torch.device(device) if device is not None else None
    chosen = _sharded_layers(model, _compile_plan(plan), world)
    for name in chosen:
        _check_device(group, device or model.get_submodule(name).weight.device, name)
    changes = _attention_changes(model, chosen, world)
    units = _units(model, chosen, fuse)
    norms = {}
    if sparsity is not None and method == "wanda":
        norms = collect_input_norms(
            model, [(n, model.get_submodule(n)) for n in chosen], calibration, progress=progress
        )
    options = dict(sparsity=sparsity, method=method, format=format, device=device)

    report = SparsifyReport()
    iterator = units
    if progress:
        from ._sparsify import _progress

        iterator = _progress(units, True, f"parallelize (rank {rank})", unit="matrix")
    for parent_name, children, style, fused_name in iterator:
        parent = model.get_submodule(parent_name)
        prefix = f"{parent_name}." if parent_name else ""
        linears = [getattr(parent, c) for c in children]
        acts = norms.get(prefix + children[0])
        if fused_name:
            new = ColumnParallelFusedSparseLinear.from_linears(
                linears, children, group=group, act_norms=acts, **options
            )
            setattr(parent, fused_name, new)
            for index, child in enumerate(children):
                setattr(parent, child, SparseLinearSlice(new, index))
            name = prefix + "+".join(children)
        elif style == "colwise":
            new = ColumnParallelSparseLinear.from_linear(
                linears[0], group=group, gather_output=False, act_norms=acts, **options
            )
            setattr(parent, children[0], new)
            name = prefix + children[0]
        else:
            new = RowParallelSparseLinear.from_linear(
                linears[0], group=group, input_is_parallel=True, act_norms=acts, **options
            )
            setattr(parent, children[0], new)
            name = prefix + children[0]
        M, K = new.out_features, new.in_features
        report.append(
            LayerReport(
                name=name,
                shape=(M, K),
                sparsity=1.0 - new.nnz / (M * K),
                format=new.format,
                bytes_before=_dense_bytes(linears, world),
                bytes_after=new.nbytes,
            )
        )
        del linears, new
    _set_attention(model, changes, local=True)
    model._flashspmm_tp = {"world_size": world, "rank": rank, "attention": changes}
    return report


def _parallel_layers(model: nn.Module) -> Dict[str, _TensorParallel]:
    return {name: m for name, m in model.named_modules() if isinstance(m, _TensorParallel)}


# ---- per-rank checkpoints -------------------------------------------------------------------------------------


def shard_file_name(rank: int, world_size: int) -> str:
    """The file name of ``rank``'s shard in a checkpoint of ``world_size`` ranks."""
    return f"tp-rank-{rank:05d}-of-{world_size:05d}.safetensors"


def save_sparse_parallel(model: nn.Module, dirpath, *, save_config: bool = True) -> str:
    """Write this rank's shard of a tensor-parallel ``model`` to ``dirpath``; every rank of the group calls it.
    Returns this rank's file.

    Each rank writes ``tp-rank-0000r-of-0000P.safetensors`` with :func:`flashspmm.torch.save_sparse` (its
    compressed shards, and the replicated tensors: embeddings, norms, LM head), its metadata ``"flashspmm_tp"``
    recording the rank, the world size, a checkpoint id shared by the ranks' files, and per sharded layer its
    style and the whole layer's shape; rank 0 also writes ``config.json``. The ranks then agree that every
    file was written, so when the call returns on any rank the whole checkpoint is there, and a failure on one
    rank is raised on all of them instead of leaving them waiting.
    """
    info = getattr(model, "_flashspmm_tp", None)
    layers = _parallel_layers(model)
    if info is None or not layers:
        raise ValueError(
            "the model is not tensor-parallel: call flashspmm.torch.parallelize (or "
            "load_sparse_parallel) on it first, or save it with save_sparse"
        )
    refs = {id(m.group) for m in layers.values()}
    if len(refs) != 1:
        raise ValueError("the model's parallel layers use different process groups; one checkpoint holds one")
    group, rank, world = _group_info(next(iter(layers.values())).group)
    if world != info["world_size"] or rank != info["rank"]:
        raise ValueError(
            f"the model was sharded as rank {info['rank']} of {info['world_size']}, but this process "
            f"is rank {rank} of {world} in the layers' group"
        )
    token = [secrets.token_hex(8) if rank == 0 else None]
    dist.broadcast_object_list(token, src=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    meta = {
        "version": _TP_VERSION,
        "rank": rank,
        "world_size": world,
        "checkpoint_id": token[0],
        "layers": {name: m._tp_record() for name, m in layers.items()},
        "attention": info["attention"],
    }
    dirpath = os.fspath(dirpath)
    path = os.path.join(dirpath, shard_file_name(rank, world))
    error = None
    try:
        os.makedirs(dirpath, exist_ok=True)
        from ._checkpoint import save_sparse

        save_sparse(model, path, metadata={_TP_KEY: json.dumps(meta)})
        config = getattr(model, "config", None)
        if save_config and rank == 0 and hasattr(config, "save_pretrained"):
            config.save_pretrained(dirpath)
    except Exception as exc:  # reported on every rank below
        error = exc
    outcomes: List[Optional[str]] = [None] * world
    dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}", group=group)
    failed = [(r, e) for r, e in enumerate(outcomes) if e is not None]
    if failed:
        detail = "; ".join(f"rank {r}: {e}" for r, e in failed)
        raise RuntimeError(f"save_sparse_parallel({dirpath!r}) failed on {len(failed)} rank(s): {detail}") from error
    return path


def _read_tp_metadata(path: str) -> dict:
    from ._safetensors import SafetensorsError, SafetensorsFile

    f = SafetensorsFile(path)
    try:
        text = f.metadata.get(_TP_KEY)
    finally:
        f.close()
    if text is None:
        raise SafetensorsError(f"{path} has no {_TP_KEY!r} metadata: it was not written by save_sparse_parallel")
    try:
        meta = json.loads(text)
        if meta.get("version") != _TP_VERSION:
            raise ValueError(f"unknown version {meta.get('version')!r}")
        int(meta["rank"]), int(meta["world_size"]), dict(meta["layers"]), dict(meta["attention"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SafetensorsError(f"{path}: unreadable {_TP_KEY} metadata ({exc})") from None
    return meta


def _find_shards(dirpath: str, rank: int, world: int) -> Tuple[str, dict]:
    """This rank's file and metadata, after checking that the checkpoint fits this world size and that the
    ranks' files come from one save (the headers of all of them are read, nothing else)."""
    if not os.path.isdir(dirpath):
        raise FileNotFoundError(f"no such checkpoint directory: {dirpath}")
    sizes = sorted({int(m.group(2)) for m in map(_SHARD_RE.fullmatch, os.listdir(dirpath)) if m})
    if not sizes:
        raise FileNotFoundError(
            f"{dirpath} holds no tensor-parallel shards (tp-rank-*-of-*.safetensors files, "
            f"written by flashspmm.torch.save_sparse_parallel)"
        )
    if world not in sizes:
        saved = " or ".join(str(s) for s in sizes)
        raise ValueError(
            f"{dirpath} holds a checkpoint for a world size of {saved}, but this process group has "
            f"{world} rank(s): launch {saved} processes (torchrun --nproc-per-node {sizes[0]}), or "
            f"re-shard from the dense model with parallelize"
        )
    paths = [os.path.join(dirpath, shard_file_name(r, world)) for r in range(world)]
    missing = [os.path.basename(p) for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{dirpath}: the checkpoint for {world} ranks lacks {', '.join(missing)}")
    metas = [_read_tp_metadata(p) for p in paths]
    for r, (p, meta) in enumerate(zip(paths, metas)):
        if int(meta["rank"]) != r or int(meta["world_size"]) != world:
            raise ValueError(
                f"{p} records rank {meta['rank']} of {meta['world_size']}, not rank {r} of {world} "
                f"as its name says (renamed files?)"
            )
    ids = {meta.get("checkpoint_id") for meta in metas}
    if len(ids) != 1:
        raise ValueError(
            f"{dirpath}: the {world} rank files come from different saves (their checkpoint ids "
            f"differ); save all ranks again with save_sparse_parallel"
        )
    return paths[rank], metas[rank]


def _shape_for_shards(model: nn.Module, layers: Mapping[str, dict], world: int) -> None:
    """Check the dense architecture against the checkpoint's whole layers, then put meta Linears of this rank's
    shard shapes in their places, so the loader sees the shapes it is about to load."""
    for name, record in layers.items():
        M, K = (int(v) for v in record["total_shape"])
        parent_name = name.rpartition(".")[0]
        if record.get("parts"):
            targets = [(f"{parent_name}.{child}".lstrip("."), int(rows), K) for child, rows in record["parts"]]
        else:
            targets = [(name, M, K)]
        for target, rows, cols in targets:
            try:
                old = model.get_submodule(target)
            except AttributeError:
                raise KeyError(f"the checkpoint shards a layer {target!r} that the model does not have") from None
            if not isinstance(old, nn.Linear):
                raise TypeError(
                    f"{target} is a {type(old).__name__} in the model; load_sparse_parallel takes the "
                    f"dense architecture (e.g. built on the meta device from the config)"
                )
            if (old.out_features, old.in_features) != (rows, cols):
                raise ValueError(
                    f"{target} is Linear({old.in_features} -> {old.out_features}) in the model but "
                    f"{cols} -> {rows} in the checkpoint (another architecture?)"
                )
            local = (rows // world, cols) if record["style"] == "colwise" else (rows, cols // world)
            parent, _, child = target.rpartition(".")
            shaped = nn.Linear(local[1], local[0], bias=old.bias is not None, device="meta", dtype=old.weight.dtype)
            setattr(model.get_submodule(parent), child, shaped)


def load_sparse_parallel(model: nn.Module, dirpath, *, group=None, device=None, strict: bool = True) -> nn.Module:
    """Load this rank's shard of a checkpoint written by :func:`save_sparse_parallel` into ``model``; every rank
    of ``group`` calls it. Returns ``model``, tensor-parallel as :func:`parallelize` leaves it.

    ``model`` is the dense architecture (best built on the meta device from the config, so nothing is
    allocated). The checkpoint must have been written for this group's world size (else a ValueError names both
    sizes); all its rank files must come from one save. ``device``: where the tensors go (default: the
    current GPU under NCCL, else the model's device or the CPU). ``strict`` as in ``load_sparse``.
    """
    group, rank, world = _group_info(group)
    if getattr(model, "_flashspmm_tp", None) is not None:
        raise ValueError("this model is already tensor-parallel: load into the dense architecture")
    dirpath = os.fspath(dirpath)
    path, meta = _find_shards(dirpath, rank, world)
    if device is None and _backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    if device is not None:
        _check_device(group, torch.device(device), "the load device")
    layers = meta["layers"]
    _shape_for_shards(model, layers, world)

    from ._checkpoint import load_sparse

    options = {}
    if "fuse" in inspect.signature(load_sparse).parameters:
        options["fuse"] = False  # the shards are stored as they run; a fusion pass must not regroup them
    load_sparse(model, path, device=device, strict=strict, **options)

    for name, record in layers.items():
        loaded = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if record["style"] == "colwise" and record.get("parts"):
            if not isinstance(loaded, FusedSparseLinear):
                raise ValueError(f"{path}: {name} should load as fused layers, got {type(loaded).__name__}")
            new = ColumnParallelFusedSparseLinear._wrap(loaded, group, [int(s) for _, s in record["parts"]])
            setattr(parent, child, new)
            for index, part in enumerate(new.names):
                setattr(parent, part, SparseLinearSlice(new, index))
            continue
        if not isinstance(loaded, SparseLinear) or isinstance(loaded, FusedSparseLinear):
            raise ValueError(f"{path}: {name} should load as a SparseLinear, got {type(loaded).__name__}")
        M, K = (int(v) for v in record["total_shape"])
        if record["style"] == "colwise":
            new = ColumnParallelSparseLinear._wrap(loaded, group, record.get("gather_output", False), M)
        else:
            new = RowParallelSparseLinear._wrap(loaded, group, record.get("input_is_parallel", True), K)
        if list(new.shard) != [int(v) for v in record.get("shard", new.shard)]:
            raise ValueError(f"{path}: {name} holds shard {record['shard']}, rank {rank} needs {list(new.shard)}")
        setattr(parent, child, new)
    attention = meta["attention"]
    for parent_name, attrs in attention.items():
        module = model.get_submodule(parent_name)
        for attr, (total, _) in attrs.items():
            if getattr(module, attr, None) != total:
                raise ValueError(
                    f"{parent_name}.{attr} is {getattr(module, attr, None)} in the model but {total} "
                    f"in the checkpoint (another architecture?)"
                )
    _set_attention(model, attention, local=True)
    model._flashspmm_tp = {"world_size": world, "rank": rank, "attention": copy.deepcopy(attention)}
    return model
