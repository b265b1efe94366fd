"""The golden blobs of tests/data (written once by tools/make_golden.py): today's library reads each one back to
the matrix it holds and writes the same bytes for that matrix, and refuses every one with a flipped byte.

A failure here means the blob format changed. That is allowed only with a new version number and a reader
that keeps these files loading (docs/FORMATS.md, "Compatibility"); never regenerate the files to pass.
"""

import json
import os

import numpy as np
import pytest

import flashspmm
from _toolkit import assert_bits_equal, checksum

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
with open(os.path.join(DATA, "golden.json"), encoding="utf-8") as _f:
    MANIFEST = json.load(_f)
BLOBS = {entry["file"]: entry for entry in MANIFEST["blobs"]}


def read(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def golden_input(entry):
    """The matrix the blob was made from (uint16 bits, -0.0 entries included)."""
    return np.load(os.path.join(DATA, entry["dense"]))


def stored(bits):
    """What a blob holds for an input: -0.0 is not stored and comes back as +0.0."""
    out = bits.copy()
    out[out == 0x8000] = 0
    return out


def assert_refused(data, what):
    with pytest.raises(flashspmm.Error) as info:
        flashspmm.SparseMatrix.from_blob(data)
    assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER", f"{what}: {info.value}"
    assert len(info.value.detail) > 10, f"{what}: no useful message: {info.value.detail!r}"


def test_the_set_is_complete():
    """Both formats, both dtypes, the odd shapes and every special value are covered, and the set is small."""
    kinds = {(e["format"], e["dtype"]) for e in BLOBS.values()}
    assert kinds == {(f, d) for f in ("bitmap", "tiled_csl") for d in ("float16", "bfloat16")}
    shapes = {tuple(e["shape"]) for e in BLOBS.values()}
    assert {(1, 1), (63, 65), (130, 200), (64, 64)} <= shapes
    assert any(e["nnz"] == 0 for e in BLOBS.values()), "no all-zero matrix"
    assert any(e["nnz"] == e["shape"][0] * e["shape"][1] > 1 for e in BLOBS.values()), "no fully dense matrix"
    for dtype, (inf, sub) in {"float16": (0x7C00, 0x03FF), "bfloat16": (0x7F80, 0x007F)}.items():
        bits = np.concatenate([golden_input(e).ravel() for e in BLOBS.values() if e["dtype"] == dtype])
        magnitude = bits & 0x7FFF
        assert np.any(magnitude > inf), f"{dtype}: no NaN"
        assert np.any(bits == inf) and np.any(bits == (inf | 0x8000)), f"{dtype}: no +Inf / -Inf"
        assert np.any((magnitude >= 1) & (magnitude <= sub)), f"{dtype}: no subnormal"
        assert np.any(bits == 0x8000), f"{dtype}: no -0.0"
    total = sum(os.path.getsize(os.path.join(DATA, name)) for name in os.listdir(DATA))
    assert total < 1 << 20, f"tests/data holds {total} bytes; keep the golden set small"


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_golden_blob_loads_and_reencodes(tmp_path, name):
    entry = BLOBS[name]
    data = read(name)
    assert len(data) == entry["nbytes"]
    W = flashspmm.load(os.path.join(DATA, name))  # validated by fspmm_validate_host
    assert (W.format, W.dtype, list(W.shape), W.nnz, W.nbytes) == (
        entry["format"],
        entry["dtype"],
        entry["shape"],
        entry["nnz"],
        entry["nbytes"],
    )
    bits = golden_input(entry)
    assert_bits_equal(W.to_dense(raw=True), stored(bits), f"{name} decoded")
    # today's encoder writes the same bytes, from the input and from the decoded matrix
    for source in (bits, stored(bits)):
        again = flashspmm.compress(source, format=entry["format"], dtype=entry["dtype"]).blob().tobytes()
        assert again == data, f"{name}: today's encoder writes different bytes ({len(again)} vs {len(data)})"
    if entry["format"] == "bitmap":  # smallest picks bitmap on a tie, and each golden is as small in one format
        auto = flashspmm.compress(bits, format="smallest", dtype=entry["dtype"])
        other = BLOBS[name.replace("bitmap", "tiled_csl", 1)]
        assert auto.format == ("bitmap" if entry["nbytes"] <= other["nbytes"] else "tiled_csl")
    # save() writes the file's bytes; from_blob and pickle keep them
    W.save(tmp_path / "again.fspmm")
    assert (tmp_path / "again.fspmm").read_bytes() == data
    assert flashspmm.SparseMatrix.from_blob(data).blob().tobytes() == data


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_golden_header_fields(name):
    """The header says what the manifest says, in the places docs/FORMATS.md gives (independent of the
    library's header struct)."""
    entry = BLOBS[name]
    data = read(name)
    assert data[:4] == b"FSPM"
    assert int.from_bytes(data[4:6], "little") == MANIFEST["blob_version"] == 1
    assert data[6] == {"tiled_csl": 1, "bitmap": 2}[entry["format"]]
    assert data[7] == {"float16": 1, "bfloat16": 2}[entry["dtype"]]
    assert int.from_bytes(data[8:16], "little") == entry["shape"][0]
    assert int.from_bytes(data[16:24], "little") == entry["shape"][1]
    assert int.from_bytes(data[24:32], "little") == entry["nnz"]
    assert int.from_bytes(data[88:96], "little") == len(data)
    assert int.from_bytes(data[96:104], "little") == checksum(data[128:])
    assert int.from_bytes(data[120:128], "little") == checksum(data[:120])


@pytest.mark.parametrize("name", sorted(BLOBS))
def test_flipped_byte_is_refused(rng, name):
    """Every byte of the header and the offset table, and a sample of the tile data: a flip of any bit
    pattern is reported as FSPMM_ERR_CORRUPT_BUFFER (the checksums cover every byte of the blob)."""
    data = read(name)
    data_offset = int.from_bytes(data[72:80], "little")
    positions = set(range(data_offset)) | {len(data) - 1}
    if len(data) > data_offset:
        positions |= set(int(p) for p in rng.integers(data_offset, len(data), size=min(256, len(data) - data_offset)))
    for at in sorted(positions):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[at] ^= flip
            assert_refused(bytes(bad), f"{name}: byte {at} ^ {flip:#04x} was accepted")
    assert_refused(data[:-16], f"{name} truncated by 16 bytes")


@pytest.mark.parametrize("key", ["model", "model_v2"])
def test_golden_model_file(tmp_path, key):
    """model-v1.fspmm was written by flashspmm 0.1 (model file version 1), model-v2.fspmm by 0.2 (version 2, the
    index checksummed): both keep loading; today's writer makes the version-2 file again byte for byte."""
    model = MANIFEST[key]
    path = os.path.join(DATA, model["file"])
    layers = flashspmm.load_model(path)
    assert sorted(layers) == sorted(model["matrices"])
    for name, blob_file in model["matrices"].items():
        assert layers[name].blob().tobytes() == read(blob_file), name
        assert_bits_equal(layers[name].to_dense(raw=True), stored(golden_input(BLOBS[blob_file])), name)
    some = sorted(model["matrices"])[::2]
    assert sorted(flashspmm.load_model(path, names=some)) == some
    # today's writer makes the same version-2 file from the same matrices, in the same order
    again = tmp_path / "model.fspmm"
    flashspmm.save_model(again, {name: flashspmm.load(os.path.join(DATA, f)) for name, f in model["matrices"].items()})
    assert again.read_bytes() == read(MANIFEST["model_v2"]["file"])


def _model_layout(key="model_v2"):
    """(file bytes, index length, index entries, index start) of a golden model file (version 1 or 2)."""
    data = read(MANIFEST[key]["file"])
    length = int.from_bytes(data[8:16], "little")
    start = 16 if MANIFEST[key].get("file_version", 1) == 1 else 32
    index = json.loads(data[start : start + length])
    return data, length, index["matrices"], start


@pytest.mark.parametrize("key", ["model", "model_v2"])
def test_model_file_blob_flips_are_refused(rng, tmp_path, key):
    """A flipped byte inside any blob of the model file: loading that matrix fails with CORRUPT_BUFFER."""
    data, _, entries, _ = _model_layout(key)
    path = tmp_path / "model.fspmm"
    for entry in entries:
        for at in rng.integers(entry["offset"], entry["offset"] + entry["nbytes"], size=8):
            bad = bytearray(data)
            bad[int(at)] ^= 0x20
            path.write_bytes(bytes(bad))
            with pytest.raises(flashspmm.Error) as info:
                flashspmm.load_model(path, names=[entry["name"]])
            assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER", (entry["name"], int(at))


def test_model_file_index_flips_are_refused(tmp_path):
    """Version 2: any flipped bit in the version word, the reserved bytes, the checksum or the index is refused."""
    data, length, _, start = _model_layout("model_v2")
    path = tmp_path / "model.fspmm"
    accepted = []
    for at in range(16, start + length):
        bad = bytearray(data)
        bad[at] ^= 0x01
        path.write_bytes(bytes(bad))
        try:
            flashspmm.load_model(path)
        except flashspmm.Error as exc:
            assert exc.status == "FSPMM_ERR_CORRUPT_BUFFER", (at, exc)
            continue
        accepted.append(at)
    assert not accepted, f"{len(accepted)} index bytes flipped and still loaded, e.g. at {accepted[:5]}"
