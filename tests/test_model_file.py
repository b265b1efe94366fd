"""Many matrices in one file: save_model / load_model round trips and corrupted files."""
import json

import numpy as np
import pytest

import flashspmm


def _model(rng):
    out = {}
    for i, (m, k, s, fmt) in enumerate([(64, 80, 0.7, "bitmap"), (33, 130, 0.9, "tiled_csl"), (1, 1, 0.0, "auto"),
                                        (200, 64, 0.5, "auto")]):
        w = rng.standard_normal((m, k)).astype(np.float16)
        w[rng.random((m, k)) < s] = 0
        out[f"layers.{i}.weight"] = (w, flashspmm.compress(w, format=fmt))
    return out


def test_round_trip(rng, tmp_path):
    model = _model(rng)
    path = tmp_path / "model.fspmm"
    flashspmm.save_model(path, {name: W for name, (_, W) in model.items()})
    loaded = flashspmm.load_model(path)
    assert list(loaded) == list(model)
    for name, (w, W) in model.items():
        assert loaded[name].format == W.format and loaded[name].nbytes == W.nbytes
        np.testing.assert_array_equal(loaded[name].to_dense(), w)
        assert bytes(loaded[name].blob()) == bytes(W.blob())
    one = flashspmm.load_model(path, names=["layers.1.weight"])
    assert list(one) == ["layers.1.weight"]
    with pytest.raises(KeyError, match="layers.9"):
        flashspmm.load_model(path, names=["layers.9.weight"])


def test_blobs_are_aligned(rng, tmp_path):
    path = tmp_path / "m.fspmm"
    flashspmm.save_model(path, {name: W for name, (_, W) in _model(rng).items()})
    raw = path.read_bytes()
    index = json.loads(raw[16:16 + int.from_bytes(raw[8:16], "little")])
    assert all(e["offset"] % 64 == 0 for e in index["matrices"])


def _first_blob(raw):
    """File offset of the first blob, from the index."""
    index = json.loads(bytes(raw[16:16 + int.from_bytes(raw[8:16], "little")]))
    return index["matrices"][0]["offset"]


def _corrupt(path, mutate):
    raw = bytearray(path.read_bytes())
    mutate(raw)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.__setitem__(slice(0, 8), b"NOTAPACK"), "magic"),
    (lambda r: r.__setitem__(slice(8, 16), (10**9).to_bytes(8, "little")), "index says"),
    (lambda r: r.__setitem__(16, ord("#")), "unreadable index"),
    (lambda r: r.__setitem__(20, ord("#")), "unknown version"),
    (lambda r: r.__delitem__(slice(len(r) - 100, len(r))), "outside the file"),
    (lambda r: r.__setitem__(_first_blob(r) + 130, r[_first_blob(r) + 130] ^ 0xFF), "checksum"),
])
def test_corrupted_files(rng, tmp_path, mutate, match):
    path = tmp_path / "m.fspmm"
    flashspmm.save_model(path, {name: W for name, (_, W) in _model(rng).items()})
    _corrupt(path, mutate)
    with pytest.raises(flashspmm.Error, match=match) as info:
        flashspmm.load_model(path)
    assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER"


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="mapping"):
        flashspmm.save_model(tmp_path / "x", [1, 2])
    with pytest.raises(TypeError, match="SparseMatrix"):
        flashspmm.save_model(tmp_path / "x", {"w": np.ones((2, 2), dtype=np.float16)})
    with pytest.raises(TypeError, match="non-empty strings"):
        flashspmm.save_model(tmp_path / "x", {"": flashspmm.compress(np.eye(4, dtype=np.float16))})
