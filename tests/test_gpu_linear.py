"""GPU SpMM kernels against a float64 reference (marked `gpu`; skipped without a device).

Every case draws fresh random inputs, poisons the output with NaN, and compares
||y - ref|| / ||ref|| with the dtype's tolerance.
"""
import os
import zlib

import numpy as np
import pytest

import flashspmm

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

TOL = {"float16": 1e-3, "bfloat16": 8e-3}
TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# "bitmap:<decoder>" forces one of the bitmap decoders (FSPMM_BITMAP_DECODER).
FORMATS = ["bitmap:rows", "bitmap:scatter", "bitmap:direct", "tiled_csl"]


@pytest.fixture(autouse=True)
def _restore_decoder_env(monkeypatch):
    monkeypatch.setenv("FSPMM_BITMAP_DECODER", "")  # undone after each test: the density rule applies
    yield


def compress_as(w, fmt):
    """Compress w in fmt ("format" or "format:decoder"), selecting the bitmap decoder for later launches."""
    base, _, decoder = fmt.partition(":")
    if decoder:
        os.environ["FSPMM_BITMAP_DECODER"] = decoder
    else:
        os.environ.pop("FSPMM_BITMAP_DECODER", None)
    return flashspmm.compress(w, format=base)


def _rng(request):
    # A different seed per test case, stable across runs of the same case.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def random_pruned(rng, M, K, sparsity, dtype):
    """Dense [M, K] torch CUDA weight with exactly round(sparsity * M * K) zeros at random places."""
    w = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32)).to(TORCH_DTYPE[dtype])
    zeros = int(round(sparsity * M * K))
    if zeros:
        flat = w.view(-1)
        flat[torch.from_numpy(rng.permutation(M * K)[:zeros])] = 0
    return w.cuda()


def reference(x, w, bias=None, alpha=1.0, beta=0.0, y0=None):
    ref = alpha * (x.double() @ w.double().T)
    if bias is not None:
        ref += bias.double()
    if beta != 0.0:
        ref += beta * y0.double()
    return ref


def check_close(y, ref, dtype):
    assert not torch.isnan(y).any(), "output has NaN (unwritten or poisoned elements)"
    err = (y.double() - ref).norm().item()
    scale = ref.norm().item()
    if scale == 0.0:
        assert err == 0.0
    else:
        assert err / scale <= TOL[dtype], f"relative error {err / scale:.3e} > {TOL[dtype]}"


