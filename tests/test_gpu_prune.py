"""GPU magnitude pruning against the CPU one, bit for bit (marked `gpu`; skipped without a device).

Inputs come from the `rng` fixture: values from a small set (so that many entries tie at the threshold) or
Gaussian, with NaN / Inf / -0.0 sprinkled in. The GPU result must equal ``flashspmm.prune`` of the same
matrix as a numpy array in every bit, for both scopes and both dtypes.
"""

import numpy as np
import pytest

import flashspmm
from _toolkit import (
    GPU_ARRAY_LIBS,
    NEG_ZERO,
    SPECIALS,
    CudaArrayOnly,
    as_dtype,
    device_bytes,
    device_ptr,
    host_bits,
    on_device,
    synchronize,
)
from flashspmm._native import ffi, lib

pytestmark = pytest.mark.gpu

# (37, 301) and smaller: the tensor scope's two-level select; (3000, 70): many look-back work items;
# (5, 20000): rows staged in shared memory at up to eight CTAs per SM; (2, 60000): staged with an opt-in stage
# (sm_80 and sm_90); (2, 130000): rows too long for any stage, pruned in place.
# (64, 64), (256, 3000): contiguous, M * K a multiple of 2048 (the tensor scope works on rows of 2048 entries)
SHAPES = [(1, 1), (1, 300), (300, 1), (64, 64), (37, 301), (3000, 70), (256, 3000), (5, 20000), (2, 60000), (2, 130000)]
SPARSITIES = [0.0, 0.3, 0.5, 0.7, 0.999, 1.0]
SCOPES = ["row", "tensor"]
SCOPE_CODES = {"row": lib.FSPMM_PRUNE_ROW, "tensor": lib.FSPMM_PRUNE_TENSOR}


def value_bits(rng, shape, dtype, kind, specials=True):
    """uint16 bit patterns of `dtype`: "ties" draws from {-1.5, -1, ..., 1.5} (zeros included), "gaussian"
    from a normal distribution; with `specials`, about 2 % become NaN / +-Inf / subnormals / -0.0."""
    if kind == "ties":
        f = (rng.integers(-3, 4, size=shape) * 0.5).astype(np.float32)
    else:
        f = rng.standard_normal(shape, dtype=np.float32)
    bits = f.astype(np.float16).view(np.uint16) if dtype == "float16" else (f.view(np.uint32) >> 16).astype(np.uint16)
    bits = np.ascontiguousarray(bits)
    if specials:
        pick = rng.random(shape) < 0.02
        pool = np.array(SPECIALS[dtype] + [NEG_ZERO] * 3, dtype=np.uint16)
        bits[pick] = rng.choice(pool, size=int(pick.sum()))
    return bits


def cpu_prune_bits(bits, dtype, sparsity, scope):
    """The CPU result for a uint16 bit matrix of `dtype`, as uint16 bits."""
    out = flashspmm.prune(as_dtype(np.ascontiguousarray(bits), dtype), sparsity, scope=scope)
    return np.ascontiguousarray(out).view(np.uint16)


def torch_from_bits(torch, bits, dtype):
    """uint16 numpy bits -> torch CUDA tensor of dtype (bit for bit)."""
    t = torch.from_numpy(bits.view(np.int16).copy()).cuda()
    return t.view(torch.float16 if dtype == "float16" else torch.bfloat16)


def _bits_of(torch, t):
    """torch fp16/bf16 tensor -> uint16 numpy bits."""
    return t.contiguous().view(torch.int16).cpu().numpy().view(np.uint16)


def expected_zeros(sparsity, n):
    """round(sparsity * n), half to even, in double precision (as the library counts)."""
    return int(np.round(sparsity * n))


