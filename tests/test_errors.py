"""Bad arguments give TypeError / ValueError (or flashspmm.Error) with messages that say what to fix."""

import numpy as np
import pytest

import flashspmm
from _toolkit import bfloat16


@pytest.fixture
def W():
    w = np.zeros((16, 32), np.float16)
    w[::3, ::5] = 1.5
    return flashspmm.compress(w)


class FakeCudaArray:
    """Looks like a device array to flashspmm; its pointer is never dereferenced in these tests."""

    def __init__(self, shape, typestr="<f2"):
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (0x10000, False),
            "strides": None,
            "version": 3,
        }


def test_compress_wrong_rank():
    with pytest.raises(ValueError, match="2-D"):
        flashspmm.compress(np.zeros(5, np.float16))
    with pytest.raises(ValueError, match="2-D"):
        flashspmm.compress(np.zeros((2, 3, 4), np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int8, np.bool_])
def test_compress_wrong_dtype(dtype):
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        flashspmm.compress(np.zeros((4, 4), dtype))


def test_compress_raw_bits_need_a_dtype():
    with pytest.raises(TypeError, match="uint16"):
        flashspmm.compress(np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="bfloat16"):
        flashspmm.compress(np.zeros((4, 4), np.uint16), dtype="bf16")


def test_compress_not_an_array():
    with pytest.raises(TypeError, match="numpy array"):
        flashspmm.compress([[1.0, 2.0]])


def test_compress_empty():
    with pytest.raises(ValueError, match="empty"):
        flashspmm.compress(np.zeros((0, 8), np.float16))


def test_compress_format_typo():
    with pytest.raises(ValueError, match="'bitmap'.*'tiled_csl'"):
        flashspmm.compress(np.zeros((4, 4), np.float16), format="bitmpa")
    with pytest.raises(TypeError):
        flashspmm.compress(np.zeros((4, 4), np.float16), format=2)
    # spelling variants that are accepted
    assert flashspmm.compress(np.ones((4, 4), np.float16), format="Tiled-CSL").format == "tiled_csl"


def test_compress_transposed_needs_contiguous():
    with pytest.raises(ValueError, match="ascontiguousarray"):
        flashspmm.compress(np.zeros((8, 4), np.float16).T)


def test_linear_shape_mismatch(W):
    with pytest.raises(ValueError, match=r"x.shape\[-1\] = 31 .*K=32"):
        flashspmm.linear(np.zeros((2, 31), np.float16), W)
    with pytest.raises(ValueError, match=r"bias must have shape \(16,\)"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, np.zeros(15, np.float16))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 16\)"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, out=np.zeros((2, 17), np.float16))
    with pytest.raises(ValueError, match=r"out must have shape \(16,\)"):
        flashspmm.linear(np.zeros(32, np.float16), W, out=np.zeros((1, 16), np.float16))


def test_linear_dtype_mismatch(W):
    with pytest.raises(TypeError, match="float32"):
        flashspmm.linear(np.zeros((2, 32), np.float32), W)
    with pytest.raises(TypeError, match="bias has dtype float32"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, np.zeros(16, np.float32))
    with pytest.raises(TypeError, match="out has dtype float32"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, out=np.zeros((2, 16), np.float32))


def test_linear_float16_x_with_bfloat16_w():
    Wb = flashspmm.compress(np.ones((4, 8), bfloat16()))
    with pytest.raises(TypeError, match="x has dtype float16 but W has dtype bfloat16"):
        flashspmm.linear(np.zeros((1, 8), np.float16), Wb)


def test_linear_beta_without_out(W):
    with pytest.raises(ValueError, match="beta"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, beta=0.5)


def test_linear_non_contiguous_last_dim(W):
    x = np.zeros((2, 64), np.float16)[:, ::2]
    with pytest.raises(ValueError, match="unit stride.*ascontiguousarray"):
        flashspmm.linear(x, W)
    bias = np.zeros(32, np.float16)[::2]
    with pytest.raises(ValueError, match="contiguous"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, bias)


def test_linear_bad_types(W):
    with pytest.raises(TypeError, match="SparseMatrix"):
        flashspmm.linear(np.zeros((2, 32), np.float16), np.zeros((16, 32), np.float16))
    with pytest.raises(TypeError, match="numpy array"):
        flashspmm.linear([[0.0] * 32], W)
    with pytest.raises(TypeError, match="alpha"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, alpha="2")
    with pytest.raises(ValueError, match="split_k"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, split_k=-1)
    with pytest.raises(ValueError, match="split_k .*up to 65535, got 65536"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, split_k=65536)
    for bad in (True, 2.0, "2"):
        with pytest.raises(TypeError, match="split_k must be an int"):
            flashspmm.linear(np.zeros((2, 32), np.float16), W, split_k=bad)
    with pytest.raises(ValueError, match="split_k"):
        W.plan_info(1, split_k=10**12)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n must be a positive int"):
            W.plan_info(bad)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        flashspmm.linear(np.zeros((), np.float16), W)


def test_linear_host_matrix_with_device_array(W):
    with pytest.raises(ValueError, match=r"W is on the CPU.*W.to\('cuda:\d+'\)"):
        flashspmm.linear(FakeCudaArray((2, 32)), W)


def test_device_names(W):
    with pytest.raises(ValueError, match="'cpu', 'cuda', 'cuda:N'"):
        W.to("gpu")
    with pytest.raises(TypeError):
        W.to(1.5)


@pytest.mark.skipif(flashspmm.device_count() > 0, reason="checks the no-GPU behaviour")
def test_to_cuda_without_a_device(W):
    for device in ("cuda", "cuda:0", 0):
        with pytest.raises(flashspmm.Error) as info:
            W.to(device)
        assert info.value.status == "FSPMM_ERR_NO_DEVICE"
        assert "no CUDA device" in str(info.value)


def test_sparse_matrix_is_not_constructed_directly():
    with pytest.raises(TypeError, match="compress"):
        flashspmm.SparseMatrix()


def test_from_blob_bad_types():
    with pytest.raises(TypeError):
        flashspmm.SparseMatrix.from_blob(np.zeros(200, np.float32))
    with pytest.raises(TypeError):
        flashspmm.SparseMatrix.from_blob(12345)


def test_error_class():
    assert issubclass(flashspmm.Error, RuntimeError)
    err = flashspmm.Error(3, "something broke")
    assert err.status == "FSPMM_ERR_CORRUPT_BUFFER" and err.code == 3
    assert str(err) == "FSPMM_ERR_CORRUPT_BUFFER: something broke"


def test_big_endian_and_read_only_arrays(W):
    with pytest.raises(TypeError, match="big-endian"):
        flashspmm.compress(np.zeros((4, 4), ">f2"))
    out = np.zeros((2, 16), np.float16)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        flashspmm.linear(np.zeros((2, 32), np.float16), W, out=out)
    x = np.ones((2, 32), np.float16)
    x.flags.writeable = False  # read-only inputs are fine
    assert flashspmm.linear(x, W).shape == (2, 16)
