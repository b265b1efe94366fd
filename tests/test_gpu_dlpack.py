"""GPU arrays reached through interfaces rather than frameworks: JAX and DLPack capsules, objects that offer only
__cuda_array_interface__, flashspmm's DeviceBuffer results and raw device pointers (flashspmm.from_pointer)
(marked `gpu`; skipped without a device)."""

import gc

import numpy as np
import pytest

import flashspmm
from _toolkit import (
    CudaArrayOnly,
    assert_bits_equal,
    assert_close,
    bits_of,
    device_ptr,
    host_bits,
    on_device,
    random_bits,
    require,
    synchronize,
    values,
    weight,
)
from flashspmm import _dlpack
from flashspmm._arrays import DeviceBuffer

pytestmark = pytest.mark.gpu


def device_values(rng, framework, shape, dtype="float16"):
    host, v64 = values(rng, shape, dtype)
    return on_device(framework, bits_of(host), dtype), v64


def device_weight(rng, M, K, sparsity=0.7, fmt="auto"):
    """(bits, float64 values, SparseMatrix uploaded to cuda:0) of a pruned random float16 weight."""
    bits, w64 = weight(rng, M, K, "float16", sparsity)
    return bits, w64, flashspmm.compress(bits, format=fmt, dtype="float16").to("cuda:0")


# ---- JAX ------------------------------------------------------------------------------------------------------------


def test_jax_linear_and_prune_through_dlpack(rng):
    jax = require("jax")
    jnp = pytest.importorskip("jax.numpy")
    w = flashspmm.prune(values(rng, (256, 320), "float16")[0], 0.7)
    W = flashspmm.compress(w).to("cuda")
    x_host, x64 = values(rng, (5, 320), "float16")
    x = jnp.asarray(x_host)
    y = flashspmm.linear(x, W)
    assert isinstance(y, jax.Array) and y.shape == (5, 256)
    assert_close(y, x64 @ w.astype(np.float64).T, "float16")
    p = flashspmm.prune(jnp.asarray(values(rng, (32, 48), "float16")[0]), 0.5)
    assert isinstance(p, jax.Array) and int((np.asarray(p) == 0).sum()) == 32 * 24


def test_jax_out_is_refused(rng):
    require("jax")
    M, K = 64, 96
    _, _, W = device_weight(rng, M, K)
    x, _ = device_values(rng, "jax", (3, K))
    ob = random_bits(rng, (3, M), "float16")
    out = on_device("jax", ob)
    with pytest.raises(ValueError, match="read-only|immutable"):
        flashspmm.linear(x, W, out=out)
    assert_bits_equal(host_bits(out), ob, "a refused out")  # untouched


# ---- DLPack capsules ---------------------------------------------------------------------------------------------


def test_legacy_capsule_consumed_twice(rng):
    torch = require("torch")
    M, K = 96, 160
    _, w64, W = device_weight(rng, M, K)
    x, x64 = device_values(rng, "torch", (5, K))
    torch.cuda.synchronize()
    cap = torch.utils.dlpack.to_dlpack(x)
    y = flashspmm.linear(cap, W)
    assert isinstance(y, DeviceBuffer) and y.shape == (5, M)
    assert_close(torch.from_dlpack(y), x64 @ w64.T, "float16")
    with pytest.raises(ValueError, match="already consumed"):
        flashspmm.linear(cap, W)


def test_versioned_capsule_consumed_twice(rng):
    torch = require("torch")
    M, K = 96, 160
    _, w64, W = device_weight(rng, M, K)
    x, x64 = device_values(rng, "torch", (5, K))
    torch.cuda.synchronize()
    try:
        cap = x.__dlpack__(max_version=(1, 0))
    except TypeError:
        pytest.skip("this torch does not export versioned DLPack capsules")
    if not _dlpack._capsule_is_valid(cap, b"dltensor_versioned"):
        pytest.skip("this torch answered max_version=(1, 0) with a legacy capsule")
    y = flashspmm.linear(cap, W)
    assert isinstance(y, DeviceBuffer)
    assert_close(torch.from_dlpack(y), x64 @ w64.T, "float16")
    with pytest.raises(ValueError, match="already consumed"):
        flashspmm.linear(cap, W)