def run_case(rng, M, K, N, sparsity, dtype, fmt, bias=False, alpha=1.0, split_k=0):
    w = random_pruned(rng, M, K, sparsity, dtype)
    W = compress_as(w, fmt)
    assert W.device.startswith("cuda") and W.format == fmt.partition(":")[0] and W.shape == (M, K)
    x = torch.randn(N, K, device="cuda").to(TORCH_DTYPE[dtype])
    b = torch.randn(M, device="cuda").to(TORCH_DTYPE[dtype]) if bias else None
    y = torch.full((N, M), float("nan"), device="cuda", dtype=TORCH_DTYPE[dtype])
    out = flashspmm.linear(x, W, b, out=y, alpha=alpha, split_k=split_k)
    assert out.data_ptr() == y.data_ptr()
    torch.cuda.synchronize()
    check_close(y, reference(x, w, b, alpha), dtype)
    return W, x, y


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("N", [1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 65, 128, 200])
def test_every_n(request, fmt, N):
    run_case(_rng(request), 257, 200, N, 0.7, "float16", fmt, bias=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_sparsity(request, dtype, fmt, sparsity):
    run_case(_rng(request), 1000, 999, 17, sparsity, dtype, fmt)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("M,K", [(1, 1), (1, 300), (300, 1), (64, 64), (65, 63), (127, 129), (130, 4100),
                                 (4096, 4096)])
def test_shapes(request, dtype, fmt, M, K):
    run_case(_rng(request), M, K, 9, 0.6, dtype, fmt, bias=True, alpha=0.5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("N", [24, 64])
def test_shapes_wide_n_tiles(request, dtype, fmt, N):
    # 32- and 64-token tiles (the warpgroup MMA on sm_90a), a CTA whose second stripe lies past M.
    run_case(_rng(request), 130, 4100, N, 0.6, dtype, fmt, bias=True, alpha=0.5)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("split_k", [1, 2, 3, 7, 64])
def test_split_k_and_determinism(request, fmt, split_k):
    W, x, y = run_case(_rng(request), 300, 4096, 24, 0.8, "float16", fmt, split_k=split_k)
    first = y.clone()
    for _ in range(3):
        y.fill_(float("nan"))
        flashspmm.linear(x, W, out=y, split_k=split_k)
        torch.cuda.synchronize()
        assert torch.equal(y.view(torch.int16), first.view(torch.int16)), "repeated launches differ"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_alpha_beta_bias(request, dtype, fmt):
    rng = _rng(request)
    M, K, N = 333, 520, 12
    w = random_pruned(rng, M, K, 0.75, dtype)
    W = compress_as(w, fmt)
    x = torch.randn(N, K, device="cuda").to(TORCH_DTYPE[dtype])
    b = torch.randn(M, device="cuda").to(TORCH_DTYPE[dtype])
    y0 = torch.randn(N, M, device="cuda").to(TORCH_DTYPE[dtype])
    y = y0.clone()
    flashspmm.linear(x, W, b, out=y, alpha=-1.5, beta=0.25)
    torch.cuda.synchronize()
    check_close(y, reference(x, w, b, -1.5, 0.25, y0), dtype)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("K", [512, 520, 301])  # K % 64 != 0: a partial last x tile; K % 8 != 0: no 16-byte rows
@pytest.mark.parametrize("offset", [0, 3, 8])  # x starts 16-byte aligned (TMA on sm_90 where ldx allows), or not
def test_leading_dimensions(request, fmt, K, offset):
    # x is a view into a larger buffer whose other elements (columns past K, rows past N) are NaN: reading any
    # of them would poison y (0 * NaN), so this also checks that every x path stops at the view's edges.
    rng = _rng(request)
    M, N = 200, 5
    w = random_pruned(rng, M, K, 0.5, "float16")
    W = compress_as(w, fmt)
    ldx = (K + offset + 7) // 8 * 8 + 16  # a multiple of 8
    xbig = torch.full((N + 3, ldx), float("nan"), device="cuda", dtype=torch.float16)
    x = xbig[:N, offset:offset + K]
    x.copy_(torch.randn(N, K, device="cuda", dtype=torch.float16))
    ybig = torch.full((N, M + 40), float("nan"), device="cuda", dtype=torch.float16)
    y = ybig[:, :M]
    flashspmm.linear(x, W, out=y)
    torch.cuda.synchronize()
    check_close(y, reference(x, w), "float16")
    assert torch.isnan(ybig[:, M:]).all(), "wrote outside the output view"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("ypad,yoff", [(40, 0), (42, 0), (40, 1), (41, 3)])
@pytest.mark.parametrize("N", [5, 40])
def test_split_k_output_layouts(request, fmt, ypad, yoff, N):
    # The split-K epilogue writes y four rows at a time (8-byte stores) where the leading dimension and the
    # alignment of y allow it, else element by element: the same result either way, nothing outside the view.
    rng = _rng(request)
    M, K = 260, 2048
    w = random_pruned(rng, M, K, 0.7, "float16")
    W = compress_as(w, fmt)
    x = torch.randn(N, K, device="cuda", dtype=torch.float16)
    b = torch.randn(M, device="cuda", dtype=torch.float16)
    y0 = torch.randn(N, M, device="cuda", dtype=torch.float16)
    ybig = torch.full((N, M + ypad), float("nan"), device="cuda", dtype=torch.float16)
    y = ybig[:, yoff:yoff + M]  # ldy = M + ypad, y offset by yoff elements
    y.copy_(y0)
    flashspmm.linear(x, W, b, out=y, alpha=0.5, beta=-0.25, split_k=3)
    torch.cuda.synchronize()
    check_close(y, reference(x, w, b, 0.5, -0.25, y0), "float16")
    assert torch.isnan(ybig[:, :yoff]).all() and torch.isnan(ybig[:, yoff + M:]).all(), "wrote outside the view"


def test_one_dimensional_x_returns_torch(request):
    rng = _rng(request)
    w = random_pruned(rng, 96, 80, 0.5, "float16")
    W = flashspmm.compress(w)
    x = torch.randn(80, device="cuda", dtype=torch.float16)
    y = flashspmm.linear(x, W)
    assert isinstance(y, torch.Tensor) and y.shape == (96,) and y.is_cuda and y.dtype == torch.float16
    check_close(y, reference(x[None], w)[0], "float16")


def test_cuda_graph_capture(request):
    rng = _rng(request)
    w = random_pruned(rng, 512, 1024, 0.8, "float16")
    W = flashspmm.compress(w)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.float16)
    y = torch.empty(4, 512, device="cuda", dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        flashspmm.linear(x, W, out=y)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        flashspmm.linear(x, W, out=y)
    x.copy_(torch.randn_like(x))
    y.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    check_close(y, reference(x, w), "float16")


def test_cupy_inputs(request):
    cp = pytest.importorskip("cupy")
    rng = _rng(request)
    w = random_pruned(rng, 130, 260, 0.6, "float16")
    W = flashspmm.compress(w)
    x = cp.asarray(rng.standard_normal((7, 260)).astype(np.float16))
    y = flashspmm.linear(x, W)
    assert isinstance(y, cp.ndarray) and y.shape == (7, 130)
    ref = x.get().astype(np.float64) @ w.double().cpu().numpy().T
    err = np.linalg.norm(cp.asnumpy(y).astype(np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-3


def test_device_roundtrip_and_save(request, tmp_path):
    rng = _rng(request)
    w = random_pruned(rng, 70, 90, 0.9, "bfloat16")
    W = flashspmm.compress(w)
    assert W.device.startswith("cuda")
    dense = W.to_dense()  # decompressed on the GPU, returned as a torch tensor like w
    assert isinstance(dense, torch.Tensor) and dense.is_cuda and dense.dtype == torch.bfloat16
    assert torch.equal(dense.view(torch.int16), w.view(torch.int16))
    host = W.to("cpu").to_dense(raw=True)
    assert np.array_equal(host, w.view(torch.int16).cpu().numpy().view(np.uint16))
    path = tmp_path / "w.fspmm"
    W.save(path)
    W2 = flashspmm.load(path, device="cuda")
    assert W2.nbytes == W.nbytes and W2.device.startswith("cuda")
    x = torch.randn(3, 90, device="cuda").to(torch.bfloat16)
    check_close(flashspmm.linear(x, W2), reference(x, w), "bfloat16")


# ---- N = 1: the CUDA-core kernel (gemv.cu); FSPMM_GEMV=1 forces it, 0 selects the MMA kernels ------------

@pytest.mark.parametrize("gemv", ["1", "0", ""])  # "": the default rule
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("M,K,sparsity", [(1, 1, 0.0), (65, 63, 0.5), (257, 300, 0.0), (300, 4100, 0.9),
                                          (130, 700, 0.99), (64, 64, 1.0), (1000, 999, 0.7)])
def test_one_token(request, monkeypatch, gemv, dtype, fmt, M, K, sparsity):
    monkeypatch.setenv("FSPMM_GEMV", gemv)
    rng = _rng(request)
    w = random_pruned(rng, M, K, sparsity, dtype)
    W = flashspmm.compress(w, format=fmt)
    base = torch.randn(K + 1, device="cuda").to(TORCH_DTYPE[dtype])
    x = base[1:]  # 2-byte aligned only
    b = torch.randn(M, device="cuda").to(TORCH_DTYPE[dtype])
    y0 = torch.randn(M, device="cuda").to(TORCH_DTYPE[dtype])
    for split_k in (0, 1, 3):
        y = y0.clone()
        flashspmm.linear(x, W, b, out=y, alpha=0.75, beta=-0.5, split_k=split_k)
        torch.cuda.synchronize()
        check_close(y[None], reference(x[None], w, b, 0.75, -0.5, y0[None]), dtype)
        first = y.clone()
        y.copy_(y0)
        flashspmm.linear(x, W, b, out=y, alpha=0.75, beta=-0.5, split_k=split_k)
        torch.cuda.synchronize()
        assert torch.equal(y.view(torch.int16), first.view(torch.int16)), "repeated launches differ"
