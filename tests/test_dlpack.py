"""DLPack import and export on the CPU (numpy is the other side), through flashspmm.linear and compress."""
import gc

import numpy as np
import pytest

import flashspmm
from flashspmm import _dlpack


class OnlyDLPack:
    """An array that offers nothing but the DLPack protocol (like a JAX array does to flashspmm)."""

    def __init__(self, array, legacy=False):
        self.array = array
        self.legacy = legacy

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()

    def __dlpack__(self, *, stream=None, max_version=None, **kwargs):
        if self.legacy:
            if max_version is not None:
                raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
            return self.array.__dlpack__(stream=stream)
        return self.array.__dlpack__(stream=stream, max_version=max_version)


class Exported:
    """Host memory handed out through flashspmm's exporter (device type CPU), for numpy to consume."""

    def __init__(self, array, versioned=True):
        self.array = np.ascontiguousarray(array)
        self.versioned = versioned

    def __dlpack_device__(self):
        return (_dlpack.DEVICE_CPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, **kwargs):
        versioned = self.versioned and max_version is not None and tuple(max_version) >= (1, 0)
        return _dlpack.export_capsule(self.array.ctypes.data, self.array.shape, "float16", _dlpack.DEVICE_CPU, 0,
                                      owner=self.array, versioned=versioned)


def _pruned(rng, m, k, sparsity=0.6):
    w = rng.standard_normal((m, k)).astype(np.float16)
    w[rng.random((m, k)) < sparsity] = 0
    return w


def _supports_versioned():
    try:
        np.zeros(1).__dlpack__(max_version=(1, 0))
        return True
    except TypeError:
        return False


@pytest.mark.parametrize("legacy", [False, True])
def test_linear_with_dlpack_only_input(legacy):
    if not legacy and not _supports_versioned():
        pytest.skip("this numpy exports only legacy DLPack capsules")
    rng = np.random.default_rng(11)
    w = _pruned(rng, 70, 96)
    W = flashspmm.compress(w)
    x = rng.standard_normal((5, 96)).astype(np.float16)
    y = flashspmm.linear(OnlyDLPack(x, legacy=legacy), W)
    assert isinstance(y, np.ndarray) and y.shape == (5, 70)
    np.testing.assert_array_equal(y.view(np.uint16), flashspmm.linear(x, W).view(np.uint16))


def test_strided_dlpack_input_and_compress():
    rng = np.random.default_rng(12)
    big = _pruned(rng, 40, 130)
    w = big[:, 10:110]  # leading dimension 130: DLPack carries the strides
    W = flashspmm.compress(OnlyDLPack(w))
    np.testing.assert_array_equal(W.to_dense().view(np.uint16), np.ascontiguousarray(w).view(np.uint16))


def test_capsule_consumed_twice_is_a_clear_error():
    rng = np.random.default_rng(13)
    W = flashspmm.compress(_pruned(rng, 16, 16))
    capsule = rng.standard_normal((2, 16)).astype(np.float16).__dlpack__()
    flashspmm.linear(capsule, W)
    with pytest.raises(ValueError, match="already consumed"):
        flashspmm.linear(capsule, W)


def test_wrong_dtype_through_dlpack():
    W = flashspmm.compress(np.eye(8, dtype=np.float16))
    with pytest.raises(TypeError, match="float16"):
        flashspmm.linear(OnlyDLPack(np.ones((2, 8), dtype=np.float32)), W)


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
        flashspmm.linear(np.ones((2, 8), dtype=np.float16), W, out=OnlyDLPack(out))


@pytest.mark.parametrize("versioned", [True, False])
def test_export_is_zero_copy_and_deleter_runs(versioned):
    if versioned and not _supports_versioned():
        pytest.skip("this numpy cannot import versioned capsules")
    before = _dlpack.live_exports()
    src = Exported(np.arange(12, dtype=np.float16).reshape(3, 4), versioned=versioned)
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


def test_imported_tensor_released_after_use():
    rng = np.random.default_rng(14)
    W = flashspmm.compress(_pruned(rng, 32, 32))
    before = _dlpack.live_exports()
    for _ in range(200):
        flashspmm.linear(Exported(rng.standard_normal((3, 32)).astype(np.float16)), W)
    gc.collect()
    assert _dlpack.live_exports() == before
