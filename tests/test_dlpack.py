"""DLPack import and export on the CPU (numpy is the other side), through flashspmm.linear and compress."""

import gc

import numpy as np
import pytest

import flashspmm
from _toolkit import DLPackOnly, assert_bits_equal, assert_close, bits_of, sparse_bits, values, weight
from flashspmm import _dlpack


class Exported:
    """Host memory handed out through flashspmm's exporter (device type CPU), for numpy to consume."""

    def __init__(self, array, versioned=True):
        self.array = np.ascontiguousarray(array)
        self.versioned = versioned

    def __dlpack_device__(self):
        return (_dlpack.DEVICE_CPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, **kwargs):
        versioned = self.versioned and max_version is not None and tuple(max_version) >= (1, 0)
        return _dlpack.export_capsule(
            self.array.ctypes.data,
            self.array.shape,
            "float16",
            _dlpack.DEVICE_CPU,
            0,
            owner=self.array,
            versioned=versioned,
        )


def _pruned(rng, m, k, sparsity=0.6):
    """A pruned float16 weight (host array) and its float64 values."""
    bits, w64 = weight(rng, m, k, "float16", sparsity)
    return bits.view(np.float16), w64


def _supports_versioned():
    try:
        np.zeros(1).__dlpack__(max_version=(1, 0))
        return True
    except TypeError:
        return False


@pytest.mark.parametrize("legacy", [False, True])
def test_linear_with_dlpack_only_input(rng, legacy):
    if not legacy and not _supports_versioned():
        pytest.skip("this numpy exports only legacy DLPack capsules")
    w, w64 = _pruned(rng, 70, 96)
    W = flashspmm.compress(w)
    x, x64 = values(rng, (5, 96), "float16")
    bias, b64 = values(rng, (70,), "float16")
    y = flashspmm.linear(DLPackOnly(x, legacy=legacy), W, DLPackOnly(bias, legacy=legacy))
    assert isinstance(y, np.ndarray) and y.shape == (5, 70)
    assert_close(y, x64 @ w64.T + b64, "float16")
    assert_bits_equal(bits_of(y), bits_of(flashspmm.linear(x, W, bias)), "DLPack vs numpy input")


def test_strided_dlpack_input_and_compress(rng):
    bits, expected = sparse_bits(rng, 40, 130, "float16", 0.6)
    w = bits.view(np.float16)[:, 10:110]  # leading dimension 130: DLPack carries the strides
    W = flashspmm.compress(DLPackOnly(w))
    assert_bits_equal(bits_of(W.to_dense()), expected[:, 10:110], "to_dense of a DLPack-compressed matrix")


def test_capsule_consumed_twice_is_a_clear_error(rng):
    W = flashspmm.compress(_pruned(rng, 16, 16)[0])
    capsule = values(rng, (2, 16), "float16")[0].__dlpack__()
    flashspmm.linear(capsule, W)
    with pytest.raises(ValueError, match="already consumed"):
        flashspmm.linear(capsule, W)


def test_wrong_dtype_through_dlpack():
    W = flashspmm.compress(np.eye(8, dtype=np.float16))
    with pytest.raises(TypeError, match="float16"):
        flashspmm.linear(DLPackOnly(np.ones((2, 8), dtype=np.float32)), W)


def test_read_only_out_is_refused():
    if not _supports_versioned():
        pytest.skip("this numpy exports only legacy DLPack capsules")
    out = np.zeros((2, 8), dtype=np.float16)
    out.flags.writeable = False
    capsule = out.__dlpack__(max_version=(1, 0))
    imported = _dlpack.import_array(capsule)
    if not imported.read_only:
        pytest.skip("this numpy does not set the DLPack read-only flag")
    W = flashspmm.compress(np.eye(8, dtype=np.float16))
    with pytest.raises(ValueError, match="read-only"):
        flashspmm.linear(np.ones((2, 8), dtype=np.float16), W, out=DLPackOnly(out))


@pytest.mark.parametrize("versioned", [True, False])
def test_export_is_zero_copy_and_deleter_runs(rng, versioned):
    if versioned and not _supports_versioned():
        pytest.skip("this numpy cannot import versioned capsules")
    before = _dlpack.live_exports()
    src = Exported(values(rng, (3, 4), "float16")[0], versioned=versioned)
    got = np.from_dlpack(src)
    assert got.shape == (3, 4) and got.dtype == np.float16
    assert got.ctypes.data == src.array.ctypes.data  # no copy
    np.testing.assert_array_equal(got, src.array)
    assert _dlpack.live_exports() == before + 1
    del got
    gc.collect()
    assert _dlpack.live_exports() == before  # numpy called the deleter


def test_unconsumed_export_is_released():
    before = _dlpack.live_exports()
    capsule = Exported(np.ones((2, 2), dtype=np.float16)).__dlpack__(max_version=(1, 0))
    assert _dlpack.live_exports() == before + 1
    del capsule
    gc.collect()
    assert _dlpack.live_exports() == before  # the capsule's destructor ran the deleter


def test_imported_tensor_released_after_use(rng):
    w, w64 = _pruned(rng, 32, 32)
    W = flashspmm.compress(w)
    before = _dlpack.live_exports()
    for i in range(200):
        x, x64 = values(rng, (3, 32), "float16")
        y = flashspmm.linear(Exported(x), W)
        if i % 50 == 0:
            assert_close(y, x64 @ w64.T, "float16")
    gc.collect()
    assert _dlpack.live_exports() == before
