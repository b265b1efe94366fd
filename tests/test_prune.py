"""Magnitude pruning on the CPU: exact counts, the largest magnitudes kept, deterministic ties, bad input."""

import numpy as np
import pytest

import flashspmm
from _toolkit import bfloat16


def _kept_is_largest(before, after):
    """Every zeroed entry has magnitude <= every kept nonzero of the same set."""
    b = np.abs(before.astype(np.float64))
    zeroed = (after == 0) & (before != 0)
    kept = after != 0
    if zeroed.any() and kept.any():
        assert np.nanmax(np.where(zeroed, b, -np.inf)) <= np.nanmin(np.where(kept, b, np.inf))


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 100), (33, 257)])
@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.9, 0.999, 1.0])
def test_row_scope_exact_count(rng, shape, sparsity):
    w = rng.standard_normal(shape).astype(np.float16)
    p = flashspmm.prune(w, sparsity)
    assert p.dtype == np.float16 and p.shape == w.shape
    want = int(np.round(sparsity * shape[1]))
    assert ((p == 0).sum(axis=1) == want).all()
    for r in range(shape[0]):
        _kept_is_largest(w[r], p[r])
        assert np.array_equal(p[r][p[r] != 0], w[r][p[r] != 0])  # kept values untouched
    assert not np.shares_memory(p, w)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.75, 0.95, 1.0])
def test_tensor_scope_exact_count(rng, sparsity):
    w = rng.standard_normal((50, 77)).astype(np.float16)
    p = flashspmm.prune(w, sparsity, scope="tensor")
    assert (p == 0).sum() == int(np.round(sparsity * w.size))
    _kept_is_largest(w, p)


def test_ties_are_deterministic_lower_position_first():
    w = np.ones((2, 6), dtype=np.float16)
    p = flashspmm.prune(w, 0.5)
    assert (p[:, :3] == 0).all() and (p[:, 3:] == 1).all()
    t = flashspmm.prune(w, 0.25, scope="tensor")  # 3 of 12: the first three in row-major order
    assert (t.reshape(-1)[:3] == 0).all() and (t.reshape(-1)[3:] == 1).all()


def test_existing_zeros_count_and_nan_is_kept():
    w = np.array([[0.0, 5.0, -0.0, np.nan, -7.0, 0.5]], dtype=np.float16)
    p = flashspmm.prune(w, 0.5)  # 3 zeros wanted: the two zeros and 0.5
    assert (p == 0).sum() == 3 and np.isnan(p[0, 3]) and p[0, 4] == -7 and p[0, 1] == 5


def test_strided_input_and_bfloat16(rng):
    big = rng.standard_normal((20, 40)).astype(bfloat16())
    w = big[:, 5:35]
    p = flashspmm.prune(w, 0.6)
    assert p.dtype == big.dtype and p.shape == (20, 30)
    assert ((p.astype(np.float32) == 0).sum(axis=1) == 18).all()


def test_prune_then_compress_roundtrip(rng):
    w = rng.standard_normal((128, 192)).astype(np.float16)
    p = flashspmm.prune(w, 0.8)
    W = flashspmm.compress(p)
    assert W.nnz == int((p != 0).sum())
    assert np.array_equal(W.to_dense(), p)


@pytest.mark.parametrize(
    "sparsity, exc",
    [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError), ("0.5", TypeError), (True, TypeError)],
)
def test_bad_sparsity(sparsity, exc):
    with pytest.raises(exc, match="sparsity"):
        flashspmm.prune(np.ones((2, 2), dtype=np.float16), sparsity)


def test_bad_scope_dtype_rank():
    with pytest.raises(ValueError, match="scope"):
        flashspmm.prune(np.ones((2, 2), dtype=np.float16), 0.5, scope="column")
    with pytest.raises(TypeError, match="float16"):
        flashspmm.prune(np.ones((2, 2), dtype=np.float32), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        flashspmm.prune(np.ones(4, dtype=np.float16), 0.5)


def test_c_api_rejects_bad_arguments():
    from flashspmm._native import ffi, lib

    buf = np.ones((2, 4), dtype=np.float16)
    ptr = ffi.cast("void *", buf.ctypes.data)
    assert (
        lib.fspmm_prune_host(ptr, 2, 4, 3, lib.FSPMM_DTYPE_FLOAT16, 0.5, lib.FSPMM_PRUNE_ROW)
        == lib.FSPMM_ERR_INVALID_ARGUMENT
    )
    assert b"ld" in ffi.string(lib.fspmm_last_error())
    assert (
        lib.fspmm_prune_host(ptr, 2, 4, 4, lib.FSPMM_DTYPE_FLOAT16, 2.0, lib.FSPMM_PRUNE_ROW)
        == lib.FSPMM_ERR_INVALID_ARGUMENT
    )
    assert lib.fspmm_prune_host(ptr, 2, 4, 4, lib.FSPMM_DTYPE_FLOAT16, 0.5, 7) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert (buf == 1).all()  # nothing written on failure


def _reference_prune_bits(bits, sparsity, scope):
    """Pruning by its definition, on uint16 bit patterns: sort the keys (magnitude bits & 0x7FFF, position)
    with a stable sort and zero the round-half-even(sparsity * n) smallest of each row or of the matrix."""
    out = bits.copy()
    groups = [out[r] for r in range(out.shape[0])] if scope == "row" else [out.reshape(-1)]
    for g in groups:
        k = int(np.round(sparsity * g.size))
        order = np.argsort(g & 0x7FFF, kind="stable")
        g[order[:k]] = 0
    return out


@pytest.mark.parametrize("kind", ["ties", "gaussian", "spread"])
@pytest.mark.parametrize("scope", ["row", "tensor"])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.62, 0.9, 0.999])
@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (70, 33), (40, 5000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_the_definition_bit_for_bit(rng, shape, sparsity, scope, kind):
    """Against a stable sort of (magnitude, position): values from a small set (most entries tie), Gaussian
    fp16 with NaN, +-Inf, subnormals and -0.0 sprinkled in, or bit patterns spread over every magnitude."""
    if kind == "ties":
        bits = (rng.integers(-3, 4, size=shape) * 0.5).astype(np.float16).view(np.uint16)
    elif kind == "gaussian":
        bits = rng.standard_normal(shape).astype(np.float16).view(np.uint16).copy()
        pick = rng.random(shape) < 0.03
        bits[pick] = rng.choice(np.array([0x7E00, 0x7C00, 0xFC00, 0x0001, 0x8000, 0x0000], np.uint16), int(pick.sum()))
    else:
        bits = rng.integers(0, 1 << 16, size=shape).astype(np.uint16)
    got = np.ascontiguousarray(flashspmm.prune(bits.view(np.float16), sparsity, scope=scope)).view(np.uint16)
    np.testing.assert_array_equal(got, _reference_prune_bits(bits, sparsity, scope))
