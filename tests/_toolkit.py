"""The test toolkit every flashspmm test uses: seeds, poisoned outputs, fp16/bf16 bit conversions, matrix
generators, interface-only wrappers, tolerances and the accuracy checks.

Seeds. Every random input of a test comes from one numpy Generator (the `rng` fixture of conftest.py), seeded
from (the run's base seed, the test's node id). The base seed is random per run unless FSPMM_TEST_SEED is
set; a failing test's report names both and the command that replays it exactly (`replay_hint`).

Accuracy. `assert_close` is the one check of a linear result against its float64 reference: every element
within `atol + rtol * (|ref| + row_scale)` (row_scale: the RMS of the reference's row), the first mismatches
listed in the message, and the norm-wise relative error within the dtype's bound as well.

Nothing here imports torch, cupy or JAX at module level: the GPU helpers import them when asked to, so the CPU
suite runs without them.
"""

import os
import secrets
import sys
import zlib

import numpy as np

DTYPES = ("float16", "bfloat16")

# ---- seeds ----------------------------------------------------------------------------------------------

SEED_ENV = "FSPMM_TEST_SEED"
_BASE_SEED = None


def base_seed():
    """The run's base seed: FSPMM_TEST_SEED if set, else drawn once per run (so each run tests fresh inputs)."""
    global _BASE_SEED
    if _BASE_SEED is None:
        text = os.environ.get(SEED_ENV, "").strip()
        _BASE_SEED = int(text, 0) if text else secrets.randbits(63)
    return _BASE_SEED


def test_seed(nodeid, base=None):
    """The seed of one test: a function of the base seed and the node id only (independent of test order)."""
    base = base_seed() if base is None else base
    state = np.random.SeedSequence([base, zlib.crc32(nodeid.encode())]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def make_rng(nodeid, base=None):
    """The Generator of one test (what the `rng` fixture returns)."""
    return np.random.default_rng(test_seed(nodeid, base))


def replay_hint(nodeid, base=None):
    base = base_seed() if base is None else base
    return (
        f"seed {test_seed(nodeid, base)} (base seed {base}); replay with {SEED_ENV}={base} python -m pytest '{nodeid}'"
    )


def sub_seed(rng):
    """A seed for another generator (torch, cupy) drawn from rng, so its output is replayable too."""
    return int(rng.integers(0, 2**62))


# ---- dtypes and bit patterns ----------------------------------------------------------------------------


def rows_decoder_built():
    """Whether the library under test has the bitmap rows decoder (CMake option FSPMM_ROWS_DECODER, on by
    default; a build without it says so in its build description)."""
    import flashspmm

    return "without the rows decoder" not in flashspmm.info()["build"]


UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}  # half an ulp, relative
SMALLEST_SUBNORMAL = {"float16": 2.0**-24, "bfloat16": 2.0**-133}
NAN_BITS = {"float16": 0x7E00, "bfloat16": 0x7FC0}  # the quiet NaN outputs are poisoned with
SENTINEL_BYTE = 0xA5  # "nothing written" checks: 0xA5A5 in 16-bit words
SENTINEL_BITS = 0xA5A5  # a finite value of both dtypes, never a NaN


def bfloat16():
    """The numpy bfloat16 dtype (ml_dtypes). ml_dtypes is in the test extra, so a missing one is a failure of
    the test environment, reported loudly rather than skipped."""
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise AssertionError(
            "ml_dtypes is missing: it is part of the test extra, install it with "
            "pip install '.[test]' (or pip install ml_dtypes)"
        ) from exc
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(dtype):
    """numpy dtype of "float16" / "bfloat16"."""
    if dtype == "float16":
        return np.dtype(np.float16)
    if dtype == "bfloat16":
        return bfloat16()
    raise ValueError(f"not a flashspmm dtype: {dtype!r}")


def as_dtype(bits, dtype):
    """View uint16 bit patterns as a float16 / bfloat16 numpy array (no copy)."""
    return np.asarray(bits, dtype=np.uint16).view(numpy_dtype(dtype))


def to_f32(bits, dtype):
    """Exact float32 values of fp16 / bf16 bit patterns (subnormals, NaN payloads and -0.0 kept)."""
    bits = np.asarray(bits, dtype=np.uint16)
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        return (bits.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"not a flashspmm dtype: {dtype!r}")


