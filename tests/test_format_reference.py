"""The library's blobs against docs/FORMATS.md, through the document's own reader (tests/_format_reference.py,
which imports nothing from flashspmm): the golden files, fresh random blobs of both formats and dtypes, and the
document's worked example byte for byte."""

import json
import os
import re
import struct

import numpy as np
import pytest

import _format_reference as ref
import flashspmm
from _toolkit import assert_bits_equal, checksum, sparse_bits

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
FORMATS_MD = os.path.join(HERE, os.pardir, "docs", "FORMATS.md")
with open(os.path.join(DATA, "golden.json"), encoding="utf-8") as _f:
    GOLDEN = {entry["file"]: entry for entry in json.load(_f)["blobs"]}


def decode_both(blob):
    """(reference header, reference dense, library dense) of one blob."""
    data = bytes(blob)
    header, dense = ref.decode(data)
    W = flashspmm.SparseMatrix.from_blob(data)
    return header, dense, W.to_dense(raw=True)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_reference_reads_golden(name):
    entry = GOLDEN[name]
    with open(os.path.join(DATA, name), "rb") as f:
        data = f.read()
    header, dense, lib_dense = decode_both(data)
    assert ref.FORMATS[header["format"]] == entry["format"] and ref.DTYPES[header["dtype"]] == entry["dtype"]
    assert [header["M"], header["K"]] == entry["shape"] and header["nnz"] == entry["nnz"]
    expect = np.load(os.path.join(DATA, entry["dense"]))
    expect[expect == 0x8000] = 0
    assert_bits_equal(dense, expect, f"{name}: reference decoder vs the stored matrix")
    assert_bits_equal(lib_dense, dense, f"{name}: to_dense vs the reference decoder")


SHAPES = [(1, 1), (1, 130), (129, 1), (63, 65), (64, 64), (65, 127), (130, 200), (200, 333)]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.995, 1.0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_reference_reads_fresh_blobs(rng, fmt, dtype, shape, sparsity):
    bits, expected = sparse_bits(rng, *shape, dtype, sparsity)
    W = flashspmm.compress(bits, format=fmt, dtype=dtype)
    header, dense = ref.decode(W.blob().tobytes())
    assert (ref.FORMATS[header["format"]], ref.DTYPES[header["dtype"]]) == (fmt, dtype)
    assert header["nnz"] == W.nnz == int(np.count_nonzero(expected))
    assert_bits_equal(dense, expected, "reference decoder vs the input")
    assert_bits_equal(W.to_dense(raw=True), dense, "to_dense vs the reference decoder")


def test_reference_reads_auto_and_strided(rng):
    big, expected = sparse_bits(rng, 150, 300, "float16", 0.97)
    view = big[:, 7:260]
    for fmt in ("auto", "bitmap", "tiled_csl"):
        W = flashspmm.compress(view, format=fmt, dtype="float16")
        _, dense = ref.decode(W.blob().tobytes())
        assert_bits_equal(dense, expected[:, 7:260], fmt)


# ---- the reference reader is strict: it fails on the planted format bugs it exists to catch ----------------


def _reseal(blob):
    blob = bytearray(blob)
    struct.pack_into("<Q", blob, 96, checksum(blob[128:]))
    struct.pack_into("<Q", blob, 120, checksum(blob[:120]))
    return bytes(blob)


def test_reference_catches_a_missing_swizzle(rng):
    """Tiled-CSL positions written as r * 64 + c (no XOR), checksums resealed: the reference decoder refuses the
    blob (the unswizzled order is no longer increasing) or puts the values elsewhere."""
    bits, expected = sparse_bits(rng, 64, 64, "float16", 0.8, specials=False)
    blob = bytearray(flashspmm.compress(bits, format="tiled_csl", dtype="float16").blob().tobytes())
    data_offset = struct.unpack_from("<Q", blob, 72)[0]
    entries = np.frombuffer(bytes(blob[data_offset:]), dtype="<u4").copy()
    pos = entries & 0xFFFF
    is_value = (entries >> 16) != 0  # padding entries have value bits 0
    r, c = ref.unswizzle(pos[is_value])
    entries[is_value] = (entries[is_value] & 0xFFFF0000) | (r * 64 + c).astype(np.uint32)
    blob[data_offset:] = entries.tobytes()
    try:
        _, dense = ref.decode(_reseal(blob))
    except ref.FormatError as exc:
        assert "order" in str(exc)
    else:
        assert not np.array_equal(dense, expected)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_reference_refuses_corruption(rng, fmt):
    bits, _ = sparse_bits(rng, 100, 90, "bfloat16", 0.7)
    blob = flashspmm.compress(bits, format=fmt, dtype="bfloat16").blob().tobytes()
    for at in (0, 4, 8, 100, 127, 128, 200, len(blob) - 1):
        bad = bytearray(blob)
        bad[at] ^= 0x10
        with pytest.raises(ref.FormatError):
            ref.decode(bytes(bad))
    with pytest.raises(ref.FormatError):
        ref.decode(blob[:-16])
    forged = bytearray(blob)
    struct.pack_into("<q", forged, 24, struct.unpack_from("<q", forged, 24)[0] + 1)  # nnz + 1, resealed
    with pytest.raises(ref.FormatError, match="nnz|values"):
        ref.decode(_reseal(forged))


# ---- docs/FORMATS.md's worked example, byte for byte -------------------------------------------------------


def _doc_dump(title):
    """The hex lines ("0000: 46 53 ...") of the code block that follows the paragraph starting with `title`."""
    if not os.path.isfile(FORMATS_MD):
        pytest.skip("docs/FORMATS.md is not next to the tests (an installed test copy)")
    with open(FORMATS_MD, encoding="utf-8") as f:
        text = f.read()
    start = text.index(title)
    block = text[text.index("```", start) + 3 :]
    block = block[: block.index("```")]
    rows = {}
    for line in block.splitlines():
        m = re.match(r"^([0-9a-f]{4}): ((?:[0-9a-f]{2} ?){16})", line.strip())
        if m:
            rows[int(m.group(1), 16)] = bytes(int(b, 16) for b in m.group(2).split())
    return rows


