"""save / load / from_blob, and corrupted or truncated blobs (checked in a subprocess, so a crash fails)."""

import json
import struct

import numpy as np
import pytest

import flashspmm
from _toolkit import checksum, sparse_bits

LOADER = r"""
import json, sys
import flashspmm
try:
    W = flashspmm.load(sys.argv[1])
except flashspmm.Error as e:
    print(json.dumps({"error": e.status, "message": str(e)}))
    sys.exit(0)
# It loaded: use it, so that a blob the validator let through but which is broken shows up as a crash.
W.to_dense(raw=True)
print(json.dumps({"loaded": True, "nnz": W.nnz, "nbytes": W.nbytes}))
"""


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_save_load_round_trip(rng, tmp_path, fmt):
    bits, expected = sparse_bits(rng, 130, 150, "float16", 0.75)
    W = flashspmm.compress(bits.view(np.float16), format=fmt)
    path = tmp_path / "w.fspmm"
    W.save(path)
    assert path.read_bytes() == W.blob().tobytes()
    W2 = flashspmm.load(path)
    assert (W2.shape, W2.dtype, W2.format, W2.nnz, W2.nbytes, W2.device) == (
        W.shape,
        W.dtype,
        W.format,
        W.nnz,
        W.nbytes,
        "cpu",
    )
    assert np.array_equal(W2.to_dense(raw=True), expected)
    W3 = flashspmm.load(str(path), device="cpu")
    assert np.array_equal(W3.blob(), W.blob())
    with open(path, "rb") as f:
        W4 = flashspmm.SparseMatrix.from_blob(f.read())
    assert np.array_equal(W4.blob(), W.blob())
    with open(tmp_path / "w2.fspmm", "wb") as f:  # save to a file object
        W.save(f)
    assert (tmp_path / "w2.fspmm").read_bytes() == path.read_bytes()


def test_trailing_bytes_are_ignored(rng, tmp_path):
    bits, expected = sparse_bits(rng, 64, 64, "float16", 0.5)
    W = flashspmm.compress(bits.view(np.float16))
    path = tmp_path / "w.fspmm"
    path.write_bytes(W.blob().tobytes() + b"\0" * 100)
    W2 = flashspmm.load(path)
    assert W2.nbytes == W.nbytes
    assert np.array_equal(W2.to_dense(raw=True), expected)


def test_repr_and_properties(rng):
    bits, _ = sparse_bits(rng, 10, 20, "float16", 0.5, specials=False)
    W = flashspmm.compress(bits.view(np.float16), format="bitmap")
    text = repr(W)
    for part in ("shape=(10, 20)", "float16", "bitmap", "nnz=100", "device=cpu"):
        assert part in text
    assert W.density == pytest.approx(0.5)
    assert W.to("cpu") is W


def _blob(rng, fmt):
    bits, _ = sparse_bits(rng, 200, 150, "float16", 0.7)
    return bytearray(flashspmm.compress(bits.view(np.float16), format=fmt).blob().tobytes())


def _header(blob):
    keys = ("data_offset", "data_bytes")
    return dict(zip(keys, struct.unpack_from("<QQ", blob, 72)))


def _flip(blob, at):
    blob = bytearray(blob)
    blob[at] ^= 0x5A
    return blob


def _reseal(blob):
    """Recompute both checksums, so only the structural checks can catch the change."""
    blob = bytearray(blob)
    struct.pack_into("<Q", blob, 96, checksum(blob[128:]))
    struct.pack_into("<Q", blob, 120, checksum(blob[:120]))
    return blob