def to_f64(bits, dtype):
    """Exact float64 values of fp16 / bf16 bit patterns."""
    return to_f32(bits, dtype).astype(np.float64)


def from_f32(values, dtype):
    """Round float32 values to fp16 / bf16 bit patterns: nearest even, subnormals kept, overflow to Inf, NaN
    stays NaN (numpy's own conversion for float16; bf16 by the same rule on the bits)."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == "float16":
        return values.astype(np.float16).view(np.uint16)
    if dtype != "bfloat16":
        raise ValueError(f"not a flashspmm dtype: {dtype!r}")
    u = values.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    return np.where(nan, ((u >> 16) | 0x0040).astype(np.uint16), rounded)  # rounding a NaN up could give Inf


def bits_of(array):
    """The uint16 bit patterns of a 16-bit host array (numpy float16 / bfloat16 / uint16 / int16)."""
    a = np.ascontiguousarray(array)
    assert a.dtype.itemsize == 2, f"not a 16-bit array: {a.dtype}"
    return a.view(np.uint16)


def is_nan_bits(bits, dtype):
    """Which bit patterns are NaN."""
    bits = np.asarray(bits, dtype=np.uint16)
    if dtype == "float16":
        return (bits & 0x7C00 == 0x7C00) & (bits & 0x03FF != 0)
    return (bits & 0x7F80 == 0x7F80) & (bits & 0x007F != 0)


# ---- poisoned and sentinel-filled outputs ----------------------------------------------------------------


def poisoned(shape, dtype):
    """A host output array of `dtype` filled with NaN: an element the library fails to write stays NaN."""
    return as_dtype(np.full(shape, NAN_BITS[dtype], dtype=np.uint16), dtype)


def sentinel(shape, dtype=None):
    """A host buffer filled with the sentinel (0xA5 bytes; 16-bit dtypes: 0xA5A5 words), for checking that a
    failing call wrote nothing: compare with `is_sentinel` afterwards."""
    if dtype is None or dtype == "uint8":
        return np.full(shape, SENTINEL_BYTE, dtype=np.uint8)
    return as_dtype(np.full(shape, SENTINEL_BITS, dtype=np.uint16), dtype)


def is_sentinel(array):
    """True iff every byte of the host array still holds the sentinel."""
    raw = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return bool((raw == SENTINEL_BYTE).all())


# ---- matrix generators ------------------------------------------------------------------------------------

# NaN (quiet, signalling, negative, all-ones payload), +Inf, -Inf, smallest subnormals, largest finite
SPECIALS = {
    "float16": [0x7E00, 0x7C01, 0xFE00, 0xFFFF, 0x7C00, 0xFC00, 0x0001, 0x8001, 0x7BFF],
    "bfloat16": [0x7FC0, 0x7F81, 0xFFC0, 0xFFFF, 0x7F80, 0xFF80, 0x0001, 0x8001, 0x7F7F],
}
POS_INF = {"float16": 0x7C00, "bfloat16": 0x7F80}
NEG_INF = {"float16": 0xFC00, "bfloat16": 0xFF80}
NEG_ZERO = 0x8000


def random_bits(rng, shape, dtype, scale=1.0):
    """Gaussian values (standard deviation `scale`) rounded to `dtype`, as uint16 bit patterns; never -0.0
    (an underflow to -0.0 would not survive a round trip bit for bit)."""
    bits = from_f32(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale), dtype)
    bits[bits == NEG_ZERO] = 0
    return bits


def values(rng, shape, dtype, scale=1.0):
    """Random finite inputs (x, bias, out): (host array of `dtype`, its exact float64 values)."""
    bits = random_bits(rng, shape, dtype, scale)
    while not np.any(bits):  # never test on zeros
        bits = random_bits(rng, shape, dtype, scale)
    return as_dtype(bits, dtype), to_f64(bits, dtype)


def sparse_bits(rng, m, k, dtype, sparsity, specials=True):
    """An [m, k] uint16 matrix of `dtype` bits with exactly round(sparsity * m * k) zeros at random places.

    With `specials`, some stored values become NaN / ±Inf / subnormals / the largest finite value and some
    zeros become -0.0. Returns (bits, expected): expected is what a round trip gives back (-0.0 -> +0.0).
    """
    n = m * k
    bits = random_bits(rng, n, dtype)
    bits[bits == 0] = 0x3C00 if dtype == "float16" else 0x3F80  # exactly `zeros` zeros below: no accidental ones
    zeros = int(round(sparsity * n))
    order = rng.permutation(n)
    zero_pos, nz_pos = order[:zeros], order[zeros:]
    bits[zero_pos] = 0
    if specials:
        sp = np.array(SPECIALS[dtype], dtype=np.uint16)
        count = min(len(nz_pos), max(1, len(nz_pos) // 50), 64)
        if count:
            pos = rng.choice(nz_pos, size=count, replace=False)
            bits[pos] = sp[rng.integers(0, len(sp), size=count)]
        negative = min(len(zero_pos), max(1, len(zero_pos) // 50), 64)
        if negative:
            bits[rng.choice(zero_pos, size=negative, replace=False)] = NEG_ZERO
    bits = bits.reshape(m, k)
    expected = bits.copy()
    expected[expected == NEG_ZERO] = 0
    return bits, expected


def weight(rng, m, k, dtype, sparsity):
    """A pruned random weight with finite values: (bits [m, k], float64 values); exactly
    round(sparsity * m * k) zeros."""
    bits, _ = sparse_bits(rng, m, k, dtype, sparsity, specials=False)
    return bits, to_f64(bits, dtype)


def reference_linear(x64, w64, bias64=None, alpha=1.0, beta=0.0, out64=None):
    """alpha * x @ w.T + bias + beta * out in float64 (x [..., K], w [M, K])."""
    ref = alpha * np.matmul(x64, w64.T)
    if bias64 is not None:
        ref = ref + bias64
    if beta != 0.0:
        ref = ref + beta * out64
    return ref


def checksum(data):
    """The blob checksum (docs/FORMATS.md): sum of splitmix64(word_i + i * golden) over 8-byte LE words."""
    w = np.frombuffer(bytes(data), dtype="<u8").astype(np.uint64)
    i = np.arange(w.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = w + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))


# ---- tolerances and accuracy checks -----------------------------------------------------------------------

# Per element: twice the output rounding (an fp32 sum rounded once to the dtype is within one unit roundoff of
# the exact value, plus fp32 accumulation error far below it). Norm-wise: the project's historical bound.
RTOL = {"float16": 1e-3, "bfloat16": 8e-3}
ATOL = SMALLEST_SUBNORMAL
NORM_TOL = {"float16": 1e-3, "bfloat16": 8e-3}


def _f64_of(got, dtype):
    """float64 values of a result: a float64 numpy array as is, else any 16-bit array of any framework."""
    if isinstance(got, np.ndarray) and got.dtype == np.float64:
        return got
    return to_f64(host_bits(got), dtype)


def _format_index(index):
    return "(" + ", ".join(str(int(i)) for i in index) + ")"


def mismatch_report(got, ref, bad, bound=None, limit=8):
    """The first `limit` mismatching elements as text: index, got, ref (and the bound)."""
    lines = []
    for index in np.argwhere(bad)[:limit]:
        index = tuple(index)
        line = f"  at {_format_index(index)}: got {float(got[index]):.7g}, ref {float(ref[index]):.7g}"
        if bound is not None:
            line += f", |diff| {abs(got[index] - ref[index]):.3e} > bound {bound[index]:.3e}"
        lines.append(line)
    return "\n".join(lines)


def assert_close(got, ref, dtype, *, rtol=None, atol=None, norm_tol=None, what="output"):
    """`got` (an fp16/bf16 array of any framework, or float64 values) matches the float64 reference `ref`.

    Element-wise, in the style of llm.c's validate_result: for every element
        |got - ref| <= atol + rtol * (|ref| + row_scale)
    where row_scale is the root-mean-square of the reference's row (its last axis). The row scale is the size
    of the row's sums, which grows like sqrt(K) with the number of products added, so one rtol serves every K;
    elements that cancel to nearly zero get the row's accumulation budget instead of a relative bound of zero.
    Non-finite reference elements must be matched exactly in kind (NaN by NaN, +Inf by +Inf, -Inf by -Inf),
    and a NaN or Inf where the reference is finite is a mismatch. Norm-wise as well, over the finite elements:
        ||got - ref|| / ||ref|| <= norm_tol.
    The message lists the first mismatches (index, got, ref, bound).
    """
    rtol = RTOL[dtype] if rtol is None else rtol
    atol = ATOL[dtype] if atol is None else atol
    norm_tol = NORM_TOL[dtype] if norm_tol is None else norm_tol
    got = _f64_of(got, dtype)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    if ref.ndim == 0:
        got, ref = got.reshape(1), ref.reshape(1)
    finite = np.isfinite(ref)
    ref_finite = np.where(finite, ref, 0.0)
    row_scale = np.sqrt(np.mean(ref_finite * ref_finite, axis=-1, keepdims=True))
    bound = atol + rtol * (np.abs(ref_finite) + row_scale)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - ref)
        bad_finite = finite & ~(diff <= bound)  # NaN in got: the comparison is False, so it counts as bad
    bad_special = ~finite & ~((np.isnan(ref) & np.isnan(got)) | (~np.isnan(ref) & (got == ref)))
    bad = bad_finite | bad_special
    if bad.any():
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements outside |got - ref| <= {atol:.2e} + {rtol:.2e} * "
            f"(|ref| + row_scale) or of the wrong kind (NaN / Inf); first mismatches:\n"
            f"{mismatch_report(got, ref, bad, bound)}"
        )
    scale = np.linalg.norm(ref_finite)
    err = np.linalg.norm(np.where(finite, got, 0.0) - ref_finite)
    if scale == 0.0:
        assert err == 0.0, f"{what}: the reference is zero but the result is not (norm {err:.3e})"
    else:
        assert err / scale <= norm_tol, f"{what}: norm-wise relative error {err / scale:.3e} > {norm_tol:.1e}"


def assert_bits_equal(got, want, what="result"):
    """Two uint16 bit-pattern arrays are identical, NaN payloads included; the message shows the first
    differences in hex."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    bad = got != want
    if bad.any():
        lines = [
            f"  at {_format_index(i)}: got {int(got[tuple(i)]):#06x}, want {int(want[tuple(i)]):#06x}"
            for i in np.argwhere(bad)[:8]
        ]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} elements differ:\n" + "\n".join(lines))


