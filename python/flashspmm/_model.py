"""Many compressed matrices (a whole model) in one file: save_model() / load_model().

File layout (little-endian; docs/FORMATS.md, "Model files"):

    bytes 0-7    magic b"FSPMPACK"
    bytes 8-15   u64: length L of the index
    bytes 16-    the index: UTF-8 JSON {"version": 1, "matrices": [{"name", "offset", "nbytes"}, ...]}
    then         each blob, unchanged, at its offset (from the file start, a multiple of 64)

Every blob is validated like a single-matrix file when it is loaded.
"""

import json
import os
from collections.abc import Mapping

import numpy as np

from ._matrix import SparseMatrix
from ._native import Error, lib

__all__ = ["save_model", "load_model"]

_MAGIC = b"FSPMPACK"
_ALIGN = 64


def _corrupt(path, why):
    return Error(lib.FSPMM_ERR_CORRUPT_BUFFER, f"{os.fspath(path)} is not a valid flashspmm model file: {why}")


def save_model(path, matrices):
    """Write ``matrices`` (a mapping name -> :class:`SparseMatrix`, on any device) to one file at ``path``."""
    if not isinstance(matrices, Mapping):
        raise TypeError("matrices must be a mapping of names to SparseMatrix objects, e.g. a dict")
    entries, blobs = [], []
    offset = 0  # relative to the end of the index; fixed up below
    for name, matrix in matrices.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"matrix names must be non-empty strings, got {name!r}")
        if not isinstance(matrix, SparseMatrix):
            raise TypeError(f"matrices[{name!r}] must be a SparseMatrix, got {type(matrix).__qualname__}")
        blob = matrix.blob()
        entries.append({"name": name, "offset": offset, "nbytes": int(blob.size)})
        blobs.append(blob)
        offset += -(-blob.size // _ALIGN) * _ALIGN
    # The index size depends on the offsets it holds: grow the reserved room until it fits.
    room = _ALIGN
    while True:
        index = [dict(e, offset=e["offset"] + room) for e in entries]
        text = json.dumps({"version": 1, "matrices": index}).encode()
        if 16 + len(text) <= room:
            break
        room = -(-(16 + len(text)) // _ALIGN) * _ALIGN
    with open(os.fspath(path), "wb") as f:
        f.write(_MAGIC + len(text).to_bytes(8, "little") + text)
        f.write(b"\0" * (room - 16 - len(text)))
        for entry, blob in zip(index, blobs):
            f.seek(entry["offset"])
            f.write(blob.tobytes())
        f.truncate(room + offset)


def load_model(path, *, device="cpu", names=None):
    """Read a file written by :func:`save_model`: a dict name -> :class:`SparseMatrix` on ``device``.

    ``names`` (optional) loads only those matrices. A truncated or corrupted file raises
    :class:`flashspmm.Error` (``FSPMM_ERR_CORRUPT_BUFFER``).
    """
    with open(os.fspath(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        if len(head) < 16 or head[:8] != _MAGIC:
            raise _corrupt(path, "it does not start with the FSPMPACK magic")
        length = int.from_bytes(head[8:], "little")
        if length > size - 16:
            raise _corrupt(path, f"the index says {length} bytes but the file holds {size} in all")
        try:
            index = json.loads(f.read(length).decode())
            entries = {e["name"]: (int(e["offset"]), int(e["nbytes"])) for e in index["matrices"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise _corrupt(path, f"unreadable index ({exc})") from None
        if index.get("version") != 1:
            raise _corrupt(path, f"unknown version {index.get('version')!r}")
        wanted = list(entries) if names is None else list(names)
        out = {}
        for name in wanted:
            if name not in entries:
                raise KeyError(f"{name!r} is not in {os.fspath(path)}; it holds {sorted(entries)}")
            offset, nbytes = entries[name]
            if offset < 16 + length or nbytes < 0 or offset + nbytes > size:
                raise _corrupt(path, f"matrix {name!r} lies outside the file (offset {offset}, {nbytes} bytes)")
            f.seek(offset)
            blob = np.empty(max(nbytes, 1), dtype=np.uint8)
            got = f.readinto(memoryview(blob)[:nbytes]) if nbytes else 0
            out[name] = SparseMatrix._from_validated_host(blob[:got]).to(device)
    return out
