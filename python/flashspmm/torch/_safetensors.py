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
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "TensorEntry",
    "SafetensorsWriter",
    "write_safetensors",
    "SafetensorsFile",
    "DTYPES",
    "dtype_name",
    "SafetensorsError",
    "tensor_bytes",
]

# safetensors dtype name -> (torch dtype or None when this torch lacks it, bytes per element)
DTYPES: Dict[str, Tuple[Optional[torch.dtype], int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I16": (torch.int16, 2),
    "U16": (getattr(torch, "uint16", None), 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4),
    "U32": (getattr(torch, "uint32", None), 4),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
    "I64": (torch.int64, 8),
    "U64": (getattr(torch, "uint64", None), 8),
    "F8_E4M3": (getattr(torch, "float8_e4m3fn", None), 1),
    "F8_E5M2": (getattr(torch, "float8_e5m2", None), 1),
}
_BY_TORCH = {dt: name for name, (dt, _) in DTYPES.items() if dt is not None}

_ALIGN = 64  # the data section starts 64-byte aligned in the files written here
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


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, also when some sizes are only known once a tensor is made.

    ``plan`` lists every tensor in file order as (name, dtype, shape, max_nbytes): a known shape, or ``None`` for
    a 1-D tensor whose size (at most ``max_nbytes``) is learnt from the data given to :meth:`write` (a blob
    compressed on the fly). The header is written last, into room reserved at the start of the file for the
    largest header the plan allows (``metadata_room``: metadata whose values are at least as long as the real
    ones); the real header is padded with spaces to that room, which the format allows. The data therefore
    starts 64-byte aligned and is written once, front to back, one tensor in memory at a time.
    """

    def __init__(
        self,
        path: str,
        plan: Sequence[Tuple[str, str, Optional[Tuple[int, ...]], int]],
        metadata_room: Optional[Dict[str, str]] = None,
    ):
        self.path = path
        self.plan = list(plan)
        names = [p[0] for p in self.plan]
        if len(set(names)) != len(names) or "__metadata__" in names:
            raise ValueError("tensor names must be unique and not '__metadata__'")
        for name, dtype, _shape, _ in self.plan:
            if dtype not in DTYPES:
                raise TypeError(f"unknown safetensors dtype {dtype!r} for {name}")
        bound = sum(int(p[3]) for p in self.plan)
        worst = {
            name: {
                "dtype": dtype,
                "shape": list(shape) if shape is not None else [bound],
                "data_offsets": [bound, bound],
            }
            for name, dtype, shape, _ in self.plan
        }
        self.room = len(self._header_bytes(worst, metadata_room))
        self.room += -(8 + self.room) % _ALIGN
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close() / abort(): the writer spans many calls)
        self._file.seek(8 + self.room)
        self._next = 0
        self._offset = 0
        self._entries: Dict[str, Dict[str, object]] = {}

    @staticmethod
    def _header_bytes(entries: Dict[str, Dict[str, object]], metadata: Optional[Dict[str, str]]) -> bytes:
        header: Dict[str, object] = {}
        if metadata:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                raise TypeError("safetensors metadata must map strings to strings")
            header["__metadata__"] = dict(metadata)
        header.update(entries)
        return json.dumps(header, separators=(",", ":")).encode("utf-8")

    def write(self, name: str, data: np.ndarray) -> int:
        """Write the next tensor of the plan (its bytes, C order); returns its size in bytes."""
        if self._next >= len(self.plan) or self.plan[self._next][0] != name:
            expected = self.plan[self._next][0] if self._next < len(self.plan) else None
            raise ValueError(f"tensor {name!r} written out of plan order (expected {expected!r})")
        _, dtype, shape, max_nbytes = self.plan[self._next]
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        if shape is None:
            if data.size > max_nbytes:
                raise ValueError(f"{name}: {data.size} bytes, more than the {max_nbytes} planned")
            shape = (data.size // DTYPES[dtype][1],)
        count = 1
        for n in shape:
            count *= int(n)
        if data.size != count * DTYPES[dtype][1]:
            raise ValueError(
                f"{name}: got {data.size} bytes, dtype {dtype} and shape {tuple(shape)} need {count * DTYPES[dtype][1]}"
            )
        self._file.write(memoryview(data))
        self._entries[name] = {
            "dtype": dtype,
            "shape": [int(n) for n in shape],
            "data_offsets": [self._offset, self._offset + data.size],
        }
        self._offset += data.size
        self._next += 1
        return data.size

    def close(self, metadata: Optional[Dict[str, str]] = None) -> int:
        """Write the header (after every planned tensor); returns the file size."""
        try:
            if self._next != len(self.plan):
                raise ValueError(f"{len(self.plan) - self._next} planned tensor(s) were not written")
            text = self._header_bytes(self._entries, metadata)
            if len(text) > self.room:
                raise ValueError("the header outgrew the room reserved for it (metadata_room too small)")
            text += b" " * (self.room - len(text))
            size = self._file.tell()
            self._file.seek(0)
            self._file.write(len(text).to_bytes(8, "little"))
            self._file.write(text)
        finally:
            self._file.close()
        return size

    def abort(self) -> None:
        """Close without a header (the caller removes the file)."""
        self._file.close()


def write_safetensors(
    path: str,
    entries: Sequence[TensorEntry],
    metadata: Optional[Dict[str, str]] = None,
    *,
    progress: Optional[Callable[[int], None]] = None,
) -> int:
    """Write ``entries`` (sizes known) to ``path`` in this order, one tensor in memory at a time; returns the size.

    Tensors of larger elements first keep every tensor naturally aligned (the data starts 64-byte aligned).
    ``progress(nbytes)`` is called after each tensor. Written straight to ``path``: callers that must leave no
    partial file write to a temporary name and rename it.
    """
    writer = SafetensorsWriter(path, [(e.name, e.dtype, tuple(e.shape), e.nbytes) for e in entries], metadata)
    try:
        for e in entries:
            n = writer.write(e.name, e.data())
            if progress is not None:
                progress(n)
    except BaseException:
        writer.abort()
        raise
    return writer.close(metadata)


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    begin: int  # absolute file offsets
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