@pytest.mark.parametrize("kind", ["ties", "gaussian"])
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_matches_cpu(rng, dtype, shape, sparsity, scope, kind):
    torch = pytest.importorskip("torch")
    bits = value_bits(rng, shape, dtype, kind)
    w = torch_from_bits(torch, bits, dtype)
    got = flashspmm.prune(w, sparsity, scope=scope)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.device == w.device
    assert got.dtype == w.dtype and tuple(got.shape) == shape and got.is_contiguous()
    np.testing.assert_array_equal(_bits_of(torch, got), cpu_prune_bits(bits, dtype, sparsity, scope))
    np.testing.assert_array_equal(_bits_of(torch, w), bits)  # the input is not modified


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("shape", [(1, 1), (37, 301), (3000, 70), (5, 20000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cupy_matches_cpu(rng, shape, sparsity, scope):
    cp = pytest.importorskip("cupy")
    bits = value_bits(rng, shape, "float16", "ties")
    w = cp.asarray(bits.view(np.float16))
    got = flashspmm.prune(w, sparsity, scope=scope)
    assert isinstance(got, cp.ndarray) and got.dtype == np.float16 and got.shape == shape
    np.testing.assert_array_equal(cp.asnumpy(got).view(np.uint16), cpu_prune_bits(bits, "float16", sparsity, scope))
    np.testing.assert_array_equal(cp.asnumpy(w).view(np.uint16), bits)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("start", [0, 3])  # 3: rows start at addresses that are not 16-byte aligned
def test_torch_strided_input(rng, dtype, scope, start):
    """A column slice of a wider matrix: leading dimension > K."""
    torch = pytest.importorskip("torch")
    wide_bits = value_bits(rng, (150, 420), dtype, "ties")
    wide = torch_from_bits(torch, wide_bits, dtype)
    w = wide[:, start : start + 301]
    assert w.stride() == (420, 1)
    got = flashspmm.prune(w, 0.6, scope=scope)
    want = cpu_prune_bits(np.ascontiguousarray(wide_bits[:, start : start + 301]), dtype, 0.6, scope)
    np.testing.assert_array_equal(_bits_of(torch, got), want)
    np.testing.assert_array_equal(_bits_of(torch, wide), wide_bits)  # nothing written around the slice


@pytest.mark.parametrize("scope", SCOPES)
def test_cupy_strided_input(rng, scope):
    cp = pytest.importorskip("cupy")
    wide_bits = value_bits(rng, (90, 333), "float16", "gaussian")
    wide = cp.asarray(wide_bits.view(np.float16))
    w = wide[:, 5:250]
    got = flashspmm.prune(w, 0.45, scope=scope)
    want = cpu_prune_bits(np.ascontiguousarray(wide_bits[:, 5:250]), "float16", 0.45, scope)
    np.testing.assert_array_equal(cp.asnumpy(got).view(np.uint16), want)
    np.testing.assert_array_equal(cp.asnumpy(wide).view(np.uint16), wide_bits)


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("shape", [(1, 10), (7, 10), (37, 301), (3000, 70), (5, 20000)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("sparsity", [0.05, 0.25, 0.35, 0.5, 0.65, 0.999, 1.0])
def test_exact_zero_count(rng, framework, shape, sparsity, scope):
    """No zeros before: exactly round-half-even(sparsity * n) after (0.05, 0.25, 0.35 and 0.65 of 10 are
    halves: 0, 2, 4 and 6)."""
    f = rng.uniform(0.5, 2.0, size=shape).astype(np.float16) * rng.choice([-1, 1], size=shape).astype(np.float16)
    bits = f.view(np.uint16)
    got = host_bits(flashspmm.prune(on_device(framework, bits, "float16"), sparsity, scope=scope))
    zeros = (got & 0x7FFF) == 0
    if scope == "row":
        assert (zeros.sum(axis=1) == expected_zeros(sparsity, shape[1])).all()
    else:
        assert zeros.sum() == expected_zeros(sparsity, shape[0] * shape[1])
    assert (got[zeros] == 0).all()  # zeroed entries are +0.0
    np.testing.assert_array_equal(got, cpu_prune_bits(bits, "float16", sparsity, scope))


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
def test_negative_zero_kept_unless_selected(framework):
    """-0.0 entries that are not selected keep their sign; selected ones become +0.0."""
    bits = np.array([[NEG_ZERO, 0x3C00, NEG_ZERO, 0x4000, NEG_ZERO, 0x0000]], dtype=np.uint16)
    for sparsity in (1 / 6, 0.5, 4 / 6):
        for scope in SCOPES:
            got = host_bits(flashspmm.prune(on_device(framework, bits, "float16"), sparsity, scope=scope))
            np.testing.assert_array_equal(got, cpu_prune_bits(bits, "float16", sparsity, scope))
    got = host_bits(flashspmm.prune(on_device(framework, bits, "float16"), 1 / 6))
    np.testing.assert_array_equal(got, [[0, 0x3C00, NEG_ZERO, 0x4000, NEG_ZERO, 0]])


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
def test_all_equal_magnitudes_tie_in_position_order(rng, framework):
    bits = np.where(rng.random((40, 77)) < 0.5, 0x3C00, 0xBC00).astype(np.uint16)  # +-1: one magnitude
    for scope in SCOPES:
        synchronize()
        got = host_bits(flashspmm.prune(on_device(framework, bits, "bfloat16"), 0.37, scope=scope))
        np.testing.assert_array_equal(got, cpu_prune_bits(bits, "bfloat16", 0.37, scope))
    flat = host_bits(flashspmm.prune(on_device(framework, bits, "float16"), 0.37, scope="tensor")).ravel()
    n = expected_zeros(0.37, bits.size)
    assert (flat[:n] == 0).all() and (flat[n:] == bits.ravel()[n:]).all()


def test_requires_grad_input_gives_a_plain_tensor(rng):
    torch = pytest.importorskip("torch")
    bits = value_bits(rng, (16, 48), "float16", "gaussian", specials=False)
    w = torch_from_bits(torch, bits, "float16").requires_grad_()
    got = flashspmm.prune(w, 0.5)
    assert not got.requires_grad
    np.testing.assert_array_equal(_bits_of(torch, got), cpu_prune_bits(bits, "float16", 0.5, "row"))


def test_side_stream(rng):
    """prune runs on the framework's current stream."""
    torch = pytest.importorskip("torch")
    bits = value_bits(rng, (512, 1024), "float16", "ties")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        w = torch_from_bits(torch, bits, "float16")
        got = flashspmm.prune(w, 0.7, scope="tensor")
        host = got.cpu()  # ordered on s
    np.testing.assert_array_equal(
        host.view(torch.int16).numpy().view(np.uint16), cpu_prune_bits(bits, "float16", 0.7, "tensor")
    )


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("scope", SCOPES)
def test_cuda_array_interface_input(rng, framework, strided, scope):
    wide_bits = value_bits(rng, (33, 200), "float16", "ties")
    wide = on_device(framework, wide_bits, "float16")
    w = wide[:, 7:150] if strided else wide
    want = cpu_prune_bits(np.ascontiguousarray(wide_bits[:, 7:150] if strided else wide_bits), "float16", 0.55, scope)
    synchronize()
    got = flashspmm.prune(CudaArrayOnly(w), 0.55, scope=scope)
    synchronize()
    np.testing.assert_array_equal(host_bits(got), want)
    np.testing.assert_array_equal(host_bits(wide), wide_bits)


def _workspace_size(m, k, scope):
    n = ffi.new("size_t *")
    assert lib.fspmm_prune_workspace_size(m, k, SCOPE_CODES[scope], n) == lib.FSPMM_OK
    return int(n[0])


@pytest.mark.parametrize("scope", SCOPES)
def test_c_api_in_place_with_ld(rng, scope):
    """fspmm_prune in place on a matrix with ld > K, under a CUDA graph capture and its replays."""
    torch = pytest.importorskip("torch")
    m, k, ld = 300, 500, 520
    bits = value_bits(rng, (m, ld), "bfloat16", "ties")
    want = bits.copy()
    want[:, :k] = cpu_prune_bits(np.ascontiguousarray(bits[:, :k]), "bfloat16", 0.7, scope)
    nbytes = _workspace_size(m, k, scope)
    assert (nbytes > 0) == (scope == "tensor")
    ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
    w = torch_from_bits(torch, bits, "bfloat16")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())

    def call():
        return lib.fspmm_prune(
            ffi.cast("void *", w.data_ptr()),
            m,
            k,
            ld,
            lib.FSPMM_DTYPE_BFLOAT16,
            0.7,
            SCOPE_CODES[scope],
            ffi.cast("void *", ws.data_ptr()),
            nbytes,
            ffi.cast("void *", s.cuda_stream),
        )

    with torch.cuda.stream(s):
        assert call() == lib.FSPMM_OK
    s.synchronize()
    np.testing.assert_array_equal(_bits_of(torch, w), want)

    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        assert call() == lib.FSPMM_OK
    for _ in range(2):
        w.copy_(torch_from_bits(torch, bits, "bfloat16"))
        torch.cuda.synchronize()
        g.replay()
        torch.cuda.synchronize()
        np.testing.assert_array_equal(_bits_of(torch, w), want)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("shape", [(64, 96), (40, 4096)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_c_api_misaligned_rows(rng, scope, shape):
    """fspmm_prune in place on a contiguous matrix (ld = K) that starts 2 bytes past a 16-byte boundary: no
    16-byte accesses anywhere; the tensor scope works on both as rows of 2048 entries. Nothing is written
    around the matrix."""
    torch = pytest.importorskip("torch")
    m, k = shape
    bits = value_bits(rng, (m, k), "float16", "ties")
    want = cpu_prune_bits(bits, "float16", 0.6, scope)
    guard = np.array([0x1234], np.uint16), np.array([0x4321, 0x5678], np.uint16)
    buf = torch_from_bits(torch, np.concatenate([guard[0], bits.ravel(), guard[1]]), "float16")
    assert buf.data_ptr() % 16 == 0
    nbytes = _workspace_size(m, k, scope)
    ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
    status = lib.fspmm_prune(
        ffi.cast("void *", buf.data_ptr() + 2),
        m,
        k,
        k,
        lib.FSPMM_DTYPE_FLOAT16,
        0.6,
        SCOPE_CODES[scope],
        ffi.cast("void *", ws.data_ptr()),
        nbytes,
        ffi.cast("void *", torch.cuda.current_stream().cuda_stream),
    )
    assert status == lib.FSPMM_OK, ffi.string(lib.fspmm_last_error()).decode()
    torch.cuda.synchronize()
    got = _bits_of(torch, buf)
    np.testing.assert_array_equal(got[1 : 1 + m * k].reshape(m, k), want)
    np.testing.assert_array_equal(got[0:1], guard[0])
    np.testing.assert_array_equal(got[1 + m * k :], guard[1])


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
def test_c_api_rejects_a_small_workspace_and_writes_nothing(rng, framework):
    bits = value_bits(rng, (20, 30), "float16", "gaussian")
    w = on_device(framework, bits, "float16")
    nbytes = _workspace_size(20, 30, "tensor")
    ws = device_bytes(framework, np.zeros(nbytes, np.uint8))
    synchronize()
    status = lib.fspmm_prune(
        ffi.cast("void *", device_ptr(w)),
        20,
        30,
        30,
        lib.FSPMM_DTYPE_FLOAT16,
        0.5,
        lib.FSPMM_PRUNE_TENSOR,
        ffi.cast("void *", device_ptr(ws)),
        nbytes - 1,
        ffi.NULL,
    )
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "workspace too small" in ffi.string(lib.fspmm_last_error()).decode()
    synchronize()
    np.testing.assert_array_equal(host_bits(w), bits)


@pytest.mark.parametrize("shape", [(1000, 8200), (300, 30000), (2000, 9216)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_large_matrix_matches_cpu(rng, dtype, scope, shape):
    """Matrices of 8-9 M entries: whole 16-byte accesses, over a thousand work items (several groups of the
    tie pass), (fp16) tens of thousands of entries tied at the threshold magnitude, (300 x 30000) many rows
    per CTA of the opt-in stage, and (2000 x 9216) a contiguous matrix the tensor scope works on as rows of 2048
    entries."""
    torch = pytest.importorskip("torch")
    bits = value_bits(rng, shape, dtype, "gaussian")
    w = torch_from_bits(torch, bits, dtype)
    got = flashspmm.prune(w, 0.62, scope=scope)
    np.testing.assert_array_equal(_bits_of(torch, got), cpu_prune_bits(bits, dtype, 0.62, scope))