# ---- interface-only wrappers ------------------------------------------------------------------------------


class CudaArrayOnly:
    """An array that offers nothing but __cuda_array_interface__ (like a numba device array)."""

    def __init__(self, array):
        self.array = array

    @property
    def __cuda_array_interface__(self):
        return self.array.__cuda_array_interface__


class DLPackOnly:
    """An array that offers nothing but the DLPack protocol (as a JAX array does to flashspmm); `legacy`
    producers do not know the max_version argument."""

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


# ---- GPU arrays (torch, cupy, JAX imported on demand) -----------------------------------------------------

GPU_ARRAY_LIBS = ("torch", "cupy")  # the GPU marker runs with either; kernel tests run with both


def require(framework):
    """Import an array library for a GPU test, or skip the test if it is not installed."""
    import pytest

    if framework == "jax":
        jax = pytest.importorskip("jax")
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            pytest.skip("JAX sees no GPU")
        return jax
    return pytest.importorskip(framework)


def framework_of(a):
    return type(a).__module__.split(".", 1)[0]


def host_bits(a):
    """The uint16 bit patterns of a 16-bit array of any framework (numpy, torch, cupy, JAX, flashspmm views),
    copied to the host."""
    if isinstance(a, np.ndarray):
        return bits_of(a)
    owner = getattr(a, "_toolkit_owner", None)  # a from_pointer view made by on_device: read its owner
    if owner is not None:
        return host_bits(owner)
    module = framework_of(a)
    if module == "torch":
        torch = sys.modules["torch"]
        return a.detach().contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
    if module == "cupy":
        return sys.modules["cupy"].asnumpy(a).view(np.uint16)
    if module == "flashspmm":  # DeviceBuffer / ExternalArray: read through the cupy or torch of this machine
        synchronize()  # their interface names no stream to order the copy after
        if "cupy" in sys.modules or "torch" not in sys.modules:
            import cupy

            cai = dict(a.__cuda_array_interface__, typestr="<u2")
            return cupy.asnumpy(cupy.asarray(_Cai(cai)))
        torch = sys.modules["torch"]
        return host_bits(torch.from_dlpack(a))
    host = np.asarray(a)  # JAX and other host-readable arrays
    return bits_of(host)


