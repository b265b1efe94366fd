"""Many compressed matrices (a whole model) in one file: save_model() / load_model() / is_model_file().

File layout, version 2 (little-endian; docs/FORMATS.md, "Model files", specifies it byte for byte):

    bytes 0-7     magic b"FSPMPACK"
    bytes 8-15    u64 L: length of the index in bytes
    bytes 16-19   u32 file version: 2
    bytes 20-23   u32 reserved: 0
    bytes 24-31   u64 checksum of the index (the blob checksum of docs/FORMATS.md over the L index bytes
                  followed by zero bytes up to a multiple of 8)
    bytes 32-     the index: UTF-8 JSON {"version": 2, "matrices": [{"name", "offset", "nbytes"}, ...]}
    then          each blob, unchanged, at its offset (from the file start, a multiple of 64)

Version 1 files (no version word and no checksum: the index starts at byte 16) are still read. The index is
validated before anything is loaded (names, offsets, sizes, overlaps), and every blob is validated like a
single-matrix file when it is loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any, Union

import numpy as np

from ._matrix import SparseMatrix
from ._native import Error, lib

__all__ = ["save_model", "load_model", "is_model_file"]

MAGIC = b"FSPMPACK"
VERSION = 2  # the version save_model writes
_ALIGN = 64  # blob offsets (and the file size) are multiples of this: a memory-mapped blob is aligned for the GPU
_HEAD_V1 = 16  # magic, index length
_HEAD_V2 = 32  # magic, index length, version, reserved, index checksum
_V1_MARK = b'{"ve'  # a version-1 file holds its index at byte 16, and the index starts {"version": 1, ...
_ENTRY_KEYS = frozenset({"name", "offset", "nbytes"})

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]


def is_model_file(prefix: bytes) -> bool:
    """True if ``prefix`` (the first bytes of a file, at least 8) starts like a model file of :func:`save_model`.

    Accepts any bytes-like object (bytes, bytearray, memoryview, numpy uint8 array). It looks at the magic only,
    so that a caller can tell a model file from a single-matrix blob before validating either.
    """
    return bytes(prefix[: len(MAGIC)]) == MAGIC


def index_checksum(data: bytes) -> int:
    """The blob checksum of docs/FORMATS.md ("Checksum") over ``data`` zero-padded to a multiple of 8 bytes."""
    words = np.frombuffer(bytes(data) + bytes(-len(data) % 8), dtype="<u8").astype(np.uint64)
    index = np.arange(words.size, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the definition
        z = words + index * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))


def _round_up(n: int, align: int = _ALIGN) -> int:
    return -(-n // align) * align


def _corrupt(label: str, why: str) -> Error:
    return Error(lib.FSPMM_ERR_CORRUPT_BUFFER, f"{label} is not a valid flashspmm model file: {why}")


def _label(file: Any) -> str:
    """How error messages name the file: its path, or the file object's name."""
    if hasattr(file, "read") or hasattr(file, "write"):
        name = getattr(file, "name", None)
        return os.fspath(name) if isinstance(name, (str, os.PathLike)) else "the model file object"
    return os.fspath(file)


# ---------------------------------------------------------------------------------------------- writing


def save_model(file: PathOrFile, matrices: Mapping[str, SparseMatrix]) -> None:
    """Write ``matrices`` (a mapping name -> :class:`SparseMatrix`, on any device) to one model file.

    ``file`` is a path or a binary file object opened for writing (the model starts at its current position;
    it is not closed). Every argument is checked and every blob fetched before the file is opened, so nothing
    is written when an argument is wrong.
    """
    if not isinstance(matrices, Mapping):
        raise TypeError("matrices must be a mapping of names to SparseMatrix objects, e.g. a dict")
    names, blobs = [], []
    for name, matrix in matrices.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"matrix names must be non-empty strings, got {name!r}")
        if not isinstance(matrix, SparseMatrix):
            raise TypeError(f"matrices[{name!r}] must be a SparseMatrix, got {type(matrix).__qualname__}")
        names.append(name)
        blobs.append(matrix.blob())  # a GPU matrix is copied to the host here, before the file is touched
    # The index size depends on the offsets it holds: grow the room reserved for it until it fits.
    room = _ALIGN
    while True:
        index, offset = [], room
        for name, blob in zip(names, blobs):
            index.append({"name": name, "offset": offset, "nbytes": int(blob.size)})
            offset += _round_up(blob.size)
        text = json.dumps({"version": VERSION, "matrices": index}).encode("utf-8")
        if _HEAD_V2 + len(text) <= room:
            break
        room = _round_up(_HEAD_V2 + len(text))
    head = (
        MAGIC
        + len(text).to_bytes(8, "little")
        + VERSION.to_bytes(4, "little")
        + bytes(4)
        + index_checksum(text).to_bytes(8, "little")
    )
    with _writer(file) as f:
        f.write(head + text + bytes(room - _HEAD_V2 - len(text)))
        for blob in blobs:
            f.write(blob.tobytes())
            f.write(bytes(_round_up(blob.size) - blob.size))  # the next blob starts 64-byte aligned


