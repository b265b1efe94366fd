"""sparsify(): prune and compress a model's nn.Linear layers in place (magnitude or Wanda), with sibling fusion."""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import compress, prune
from .._matrix import _format_code
from . import _compat
from ._modules import FusedSparseLinear, SparseLinear, SparseLinearSlice, blob_tensor

__all__ = [
    "sparsify",
    "fuse_sparse",
    "prune_weight",
    "wanda_prune",
    "collect_input_norms",
    "LayerReport",
    "SparsifyReport",
    "DEFAULT_FUSE_GROUPS",
    "select_linears",
]

# Children of one parent module that read the same input in the models' code: (names, name of the fused module).
DEFAULT_FUSE_GROUPS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("q_proj", "k_proj", "v_proj"), "qkv_proj"),  # LLaMA, Mistral, Qwen2, OPT, ... attention
    (("gate_proj", "up_proj"), "gate_up_proj"),  # LLaMA, Mistral, Qwen2 MLP
    (("query", "key", "value"), "query_key_value"),  # BERT-style attention
)

_METHODS = ("magnitude", "wanda")


@dataclass
class LayerReport:
    """One compressed matrix: a layer, or fused siblings (name ``parent.q_proj+k_proj+v_proj``)."""

    name: str
    shape: Tuple[int, int]
    sparsity: float  # achieved: 1 - nnz / (M * K)
    format: str
    bytes_before: int  # dense weight bytes
    bytes_after: int  # blob bytes

    @property
    def ratio(self) -> float:
        return self.bytes_before / self.bytes_after


class SparsifyReport(List[LayerReport]):
    """The per-matrix report of :func:`sparsify` (a list of :class:`LayerReport`), printable as a table."""

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self)

    def __str__(self) -> str:
        if not self:
            return "no layers sparsified"
        width = max(len("layer"), *(len(r.name) for r in self))
        lines = [
            f"{'layer':<{width}}  {'shape':>13}  {'sparsity':>8}  {'format':<9}  {'MB before':>9}  "
            f"{'MB after':>9}  {'ratio':>6}"
        ]
        for r in self:
            shape = f"{r.shape[0]}x{r.shape[1]}"
            lines.append(
                f"{r.name:<{width}}  {shape:>13}  {r.sparsity:8.1%}  {r.format:<9}  "
                f"{r.bytes_before / 1e6:9.2f}  {r.bytes_after / 1e6:9.2f}  {r.ratio:5.2f}x"
            )
        lines.append(
            f"{'total (' + str(len(self)) + ' matrices)':<{width}}  {'':>13}  {'':>8}  {'':<9}  "
            f"{self.bytes_before / 1e6:9.2f}  {self.bytes_after / 1e6:9.2f}  "
            f"{self.bytes_before / max(self.bytes_after, 1):5.2f}x"
        )
        return "\n".join(lines)


# ---- pruning ---------------------------------------------------------------------------------------------------


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__qualname__}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1) (e.g. 0.5 for 50 % zeros), got {sparsity}")
    return sparsity


