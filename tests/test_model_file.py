"""Model files (many matrices in one file): round trips, the version-2 layout, version-1 files, corrupted and
inconsistent files (docs/FORMATS.md, "Model files")."""

import io
import json

import numpy as np
import pytest

import flashspmm
from _toolkit import checksum
from flashspmm import _model

CORRUPT = "FSPMM_ERR_CORRUPT_BUFFER"


def _model_dict(rng):
    """name -> (dense fp16 matrix, SparseMatrix): several shapes, sparsities and formats."""
    out = {}
    cases = [(64, 80, 0.7, "bitmap"), (33, 130, 0.9, "tiled_csl"), (1, 1, 0.0, "auto"), (200, 64, 0.5, "auto")]
    for i, (m, k, s, fmt) in enumerate(cases):
        w = rng.standard_normal((m, k)).astype(np.float16)
        w[rng.random((m, k)) < s] = 0
        w.flat[0] = 1.5  # never an all-zero matrix
        out[f"layers.{i}.weight"] = (w, flashspmm.compress(w, format=fmt))
    return out


def _matrices(model):
    return {name: W for name, (_, W) in model.items()}


def _header(raw):
    """(index length, version word, reserved word, stored checksum, index object) of a version-2 file."""
    length = int.from_bytes(raw[8:16], "little")
    index = json.loads(bytes(raw[32 : 32 + length]))
    return (
        length,
        int.from_bytes(raw[16:20], "little"),
        int.from_bytes(raw[20:24], "little"),
        int.from_bytes(raw[24:32], "little"),
        index,
    )


def _craft(entries, blobs, *, version=2, start=4096, index_version=None, stored_checksum=None):
    """A model file written by hand, independently of save_model: `entries` is the index's "matrices" list,
    `blobs` maps file offsets to bytes. The checksum is tests/_data.py's blob checksum of the padded index."""
    text = json.dumps({"version": version if index_version is None else index_version, "matrices": entries}).encode()
    if version == 1:
        head = b"FSPMPACK" + len(text).to_bytes(8, "little")
    else:
        value = checksum(text + bytes(-len(text) % 8)) if stored_checksum is None else stored_checksum
        head = b"FSPMPACK" + len(text).to_bytes(8, "little") + version.to_bytes(4, "little") + bytes(4)
        head += value.to_bytes(8, "little")
    assert len(head) + len(text) <= start, "the crafted index must fit before the first blob"
    raw = bytearray(head + text)
    for offset, data in sorted(blobs.items()):
        raw.extend(bytes(max(0, offset + len(data) - len(raw))))
        raw[offset : offset + len(data)] = data
    return bytes(raw)