@contextlib.contextmanager
def _writer(file: PathOrFile) -> Iterator[IO[bytes]]:
    if hasattr(file, "write"):
        yield file  # the caller's file object: left open
        return
    with open(os.fspath(file), "wb") as f:
        yield f


# ---------------------------------------------------------------------------------------------- reading


def load_model(file: PathOrFile, *, device: str = "cpu", names: Iterable[str] | None = None) -> dict[str, SparseMatrix]:
    """Read a model file written by :func:`save_model`: a dict name -> :class:`SparseMatrix` on ``device``.

    ``file`` is a path or a binary file object (the model starts at its current position; a stream that
    cannot seek is read to its end). ``names`` (optional) loads only those matrices, in that order; a name the
    file does not hold raises ``KeyError``. Version 1 and 2 files are read. A truncated or corrupted file, or
    an index that is inconsistent (duplicate names, overlapping or out-of-bounds blobs), raises
    :class:`flashspmm.Error` with status ``FSPMM_ERR_CORRUPT_BUFFER`` and a message naming the problem, before
    any matrix is loaded.
    """
    if isinstance(names, (str, bytes)):
        raise TypeError(f"names must be a list of matrix names, not one string: names=[{names!r}]")
    label = _label(file)
    with _reader(file) as (f, base, size):
        entries = _read_index(f, base, size, label)
        wanted = list(entries) if names is None else list(names)
        for name in wanted:
            if name not in entries:
                raise KeyError(f"{name!r} is not in {label}; it holds {sorted(entries)}")
        out = {}
        for name in wanted:
            offset, nbytes = entries[name]
            blob = _read_exact(f, base + offset, nbytes)
            if blob.size < nbytes:
                raise _corrupt(label, f"matrix {name!r}: the file ends inside its blob")
            try:
                matrix = SparseMatrix.from_blob(blob, device=device)
            except Error as exc:
                if exc.status != "FSPMM_ERR_CORRUPT_BUFFER":
                    raise
                raise _corrupt(label, f"matrix {name!r}: {exc.detail or exc}") from None
            if matrix.nbytes != nbytes:
                raise _corrupt(label, f"matrix {name!r}: the index gives {nbytes} bytes, its blob is {matrix.nbytes}")
            out[name] = matrix
    return out


@contextlib.contextmanager
def _reader(file: PathOrFile) -> Iterator[tuple[IO[bytes], int, int]]:
    """(file object, position where the model starts, bytes from there to the end)."""
    if hasattr(file, "read"):
        seekable = getattr(file, "seekable", None)
        if seekable is not None and seekable():
            base = file.tell()
            size = file.seek(0, io.SEEK_END) - base
            file.seek(base)
            yield file, base, size
        else:  # a pipe or socket: read it all
            data = file.read()
            yield io.BytesIO(data), 0, len(data)
        return
    with open(os.fspath(file), "rb") as f:
        yield f, 0, os.fstat(f.fileno()).st_size


def _read_exact(f: IO[bytes], position: int, nbytes: int) -> np.ndarray:
    """Up to ``nbytes`` bytes from ``position``, as a numpy uint8 array (shorter at the end of the file)."""
    f.seek(position)
    out = np.empty(nbytes, dtype=np.uint8)
    view, got = memoryview(out), 0
    while got < nbytes:
        chunk = f.readinto(view[got:]) if hasattr(f, "readinto") else None
        if chunk is None:  # no readinto: fall back to read()
            data = f.read(nbytes - got)
            view[got : got + len(data)] = data
            chunk = len(data)
        if not chunk:
            break
        got += chunk
    return out[:got]


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"an object of the index repeats the key(s) {duplicates}")
    return dict(pairs)