class _Cai:
    def __init__(self, cai):
        self.__cuda_array_interface__ = cai


def on_device(framework, bits, dtype="float16"):
    """uint16 bits as a CUDA array on device 0 holding `dtype` values, made by `framework`.

    torch: a tensor of that dtype. cupy: a float16 array; cupy has no bfloat16, so bf16 data is a cupy uint16
    array seen through flashspmm.from_pointer as bfloat16 (the view keeps the cupy array alive, and
    `host_bits` reads it). jax: a float16 or bfloat16 jax.Array.
    """
    bits = np.ascontiguousarray(bits, dtype=np.uint16)
    require(framework)
    if framework == "torch":
        torch = sys.modules["torch"]
        return torch.from_numpy(bits.view(np.int16).copy()).view(getattr(torch, dtype)).to("cuda:0")
    if framework == "cupy":
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(0):
            if dtype == "float16":
                return cupy.asarray(bits.view(np.float16))
            import flashspmm

            raw = cupy.asarray(bits)
            view = flashspmm.from_pointer(
                raw.data.ptr, raw.shape, "bfloat16", device=0, stream=int(cupy.cuda.get_current_stream().ptr)
            )
            view._toolkit_owner = raw
            return view
    if framework == "jax":
        jax = sys.modules["jax"]
        return jax.device_put(as_dtype(bits, dtype), jax.devices("gpu")[0])
    raise ValueError(framework)


