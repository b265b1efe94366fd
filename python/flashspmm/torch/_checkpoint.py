"""Sparse checkpoints in safetensors: save_sparse(), load_sparse(), from_pretrained(), and the import of the
compressed-tensors "sparse-bitmask" layout.

Layout written by save_sparse (any safetensors reader can open the files):

- each compressed matrix is a uint8 tensor ``<module>.blob`` (the flashspmm blob, header included, validated when
  loaded), its bias ``<module>.bias`` as it is; every other tensor (embeddings, norms, ...) as in the model's
  ``state_dict()``; blobs first (they keep 16-byte alignment), then the other tensors by element size;
- the file's ``__metadata__`` holds ``"format": "pt"`` and ``"flashspmm"``: JSON
  ``{"version": 1, "layers": {module: {"blob", "bias", "shape", "dtype", "format", "parts"}}, "aliases": {...}}``
  where ``parts`` is null for a SparseLinear and ``[[child, rows], ...]`` for fused siblings (rows of the stacked
  matrix per child of the parent module); ``aliases`` maps a tied tensor's name to the stored one;
- a directory holds ``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` with
  ``model.safetensors.index.json`` (``{"metadata": {"total_size", "flashspmm"}, "weight_map": {name: file}}``),
  and the model's ``config.json`` when it has one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .. import compress
from .._matrix import SparseMatrix
from . import _compat
from ._modules import FusedSparseLinear, SparseLinear, SparseLinearSlice
from ._safetensors import SafetensorsError, SafetensorsFile, TensorEntry, dtype_name, tensor_bytes, write_safetensors

__all__ = [
    "save_sparse",
    "load_sparse",
    "from_pretrained",
    "read_sparse_bitmask",
    "open_checkpoint",
    "INDEX_NAME",
    "SINGLE_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_FORMAT_VERSION = 1
_BITMASK_PARTS = ("compressed", "bitmask", "row_offsets", "shape")


def _parse_size(size) -> Optional[int]:
    if size is None:
        return None
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.I)
    if not m:
        raise ValueError(f"max_shard_size must be bytes or a size like '5GB', got {size!r}")
    scale = 1024 if m.group(3) else 1000
    power = " KMGT".index(m.group(2).upper() or " ")
    return max(1, int(float(m.group(1)) * scale**power))


# ---- saving ----------------------------------------------------------------------------------------------------


def _layer_records(model: nn.Module) -> Dict[str, dict]:
    layers = {}
    for name, m in model.named_modules():
        if not isinstance(m, SparseLinear):
            continue
        if m.matrix is None:
            raise ValueError(f"{name} is on the meta device: there is nothing to save")
        prefix = f"{name}." if name else ""
        record = {
            "blob": prefix + "blob",
            "bias": prefix + "bias" if m.bias is not None else None,
            "shape": [m.out_features, m.in_features],
            "dtype": str(m.dtype).replace("torch.", ""),
            "format": m.format,
            "parts": None,
        }
        if isinstance(m, FusedSparseLinear):
            record["parts"] = [[n, s] for n, s in zip(m.names, m.splits)]
        layers[name] = record
    return layers


def save_sparse(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    max_shard_size: Union[int, str, None] = None,
    save_config: bool = True,
    metadata: Optional[Dict[str, str]] = None,
) -> List[str]:
    """Write ``model`` (sparsified or not) to safetensors at ``path``; returns the files written.

    ``path`` ending in ``.safetensors`` is one file; anything else is a directory (created if needed) holding
    ``model.safetensors``, or shards of at most ``max_shard_size`` bytes (an int or e.g. ``"5GB"``) and their
    index, plus ``config.json`` (``model.config.save_pretrained``) when ``save_config`` and the model has one.
    Tensors are copied to the host and written one at a time. Each file is written under a temporary name
    and renamed when complete. ``metadata``: more string entries for every file's ``__metadata__`` (the
    tensor-parallel shards record their rank there).
    """
    path = os.fspath(path)
    limit = _parse_size(max_shard_size)
    single_file = path.endswith(".safetensors")
    if single_file and limit is not None:
        raise ValueError("max_shard_size needs a directory path (one file cannot be sharded)")
    layers = _layer_records(model)
    state = model.state_dict(keep_vars=True)

    # tied / shared tensors are stored once (safetensors readers refuse aliasing tensors)
    stored: Dict[tuple, str] = {}
    aliases: Dict[str, str] = {}
    tensors: List[Tuple[str, torch.Tensor]] = []
    for name, t in state.items():
        t = t.detach()
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else None
        if key is not None and key in stored:
            aliases[name] = stored[key]
            continue
        if key is not None:
            stored[key] = name
        tensors.append((name, t))
    blob_names = {r["blob"] for r in layers.values()}
    ranked = sorted(enumerate(tensors), key=lambda e: (e[1][0] not in blob_names, -e[1][1].element_size(), e[0]))
    entries = [
        TensorEntry(name, dtype_name(t.dtype), tuple(t.shape), (lambda t=t: tensor_bytes(t))) for _, (name, t) in ranked
    ]
    del tensors, ranked, state

    shards: List[List[TensorEntry]] = [[]]
    size = 0
    for e in entries:
        if limit is not None and shards[-1] and size + e.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    if single_file:
        directory, names = os.path.dirname(path) or ".", [os.path.basename(path)]
    else:
        directory = path
        os.makedirs(directory, exist_ok=True)
        n = len(shards)
        names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    blob_shard = {}
    for name, shard in zip(names, shards):
        for e in shard:
            blob_shard[e.name] = name
    written = []
    pending = []  # (temporary, final)
    try:
        for name, shard in zip(names, shards):
            in_shard = {k: r for k, r in layers.items() if blob_shard.get(r["blob"]) == name}
            meta = {
                "format": "pt",
                "flashspmm": json.dumps({"version": _FORMAT_VERSION, "layers": in_shard, "aliases": aliases}),
            }
            meta.update({k: v for k, v in (metadata or {}).items() if k not in meta})
            final = os.path.join(directory, name)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
            os.close(fd)
            pending.append((tmp, final))
            write_safetensors(tmp, shard, meta)
        if len(names) > 1:
            index = {
                "metadata": {
                    "total_size": sum(e.nbytes for e in entries),
                    "flashspmm": {"version": _FORMAT_VERSION, "layers": layers, "aliases": aliases},
                },
                "weight_map": {e.name: blob_shard[e.name] for e in entries},
            }
            fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_NAME}.", suffix=".tmp", dir=directory)
            with os.fdopen(fd, "w") as f:
                json.dump(index, f, indent=2)
            pending.append((tmp, os.path.join(directory, INDEX_NAME)))
        for tmp, final in pending:
            os.replace(tmp, final)
            written.append(final)
        pending = []
    finally:
        for tmp, _ in pending:
            if os.path.exists(tmp):
                os.remove(tmp)
    config = getattr(model, "config", None)
    if save_config and not single_file and hasattr(config, "save_pretrained"):
        config.save_pretrained(directory)
        written.append(os.path.join(directory, "config.json"))
    return written


# ---- opening checkpoints ---------------------------------------------------------------------------------------


class Checkpoint:
    """The safetensors files of one checkpoint (a file, or a directory with an index or a single file)."""

    def __init__(self, path: Union[str, os.PathLike]):
        path = os.fspath(path)
        self.path = path
        self.index_metadata: dict = {}
        if os.path.isdir(path):
            index = os.path.join(path, INDEX_NAME)
            if os.path.isfile(index):
                try:
                    with open(index) as f:
                        data = json.load(f)
                    weight_map = data["weight_map"]
                    if not isinstance(weight_map, dict):
                        raise TypeError
                except (OSError, ValueError, KeyError, TypeError):
                    raise SafetensorsError(
                        f"{index} is not a safetensors index (a JSON object with a 'weight_map')"
                    ) from None
                self.index_metadata = data.get("metadata") or {}
                files = sorted(set(weight_map.values()))
                missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
                if missing:
                    raise FileNotFoundError(f"{index} names shard(s) that are not in {path}: {', '.join(missing)}")
                self.files = [SafetensorsFile(os.path.join(path, f)) for f in files]
                owner = {f: sf for f, sf in zip(files, self.files)}
                for name, f in weight_map.items():
                    if name not in owner[f]:
                        raise SafetensorsError(f"{index} places {name!r} in {f}, which does not hold it")
            else:
                found = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
                if not found:
                    raise FileNotFoundError(f"{path} holds no .safetensors file and no {INDEX_NAME}")
                if len(found) > 1:
                    raise FileNotFoundError(
                        f"{path} holds several .safetensors files but no {INDEX_NAME} saying how they belong together"
                    )
                self.files = [SafetensorsFile(os.path.join(path, found[0]))]
        elif os.path.isfile(path):
            self.files = [SafetensorsFile(path)]
        else:
            raise FileNotFoundError(f"no such checkpoint file or directory: {path}")
        self.where: Dict[str, SafetensorsFile] = {}
        for sf in self.files:
            for name in sf.keys():
                if name in self.where:
                    raise SafetensorsError(f"tensor {name!r} is in both {self.where[name].path} and {sf.path}")
                self.where[name] = sf
        self.layers: Dict[str, dict] = {}
        self.aliases: Dict[str, str] = {}
        for sf in self.files:
            text = sf.metadata.get("flashspmm")
            if text is None:
                continue
            try:
                data = json.loads(text)
                if data.get("version") != _FORMAT_VERSION:
                    raise ValueError(f"unknown version {data.get('version')!r}")
                self.layers.update(data["layers"])
                self.aliases.update(data.get("aliases") or {})
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SafetensorsError(f"{sf.path}: unreadable flashspmm metadata ({exc})") from None
        for name, r in self.layers.items():
            if r.get("blob") not in self.where:
                raise SafetensorsError(f"{path}: layer {name!r} names blob {r.get('blob')!r}, which no file holds")

    def keys(self) -> List[str]:
        return list(self.where)

    def tensor(self, name: str, device=None) -> torch.Tensor:
        return self.where[name].tensor(name, device)

    def raw(self, name: str) -> np.ndarray:
        return self.where[name].raw(name)

    def info(self, name: str):
        return self.where[name].tensors[name]


def open_checkpoint(path) -> Checkpoint:
    """Open a safetensors checkpoint (file or directory); headers and the index are checked here."""
    return Checkpoint(path)


# ---- compressed-tensors "sparse-bitmask" ------------------------------------------------------------------------


def _bitmask_prefixes(ckpt: Checkpoint) -> List[str]:
    prefixes = []
    for name in ckpt.keys():
        if name.endswith(".bitmask"):
            prefix = name[: -len(".bitmask")]
            if all(f"{prefix}.{p}" in ckpt.where for p in _BITMASK_PARTS):
                prefixes.append(prefix)
    return prefixes


def _bitmask_dense(ckpt: Checkpoint, prefix: str, device) -> torch.Tensor:
    """The dense weight of one sparse-bitmask entry, rebuilt on ``device`` after checking the four tensors."""
    shape = ckpt.tensor(f"{prefix}.shape").reshape(-1).tolist()
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"{prefix}.shape must hold a 2-D shape, got {shape}")
    rows, cols = (int(s) for s in shape)
    values = ckpt.tensor(f"{prefix}.compressed").reshape(-1)
    bitmask = ckpt.tensor(f"{prefix}.bitmask")
    offsets = ckpt.tensor(f"{prefix}.row_offsets").reshape(-1)
    if values.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"{prefix}.compressed has dtype {values.dtype}; flashspmm stores float16 or bfloat16 weights")
    if bitmask.dtype not in (torch.uint8, torch.int8) or tuple(bitmask.shape) != (rows, (cols + 7) // 8):
        raise ValueError(
            f"{prefix}.bitmask must be uint8 [{rows}, {(cols + 7) // 8}] (bits of a {rows} x {cols} "
            f"matrix, 8 per byte), got {bitmask.dtype} {tuple(bitmask.shape)}"
        )
    bits = bitmask.to(device).view(torch.uint8)
    # packed little-endian within a byte: bit b of byte j is column 8 j + b
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    mask = ((bits.unsqueeze(-1) >> shifts) & 1).reshape(rows, -1)[:, :cols].bool()
    counts = mask.sum(dim=1)
    if int(counts.sum()) != values.numel():
        raise ValueError(
            f"{prefix}: the bitmask marks {int(counts.sum())} values, {prefix}.compressed holds {values.numel()}"
        )
    expected = torch.cumsum(counts, 0) - counts
    if offsets.numel() != rows or not torch.equal(offsets.to(device=expected.device, dtype=expected.dtype), expected):
        raise ValueError(f"{prefix}.row_offsets does not match the bitmask's row counts")
    dense = torch.zeros(rows, cols, dtype=values.dtype, device=bits.device)
    dense[mask] = values.to(bits.device)  # row-major order, as the values were taken
    return dense


def read_sparse_bitmask(path, *, device="cpu", format: str = "auto") -> Dict[str, SparseMatrix]:
    """The weights of a compressed-tensors "sparse-bitmask" checkpoint as flashspmm matrices on ``device``.

    That layout stores each sparse weight ``<module>.weight`` as four tensors: ``<module>.shape`` (the dense shape),
    ``<module>.compressed`` (the nonzero values in row-major order), ``<module>.bitmask`` (uint8 [rows,
    ceil(cols / 8)], bit b of byte j = column 8 j + b, numpy ``packbits(bitorder="little")``) and
    ``<module>.row_offsets`` (index of each row's first value). Returns {"<module>.weight": SparseMatrix}.
    Each entry is checked (bit counts against the values and the row offsets), rebuilt dense on ``device`` one
    at a time and compressed there.
    """
    ckpt = path if isinstance(path, Checkpoint) else Checkpoint(path)
    out = {}
    for prefix in _bitmask_prefixes(ckpt):
        dense = _bitmask_dense(ckpt, prefix, device)
        out[prefix + ".weight"] = compress(dense, format=format)
        del dense
    return out


# ---- loading ---------------------------------------------------------------------------------------------------


def _blob_on(ckpt: Checkpoint, name: str, device: torch.device) -> Tuple[SparseMatrix, torch.Tensor]:
    """A blob tensor from the checkpoint on ``device``, validated in full on the host before it is moved."""
    info = ckpt.info(name)
    if info.dtype != "U8" or len(info.shape) != 1:
        raise SafetensorsError(f"{name} must be a 1-D U8 tensor (a flashspmm blob), got {info.dtype} {info.shape}")
    host = ckpt.tensor(name)
    _compat.from_array(host)  # full validation on the host: header, offsets, tiles, checksums
    if device.type == "cpu":
        blob = host.clone()  # own memory, not the file's map
        return _compat.from_array(blob), blob
    blob = host.to(device)
    return _compat.from_array(blob), blob


def _default_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor):
    """Put ``value`` in the model's parameter or buffer ``name`` (a new object: works on meta skeletons too);
    returns what the model now holds, or None when the model has no such tensor."""
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    if leaf in module._parameters:
        old = module._parameters[leaf]
        grad = old is not None and old.requires_grad and value.is_floating_point()
        module._parameters[leaf] = nn.Parameter(value, requires_grad=grad)
        return module._parameters[leaf]
    if leaf in module._buffers:
        module._buffers[leaf] = value
        return value
    return None


def _materialize_buffers(model: nn.Module, device: torch.device) -> List[str]:
    """Re-create non-persistent buffers left on the meta device (rotary inv_freq, ...) by building their module
    again on ``device`` from its config; returns the names that could not be rebuilt."""
    failed = []
    for name, module in model.named_modules():
        meta = [b for b, t in module._buffers.items() if t is not None and t.device.type == "meta"]
        if not meta:
            continue
        fresh = None
        config = getattr(module, "config", None)
        if config is not None:
            try:
                with torch.device(device):
                    fresh = type(module)(config)
            except Exception:
                fresh = None
        for b in meta:
            value = getattr(fresh, b, None) if fresh is not None else None
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                module._buffers[b] = value.to(device)
            else:
                failed.append(f"{name}.{b}" if name else b)
    return failed


def _replace_layer(model: nn.Module, name: str, module: nn.Module, shape=None) -> None:
    """parent.child = module; with ``shape`` (out, in), the old child must be a Linear of that shape."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if shape is not None:
        old = getattr(parent, child)
        if isinstance(old, nn.Linear):
            if (old.out_features, old.in_features) != tuple(shape):
                raise ValueError(
                    f"{name} is a Linear({old.in_features} -> {old.out_features}) in the model but "
                    f"{shape[1]} -> {shape[0]} in the checkpoint"
                )
        elif not isinstance(old, (SparseLinear, SparseLinearSlice)):
            raise TypeError(
                f"{name} is a {type(old).__name__} in the model, not an nn.Linear: the checkpoint's "
                f"matrix [out, in] cannot replace it"
            )
    setattr(parent, child, module)


def load_sparse(
    model: nn.Module, path, *, device=None, strict: bool = True, fuse: bool = True, format: str = "auto"
) -> nn.Module:
    """Load a checkpoint written by :func:`save_sparse` (or a compressed-tensors sparse-bitmask one) into ``model``.

    ``model`` is the dense architecture (e.g. built from its config, on the meta device to allocate nothing);
    the checkpoint's compressed layers replace its nn.Linear modules (fused siblings included) and every other
    tensor is assigned to its parameter or buffer. Tensors are read lazily from memory-mapped files and go to
    ``device`` (default: the model's device, the CPU for a meta model) one at a time; every blob is validated in
    full on the host before it is used or uploaded. ``strict``: a tensor of the checkpoint with no place in the
    model, or a model tensor the checkpoint does not provide, is an error. ``fuse``: sibling layers stored
    separately (as the command line writes them) are fused afterwards (:func:`flashspmm.torch.fuse_sparse`,
    exact). ``format`` is used for matrices compressed here (sparse-bitmask imports, fusion). Returns ``model``.
    """
    ckpt = path if isinstance(path, Checkpoint) else Checkpoint(path)
    device = torch.device(device) if device is not None else _default_device(model)
    used = set()
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, record in ckpt.layers.items():
            parts = record.get("parts")
            targets = [name] if not parts else [f"{name.rpartition('.')[0]}.{c}".lstrip(".") for c, _ in parts]
            absent = [t for t in targets if t not in modules]
            if absent and parts is None:
                raise KeyError(f"the checkpoint has a sparse layer {name!r} that the model does not have")
            if absent:
                raise KeyError(f"the checkpoint fuses {', '.join(targets)}, but the model lacks {absent[0]!r}")
            W, blob = _blob_on(ckpt, record["blob"], device)
            bias = ckpt.tensor(record["bias"], device) if record.get("bias") else None
            if bias is not None:
                bias = bias.clone() if bias.device.type == "cpu" else bias
            if list(W.shape) != list(record["shape"]):
                raise SafetensorsError(
                    f"{record['blob']} holds a {W.shape} matrix, the metadata says {record['shape']}"
                )
            used.update(x for x in (record["blob"], record.get("bias")) if x)
            if parts is None:
                _replace_layer(model, name, SparseLinear._from_matrix(W, blob, bias), W.shape)
            else:
                names = [c for c, _ in parts]
                fused = FusedSparseLinear._from_matrix_parts(W, blob, bias, [s for _, s in parts], names)
                parent_name = name.rpartition(".")[0]
                for index, (child, rows) in enumerate(parts):
                    _replace_layer(
                        model, f"{parent_name}.{child}".lstrip("."), SparseLinearSlice(fused, index), (rows, W.shape[1])
                    )
                _replace_layer(model, name, fused)
            del W, blob, bias
        for prefix in _bitmask_prefixes(ckpt):
            if prefix not in modules:
                raise KeyError(f"the checkpoint has a sparse-bitmask weight {prefix!r} that the model does not have")
            dense = _bitmask_dense(ckpt, prefix, device)
            bias_name = prefix + ".bias"
            bias = ckpt.tensor(bias_name, device).clone() if bias_name in ckpt.where else None
            layer = SparseLinear.from_dense(dense, bias, format=format)
            del dense
            _replace_layer(model, prefix, layer, (layer.out_features, layer.in_features))
            used.update(f"{prefix}.{p}" for p in _BITMASK_PARTS)
            if bias is not None:
                used.add(bias_name)

        unexpected = []
        loaded = {}
        for name in ckpt.keys():
            if name in used:
                continue
            value = ckpt.tensor(name, device)
            if value.device.type == "cpu":
                value = value.clone()  # own memory, not the file's map
            held = _set_tensor(model, name, value)
            if held is not None:
                loaded[name] = held
            else:
                unexpected.append(name)
        for alias, target in ckpt.aliases.items():
            if target in loaded:
                module_name, _, leaf = alias.rpartition(".")
                dst = model.get_submodule(module_name)
                if leaf in dst._parameters and isinstance(loaded[target], nn.Parameter):
                    dst._parameters[leaf] = loaded[target]
                elif leaf in dst._buffers:
                    dst._buffers[leaf] = loaded[target]
                loaded[alias] = loaded[target]
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        try:
            tie()
        except TypeError:
            pass
    failed = _materialize_buffers(model, device)
    # what the model holds now and the checkpoint did not provide (checked before fusion renames layers)
    provided = {id(m.blob) for m in model.modules() if isinstance(m, SparseLinear)}
    provided |= {id(m.bias) for m in model.modules() if isinstance(m, SparseLinear) and m.bias is not None}
    provided |= {id(t) for t in loaded.values()}
    persistent = model.state_dict(keep_vars=True)
    missing = [n for n, t in persistent.items() if id(t) not in provided and n not in used and n not in loaded]
    missing += [
        n
        for n, t in list(model.named_parameters()) + list(model.named_buffers())
        if t.device.type == "meta" and n not in missing
    ]
    if fuse:
        from ._sparsify import fuse_sparse

        fuse_sparse(model, format=format)
    if strict:
        problems = []
        if unexpected:
            problems.append(
                f"{len(unexpected)} tensor(s) of the checkpoint have no place in the model, e.g. {unexpected[:3]}"
            )
        if missing:
            problems.append(f"{len(missing)} model tensor(s) were not in the checkpoint, e.g. {missing[:3]}")
        if failed:
            problems.append(f"buffers that could not be re-created: {failed[:3]}")
        if problems:
            raise KeyError(f"load_sparse({ckpt.path!r}): " + "; ".join(problems) + " (strict=False loads anyway)")
    return model


def from_pretrained(path, *, device="cpu", model_class=None, strict: bool = True, fuse: bool = True):
    """Build a transformers model from the ``config.json`` in ``path`` without allocating its dense weights (on
    the meta device), then :func:`load_sparse` the checkpoint in ``path`` into it on ``device``; eval mode.
    ``model_class`` defaults to ``transformers.AutoModelForCausalLM``."""
    try:
        import transformers
    except ImportError:
        raise ImportError("from_pretrained needs transformers: pip install transformers") from None
    config = transformers.AutoConfig.from_pretrained(os.fspath(path))
    cls = model_class or transformers.AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    load_sparse(model, path, device=device, strict=strict, fuse=fuse)
    return model.eval()