def _two_blobs(rng):
    """Two blobs and a consistent index for _craft: entries, {offset: bytes}, the dense matrices."""
    model = _model_dict(rng)
    names = ["layers.0.weight", "layers.1.weight"]
    blobs = [bytes(model[n][1].blob()) for n in names]
    offsets = [4096, 4096 + -(-len(blobs[0]) // 64) * 64]
    entries = [{"name": n, "offset": o, "nbytes": len(b)} for n, o, b in zip(names, offsets, blobs)]
    return entries, dict(zip(offsets, blobs)), {n: model[n][0] for n in names}


def _expect_corrupt(raw, match, tmp_path):
    path = tmp_path / "crafted.fspmm"
    path.write_bytes(raw)
    with pytest.raises(flashspmm.Error, match=match) as info:
        flashspmm.load_model(path)
    assert info.value.status == CORRUPT
    assert str(path) in str(info.value)  # the message names the file
    return info.value


# ---- round trips --------------------------------------------------------------------------------------


def test_round_trip(rng, tmp_path):
    model = _model_dict(rng)
    path = tmp_path / "model.fspmm"
    flashspmm.save_model(path, _matrices(model))
    loaded = flashspmm.load_model(path)
    assert list(loaded) == list(model)
    for name, (w, W) in model.items():
        assert loaded[name].format == W.format and loaded[name].nbytes == W.nbytes
        assert loaded[name].shape == w.shape and loaded[name].dtype == "float16"
        np.testing.assert_array_equal(loaded[name].to_dense(), w)
        assert bytes(loaded[name].blob()) == bytes(W.blob())
    one = flashspmm.load_model(path, names=["layers.1.weight"])
    assert list(one) == ["layers.1.weight"]
    two = flashspmm.load_model(path, names=["layers.3.weight", "layers.0.weight"])
    assert list(two) == ["layers.3.weight", "layers.0.weight"]  # the order asked for
    with pytest.raises(KeyError, match="layers.9"):
        flashspmm.load_model(path, names=["layers.9.weight"])
    with pytest.raises(TypeError, match="not one string"):
        flashspmm.load_model(path, names="layers.0.weight")


def test_empty_model_round_trip(tmp_path):
    path = tmp_path / "empty.fspmm"
    flashspmm.save_model(path, {})
    assert flashspmm.load_model(path) == {}
    assert path.stat().st_size % 64 == 0


def test_file_objects(rng):
    """save_model / load_model take binary file objects; the model starts at the object's position."""
    model = _model_dict(rng)
    buffer = io.BytesIO()
    buffer.write(b"some leading bytes")
    start = buffer.tell()
    flashspmm.save_model(buffer, _matrices(model))
    assert not buffer.closed
    end = buffer.tell()
    buffer.seek(start)
    loaded = flashspmm.load_model(buffer)
    for name, (w, _) in model.items():
        np.testing.assert_array_equal(loaded[name].to_dense(), w)
    raw = buffer.getvalue()[start:end]
    assert _model.is_model_file(raw)

    class Stream(io.RawIOBase):  # a pipe-like object: readable, not seekable
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self._data.readinto(b)

    loaded = flashspmm.load_model(io.BufferedReader(Stream(raw)))
    assert list(loaded) == list(model)
    np.testing.assert_array_equal(loaded["layers.3.weight"].to_dense(), model["layers.3.weight"][0])


def test_version_2_layout(rng, tmp_path):
    """The bytes save_model writes, as docs/FORMATS.md specifies them."""
    model = _model_dict(rng)
    path = tmp_path / "m.fspmm"
    flashspmm.save_model(path, _matrices(model))
    raw = path.read_bytes()
    assert raw[:8] == b"FSPMPACK"
    length, version, reserved, stored, index = _header(raw)
    assert (version, reserved) == (2, 0)
    text = raw[32 : 32 + length]
    assert stored == checksum(text + bytes(-length % 8))  # the blob checksum of FORMATS.md, padded index
    assert stored == _model.index_checksum(text)
    assert index["version"] == 2 and [e["name"] for e in index["matrices"]] == list(model)
    assert all(set(e) == {"name", "offset", "nbytes"} for e in index["matrices"])
    previous_end = 32 + length
    for e, (_, W) in zip(index["matrices"], model.values()):
        assert e["offset"] % 64 == 0 and e["offset"] >= previous_end
        assert raw[e["offset"] : e["offset"] + e["nbytes"]] == bytes(W.blob())
        previous_end = e["offset"] + e["nbytes"]
    assert len(raw) % 64 == 0 and len(raw) - previous_end < 64


def test_worked_example_of_formats_md():
    """The byte-for-byte example of docs/FORMATS.md, "Model files"."""
    w = np.array([[1.0, 0.0, -2.0], [0.0, 0.5, -0.0]], dtype=np.float16)
    W = flashspmm.compress(w, format="tiled_csl")
    buffer = io.BytesIO()
    flashspmm.save_model(buffer, {"w": W})
    raw = buffer.getvalue()
    text = b'{"version": 2, "matrices": [{"name": "w", "offset": 128, "nbytes": 160}]}'
    assert len(raw) == 320 and W.nbytes == 160 and len(text) == 73
    assert raw[:16] == b"FSPMPACK" + (73).to_bytes(8, "little")
    assert raw[16:24] == bytes([2, 0, 0, 0, 0, 0, 0, 0])
    assert int.from_bytes(raw[24:32], "little") == 0x414BD427B91469E4 == checksum(text + bytes(7))
    assert raw[32:105] == text and raw[105:128] == bytes(23)
    assert raw[128:288] == bytes(W.blob()) and raw[288:] == bytes(32)


def test_index_checksum_is_the_blob_checksum(rng):
    """index_checksum agrees with the blob header's own checksum of its first 120 bytes (FORMATS.md)."""
    W = flashspmm.compress(rng.standard_normal((40, 70)).astype(np.float16))
    blob = bytes(W.blob())
    assert _model.index_checksum(blob[:120]) == int.from_bytes(blob[120:128], "little")
    assert _model.index_checksum(b"") == 0
    assert _model.index_checksum(b"\x01") == _model.index_checksum(b"\x01" + bytes(7))  # zero padding


def test_version_1_file_still_loads(rng, tmp_path):
    entries, blobs, dense = _two_blobs(rng)
    path = tmp_path / "v1.fspmm"
    path.write_bytes(_craft(entries, blobs, version=1))
    loaded = flashspmm.load_model(path)
    assert list(loaded) == list(dense)
    for name, w in dense.items():
        np.testing.assert_array_equal(loaded[name].to_dense(), w)
    # and a version-1 file is held to the same index rules
    bad = [dict(entries[0]), dict(entries[1], name=entries[0]["name"])]
    _expect_corrupt(_craft(bad, blobs, version=1), "appears twice", tmp_path)


def test_crafted_version_2_file_loads(rng, tmp_path):
    """The hand-written layout of _craft is what the reader expects (so the failures below are the edits)."""
    entries, blobs, dense = _two_blobs(rng)
    path = tmp_path / "v2.fspmm"
    path.write_bytes(_craft(entries, blobs))
    loaded = flashspmm.load_model(path)
    for name, w in dense.items():
        np.testing.assert_array_equal(loaded[name].to_dense(), w)


def test_is_model_file(rng, tmp_path):
    path = tmp_path / "m.fspmm"
    flashspmm.save_model(path, _matrices(_model_dict(rng)))
    raw = path.read_bytes()
    assert _model.is_model_file(raw[:8]) and _model.is_model_file(bytearray(raw[:64]))
    assert _model.is_model_file(memoryview(raw)[:16]) and _model.is_model_file(np.frombuffer(raw[:8], np.uint8))
    blob = flashspmm.compress(np.eye(8, dtype=np.float16)).blob()
    assert not _model.is_model_file(blob) and not _model.is_model_file(bytes(blob[:8]))
    assert not _model.is_model_file(b"FSPMPA") and not _model.is_model_file(b"")


# ---- corrupted and inconsistent files -----------------------------------------------------------------


def _saved(rng, tmp_path):
    path = tmp_path / "m.fspmm"
    flashspmm.save_model(path, _matrices(_model_dict(rng)))
    return bytearray(path.read_bytes())


def _first_blob(raw):
    return _header(raw)[4]["matrices"][0]["offset"]


def _flip(raw, position, mask=0x01):
    raw[position] ^= mask
    return raw


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r.__setitem__(slice(0, 8), b"NOTAPACK"), "magic"),
        (lambda r: r.__setitem__(slice(8, 16), (10**9).to_bytes(8, "little")), "index says"),
        (lambda r: r.__setitem__(slice(8, 16), bytes(8)), "index says 0 bytes"),
        (lambda r: r.__setitem__(slice(16, 20), (3).to_bytes(4, "little")), "unknown model file version 3"),
        (lambda r: r.__setitem__(20, 1), "reserved"),
        (lambda r: _flip(r, 24), "index checksum mismatch"),  # the stored checksum
        (lambda r: _flip(r, 40), "index checksum mismatch"),  # a byte of the index text
        (lambda r: _flip(r, 32 + int.from_bytes(r[8:16], "little") - 1), "index checksum mismatch"),  # its last
        (
            lambda r: r.__setitem__(slice(8, 16), (int.from_bytes(r[8:16], "little") - 1).to_bytes(8, "little")),
            "index checksum mismatch",
        ),  # a shorter index length
        (lambda r: r.__delitem__(slice(len(r) - 100, len(r))), "outside the file"),  # truncated
        (lambda r: r.__delitem__(slice(_first_blob(r) + 10, len(r))), "outside the file"),
        (lambda r: r.__delitem__(slice(20, len(r))), "ends after 20 bytes"),
        (lambda r: r.__delitem__(slice(5, len(r))), "magic"),
        (lambda r: _flip(r, _first_blob(r) + 130, 0xFF), "matrix 'layers.0.weight'.*checksum"),  # in a blob
    ],
)
def test_corrupted_files(rng, tmp_path, mutate, match):
    raw = _saved(rng, tmp_path)
    mutate(raw)
    _expect_corrupt(bytes(raw), match, tmp_path)