def assert_on_cuda(y, framework, dtype="float16"):
    """y is an array of `framework` on device 0 holding `dtype` (cupy: float16)."""
    assert framework_of(y) in ((framework,) if framework != "jax" else ("jax", "jaxlib")), type(y)
    if framework == "torch":
        torch = sys.modules["torch"]
        assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == getattr(torch, dtype)
    elif framework == "cupy":
        cupy = sys.modules["cupy"]
        assert isinstance(y, cupy.ndarray) and y.device.id == 0 and y.dtype == np.float16
    else:
        jax = sys.modules["jax"]
        assert isinstance(y, jax.Array) and all(d.platform == "gpu" for d in y.devices())
        assert str(y.dtype) == dtype


def sliced(a, index):
    """a[index] for any array on_device made, the cupy bfloat16 views included (they are sliced through their
    owner and seen through flashspmm.from_pointer again, strides and all)."""
    owner = getattr(a, "_toolkit_owner", None)
    if owner is None:
        return a[index]
    import flashspmm

    part = owner[index]
    view = flashspmm.from_pointer(
        part.data.ptr,
        part.shape,
        a.dtype,
        device=0,
        strides=tuple(s // part.itemsize for s in part.strides),
        stream=a.stream,
    )
    view._toolkit_owner = part
    return view


def device_ptr(a):
    """The device address of a torch tensor, cupy array or flashspmm view / buffer."""
    module = framework_of(a)
    if module == "torch":
        return int(a.data_ptr())
    if module == "cupy":
        return int(a.data.ptr)
    return int(a.__cuda_array_interface__["data"][0])


def device_bytes(framework, host):
    """A byte buffer on device 0 holding the host uint8 array `host`, made by `framework`."""
    host = np.ascontiguousarray(host, dtype=np.uint8)
    require(framework)
    if framework == "torch":
        return sys.modules["torch"].from_numpy(host.copy()).to("cuda:0")
    with sys.modules["cupy"].cuda.Device(0):
        return sys.modules["cupy"].asarray(host)


def host_bytes(a):
    """The bytes of a device byte buffer (device_bytes), on the host."""
    if framework_of(a) == "torch":
        return a.cpu().numpy()
    return sys.modules["cupy"].asnumpy(a)


def synchronize():
    """Wait for all work on device 0 (through whichever libraries are loaded)."""
    if "torch" in sys.modules:
        sys.modules["torch"].cuda.synchronize()
    if "cupy" in sys.modules:
        sys.modules["cupy"].cuda.Device(0).synchronize()
