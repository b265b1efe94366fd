"""The CPU reference linear (flashspmm.linear with a host matrix): against float64 element by element, bit for bit
against a float32 numpy model of the documented arithmetic, and the README's rules for NaN and Inf."""

import numpy as np
import pytest

import flashspmm
from _toolkit import (
    NEG_INF,
    POS_INF,
    as_dtype,
    assert_bits_equal,
    assert_close,
    bits_of,
    from_f32,
    is_nan_bits,
    poisoned,
    reference_linear,
    to_f32,
    to_f64,
    values,
    weight,
)

DTYPES = ["float16", "bfloat16"]  # bfloat16 needs ml_dtypes, which the test extra installs: no skip


def make(rng, dtype, m, k, sparsity=0.6, fmt="auto"):
    """(SparseMatrix, weight bits, float64 weight) of a random pruned weight."""
    bits, w64 = weight(rng, m, k, dtype, sparsity)
    return flashspmm.compress(as_dtype(bits, dtype), format=fmt), bits, w64


def fp32_model(x_bits, w_bits, dtype, bias_bits=None, alpha=1.0, beta=0.0, out_bits=None):
    """The documented arithmetic of the CPU reference, independently in numpy (uint16 bits in, bits out).

    Per output y[n, m]: the products x[n, k] * W[m, k] of the *stored* weights only (bits other than +-0.0),
    each rounded to float32, added one by one in increasing k to a float32 sum that starts at +0.0; then
    alpha * sum + bias[m] + beta * out[n, m], evaluated left to right in float32 (beta == 0: out is not read);
    rounded once to the dtype (round to nearest even).
    """
    x = to_f32(x_bits, dtype).reshape(-1, x_bits.shape[-1])
    w = to_f32(w_bits, dtype)
    stored = (w_bits & 0x7FFF) != 0
    acc = np.zeros((x.shape[0], w.shape[0]), dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for k in range(w.shape[1]):
            acc = np.where(stored[:, k], acc + x[:, k : k + 1] * w[:, k], acc)
        y = np.float32(alpha) * acc
        if bias_bits is not None:
            y = y + to_f32(bias_bits, dtype)
        if beta != 0.0:
            y = y + np.float32(beta) * to_f32(out_bits, dtype).reshape(y.shape)
    return from_f32(y, dtype).reshape(tuple(x_bits.shape[:-1]) + (w.shape[0],))


def assert_same_bits(got, want, dtype, what="y"):
    """Bit-for-bit equal, except that any NaN matches any NaN (the model and the library may quiet NaN
    payloads differently; the README promises NaN, not its payload)."""
    got, want = bits_of(got), np.asarray(want, dtype=np.uint16)
    both_nan = is_nan_bits(got, dtype) & is_nan_bits(want, dtype)
    assert_bits_equal(np.where(both_nan, 0, got), np.where(both_nan, 0, want), what)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("n", [1, 3, 8, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_float64(rng, dtype, n, fmt):
    m, k = 97, 203
    W, _, w64 = make(rng, dtype, m, k, fmt=fmt)
    x, x64 = values(rng, (n, k), dtype)
    y = flashspmm.linear(x, W)
    assert isinstance(y, np.ndarray) and y.shape == (n, m) and y.dtype == x.dtype
    assert_close(y, x64 @ w64.T, dtype)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (65, 63, 4), (130, 200, 9), (64, 700, 3)])
@pytest.mark.parametrize(
    "alpha,beta,with_bias", [(1.0, 0.0, False), (0.37, 0.0, True), (-1.5, 0.25, True), (2.0, -1.0, False)]
)
def test_linear_is_the_fp32_model_bit_for_bit(rng, fmt, dtype, m, k, n, alpha, beta, with_bias):
    W, w_bits, _ = make(rng, dtype, m, k, sparsity=0.5, fmt=fmt)
    x, _ = values(rng, (n, k), dtype, scale=3.0)
    bias = values(rng, (m,), dtype)[0] if with_bias else None
    out, _ = values(rng, (n, m), dtype)
    out0 = bits_of(out).copy()
    y = flashspmm.linear(x, W, bias, out=out, alpha=alpha, beta=beta)
    want = fp32_model(bits_of(x), w_bits, dtype, None if bias is None else bits_of(bias), alpha, beta, out0)
    assert_same_bits(y, want, dtype)


def test_output_is_rounded_once():
    """A float16 sum beyond the dtype's range that alpha brings back: an output rounded to the dtype before
    alpha (or twice) would be Inf."""
    k = 4
    w = np.full((2, k), 240.0, np.float16)  # each product 57600 fits float16, their sum 230400 does not
    x = np.full((1, k), 240.0, np.float16)
    y = flashspmm.linear(x, flashspmm.compress(w), alpha=1.0 / (k * 240.0))
    assert_same_bits(y, from_f32(np.full((1, 2), 240.0, np.float32), "float16"), "float16")
    y = flashspmm.linear(x, flashspmm.compress(w), np.full(2, -60000.0, np.float16), alpha=0.5)
    assert_same_bits(y, from_f32(np.full((1, 2), 115200.0 - 60000.0, np.float32), "float16"), "float16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_is_float32(dtype):
    """1 + 8 terms of half a unit roundoff: a float32 sum keeps them all; a sum rounded to the dtype at each
    step (16-bit accumulation) loses every one."""
    u = {"float16": 2.0**-11, "bfloat16": 2.0**-8}[dtype]
    x_bits = from_f32(np.array([[1.0] + [u / 2] * 8], np.float32), dtype)
    W = flashspmm.compress(as_dtype(from_f32(np.ones((1, 9), np.float32), dtype), dtype))
    y = flashspmm.linear(as_dtype(x_bits, dtype), W)
    assert_same_bits(y, from_f32(np.array([[1.0 + 4 * u]], np.float32), dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (0.5, 0.0), (1.0, 1.0), (-2.0, 0.25)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bias_alpha_beta(rng, dtype, alpha, beta, with_bias):
    n, m, k = 8, 130, 70
    W, _, w64 = make(rng, dtype, m, k)
    x, x64 = values(rng, (n, k), dtype)
    bias, b64 = values(rng, (m,), dtype) if with_bias else (None, None)
    out, o64 = values(rng, (n, m), dtype)
    y = flashspmm.linear(x, W, bias, out=out, alpha=alpha, beta=beta)
    assert y is out
    assert_close(y, reference_linear(x64, w64, b64, alpha, beta, o64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_dimensional_x(rng, dtype):
    W, _, w64 = make(rng, dtype, 65, 129)
    x, x64 = values(rng, (129,), dtype)
    bias, b64 = values(rng, (65,), dtype)
    y = flashspmm.linear(x, W, bias)
    assert y.shape == (65,)
    assert_close(y, w64 @ x64 + b64, dtype)


def test_leading_dimensions_are_flattened(rng):
    W, _, w64 = make(rng, "float16", 40, 64)
    x, x64 = values(rng, (2, 3, 64), "float16")
    y = flashspmm.linear(x, W)
    assert y.shape == (2, 3, 40)
    assert_close(y, x64 @ w64.T, "float16")
    # non-contiguous leading dimensions (a copy is made for x)
    xt = np.swapaxes(x, 0, 1)
    y = flashspmm.linear(xt, W)
    assert y.shape == (3, 2, 40)
    assert_close(y, np.swapaxes(x64, 0, 1) @ w64.T, "float16")


def test_strided_rows_of_x_and_out(rng):
    W, _, w64 = make(rng, "float16", 50, 64)
    xbig, xbig64 = values(rng, (6, 100), "float16")
    out_big = poisoned((6, 80), "float16")
    y = flashspmm.linear(xbig[:, 10:74], W, out=out_big[:, 5:55])
    assert_close(y, xbig64[:, 10:74] @ w64.T, "float16")
    assert np.isnan(out_big[:, :5].astype(np.float32)).all() and np.isnan(out_big[:, 55:].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_beta_zero_ignores_nan_poisoned_out(rng, dtype):
    W, _, w64 = make(rng, dtype, 33, 77)
    x, x64 = values(rng, (5, 77), dtype)
    out = poisoned((5, 33), dtype)
    out_bits = bits_of(out)
    out_bits[0, :3] = [POS_INF[dtype], NEG_INF[dtype], 0x7C01 if dtype == "float16" else 0x7F81]
    out[...] = as_dtype(out_bits, dtype)
    y = flashspmm.linear(x, W, out=out, beta=0.0)
    assert_close(y, x64 @ w64.T, dtype)


def test_empty_batch(rng):
    W, _, _ = make(rng, "float16", 10, 20)
    y = flashspmm.linear(np.zeros((0, 20), np.float16), W)
    assert y.shape == (0, 10)


def test_all_zero_matrix(rng):
    W = flashspmm.compress(np.zeros((70, 90), np.float16))
    assert W.nnz == 0
    x, _ = values(rng, (4, 90), "float16")
    bias, b64 = values(rng, (70,), "float16")
    y = flashspmm.linear(x, W, bias)
    assert np.array_equal(to_f64(bits_of(y), "float16"), np.broadcast_to(b64, (4, 70)))


# ---- NaN and Inf (README "Numerics": the CPU reference skips pruned weights; stored NaN / Inf propagate) -----

SPECIAL_X = ["inf", "-inf", "nan"]


def _special(dtype, kind):
    return {"inf": POS_INF[dtype], "-inf": NEG_INF[dtype], "nan": 0x7E00 if dtype == "float16" else 0x7FC0}[kind]


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("kind", SPECIAL_X)
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_x_meets_pruned_weight_contributes_nothing(rng, dtype, kind, fmt):
    """x[n, k] = Inf / -Inf / NaN: every output whose W[m, k] is pruned is exactly what it would be with
    x[n, k] = 0 (finite), every output whose W[m, k] is stored is ±Inf (the sign of x·w) or NaN."""
    n, m, k = 4, 90, 150
    w_bits, _ = weight(rng, m, k, dtype, 0.6)
    col = int(rng.integers(k))
    w_bits[: m // 2, col] = 0  # pruned in the first half of the rows ...
    w_bits[m // 2 :, col] = from_f32(rng.uniform(0.5, 2, m - m // 2) * rng.choice([-1, 1], m - m // 2), dtype)
    dead = int(rng.integers(k))  # ... and a column pruned in every row
    while dead == col:
        dead = int(rng.integers(k))
    w_bits[:, dead] = 0
    W = flashspmm.compress(as_dtype(w_bits, dtype), format=fmt)
    x, _ = values(rng, (n, k), dtype)
    x_bits = bits_of(x).copy()
    x_bits[1, col] = x_bits[2, dead] = x_bits[3, dead] = _special(dtype, kind)
    x_clean = x_bits.copy()
    x_clean[1, col] = x_clean[2, dead] = x_clean[3, dead] = 0
    y = bits_of(flashspmm.linear(as_dtype(x_bits, dtype), W))
    clean = bits_of(flashspmm.linear(as_dtype(x_clean, dtype), W))
    # a column pruned everywhere: rows 2 and 3 as if x were 0 there, all finite
    assert_bits_equal(y[[0, 2, 3]], clean[[0, 2, 3]], "rows whose special value meets only pruned weights")
    assert np.isfinite(to_f64(y[[0, 2, 3]], dtype)).all()
    # row 1: pruned weights -> unchanged and finite; stored weights -> the special value's kind
    assert_bits_equal(y[1, : m // 2], clean[1, : m // 2], "outputs whose weight at the special column is pruned")
    got = to_f64(y[1, m // 2 :], dtype)
    if kind == "nan":
        assert np.isnan(got).all()
    else:
        sign = 1.0 if kind == "inf" else -1.0
        expect = sign * np.sign(to_f64(w_bits[m // 2 :, col], dtype)) * np.inf
        np.testing.assert_array_equal(got, expect)
    assert_same_bits(y, fp32_model(x_bits, w_bits, dtype), dtype)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_stored_nan_and_inf_in_w_propagate(rng, dtype, fmt):
    """A stored NaN poisons its output row for every token (0 * NaN too); a stored Inf gives ±Inf where x is
    nonzero and NaN where x is zero (0 * Inf); other rows are untouched."""
    n, m, k = 5, 70, 130
    w_bits, _ = weight(rng, m, k, dtype, 0.7)
    nan_row, inf_row, col = 3, 40, 77
    w_bits[nan_row, 5] = 0x7E00 if dtype == "float16" else 0x7FC0
    w_bits[inf_row, col] = NEG_INF[dtype]
    W = flashspmm.compress(as_dtype(w_bits, dtype), format=fmt)
    x, _ = values(rng, (n, k), dtype)
    x_bits = bits_of(x).copy()
    x_bits[0, 5] = 0  # 0 * NaN
    x_bits[1, col] = 0  # 0 * -Inf
    x_bits[2, col] = 0x8000  # -0.0 * -Inf
    y = flashspmm.linear(as_dtype(x_bits, dtype), W)
    got = to_f64(bits_of(y), dtype)
    assert np.isnan(got[:, nan_row]).all()
    assert np.isnan(got[[1, 2], inf_row]).all()
    xs = to_f64(x_bits[[0, 3, 4], col], dtype)
    np.testing.assert_array_equal(got[[0, 3, 4], inf_row], -np.sign(xs) * np.inf)
    w_clean = w_bits.copy()
    w_clean[nan_row, 5] = w_clean[inf_row, col] = 0
    clean = bits_of(flashspmm.linear(as_dtype(x_bits, dtype), flashspmm.compress(as_dtype(w_clean, dtype))))
    others = np.setdiff1d(np.arange(m), [nan_row, inf_row])
    assert_bits_equal(bits_of(y)[:, others], clean[:, others], "rows without a special weight")
    assert_same_bits(y, fp32_model(x_bits, w_bits, dtype), dtype)


def test_opposite_infinities_in_one_sum_give_nan():
    w = np.array([[1.0, 1.0, 2.0], [1.0, 0.0, 2.0]], np.float16)
    x = np.array([[np.inf, -np.inf, 1.0]], np.float16)
    y = flashspmm.linear(x, flashspmm.compress(w)).astype(np.float64)
    assert np.isnan(y[0, 0])  # Inf + -Inf
    assert y[0, 1] == np.inf  # the -Inf meets a pruned weight: skipped


@pytest.mark.parametrize("dtype", DTYPES)
def test_specials_in_bias_alpha_beta(rng, dtype):
    n, m, k = 3, 20, 40
    W, w_bits, _ = make(rng, dtype, m, k, sparsity=0.5)
    x, _ = values(rng, (n, k), dtype)
    bias_bits = bits_of(values(rng, (m,), dtype)[0]).copy()
    bias_bits[[0, 1, 2]] = [POS_INF[dtype], NEG_INF[dtype], _special(dtype, "nan")]
    out_bits = bits_of(values(rng, (n, m), dtype)[0]).copy()
    out_bits[0, 5], out_bits[1, 6], out_bits[2, 7] = POS_INF[dtype], _special(dtype, "nan"), NEG_INF[dtype]
    out_bits[0, 0] = NEG_INF[dtype]  # +Inf bias + beta * -Inf
    bias = as_dtype(bias_bits, dtype)
    for alpha, beta in [(1.0, 0.0), (0.5, 1.0), (0.0, -2.0), (float("inf"), 0.0)]:
        out = as_dtype(out_bits.copy(), dtype)
        y = bits_of(flashspmm.linear(x, W, bias, out=out, alpha=alpha, beta=beta))
        got = to_f64(y, dtype)
        assert np.isnan(got[:, 2]).all()  # a NaN bias reaches every token
        if np.isfinite(alpha):
            assert (got[:, 0] == np.inf).sum() >= 2 and (got[:, 1] == -np.inf).all()  # ±Inf bias
            if beta != 0.0:
                assert np.isnan(got[1, 6])  # beta * NaN
                assert got[0, 5] == np.copysign(np.inf, beta) and got[2, 7] == np.copysign(np.inf, -beta)
                assert np.isnan(got[0, 0]) if beta > 0 else got[0, 0] == np.inf  # +Inf bias + beta * -Inf
            else:  # out is not read: its NaN and Inf do not show
                assert got[0, 0] == np.inf and np.isfinite(got[:, 3:]).all()
        else:
            assert not np.isfinite(got).any()  # Inf * a finite sum, or Inf * 0 = NaN
        assert_same_bits(
            y,
            fp32_model(bits_of(x), w_bits, dtype, bias_bits, alpha, beta, out_bits),
            dtype,
            f"alpha={alpha}, beta={beta}",
        )