def test_every_index_byte_is_covered(rng, tmp_path):
    """Any single flipped bit in the header or the index text is an error, never a silently different model."""
    raw = _saved(rng, tmp_path)
    length = int.from_bytes(raw[8:16], "little")
    path = tmp_path / "flipped.fspmm"
    for position in range(0, 32 + length):
        for mask in (0x01, 0x80):
            edited = bytearray(raw)
            edited[position] ^= mask
            path.write_bytes(bytes(edited))
            with pytest.raises(flashspmm.Error) as info:
                flashspmm.load_model(path)
            assert info.value.status == CORRUPT, f"byte {position} ^ {mask:#x}: {info.value}"


def _edit_entries(entries, i, **changes):
    out = [dict(e) for e in entries]
    out[i].update(changes)
    return out


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda e: _edit_entries(e, 1, name=e[0]["name"]), "'layers.0.weight' appears twice"),
        (lambda e: _edit_entries(e, 1, name=""), "names are non-empty strings"),
        (lambda e: _edit_entries(e, 1, name=7), "names are non-empty strings"),
        (lambda e: _edit_entries(e, 1, offset=e[0]["offset"] + 64), "overlap"),
        (lambda e: _edit_entries(e, 1, offset=e[0]["offset"]), "overlap"),  # the same offset
        (lambda e: _edit_entries(e, 0, offset=e[0]["offset"] + 16), "not a multiple of 64"),
        (lambda e: _edit_entries(e, 0, offset=0), "outside the file's blob area"),  # over the header and index
        (lambda e: _edit_entries(e, 1, offset=10**12), "outside the file's blob area"),
        (lambda e: _edit_entries(e, 1, nbytes=e[1]["nbytes"] + 10**6), "outside the file's blob area"),
        (lambda e: _edit_entries(e, 1, offset=-64), "outside the file's blob area"),
        (lambda e: _edit_entries(e, 0, nbytes=0), "a blob is never empty"),
        (lambda e: _edit_entries(e, 0, nbytes=-5), "a blob is never empty"),
        (lambda e: _edit_entries(e, 0, nbytes=100.0), "must be integers"),
        (lambda e: _edit_entries(e, 0, offset=True), "must be integers"),
        (lambda e: _edit_entries(e, 0, extra=1), "keys"),
        (lambda e: [e[0], "layers.1.weight"], "index entry 1 must be an object"),
        (lambda e: _edit_entries(e, 0, nbytes=e[0]["nbytes"] - 16), "matrix 'layers.0.weight'"),  # short blob
    ],
)
def test_inconsistent_index(rng, tmp_path, edit, match):
    """Index edits with a correct checksum (a writer's bug, not a flipped bit) are caught by the index rules."""
    entries, blobs, _ = _two_blobs(rng)
    _expect_corrupt(_craft(edit(entries), blobs), match, tmp_path)