WORKED = np.array([[0x3C00, 0x0000, 0xC000], [0x0000, 0x3800, 0x8000]], dtype=np.uint16)


def test_worked_example_tiled_csl():
    rows = _doc_dump("**Tiled-CSL** (160 bytes)")
    doc = b"".join(rows[o] for o in sorted(rows))
    assert len(doc) == 160 and sorted(rows) == list(range(0, 160, 16))
    blob = flashspmm.compress(WORKED, format="tiled_csl", dtype="float16").blob().tobytes()
    assert blob == doc, "the library's bytes differ from docs/FORMATS.md's worked example"
    _, dense = ref.decode(doc)
    assert_bits_equal(dense, np.where(WORKED == 0x8000, 0, WORKED), "worked example")


def test_worked_example_bitmap():
    rows = _doc_dump("**bitmap** (672 bytes)")
    blob = flashspmm.compress(WORKED, format="bitmap", dtype="float16").blob().tobytes()
    assert len(blob) == 672
    csl = flashspmm.compress(WORKED, format="tiled_csl", dtype="float16").blob().tobytes()
    # "header as above except: format = 2 (byte 6), data_bytes = 528, total_bytes = 672, max_tile_bytes = 528"
    expect_header = bytearray(csl[:128])
    expect_header[6] = 2
    struct.pack_into("<QQ", expect_header, 80, 528, 672)
    struct.pack_into("<I", expect_header, 104, 528)
    assert blob[:96] == bytes(expect_header[:96]) and blob[104:120] == bytes(expect_header[104:120])
    for offset, line in rows.items():
        assert blob[offset : offset + 16] == line, f"bytes at {offset:#06x} differ from docs/FORMATS.md"
    assert blob[0xA0:0x290] == bytes(0x290 - 0xA0), "masks 2..63 are not zero"
    _, dense = ref.decode(blob)
    assert_bits_equal(dense, np.where(WORKED == 0x8000, 0, WORKED), "worked example")


# ---- mutated blobs with valid checksums: the library and the reference reader agree ------------------------


def _mutate(rng, blob):
    """One random change to a blob (an offset, a header count, payload bits, a tile copied over another, the data
    shortened), its checksums resealed, so that only the rules past the checksums can catch it."""
    blob = bytearray(blob)
    data_offset, data_bytes = struct.unpack_from("<QQ", blob, 72)
    n_offsets = (len(blob) - 128 - data_bytes) // 8
    kind = int(rng.integers(6))
    if kind == 0:  # an offset moved by a small step, or set to an edge value
        i = int(rng.integers(n_offsets))
        old = struct.unpack_from("<Q", blob, 128 + 8 * i)[0]
        new = int(rng.choice([old + 16, old - 16, old + 1, 0, data_bytes, data_bytes + 16, 2**63]))
        struct.pack_into("<Q", blob, 128 + 8 * i, new % 2**64)
    elif kind == 1:  # nnz or max_tile_bytes off by a little
        at, step = (24, int(rng.choice([-1, 1]))) if rng.integers(2) else (104, int(rng.choice([-16, 16])))
        code = "<q" if at == 24 else "<I"
        struct.pack_into(code, blob, at, max(0, struct.unpack_from(code, blob, at)[0] + step))
    elif kind in (2, 3):  # one to four random bits of the data (masks, values, entries)
        for _ in range(int(rng.integers(1, 5))):
            at = data_offset + int(rng.integers(data_bytes))
            blob[at] ^= 1 << int(rng.integers(8))
    elif kind == 4:  # 16 bytes of one place copied over another
        src, dst = (data_offset + 16 * int(rng.integers(data_bytes // 16)) for _ in range(2))
        blob[dst : dst + 16] = blob[src : src + 16]
    else:  # the data 16 bytes shorter, header sizes updated (the last offset no longer matches)
        del blob[-16:]
        struct.pack_into("<Q", blob, 80, data_bytes - 16)
        struct.pack_into("<Q", blob, 88, len(blob))
    return _reseal(blob)


def _library_decode(data):
    try:
        return flashspmm.SparseMatrix.from_blob(data).to_dense(raw=True)
    except flashspmm.Error as exc:
        assert exc.status == "FSPMM_ERR_CORRUPT_BUFFER", exc
        return None


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_library_and_reference_agree_on_resealed_mutations(rng, fmt):
    """A blob changed past its checksums (which are recomputed) is refused by both readers or read by both
    with the same bits: the library's validation is the document's, rule for rule (a bit flipped in a value
    is a valid blob with another value)."""
    refused = accepted = 0
    for shape, sparsity in (((65, 127), 0.6), ((130, 200), 0.9), ((64, 64), 0.3)):
        bits, _ = sparse_bits(rng, *shape, "float16", sparsity)
        blob = flashspmm.compress(bits, format=fmt, dtype="float16").blob().tobytes()
        for _ in range(80):
            data = _mutate(rng, blob)
            try:
                _, want = ref.decode(data)
            except ref.FormatError:
                want = None
            got = _library_decode(data)
            if want is None:
                assert got is None, "the library read a blob that breaks docs/FORMATS.md"
                refused += 1
            else:
                assert got is not None, "the library refused a blob that docs/FORMATS.md allows"
                assert_bits_equal(got, want, "library vs reference on a mutated blob")
                accepted += 1
    assert refused > 50 and accepted > 10, (refused, accepted)  # both outcomes were exercised