def wanda_prune(weight: torch.Tensor, act_norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A copy of ``weight`` [M, K] with the ``round(sparsity * K)`` entries of smallest ``|w_ij| * act_norms[j]``
    of every row set to zero (Wanda's metric, pruned per output row).

    The count per row is the one ``flashspmm.prune`` uses in its row scope (round half to even); ties go to the
    lower column and NaN scores rank above every number, as there. Scores are float32, computed on the
    weight's device a block of rows at a time (bounded temporary memory).
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D, got shape {tuple(weight.shape)}")
    M, K = weight.shape
    norms = torch.as_tensor(act_norms).to(device=weight.device, dtype=torch.float32).reshape(-1)
    if norms.numel() != K:
        raise ValueError(f"act_norms must have {K} entries (the layer's in_features), got {norms.numel()}")
    n = int(round(_check_sparsity(sparsity) * K))
    out = weight.detach().clone()
    if n == 0:
        return out
    rows = max(1, (1 << 24) // K)  # about 16 M scores (64 MB, 192 MB with the sort's indices) per block
    for r0 in range(0, M, rows):
        block = out[r0 : r0 + rows]
        score = block.abs().float() * norms
        drop = torch.sort(score, dim=1, stable=True).indices[:, :n]
        block.scatter_(1, drop, 0)
    return out


def prune_weight(
    weight: torch.Tensor, sparsity: float, *, method: str = "magnitude", act_norms: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """A pruned copy of ``weight`` (same dtype and device): ``method`` "magnitude" (flashspmm.prune, row scope) or
    "wanda" (needs ``act_norms``, the inputs' per-feature L2 norms)."""
    sparsity = _check_sparsity(sparsity)
    if method == "magnitude":
        with torch.no_grad():
            return _compat.as_torch(prune(weight.detach(), sparsity), weight)  # today's CPU path gives numpy
    if method == "wanda":
        if act_norms is None:
            raise ValueError(
                "method='wanda' needs the input activation norms: pass act_norms= (or use "
                "flashspmm.torch.sparsify(model, ..., method='wanda', calibration=batches))"
            )
        with torch.no_grad():
            return wanda_prune(weight, act_norms, sparsity)
    raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


# ---- which layers ----------------------------------------------------------------------------------------------


def _output_embedding_ids(model: nn.Module) -> set:
    ids = set()
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # models without a head raise NotImplementedError or similar
            head = None
        if head is not None:
            ids.add(id(head))
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) in embedding_weights:  # tied to an embedding
            ids.add(id(m))
    return ids


def select_linears(
    model: nn.Module, include: Optional[str] = None, exclude: Optional[str] = None
) -> List[Tuple[str, nn.Linear]]:
    """The nn.Linear layers :func:`sparsify` replaces, in module order.

    Default (``include`` None): every Linear inside the transformer blocks, i.e. under an element of an
    nn.ModuleList (``model.layers.3.self_attn.q_proj``); a model with no such list (an nn.Sequential) has all
    its Linears selected. Never the output embeddings (LM head) or a Linear whose weight is tied to an
    embedding. ``include`` / ``exclude`` are regular expressions searched in the module names: ``include``
    replaces the default choice (it may name the head), ``exclude`` removes from it.
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if include is not None:
        pattern = re.compile(include)
        chosen = [(n, m) for n, m in linears if pattern.search(n)]
    else:
        skip = _output_embedding_ids(model)
        block_ids = {id(child) for m in model.modules() if isinstance(m, nn.ModuleList) for child in m}
        prefixes = tuple(name + "." for name, m in model.named_modules() if id(m) in block_ids)
        in_blocks = [(n, m) for n, m in linears if prefixes and n.startswith(prefixes)]
        chosen = in_blocks if in_blocks else linears
        chosen = [(n, m) for n, m in chosen if id(m) not in skip]
    if exclude is not None:
        pattern = re.compile(exclude)
        chosen = [(n, m) for n, m in chosen if not pattern.search(n)]
    return chosen


def _fuse_groups(fuse) -> Tuple[Tuple[Tuple[str, ...], str], ...]:
    if fuse is True:
        return DEFAULT_FUSE_GROUPS
    if fuse is False or fuse is None:
        return ()
    groups = []
    for group in fuse:
        names = tuple(group)
        if len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise ValueError(f"each fuse group must name at least two children, got {group!r}")
        groups.append((names, "_".join(names) + "_fused"))
    return tuple(groups)


def _plan(chosen: List[Tuple[str, nn.Linear]], fuse) -> List[Tuple[str, List[str], str]]:
    """Units of work, in module order: (parent name, [child names], fused module name or "").

    Names only: the loop in :func:`sparsify` looks each module up when it gets to it, so no list here keeps a
    replaced dense layer alive."""
    groups = _fuse_groups(fuse)
    by_parent: Dict[str, Dict[str, nn.Linear]] = {}
    order: List[Tuple[str, str]] = []
    for name, m in chosen:
        parent, _, child = name.rpartition(".")
        by_parent.setdefault(parent, {})[child] = m
        order.append((parent, child))
    taken = set()
    units = []
    for parent, child in order:
        if (parent, child) in taken:
            continue
        children = by_parent[parent]
        unit = None
        for names, fused_name in groups:
            if child not in names or not all(n in children for n in names):
                continue
            mods = [children[n] for n in names]
            w0 = mods[0].weight
            if all(
                m.in_features == mods[0].in_features and m.weight.dtype == w0.dtype and m.weight.device == w0.device
                for m in mods
            ):
                unit = (parent, list(names), fused_name)
            break
        if unit is None:
            unit = (parent, [child], "")
        taken.update((parent, n) for n in unit[1])
        units.append(unit)
    return units


# ---- Wanda calibration -----------------------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _run_batch(model: nn.Module, batch, device: torch.device) -> None:
    def move(v):
        return v.to(device) if isinstance(v, torch.Tensor) else v

    if isinstance(batch, dict) or hasattr(batch, "keys"):
        model(**{k: move(v) for k, v in batch.items()})
    elif isinstance(batch, (tuple, list)):
        model(*[move(v) for v in batch])
    else:
        model(move(batch))


def collect_input_norms(
    model: nn.Module, layers: Sequence[Tuple[str, nn.Module]], calibration: Iterable, *, progress: bool = False
) -> Dict[str, torch.Tensor]:
    """||x_j||_2 over every calibration token, per input feature j of each layer: {name: float32 [in_features]}.

    Forward pre-hooks on the layers sum the squares of their inputs (float64 accumulators on the model's device)
    while the model runs the calibration batches under torch.no_grad(). A batch is a tensor (``model(batch)``,
    e.g. input ids [B, T]), a tuple/list (``model(*batch)``) or a dict (``model(**batch)``).
    """
    sums: Dict[str, torch.Tensor] = {}
    counts = {name: 0 for name, _ in layers}

    def hook_for(name, k):
        def hook(module, args):
            x = args[0].detach()
            x = x.reshape(-1, k)
            partial = x.float().pow(2).sum(0).double()
            sums[name] = partial if name not in sums else sums[name] + partial
            counts[name] += x.shape[0]

        return hook

    handles = [m.register_forward_pre_hook(hook_for(name, m.in_features)) for name, m in layers]
    device = _model_device(model)
    batches = 0
    try:
        iterator = _progress(calibration, progress, "calibration", unit="batch")
        with torch.no_grad():
            for batch in iterator:
                _run_batch(model, batch, device)
                batches += 1
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise ValueError("calibration gave no batches: pass an iterable of input batches (e.g. token id tensors)")
    missing = [name for name, _ in layers if counts[name] == 0]
    if missing:
        raise ValueError(
            f"the calibration batches never reached {len(missing)} layer(s), e.g. {missing[0]!r}; "
            f"check that the batches run the model's forward through them"
        )
    return {name: s.sqrt().float() for name, s in sums.items()}


def _progress(iterable, enabled: bool, desc: str, **kwargs):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, **kwargs)


# ---- sparsify --------------------------------------------------------------------------------------------------


def sparsify(
    model: nn.Module,
    sparsity: float,
    *,
    method: str = "magnitude",
    include: Optional[str] = None,
    exclude: Optional[str] = None,
    format: str = "auto",
    calibration: Optional[Iterable] = None,
    fuse: Union[bool, Sequence[Sequence[str]]] = True,
    progress: bool = True,
) -> SparsifyReport:
    """Prune and compress ``model``'s nn.Linear layers in place; returns the per-matrix report.

    Args:
        model: a torch module (Hugging Face transformers models, nn.Sequential, ...) with float16 or bfloat16
            Linear weights, on the CPU or a GPU (each layer is pruned and compressed where it lives).
        sparsity: fraction of zeros per row, in [0, 1).
        method: "magnitude" (flashspmm.prune) or "wanda" (|w_ij| * ||x_j||_2, activation norms from
            ``calibration``; collected in one pass over the dense model).
        include, exclude: regular expressions on module names (see :func:`select_linears`); default: every
            Linear inside the transformer blocks, never embeddings or the LM head.
        format: "auto", "bitmap" or "tiled_csl".
        calibration: for Wanda, an iterable of input batches (token id tensors, tuples or dicts of model inputs).
        fuse: True fuses the sibling projections that read one input (q/k/v, gate/up; :data:`DEFAULT_FUSE_GROUPS`)
            into one matrix each; False keeps every layer separate; or a list of name groups.
        progress: a tqdm progress bar (when tqdm is installed).

    Layers are replaced one unit (a layer or a fused group) at a time and each dense weight is released right
    after its replacement, so peak memory stays near the model's size plus one group's dense copy. Everything
    is checked before the first layer is changed.
    """
    sparsity = _check_sparsity(sparsity)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    _format_code(format)  # an unknown format fails here, not after the calibration pass
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
    if method == "wanda" and calibration is None:
        raise ValueError("method='wanda' needs calibration= (an iterable of input batches, e.g. token id tensors)")
    chosen = select_linears(model, include, exclude)
    if not chosen:
        raise ValueError("no nn.Linear layer matches (include/exclude select none, or the model has none)")
    for name, m in chosen:
        if m.weight.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(
                f"{name}.weight has dtype {m.weight.dtype}; flashspmm stores float16 or bfloat16 "
                f"weights: convert the model first, e.g. model.half() or model.to(torch.bfloat16)"
            )
        if m.weight.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{name} is on {m.weight.device}; put the model on the CPU or a CUDA device")
        if m.bias is not None and m.bias.dtype != m.weight.dtype:
            raise TypeError(f"{name}.bias has dtype {m.bias.dtype} but its weight is {m.weight.dtype}")
    units = _plan(chosen, fuse)
    norms = collect_input_norms(model, chosen, calibration, progress=progress) if method == "wanda" else {}
    del chosen, m  # from here on modules are looked up by name, so replaced layers can be freed

    report = SparsifyReport()
    for parent_name, children, fused_name in _progress(units, progress, "sparsify", unit="matrix"):
        parent = model.get_submodule(parent_name)
        prefix = f"{parent_name}." if parent_name else ""
        members = [(child, getattr(parent, child)) for child in children]
        with torch.no_grad():
            pruned = []
            for child, linear in members:
                w = linear.weight.detach()
                pruned.append(prune_weight(w, sparsity, method=method, act_norms=norms.get(prefix + child)))
            dense_bytes = sum(p.numel() * p.element_size() for p in pruned)
            weight = pruned[0] if len(pruned) == 1 else torch.cat(pruned, dim=0)
            del pruned
            biases = [linear.bias for _, linear in members]
            bias = None
            if any(b is not None for b in biases):
                bias = torch.cat(
                    [
                        b.detach()
                        if b is not None
                        else torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device)
                        for b, (_, linear) in zip(biases, members)
                    ]
                )
            W = compress(weight, format=format)
            del weight
            blob = blob_tensor(W)
            device = members[0][1].weight.device
            if blob.device != device:
                blob = blob.to(device)
            if blob.device.type != "cuda" or blob.data_ptr() != W.data_ptr:
                W = _compat.from_array(blob)
            if not fused_name:
                child, _ = members[0]
                new = SparseLinear._from_matrix(W, blob, bias)
                setattr(parent, child, new)
                name = prefix + child
            else:
                names = [child for child, _ in members]
                splits = [linear.out_features for _, linear in members]
                fused = FusedSparseLinear._from_matrix_parts(W, blob, bias, splits, names)
                attr = fused_name
                while hasattr(parent, attr):
                    attr += "_"
                setattr(parent, attr, fused)
                for index, child in enumerate(names):
                    setattr(parent, child, SparseLinearSlice(fused, index))
                name = prefix + "+".join(names)
            M, K = W.shape
            report.append(
                LayerReport(
                    name=name,
                    shape=(M, K),
                    sparsity=1.0 - W.nnz / (M * K),
                    format=W.format,
                    bytes_before=dense_bytes,
                    bytes_after=W.nbytes,
                )
            )
            del members, biases, bias, blob, W, linear
    return report


def fuse_sparse(model: nn.Module, fuse: Union[bool, Sequence[Sequence[str]]] = True, *, format: str = "auto") -> int:
    """Fuse sibling SparseLinear layers of one parent (q/k/v, gate/up, ...) into FusedSparseLinear modules.

    For checkpoints whose layers were compressed one by one (the command line converts tensor by tensor): each
    group is decompressed on its device, stacked and compressed again, which is exact (the same values, one
    matrix). Groups whose members differ in in_features, dtype or device are left alone. Returns the number of
    groups fused.
    """
    groups = _fuse_groups(fuse)
    fused_count = 0
    for _parent_name, parent in list(model.named_modules()):
        for names, fused_name in groups:
            members = [getattr(parent, n, None) for n in names]
            if not all(type(m) is SparseLinear for m in members):
                continue
            first = members[0]
            if not all(
                m.in_features == first.in_features and m.dtype == first.dtype and m.device == first.device
                for m in members
            ):
                continue
            with torch.no_grad():
                weight = torch.cat([m.to_dense() for m in members], dim=0)
                bias = None
                if any(m.bias is not None for m in members):
                    bias = torch.cat(
                        [
                            m.bias.detach()
                            if m.bias is not None
                            else torch.zeros(m.out_features, dtype=m.dtype, device=m.device)
                            for m in members
                        ]
                    )
                W = compress(weight, format=format)
                del weight
                blob = blob_tensor(W)
                if blob.device != first.device:
                    blob = blob.to(first.device)
                if blob.device.type != "cuda" or blob.data_ptr() != W.data_ptr:
                    W = _compat.from_array(blob)
            fused = FusedSparseLinear._from_matrix_parts(W, blob, bias, [m.out_features for m in members], names)
            attr = fused_name
            while hasattr(parent, attr):
                attr += "_"
            setattr(parent, attr, fused)
            for index, child in enumerate(names):
                setattr(parent, child, SparseLinearSlice(fused, index))
            fused_count += 1
            del members, first, fused, W, blob, bias
    return fused_count