def test_index_size_must_match_the_blob(rng, tmp_path):
    """An entry whose nbytes runs past its blob's end (trailing bytes) is refused, not silently truncated."""
    entries, blobs, _ = _two_blobs(rng)
    last = entries[1]
    blobs[last["offset"]] += bytes(64)
    edited = _edit_entries(entries, 1, nbytes=last["nbytes"] + 64)
    _expect_corrupt(_craft(edited, blobs), "the index gives", tmp_path)


def test_inconsistent_index_document(rng, tmp_path):
    entries, blobs, _ = _two_blobs(rng)
    _expect_corrupt(_craft(entries, blobs, index_version=1), "says version 1 in a version 2 file", tmp_path)
    for text, match in [
        (b"[1, 2]", "object with the keys"),
        (b'{"version": 2, "matrices": {}}', "must be a list"),
        (b'{"version": 2, "matrices": [], "more": 1}', "object with the keys"),
        (b'{"version": 2, "version": 2, "matrices": []}', "repeats the key"),
        (b"\xff\xfe{}", "unreadable index"),
        (b"[" * 100000 + b"]" * 100000, "unreadable index|object with the keys"),
    ]:
        head = b"FSPMPACK" + len(text).to_bytes(8, "little") + (2).to_bytes(4, "little") + bytes(4)
        head += checksum(text + bytes(-len(text) % 8)).to_bytes(8, "little")
        _expect_corrupt(head + text, match, tmp_path)


def test_a_blob_is_validated_only_when_loaded(rng, tmp_path):
    """A corrupted blob fails the load that reads it; the other matrices still load by name."""
    raw = _saved(rng, tmp_path)
    first = _header(raw)[4]["matrices"][0]
    _flip(raw, first["offset"] + 200, 0x40)
    path = tmp_path / "m.fspmm"
    path.write_bytes(bytes(raw))
    with pytest.raises(flashspmm.Error, match="layers.0.weight") as info:
        flashspmm.load_model(path)
    assert info.value.status == CORRUPT
    assert list(flashspmm.load_model(path, names=["layers.2.weight"])) == ["layers.2.weight"]


def test_bad_arguments(tmp_path):
    path = tmp_path / "x"
    with pytest.raises(TypeError, match="mapping"):
        flashspmm.save_model(path, [1, 2])
    with pytest.raises(TypeError, match="SparseMatrix"):
        flashspmm.save_model(path, {"w": np.ones((2, 2), dtype=np.float16)})
    with pytest.raises(TypeError, match="non-empty strings"):
        flashspmm.save_model(path, {"": flashspmm.compress(np.eye(4, dtype=np.float16))})
    with pytest.raises(TypeError, match="non-empty strings"):
        flashspmm.save_model(path, {3: flashspmm.compress(np.eye(4, dtype=np.float16))})
    assert not path.exists()  # nothing written on failure