def _read_index(f: IO[bytes], base: int, size: int, label: str) -> dict[str, tuple[int, int]]:
    """Read and validate the index: name -> (offset, nbytes), in the index's order."""
    head = _read_exact(f, base, _HEAD_V2).tobytes()
    if len(head) < 8 or not is_model_file(head):
        raise _corrupt(label, "it does not start with the FSPMPACK magic")
    if len(head) < _HEAD_V1:
        raise _corrupt(label, f"the file ends after {len(head)} bytes, inside its header")
    length = int.from_bytes(head[8:16], "little")
    if head[16:20] == _V1_MARK:
        version, header_bytes, stored_checksum = 1, _HEAD_V1, None
    else:
        if len(head) < _HEAD_V2:
            raise _corrupt(label, f"the file ends after {len(head)} bytes, inside its {_HEAD_V2}-byte header")
        version = int.from_bytes(head[16:20], "little")
        if version != 2:
            raise _corrupt(label, f"unknown model file version {version} (this flashspmm reads versions 1 and 2)")
        if head[20:24] != bytes(4):
            raise _corrupt(label, "the reserved header bytes 20-23 are not zero")
        header_bytes, stored_checksum = _HEAD_V2, int.from_bytes(head[24:32], "little")
    if length == 0 or length > size - header_bytes:
        raise _corrupt(label, f"the index says {length} bytes but the file holds {size} in all")
    text = _read_exact(f, base + header_bytes, length).tobytes()
    if len(text) < length:
        raise _corrupt(label, "the file ends inside the index")
    if stored_checksum is not None:
        actual = index_checksum(text)
        if actual != stored_checksum:
            raise _corrupt(
                label,
                f"index checksum mismatch (stored {stored_checksum:#018x}, computed {actual:#018x}): "
                "the index is corrupted",
            )
    try:
        index = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _corrupt(label, f"unreadable index ({exc})") from None
    if not isinstance(index, dict) or set(index) != {"version", "matrices"}:
        raise _corrupt(label, 'the index must be an object with the keys "version" and "matrices" only')
    if index["version"] != version or type(index["version"]) is not int:
        raise _corrupt(label, f"the index says version {index['version']!r} in a version {version} file")
    if not isinstance(index["matrices"], list):
        raise _corrupt(label, '"matrices" in the index must be a list')
    return _check_entries(index["matrices"], header_bytes + length, size, label)


def _check_entries(items: list[Any], index_end: int, size: int, label: str) -> dict[str, tuple[int, int]]:
    """Validate the index entries: unique non-empty names, blobs 64-byte aligned after the index, inside the
    file, non-empty and non-overlapping."""
    entries: dict[str, tuple[int, int]] = {}
    for i, e in enumerate(items):
        if not isinstance(e, dict) or set(e) != _ENTRY_KEYS:
            raise _corrupt(label, f'index entry {i} must be an object with the keys "name", "offset", "nbytes"')
        name, offset, nbytes = e["name"], e["offset"], e["nbytes"]
        if not isinstance(name, str) or not name:
            raise _corrupt(label, f"index entry {i} has the name {name!r}; names are non-empty strings")
        if name in entries:
            raise _corrupt(
                label, f"the name {name!r} appears twice in the index (entries {list(entries).index(name)} and {i})"
            )
        if type(offset) is not int or type(nbytes) is not int:
            raise _corrupt(label, f"matrix {name!r}: offset and nbytes must be integers, got {offset!r}, {nbytes!r}")
        if nbytes <= 0:
            raise _corrupt(label, f"matrix {name!r} has nbytes {nbytes}; a blob is never empty")
        if offset % _ALIGN:
            raise _corrupt(label, f"matrix {name!r} is at offset {offset}, which is not a multiple of {_ALIGN}")
        if offset < index_end or offset + nbytes > size:
            raise _corrupt(
                label,
                f"matrix {name!r} lies outside the file's blob area (offset {offset}, {nbytes} bytes; the "
                f"index ends at byte {index_end} and the file holds {size} bytes)",
            )
        entries[name] = (offset, nbytes)
    by_offset = sorted(entries.items(), key=lambda item: item[1][0])
    for (name_a, (off_a, n_a)), (name_b, (off_b, _)) in zip(by_offset, by_offset[1:]):
        if off_b < off_a + n_a:
            raise _corrupt(
                label,
                f"matrices {name_a!r} (bytes {off_a}..{off_a + n_a - 1}) and {name_b!r} (from byte {off_b}) overlap",
            )
    return entries
