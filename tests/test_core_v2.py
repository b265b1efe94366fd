"""The core API v2 on the CPU: the header travels with the blob, framework in = framework out, clear errors."""

import importlib.util
import io

import numpy as np
import pytest

import flashspmm
from flashspmm._native import ffi, lib


def _pruned(rng, m, k, sparsity=0.5, dtype=np.float16):
    w = rng.standard_normal((m, k)).astype(np.float32)
    w[rng.random((m, k)) < sparsity] = 0
    return w.astype(dtype)


def test_header_is_a_frozen_copy(rng):
    w = _pruned(rng, 300, 200)
    W = flashspmm.compress(w)
    with pytest.raises(AttributeError):
        W.header.M = 5  # the overflow of the old API: a caller-edited header sized the output
    assert W.header.M == 300 and W.shape == (300, 200)
    assert np.array_equal(W.to_dense(), w)


def test_decompress_host_checks_the_output_capacity(rng):
    blob = flashspmm.compress(_pruned(rng, 70, 90)).blob()
    out = ffi.new("fspmm_matrix_t *")
    assert lib.fspmm_matrix_create_host(ffi.cast("void *", blob.ctypes.data), blob.size, out) == lib.FSPMM_OK
    handle = ffi.gc(out[0], lib.fspmm_matrix_destroy)
    small = np.full((5, 90), 0x7E00, np.uint16)
    status = lib.fspmm_decompress_host(handle, ffi.cast("void *", small.ctypes.data), 5, 90, 90)
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "M = 70" in ffi.string(lib.fspmm_last_error()).decode()
    assert (small == 0x7E00).all()


def test_from_array_and_blob_array(rng):
    w = _pruned(rng, 65, 130)
    W = flashspmm.compress(w)
    assert W.blob_array is W.blob() and not W.blob_array.flags.writeable
    V = flashspmm.SparseMatrix.from_array(np.array(W.blob()))
    assert np.array_equal(V.to_dense(), w)
    bad = np.array(W.blob())
    bad[200] ^= 0xFF
    with pytest.raises(flashspmm.Error) as info:
        flashspmm.SparseMatrix.from_array(bad)
    assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER"
    with pytest.raises(TypeError, match="1-D uint8"):
        flashspmm.SparseMatrix.from_array(np.zeros((4, 4), np.float16))


def test_load_file_objects_and_model_files(rng, tmp_path):
    W = flashspmm.compress(_pruned(rng, 64, 64))
    buf = io.BytesIO()
    W.save(buf)
    buf.seek(0)
    assert np.array_equal(flashspmm.load(buf).to_dense(), W.to_dense())
    path = tmp_path / "model.fspmm"
    flashspmm.save_model(path, {"a": W})
    with pytest.raises(flashspmm.Error, match="load_model"):
        flashspmm.load(path)


def test_options_are_checked(rng):
    W = flashspmm.compress(_pruned(rng, 64, 64))
    x = rng.standard_normal((2, 64)).astype(np.float16)
    with pytest.raises(ValueError, match="unknown kernel"):
        flashspmm.linear(x, W, kernel="fast")
    with pytest.raises(ValueError, match="unknown decoder"):
        flashspmm.linear(x, W, decoder="magic")
    with pytest.raises(TypeError, match="decoder must be a string"):
        flashspmm.linear(x, W, decoder=1)
    with pytest.raises(ValueError, match="device matrices"):
        W.plan_info(1)


@pytest.mark.parametrize("dtype", [np.float16, "torch.float16", "float16"])
def test_compress_dtype_accepts_framework_dtypes(rng, dtype):
    if dtype == "torch.float16":
        torch = pytest.importorskip("torch")
        dtype = torch.float16
    bits = _pruned(rng, 16, 16).view(np.uint16)
    W = flashspmm.compress(bits, dtype=dtype)
    assert W.dtype == "float16"
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        flashspmm.compress(bits, dtype="float32")


def test_torch_cpu_in_torch_out(rng):
    torch = pytest.importorskip("torch")
    w = torch.from_numpy(_pruned(rng, 40, 64, sparsity=0.0))
    p = flashspmm.prune(w, 0.5)
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float16 and (p == 0).sum() == 40 * 32
    W = flashspmm.compress(p)
    x = torch.from_numpy(rng.standard_normal((3, 64)).astype(np.float16))
    y = flashspmm.linear(x, W)
    assert isinstance(y, torch.Tensor) and y.shape == (3, 40)
    ref = x.double() @ p.double().T
    assert torch.allclose(y.double(), ref, rtol=2e-3, atol=2e-3)
    wb = torch.from_numpy(_pruned(rng, 8, 64, sparsity=0.0)).to(torch.bfloat16)
    pb = flashspmm.prune(wb, 0.25)
    assert isinstance(pb, torch.Tensor) and pb.dtype == torch.bfloat16


def test_requires_grad_is_a_clear_error(rng):
    torch = pytest.importorskip("torch")
    W = flashspmm.compress(_pruned(rng, 16, 32))
    x = torch.zeros(2, 32, dtype=torch.float16, requires_grad=True)
    with pytest.raises(ValueError, match=r"torch.no_grad\(\)"):
        flashspmm.linear(x, W)
    with torch.no_grad():
        assert flashspmm.linear(x, W).shape == (2, 16)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_cpu_bfloat16_and_empty(rng):
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]  # a CPU matrix and CPU arrays, also where JAX has a GPU
    w = jax.device_put(jnp.asarray(rng.standard_normal((64, 64)).astype(np.float32)), cpu).astype(jnp.bfloat16)
    p = flashspmm.prune(w, 0.5)
    assert p.dtype == jnp.bfloat16 and int((p == 0).sum()) == 64 * 32
    W = flashspmm.compress(p)
    x = jax.device_put(jnp.asarray(rng.standard_normal((3, 64)).astype(np.float32)), cpu).astype(jnp.bfloat16)
    y = flashspmm.linear(x, W)
    assert y.dtype == jnp.bfloat16 and y.shape == (3, 64)
    ref = np.asarray(x, np.float64) @ np.asarray(p, np.float64).T
    assert np.allclose(np.asarray(y, np.float64), ref, rtol=2e-2, atol=2e-2)
    empty = flashspmm.linear(jax.device_put(jnp.zeros((0, 64), jnp.bfloat16), cpu), W)
    assert type(empty).__module__.startswith("jax") and empty.shape == (0, 64)
    assert np.array_equal(np.asarray(W.to_dense()).view(np.uint16), np.asarray(p).view(np.uint16))