def _corruptions(blob, rng):
    h = _header(blob)
    do, db = h["data_offset"], h["data_bytes"]
    n = len(blob)
    cases = {
        "empty": b"",
        "truncated-100": blob[:100],
        "truncated-header-only": blob[:128],
        "truncated-in-offsets": blob[:136],
        "truncated-before-data": blob[:do],
        "truncated-last-byte": blob[:-1],
        "truncated-16": blob[:-16],
        "random-junk": bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
        "junk-with-magic": b"FSPM" + bytes(rng.integers(0, 256, 4092, dtype=np.uint8)),
        "zeros": bytes(n),
    }
    for name, at in [
        ("magic", 0),
        ("version", 4),
        ("format", 6),
        ("dtype", 7),
        ("M", 8),
        ("K", 16),
        ("nnz", 24),
        ("tile_m", 32),
        ("tiles_k", 48),
        ("offsets_offset", 56),
        ("data_offset", 72),
        ("total_bytes", 88),
        ("payload_checksum", 96),
        ("max_tile_bytes", 104),
        ("reserved", 110),
        ("header_checksum", 124),
    ]:
        cases[f"header-{name}"] = _flip(blob, at)
    cases["offsets-first"] = _flip(blob, 128)
    cases["offsets-second"] = _flip(blob, 136 + 1)
    cases["data-first"] = _flip(blob, do)
    cases["data-middle"] = _flip(blob, do + db // 2)
    cases["data-last"] = _flip(blob, n - 1)
    # forged: checksums recomputed after the change
    forged = bytearray(blob)
    struct.pack_into("<q", forged, 8, struct.unpack_from("<q", forged, 8)[0] * 2)
    cases["forged-M"] = _reseal(forged)
    forged = bytearray(blob)
    struct.pack_into("<q", forged, 24, struct.unpack_from("<q", forged, 24)[0] + 1)
    cases["forged-nnz"] = _reseal(forged)
    forged = bytearray(blob)
    struct.pack_into("<Q", forged, 136, 1 << 40)
    cases["forged-offset-huge"] = _reseal(forged)
    forged = bytearray(blob)
    a, b = struct.unpack_from("<QQ", forged, 128)
    struct.pack_into("<QQ", forged, 128, b, a)  # tile 0 gets a negative size
    cases["forged-offsets-decreasing"] = _reseal(forged)
    forged = bytearray(blob)
    struct.pack_into("<Q", forged, 128, 8)  # first tile does not start at 0
    cases["forged-offset-start"] = _reseal(forged)
    return cases


# names only; the blobs are built per test
CASES = sorted(_corruptions(bytearray(b"\0" * 2048), np.random.default_rng(0)).keys())


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("case", CASES)
def test_corrupt_files_raise_error(rng, tmp_path, run_py, fmt, case):
    data = _corruptions(_blob(rng, fmt), rng)[case]
    path = tmp_path / "bad.fspmm"
    path.write_bytes(bytes(data))
    proc = run_py(LOADER, path)
    assert proc.returncode == 0, f"the loader crashed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" in result, f"a {case} blob was accepted: {result}"
    assert result["error"] == "FSPMM_ERR_CORRUPT_BUFFER", result  # README: truncated or corrupted blobs
    detail = result["message"].split(":", 1)[-1].strip()
    assert len(detail) > 10, f"no useful message: {result['message']!r}"


def test_corrupt_blob_in_process_raises(rng):
    blob = _blob(rng, "bitmap")
    with pytest.raises(flashspmm.Error) as info:
        flashspmm.SparseMatrix.from_blob(_flip(blob, 8))
    assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER"
    assert isinstance(info.value, RuntimeError)
    assert "FSPMM_ERR_CORRUPT_BUFFER" in str(info.value)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        flashspmm.load("/nonexistent/flashspmm/w.fspmm")


def test_pickle_round_trip(rng):
    import pickle

    bits, expected = sparse_bits(rng, 40, 90, "float16", 0.6)
    W = flashspmm.compress(bits.view(np.float16), format="tiled_csl")
    W2 = pickle.loads(pickle.dumps(W))
    assert W2.format == "tiled_csl" and W2.device == "cpu"
    assert np.array_equal(W2.to_dense(raw=True), expected)
