"""The CPU reference linear (fspmm_linear_host) against float64 numpy."""

import numpy as np
import pytest

import flashspmm
from _data import as_dtype, from_f32, ml_dtypes, sparse_bits, to_f64

TOL = {"float16": 1e-3, "bfloat16": 8e-3}
DTYPES = ["float16", pytest.param("bfloat16", marks=pytest.mark.skipif(ml_dtypes is None,
                                                                         reason="bfloat16 arrays need ml_dtypes"))]


def rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def make(rng, dtype, m, k, sparsity=0.6, fmt="auto"):
    bits, _ = sparse_bits(rng, m, k, dtype, sparsity, specials=False)
    return flashspmm.compress(as_dtype(bits, dtype), format=fmt), to_f64(bits, dtype)


def rand(rng, shape, dtype, scale=1.0):
    bits = from_f32(rng.standard_normal(shape, dtype=np.float32) * scale, dtype)
    return as_dtype(bits, dtype), to_f64(bits, dtype)


def result_f64(y, dtype):
    return to_f64(np.ascontiguousarray(y).view(np.uint16), dtype)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("n", [1, 3, 8, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_float64(rng, dtype, n, fmt):
    m, k = 97, 203
    W, w64 = make(rng, dtype, m, k, fmt=fmt)
    x, x64 = rand(rng, (n, k), dtype)
    y = flashspmm.linear(x, W)
    assert isinstance(y, np.ndarray) and y.shape == (n, m) and y.dtype == x.dtype
    assert rel_err(result_f64(y, dtype), x64 @ w64.T) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-2.0, 0.25)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bias_alpha_beta(rng, dtype, alpha, beta, with_bias):
    n, m, k = 8, 130, 70
    W, w64 = make(rng, dtype, m, k)
    x, x64 = rand(rng, (n, k), dtype)
    bias, b64 = rand(rng, (m,), dtype) if with_bias else (None, 0.0)
    out, o64 = rand(rng, (n, m), dtype)
    y = flashspmm.linear(x, W, bias, out=out, alpha=alpha, beta=beta)
    assert y is out
    ref = alpha * (x64 @ w64.T) + b64 + beta * o64
    assert rel_err(result_f64(y, dtype), ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dimensional_x(rng, dtype):
    W, w64 = make(rng, dtype, 65, 129)
    x, x64 = rand(rng, (129,), dtype)
    bias, b64 = rand(rng, (65,), dtype)
    y = flashspmm.linear(x, W, bias)
    assert y.shape == (65,)
    assert rel_err(result_f64(y, dtype), w64 @ x64 + b64) <= TOL[dtype]


def test_leading_dimensions_are_flattened(rng):
    W, w64 = make(rng, "float16", 40, 64)
    x, x64 = rand(rng, (2, 3, 64), "float16")
    y = flashspmm.linear(x, W)
    assert y.shape == (2, 3, 40)
    assert rel_err(result_f64(y, "float16"), x64 @ w64.T) <= 1e-3
    # non-contiguous leading dimensions (a copy is made for x)
    xt = np.swapaxes(x, 0, 1)
    y = flashspmm.linear(xt, W)
    assert y.shape == (3, 2, 40)
    assert rel_err(result_f64(y, "float16"), np.swapaxes(x64, 0, 1) @ w64.T) <= 1e-3


def test_strided_rows_of_x_and_out(rng):
    W, w64 = make(rng, "float16", 50, 64)
    xbig, xbig64 = rand(rng, (6, 100), "float16")
    out_big = np.full((6, 80), np.float16(7.0))
    y = flashspmm.linear(xbig[:, 10:74], W, out=out_big[:, 5:55])
    assert rel_err(result_f64(y, "float16"), xbig64[:, 10:74] @ w64.T) <= 1e-3
    assert np.all(out_big[:, :5] == 7) and np.all(out_big[:, 55:] == 7)


def test_beta_zero_ignores_nan_poisoned_out(rng):
    W, w64 = make(rng, "float16", 33, 77)
    x, x64 = rand(rng, (5, 77), "float16")
    out = np.full((5, 33), np.nan, dtype=np.float16)
    y = flashspmm.linear(x, W, out=out, beta=0.0)
    assert np.all(np.isfinite(y.astype(np.float32)))
    assert rel_err(result_f64(y, "float16"), x64 @ w64.T) <= 1e-3


def test_empty_batch(rng):
    W, _ = make(rng, "float16", 10, 20)
    y = flashspmm.linear(np.zeros((0, 20), np.float16), W)
    assert y.shape == (0, 10)


def test_all_zero_matrix(rng):
    W = flashspmm.compress(np.zeros((70, 90), np.float16))
    assert W.nnz == 0
    x, _ = rand(rng, (4, 90), "float16")
    bias, b64 = rand(rng, (70,), "float16")
    y = flashspmm.linear(x, W, bias)
    assert np.array_equal(result_f64(y, "float16"), np.broadcast_to(b64, (4, 70)))
