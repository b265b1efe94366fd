"""The test toolkit itself: its checks fail on the errors they exist to catch, its conversions are exact, its seeds
replay."""

import numpy as np
import pytest

import _toolkit as tk


def test_ml_dtypes_is_installed():
    """bfloat16 host arrays need ml_dtypes, which the test extra installs: a missing one fails here (and in every
    bfloat16 test), never skips."""
    assert tk.bfloat16().itemsize == 2


@pytest.mark.parametrize("dtype", tk.DTYPES)
def test_bit_conversions_are_exact(dtype):
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f32 = tk.to_f32(every, dtype)
    finite = np.isfinite(f32)
    back = tk.from_f32(f32, dtype)
    assert np.array_equal(back[finite], every[finite])  # subnormals and -0.0 included
    assert np.array_equal(tk.is_nan_bits(back, dtype), np.isnan(f32))  # NaN stays NaN (never Inf)
    assert tk.to_f64(np.array([1], np.uint16), dtype)[0] == tk.SMALLEST_SUBNORMAL[dtype]
    if dtype == "bfloat16":
        assert np.array_equal(every.view(tk.bfloat16()).astype(np.float32)[finite], f32[finite])
        # nearest even: 1 + 2^-8 is the midpoint between 1 and 1 + 2^-7
        assert tk.from_f32(np.float32(1 + 2**-8), dtype) == 0x3F80
        assert tk.from_f32(np.float32(1 + 3 * 2**-8), dtype) == 0x3F82


def test_seeds_replay():
    a = tk.make_rng("tests/x.py::test_a", base=5).integers(1 << 60, size=4)
    assert np.array_equal(a, tk.make_rng("tests/x.py::test_a", base=5).integers(1 << 60, size=4))
    assert not np.array_equal(a, tk.make_rng("tests/x.py::test_b", base=5).integers(1 << 60, size=4))
    assert not np.array_equal(a, tk.make_rng("tests/x.py::test_a", base=6).integers(1 << 60, size=4))
    hint = tk.replay_hint("tests/x.py::test_a", base=5)
    assert "FSPMM_TEST_SEED=5" in hint and "tests/x.py::test_a" in hint


def test_rng_fixture_is_seeded_from_the_node_id(request, rng):
    assert np.array_equal(rng.integers(1 << 60, size=3), tk.make_rng(request.node.nodeid).integers(1 << 60, size=3))


def test_sparse_bits_exact_counts(rng):
    bits, expected = tk.sparse_bits(rng, 37, 91, "bfloat16", 0.7)
    assert int(np.count_nonzero(expected)) == 37 * 91 - round(0.7 * 37 * 91)
    assert np.any(bits == tk.NEG_ZERO) and not np.any(expected == tk.NEG_ZERO)
    assert np.any(tk.is_nan_bits(bits, "bfloat16"))


def test_sentinel_and_poison():
    s = tk.sentinel((3, 4), "float16")
    assert tk.is_sentinel(s) and np.isfinite(s.astype(np.float32)).all()
    s[1, 2] = 0
    assert not tk.is_sentinel(s)
    assert np.isnan(tk.poisoned((2, 2), "bfloat16").astype(np.float32)).all()


# ---- assert_close catches what the norm-wise check alone let through ---------------------------------------------


def _product(rng, dtype, n, m, k, sparsity=0.5):
    w_bits, w64 = tk.weight(rng, m, k, dtype, sparsity)
    _, x64 = tk.values(rng, (n, k), dtype)
    ref = x64 @ w64.T
    return ref, tk.to_f64(tk.from_f32(ref.astype(np.float32), dtype), dtype), w64, x64


@pytest.mark.parametrize("dtype", tk.DTYPES)
def test_assert_close_accepts_a_correctly_rounded_result(rng, dtype):
    ref, got, _, _ = _product(rng, dtype, 8, 300, 2000)
    tk.assert_close(got, ref, dtype)
    # cancellation: outputs near zero keep the row's accumulation budget
    ref[:, :10] = ref[:, :10] * 1e-6
    got[:, :10] = ref[:, :10] + 1e-6 * np.abs(ref).mean()
    tk.assert_close(got, ref, dtype)


@pytest.mark.parametrize("dtype", tk.DTYPES)
def test_assert_close_catches_one_zeroed_output_row(rng, dtype):
    ref, got, _, _ = _product(rng, dtype, 4, 4096, 512)
    got[:, 1234] = 0.0  # one output feature lost (e.g. a row of W never written)
    with pytest.raises(AssertionError, match=r"at \(\d, 1234\)"):  # (a token whose output there is near 0 passes)
        tk.assert_close(got, ref, dtype)


@pytest.mark.parametrize("dtype", tk.DTYPES)
def test_assert_close_catches_a_dropped_8x8_block(rng, dtype):
    # 2048 rows: the lost block is about 0.3 % of the output's norm (0.4-0.5 % with bf16 rounding), well inside
    # the norm-wise bound for any draw (with 512 rows it is about 0.6 % and some draws exceed 0.8 %)
    ref, _, w64, x64 = _product(rng, dtype, 4, 2048, 4096)
    w_dropped = w64.copy()
    w_dropped[64:72, 1024:1032] = 0.0  # one bitmap block lost
    got = tk.to_f64(tk.from_f32((x64 @ w_dropped.T).astype(np.float32), dtype), dtype)
    if dtype == "bfloat16":  # the norm-wise bound alone passes it ...
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < tk.NORM_TOL[dtype]
    with pytest.raises(AssertionError, match=r"outside.*\n  at \(\d, (6[4-9]|7[01])\)"):
        tk.assert_close(got, ref, dtype)  # ... the element-wise one does not, and names the rows


def test_assert_close_catches_nan_and_wrong_specials(rng):
    ref, got, _, _ = _product(rng, "float16", 3, 40, 64)
    bad = got.copy()
    bad[2, 7] = np.nan
    with pytest.raises(AssertionError, match=r"at \(2, 7\): got nan"):
        tk.assert_close(bad, ref, "float16")
    ref[1, 1], got[1, 1] = np.inf, np.nan
    with pytest.raises(AssertionError, match="wrong kind"):
        tk.assert_close(got, ref, "float16")
    got[1, 1] = np.inf
    tk.assert_close(got, ref, "float16")
    ref[0, 0] = got[0, 0] = np.nan
    tk.assert_close(got, ref, "float16")


def test_assert_close_reads_16_bit_arrays(rng):
    ref, got, _, _ = _product(rng, "bfloat16", 2, 30, 50)
    tk.assert_close(tk.as_dtype(tk.from_f32(got.astype(np.float32), "bfloat16"), "bfloat16"), ref, "bfloat16")
    with pytest.raises(AssertionError):
        tk.assert_close(np.zeros((2, 30), np.float16), ref, "float16")


def test_assert_bits_equal_reports_hex():
    with pytest.raises(AssertionError, match=r"at \(1\): got 0x7e00, want 0x7c00"):
        tk.assert_bits_equal(np.array([1, 0x7E00], np.uint16), np.array([1, 0x7C00], np.uint16))
