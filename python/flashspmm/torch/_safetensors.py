"""A streaming writer and a memory-mapped reader of the safetensors file format.

The format (documented by the safetensors project): 8 bytes, a little-endian u64 N; N bytes of UTF-8 JSON,
``{"__metadata__": {str: str}, name: {"dtype": "F16", "shape": [...], "data_offsets": [begin, end]}, ...}``
(may be padded with spaces); then the data: every tensor's bytes, C order, little-endian, at its offsets
(relative to the end of the header), back to back with no holes.

Why not the safetensors package: its writers take every tensor at once (a host copy of the whole model), and its
readers copy each tensor. Here the header is written first from the tensors' sizes, then the tensors one at a
time (peak host memory: one tensor), and reading maps the file copy-on-write so a tensor is a view of the page
cache until it is moved to its device. Files are checked to load with ``safetensors.safe_open`` in the tests.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["TensorEntry", "write_safetensors", "SafetensorsFile", "DTYPES", "dtype_name", "SafetensorsError",
           "tensor_bytes"]

# safetensors dtype name -> (torch dtype or None when this torch lacks it, bytes per element)
DTYPES: Dict[str, Tuple[Optional[torch.dtype], int]] = {
    "BOOL": (torch.bool, 1), "U8": (torch.uint8, 1), "I8": (torch.int8, 1), "I16": (torch.int16, 2),
    "U16": (getattr(torch, "uint16", None), 2), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4), "U32": (getattr(torch, "uint32", None), 4), "F32": (torch.float32, 4),
    "F64": (torch.float64, 8), "I64": (torch.int64, 8), "U64": (getattr(torch, "uint64", None), 8),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1), "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
}
_BY_TORCH = {dt: name for name, (dt, _) in DTYPES.items() if dt is not None}

_ALIGN = 64            # the data section starts 64-byte aligned in the files written here
_MAX_HEADER = 100 << 20  # the limit the safetensors readers apply


class SafetensorsError(ValueError):
    """A file that is not valid safetensors (the message names the file and the problem)."""


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors name of a torch dtype ("F16", ...); TypeError if it has none."""
    try:
        return _BY_TORCH[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} cannot be stored in safetensors") from None


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """The bytes of ``t`` (C order) as a host uint8 numpy array (one host copy of this tensor at most)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    return t.view(torch.uint8).numpy()


@dataclass
class TensorEntry:
    """One tensor to write: name, safetensors dtype, shape, and a function giving its bytes when its turn comes."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    data: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        count = 1
        for n in self.shape:
            count *= int(n)
        return count * DTYPES[self.dtype][1]


def write_safetensors(path: str, entries: Sequence[TensorEntry], metadata: Optional[Dict[str, str]] = None,
                      *, progress: Optional[Callable[[int], None]] = None) -> int:
    """Write ``entries`` to ``path`` in this order, one tensor in memory at a time; returns the file size.

    The header is padded with spaces so the data starts 64-byte aligned: a writer that puts tensors of larger
    elements first (as :func:`flashspmm.torch.save_sparse` does) gets every tensor naturally aligned.
    ``progress(nbytes)`` is called after each tensor. Written straight to ``path``: callers that must leave no
    partial file write to a temporary name and rename it.
    """
    header: Dict[str, object] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    offset = 0
    seen = set()
    for e in entries:
        if e.name in seen or e.name == "__metadata__":
            raise ValueError(f"tensor name {e.name!r} is used twice (or reserved)")
        if e.dtype not in DTYPES:
            raise TypeError(f"unknown safetensors dtype {e.dtype!r} for {e.name}")
        seen.add(e.name)
        header[e.name] = {"dtype": e.dtype, "shape": [int(n) for n in e.shape],
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % _ALIGN)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for e in entries:
            data = e.data()
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            if data.size != e.nbytes:
                raise ValueError(f"{e.name}: got {data.size} bytes, the header says {e.nbytes}")
            f.write(memoryview(data))
            if progress is not None:
                progress(e.nbytes)
            del data
        size = f.tell()
    return size


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    begin: int   # absolute file offsets
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class SafetensorsFile:
    """A safetensors file, header parsed and checked, tensors read lazily from a copy-on-write memory map."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise self._error("shorter than the 8-byte header length")
                n = int.from_bytes(head, "little")
                if n < 2 or n > _MAX_HEADER or 8 + n > size:
                    raise self._error(f"the header length {n} does not fit the file of {size} bytes")
                text = f.read(n)
        except OSError as exc:
            raise SafetensorsError(f"cannot read {self.path}: {exc}") from None
        try:
            header = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise self._error("the header is not UTF-8 JSON") from None
        if not isinstance(header, dict):
            raise self._error("the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._error("__metadata__ must map strings to strings")
        self.metadata: Dict[str, str] = meta
        start = 8 + n
        self.tensors: Dict[str, TensorInfo] = {}
        spans = []
        for name, info in header.items():
            try:
                dtype, shape, (b, e) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
                b, e = int(b), int(e)
            except (KeyError, TypeError, ValueError):
                raise self._error(f"entry {name!r} lacks dtype, shape or data_offsets") from None
            if dtype not in DTYPES:
                raise self._error(f"tensor {name!r} has the unsupported dtype {dtype!r}")
            count = 1
            for d in shape:
                if d < 0:
                    raise self._error(f"tensor {name!r} has a negative dimension")
                count *= d
            if e - b != count * DTYPES[dtype][1] or b < 0:
                raise self._error(f"tensor {name!r}: offsets {b}..{e} do not match dtype {dtype} and shape {shape}")
            self.tensors[name] = TensorInfo(name, dtype, shape, start + b, start + e)
            spans.append((b, e, name))
        spans.sort()
        pos = 0
        for b, e, name in spans:
            if b != pos:
                raise self._error(f"tensor {name!r} starts at {b}, expected {pos} (overlap or hole in the data)")
            pos = e
        if start + pos != size:
            raise self._error(f"the tensors end at byte {start + pos} but the file has {size} bytes (truncated?)")
        self._map = None

    def _error(self, why: str) -> SafetensorsError:
        return SafetensorsError(f"{self.path} is not a valid safetensors file: {why}")

    def keys(self) -> List[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def _mapped(self):
        if self._map is None:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    self._map = b""
                else:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # writable views, file untouched
        return self._map

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes: a uint8 view of the memory map (no read until used)."""
        info = self.tensors[name]
        if info.nbytes == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(self._mapped(), dtype=np.uint8, count=info.nbytes, offset=info.begin)

    def tensor(self, name: str, device=None) -> torch.Tensor:
        """The tensor on ``device`` (default: a CPU view of the map, copy-on-write)."""
        info = self.tensors[name]
        torch_dtype, itemsize = DTYPES[info.dtype]
        if torch_dtype is None:
            raise TypeError(f"{self.path}: tensor {name!r} has dtype {info.dtype}, which this torch does not have")
        raw = self.raw(name)
        if raw.size and raw.__array_interface__["data"][0] % itemsize:
            raw = raw.copy()  # misaligned in the file: an aligned copy for torch's kernels
        t = torch.from_numpy(raw).view(torch_dtype).reshape(info.shape)
        if device is not None and torch.device(device) != t.device:
            t = t.to(device)
        return t

    def close(self) -> None:
        """Drop the map (views already handed out keep it alive until they are freed)."""
        self._map = None


def iter_in_order(infos: Iterable[TensorInfo]) -> List[TensorInfo]:
    """Tensors in file order (reading them so touches the file front to back)."""
    return sorted(infos, key=lambda i: i.begin)