# ---- DeviceBuffer results (inputs with only __cuda_array_interface__) ---------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_device_buffer_export(rng, framework):
    require(framework)
    M, K = 120, 200
    _, w64, W = device_weight(rng, M, K)
    x, x64 = device_values(rng, framework, (6, K))
    b, b64 = device_values(rng, framework, (M,))
    live0 = _dlpack.live_exports()
    y = flashspmm.linear(CudaArrayOnly(x), W, CudaArrayOnly(b))
    assert isinstance(y, DeviceBuffer) and y.shape == (6, M) and y.dtype == "float16"
    ref = x64 @ w64.T + b64
    cai = y.__cuda_array_interface__
    assert cai["data"][0] == y.ptr and tuple(cai["shape"]) == (6, M)
    assert _consume(y, ref) >= 1
    gc.collect()
    assert _dlpack.live_exports() == live0, "a consumer's deleter did not release the export"


def _consume(y, ref):
    """Import y zero-copy into torch and cupy (those installed) and check the values; the imports are released
    on return. Returns how many consumers took it."""
    taken = 0
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        t = torch.from_dlpack(y)
        assert t.is_cuda and t.dtype == torch.float16 and t.data_ptr() == y.ptr  # zero-copy
        assert_close(t, ref, "float16")
        taken += 1
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        c = cupy.from_dlpack(y)
        assert isinstance(c, cupy.ndarray) and c.data.ptr == y.ptr
        assert_close(c, ref, "float16")
        taken += 1
    return taken


def test_device_buffer_export_to_jax(rng):
    require("torch")
    jax = require("jax")
    M, K = 72, 136
    _, w64, W = device_weight(rng, M, K)
    x, x64 = device_values(rng, "torch", (3, 2, K))
    y = flashspmm.linear(CudaArrayOnly(x), W)
    assert isinstance(y, DeviceBuffer) and y.shape == (3, 2, M)
    j = jax.dlpack.from_dlpack(y)
    assert isinstance(j, jax.Array) and j.shape == (3, 2, M) and str(j.dtype) == "float16"
    assert_close(j, x64 @ w64.T, "float16")


# ---- raw device pointers (flashspmm.from_pointer) -------------------------------------------------------------------


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_from_pointer_device_views(rng, framework):
    require(framework)
    bits, w64, W = device_weight(rng, 150, 200)
    x, x64 = device_values(rng, framework, (5, 200))
    out = on_device(framework, np.full((5, 150), 0x7E00, np.uint16))  # NaN
    x_ptr, out_ptr = device_ptr(x), device_ptr(out)
    synchronize()
    xv = flashspmm.from_pointer(x_ptr, (5, 200), "float16", device="cuda:0")
    assert isinstance(xv, flashspmm.ExternalArray) and xv.__cuda_array_interface__["strides"] == (400, 2)
    y = flashspmm.linear(xv, W)  # flashspmm allocates the result: a DeviceBuffer any library can import
    assert isinstance(y, DeviceBuffer)
    assert_close(host_bits(y), x64 @ w64.T, "float16")
    ov = flashspmm.from_pointer(out_ptr, (5, 150), "float16", device=0)
    assert flashspmm.linear(xv, W, out=ov) is ov
    synchronize()
    assert_close(out, x64 @ w64.T, "float16")
    ro = flashspmm.from_pointer(out_ptr, (5, 150), "float16", readonly=True)
    with pytest.raises(ValueError, match="read-only"):
        flashspmm.linear(xv, W, out=ro)
    # a strided weight given by address compresses on the GPU like the array itself
    wide_bits = np.zeros((150, 256), np.uint16)
    wide_bits[:, :200] = bits
    wide = on_device(framework, wide_bits)
    synchronize()
    wv = flashspmm.from_pointer(device_ptr(wide), (150, 200), "float16", strides=(256, 1))
    assert flashspmm.compress(wv).blob().tobytes() == flashspmm.compress(bits, dtype="float16").blob().tobytes()
