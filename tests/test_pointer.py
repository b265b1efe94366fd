"""flashspmm.from_pointer: raw addresses as arrays (host views here; device views in test_gpu_interop.py)."""

import numpy as np
import pytest

import flashspmm
from _toolkit import assert_bits_equal, assert_close, bits_of, to_f64, values


def test_host_view_is_zero_copy(rng):
    a = rng.standard_normal((6, 10)).astype(np.float16)
    v = flashspmm.from_pointer(a.ctypes.data, a.shape, "float16", device="cpu")
    assert isinstance(v, np.ndarray) and v.dtype == np.float16 and v.shape == (6, 10)
    np.testing.assert_array_equal(v, a)
    a[2, 3] = 7.0
    assert v[2, 3] == 7.0  # same memory


def test_host_view_with_strides_feeds_the_library(rng):
    w = flashspmm.prune(rng.standard_normal((40, 96)).astype(np.float16), 0.6)
    wide = np.zeros((40, 128), dtype=np.float16)
    wide[:, :96] = w
    v = flashspmm.from_pointer(wide.ctypes.data, (40, 96), "float16", device="cpu", strides=(128, 1))
    W = flashspmm.compress(v)
    assert W.blob().tobytes() == flashspmm.compress(w).blob().tobytes()
    x, x64 = values(rng, (3, 96), "float16")
    xv = flashspmm.from_pointer(x.ctypes.data, x.shape, "float16", device="cpu")
    y = flashspmm.linear(xv, W)
    assert_close(y, x64 @ to_f64(bits_of(w), "float16").T, "float16")
    assert_bits_equal(bits_of(y), bits_of(flashspmm.linear(x, W)), "view vs array")


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(ptr=0), ValueError, "not a valid address"),
        (dict(ptr=0x1001), ValueError, "2-byte aligned"),
        (dict(ptr=1.5), TypeError, "ptr must be an int"),
        (dict(dtype="float32"), ValueError, "dtype must be one of"),
        (dict(shape=(2, -1)), ValueError, "shape entries must be >= 0"),
        (dict(strides=(1,)), ValueError, "one entry per dimension"),
        (dict(strides=(-4, 1)), ValueError, "negative strides"),
        (dict(device="tpu"), ValueError, "device must be"),
    ],
)
def test_bad_arguments(kwargs, error, needle):
    args = dict(ptr=0x1000, shape=(2, 4), dtype="float16", device="cpu")
    args.update(kwargs)
    ptr = args.pop("ptr")
    with pytest.raises(error, match=needle):
        flashspmm.from_pointer(ptr, args.pop("shape"), args.pop("dtype"), **args)
