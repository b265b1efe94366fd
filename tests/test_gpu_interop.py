"""GPU interop: torch, cupy, JAX, __cuda_array_interface__ and DLPack inputs and outputs, streams, CUDA graphs,
device memory lifetime (marked `gpu`; skipped without a device).

Every case draws fresh random inputs from the `rng` fixture and compares with a float64 numpy reference:
||y - ref|| / ||ref|| <= 1e-3 (float16) or 8e-3 (bfloat16).
"""
import gc
import os

# JAX would otherwise take 75 % of the GPU memory at its first use, leaving little to torch and cupy.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import flashspmm  # noqa: E402
from flashspmm import _dlpack, _native  # noqa: E402
from flashspmm._arrays import DeviceBuffer  # noqa: E402
from _data import from_f32, to_f64  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = {"float16": 1e-3, "bfloat16": 8e-3}
FORMATS = ["bitmap", "tiled_csl", "auto"]
MiB = 1 << 20


# ---- helpers ----------------------------------------------------------------------------------------------

def jax_gpu():
    """(jax, its first GPU device), or skip."""
    jax = pytest.importorskip("jax")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if not gpus:
        pytest.skip("JAX sees no GPU")
    return jax, gpus[0]


def half_bits(rng, shape, dtype="float16", sparsity=0.0):
    """Random normal `dtype` values as uint16 bits, with about `sparsity` of them +0.0 (never -0.0),
    and their exact float64 values."""
    f = rng.standard_normal(shape, dtype=np.float32)
    if sparsity:
        f[rng.random(shape) < sparsity] = 0.0
    bits = from_f32(f, dtype)
    bits[bits == 0x8000] = 0  # an underflow to -0.0 would not survive a round trip bit for bit
    return bits, to_f64(bits, dtype)


def on_device(framework, bits, dtype="float16"):
    """uint16 bits as a CUDA array of `framework` ("torch", "cupy", "jax") holding `dtype` values."""
    bits = np.ascontiguousarray(bits)
    if framework == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(bits.view(np.int16)).view(getattr(torch, dtype)).to("cuda:0")
    assert dtype == "float16", f"{framework} arrays are float16 in these tests"
    if framework == "cupy":
        cp = pytest.importorskip("cupy")
        with cp.cuda.Device(0):
            return cp.asarray(bits.view(np.float16))
    if framework == "jax":
        jax, gpu = jax_gpu()
        return jax.device_put(bits.view(np.float16), gpu)
    raise ValueError(framework)


def framework_of(a):
    return type(a).__module__.split(".", 1)[0]


def host_bits(a):
    """The uint16 bit patterns of a 16-bit array of any framework, copied to the host."""
    module = framework_of(a)
    if module == "torch":
        import torch

        return a.detach().contiguous().view(torch.int16).cpu().numpy().view(np.uint16)
    if module == "cupy":
        import cupy

        return cupy.asnumpy(a).view(np.uint16)
    host = np.asarray(a)  # numpy, JAX
    assert host.dtype.itemsize == 2, host.dtype
    return np.ascontiguousarray(host).view(np.uint16)


def assert_close(y, ref, dtype="float16"):
    got = to_f64(host_bits(y), dtype)
    assert got.shape == ref.shape
    assert np.isfinite(got).all(), "output has NaN/Inf (unwritten or poisoned elements)"
    scale = np.linalg.norm(ref)
    err = np.linalg.norm(got - ref) / scale if scale else np.linalg.norm(got)
    assert err <= TOL[dtype], f"relative error {err:.3e} > {TOL[dtype]}"


def sparse_weight(rng, M, K, dtype="float16", sparsity=0.7, fmt="auto"):
    """A pruned random weight: (bits [M, K], float64 values, SparseMatrix compressed on the CPU, not moved)."""
    bits, w64 = half_bits(rng, (M, K), dtype, sparsity)
    return bits, w64, flashspmm.compress(bits, format=fmt, dtype=dtype)


def assert_on_cuda(y, framework, dtype="float16"):
    """y is a CUDA array of `framework` with `dtype`."""
    assert framework_of(y) in ((framework,) if framework != "jax" else ("jax", "jaxlib")), type(y)
    if framework == "torch":
        import torch

        assert isinstance(y, torch.Tensor) and y.is_cuda and y.dtype == getattr(torch, dtype)
    elif framework == "cupy":
        import cupy

        assert isinstance(y, cupy.ndarray) and y.device.id == 0 and y.dtype == np.float16
    else:
        import jax

        assert isinstance(y, jax.Array) and all(d.platform == "gpu" for d in y.devices())
        assert str(y.dtype) == dtype


class CudaArrayOnly:
    """An array that offers nothing but __cuda_array_interface__ (like a numba device array)."""

    def __init__(self, tensor):
        self.tensor = tensor

    @property
    def __cuda_array_interface__(self):
        return self.tensor.__cuda_array_interface__


def workspace_bytes(W, N, split_k=0):
    size = _native.ffi.new("size_t *")
    with _native.on_device(0):
        _native.check(_native.lib.fspmm_linear_workspace_size(W.header, N, split_k, size))
    return int(size[0])


# ---- existing: prune on the GPU, JAX through DLPack ----------------------------------------------------------

@pytest.mark.parametrize("scope", ["row", "tensor"])
def test_prune_torch_cuda_matches_cpu(rng, scope):
    torch = pytest.importorskip("torch")
    w = rng.standard_normal((96, 130)).astype(np.float16)
    got = flashspmm.prune(torch.from_numpy(w).cuda(), 0.7, scope=scope)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.float16
    np.testing.assert_array_equal(got.cpu().numpy().view(np.uint16),
                                  flashspmm.prune(w, 0.7, scope=scope).view(np.uint16))


def test_prune_cupy(rng):
    cp = pytest.importorskip("cupy")
    w = rng.standard_normal((40, 64)).astype(np.float16)
    got = flashspmm.prune(cp.asarray(w), 0.5)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(got), flashspmm.prune(w, 0.5))


def test_jax_linear_and_prune_through_dlpack(rng):
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX sees no GPU")
    w = flashspmm.prune(rng.standard_normal((256, 320)).astype(np.float16), 0.7)
    W = flashspmm.compress(w).to("cuda")
    x = jnp.asarray(rng.standard_normal((5, 320)).astype(np.float16))
    y = flashspmm.linear(x, W)
    assert isinstance(y, jax.Array) and y.shape == (5, 256)
    ref = np.asarray(x, dtype=np.float64) @ w.astype(np.float64).T
    err = np.linalg.norm(np.asarray(y, dtype=np.float64) - ref) / np.linalg.norm(ref)
    assert err <= 1e-3
    p = flashspmm.prune(jnp.asarray(rng.standard_normal((32, 48)).astype(np.float16)), 0.5)
    assert isinstance(p, jax.Array) and int((np.asarray(p) == 0).sum()) == 32 * 24


# ---- 1. linear: the result comes back in x's framework -------------------------------------------------------

@pytest.mark.parametrize("framework,dtype", [("torch", "float16"), ("torch", "bfloat16"), ("cupy", "float16"),
                                             ("jax", "float16")])
@pytest.mark.parametrize("lead", [(7,), (2, 3)])
def test_linear_round_trip(rng, framework, dtype, lead):
    M, K = 200, 328
    _, w64, Wc = sparse_weight(rng, M, K, dtype)
    W = Wc.to("cuda")
    assert W.device == "cuda:0"
    xb, x64 = half_bits(rng, lead + (K,), dtype)
    bb, b64 = half_bits(rng, (M,), dtype)
    x, b = on_device(framework, xb, dtype), on_device(framework, bb, dtype)
    y = flashspmm.linear(x, W, b)
    assert_on_cuda(y, framework, dtype)
    assert tuple(y.shape) == lead + (M,)
    assert_close(y, x64 @ w64.T + b64, dtype)


# ---- 2. compress from device arrays: same blob as the CPU encoder, to_dense in the same framework -----------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("framework,dtype", [("torch", "float16"), ("torch", "bfloat16"), ("cupy", "float16"),
                                             ("jax", "float16")])
def test_compress_round_trip(rng, framework, dtype, fmt):
    M, K = 136, 200
    bits, w64 = half_bits(rng, (M, K), dtype, sparsity=0.75)
    w_dev = on_device(framework, bits, dtype)
    W = flashspmm.compress(w_dev, format=fmt)
    assert W.device == "cuda:0"
    cpu = flashspmm.compress(bits, format=fmt, dtype=dtype)
    assert (W.shape, W.dtype, W.format, W.nnz) == (cpu.shape, cpu.dtype, cpu.format, cpu.nnz)
    assert W.blob().tobytes() == cpu.blob().tobytes(), "the device encoder's blob differs from the CPU encoder's"

    dense = W.to_dense()
    assert_on_cuda(dense, framework, dtype)
    assert tuple(dense.shape) == (M, K)
    np.testing.assert_array_equal(host_bits(dense), bits)

    xb, x64 = half_bits(rng, (5, K), dtype)
    y = flashspmm.linear(on_device(framework, xb, dtype), W)
    assert_on_cuda(y, framework, dtype)
    assert_close(y, x64 @ w64.T, dtype)


def test_compress_strided_torch_rows(rng):
    torch = pytest.importorskip("torch")
    M, K = 70, 130
    bits, _ = half_bits(rng, (M, K + 40), sparsity=0.6)
    wide = on_device("torch", bits)
    w = wide[:, 5:K + 5]  # row stride K + 40 and a 10-byte offset
    W = flashspmm.compress(w, format="bitmap")
    assert W.device == "cuda:0"
    expect = np.ascontiguousarray(bits[:, 5:K + 5])
    assert W.blob().tobytes() == flashspmm.compress(expect, format="bitmap", dtype="float16").blob().tobytes()
    dense = W.to_dense()
    assert isinstance(dense, torch.Tensor)
    np.testing.assert_array_equal(host_bits(dense), expect)


# ---- 3. mixed frameworks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("x_from,w_from", [("torch", "cupy"), ("cupy", "torch")])
def test_mixed_frameworks(rng, x_from, w_from):
    pytest.importorskip("torch")
    pytest.importorskip("cupy")
    M, K = 150, 256
    wb, w64 = half_bits(rng, (M, K), sparsity=0.7)
    W = flashspmm.compress(on_device(w_from, wb))
    assert W.device == "cuda:0"
    xb, x64 = half_bits(rng, (9, K))
    bb, b64 = half_bits(rng, (M,))
    y = flashspmm.linear(on_device(x_from, xb), W, on_device(w_from, bb))
    assert_on_cuda(y, x_from)
    assert_close(y, x64 @ w64.T + b64)


# ---- 4. out= in place ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("framework,lead", [("torch", (6,)), ("torch", (2, 3)), ("cupy", (6,)), ("cupy", (2, 3))])
def test_out_accumulates_in_place(rng, framework, lead):
    M, K = 190, 264
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda:0")
    xb, x64 = half_bits(rng, lead + (K,))
    bb, b64 = half_bits(rng, (M,))
    ob, o64 = half_bits(rng, lead + (M,))
    out = on_device(framework, ob)
    alpha, beta = 0.75, -0.5
    got = flashspmm.linear(on_device(framework, xb), W, on_device(framework, bb), out=out, alpha=alpha, beta=beta)
    assert got is out
    assert_close(out, alpha * (x64 @ w64.T) + b64 + beta * o64)


def test_jax_out_is_refused(rng):
    jax, _ = jax_gpu()
    M, K = 64, 96
    _, _, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda:0")
    xb, _ = half_bits(rng, (3, K))
    ob, _ = half_bits(rng, (3, M))
    out = on_device("jax", ob)
    with pytest.raises(ValueError, match="read-only|immutable"):
        flashspmm.linear(on_device("jax", xb), W, out=out)
    np.testing.assert_array_equal(host_bits(out), ob)  # untouched


# ---- 5. streams ----------------------------------------------------------------------------------------------

def torch_slow_x(torch, rng, N, K):
    """[N, K] float16 (row stride 4096) at the end of a long chain of work on torch's current stream."""
    g = torch.Generator(device="cuda").manual_seed(int(rng.integers(2**62)))
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(20_000_000)  # keep the stream busy a few ms more
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16, generator=g)
    c = a
    for _ in range(4):
        c = (c @ a) * (1.0 / 64)  # entries stay about N(0, 1)
    return c[:N, :K]


def cupy_slow_x(cp, rng, N, K):
    """Like torch_slow_x, on cupy's current stream."""
    a = cp.random.RandomState(int(rng.integers(2**31))).standard_normal((4096, 4096), dtype=cp.float32)
    a = a.astype(cp.float16)
    c = a
    for _ in range(4):
        c = (c @ a) * cp.float16(1.0 / 64)
    return c[:N, :K]


def torch_f64(t):
    return t.double().cpu().numpy()


def test_torch_current_stream_orders_producer_and_consumer(rng):
    torch = pytest.importorskip("torch")
    M, K, N = 512, 1024, 8
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch_slow_x(torch, rng, N, K)
        y = flashspmm.linear(x, W)
        consumed = y.float() * 2  # read on the same stream, before any host synchronisation
    s.synchronize()
    ref = torch_f64(x) @ w64.T
    assert_close(y, ref)
    got = consumed.double().cpu().numpy() / 2
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= TOL["float16"]


@pytest.mark.parametrize("as_int", [False, True])
def test_torch_explicit_stream(rng, as_int):
    torch = pytest.importorskip("torch")
    M, K, N = 512, 1024, 8
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch_slow_x(torch, rng, N, K)
    # x is still being produced on s; the call is made from the default stream but ordered on s
    y = flashspmm.linear(x, W, stream=s.cuda_stream if as_int else s)
    s.synchronize()
    assert_close(y, torch_f64(x) @ w64.T)


@pytest.mark.parametrize("how", ["stream_object", "current_stream"])
def test_cupy_streams(rng, how):
    cp = pytest.importorskip("cupy")
    M, K, N = 512, 1024, 8
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    cp.cuda.Device(0).synchronize()
    cs = cp.cuda.Stream(non_blocking=True)
    with cs:
        x = cupy_slow_x(cp, rng, N, K)
        if how == "current_stream":
            y = flashspmm.linear(x, W)
            consumed = y.astype(cp.float32) * 2
    if how == "stream_object":
        y = flashspmm.linear(x, W, stream=cs)  # called on the null stream, ordered on cs
    cs.synchronize()
    ref = cp.asnumpy(x).astype(np.float64) @ w64.T
    assert_close(y, ref)
    if how == "current_stream":
        got = cp.asnumpy(consumed).astype(np.float64) / 2
        assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= TOL["float16"]


# ---- 6. CUDA graphs under torch ------------------------------------------------------------------------------

@pytest.mark.parametrize("M,K,N", [(512, 1024, 4), (256, 16384, 4)])
@pytest.mark.parametrize("with_out", [True, False])
def test_torch_cuda_graph_capture(rng, M, K, N, with_out):
    torch = pytest.importorskip("torch")
    _, w64, Wc = sparse_weight(rng, M, K, sparsity=0.8)
    W = Wc.to("cuda")
    if K == 16384:
        assert workspace_bytes(W, N) > 0, "this shape was chosen to need a split-K workspace"
    xb, _ = half_bits(rng, (N, K))
    x = on_device("torch", xb)
    y_static = torch.empty(N, M, device="cuda", dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside the capture
        flashspmm.linear(x, W, out=y_static if with_out else None)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()

    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = flashspmm.linear(x, W, out=y_static if with_out else None)
    if with_out:
        assert y is y_static
    for _ in range(2):
        nb, n64 = half_bits(rng, (N, K))
        x.copy_(on_device("torch", nb))
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(y, n64 @ w64.T)


# ---- 7. no device memory growth over many create / destroy cycles --------------------------------------------

CYCLES = 10_000


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_create_destroy_cycles_do_not_leak(rng, framework):
    torch = pytest.importorskip("torch")
    cp = pytest.importorskip("cupy") if framework == "cupy" else None
    M = K = 64
    wb, w64 = half_bits(rng, (M, K), sparsity=0.5)
    xb, x64 = half_bits(rng, (4, K))
    w_dev, x_dev = on_device(framework, wb), on_device(framework, xb)
    x_cai = CudaArrayOnly(on_device("torch", xb))

    def cycle(i):
        if i % 2:
            W = flashspmm.compress(wb, dtype="float16").to("cuda")  # flashspmm-owned device blob
        else:
            W = flashspmm.compress(w_dev)  # compressed on the GPU, blob from w's framework
        y = flashspmm.linear(x_dev, W)
        if i % 4 == 0:
            flashspmm.linear(x_cai, W)  # a DeviceBuffer result, freed when collected
        return y

    def measure():
        gc.collect()
        torch.cuda.synchronize()
        if cp is not None:
            cp.cuda.Device(0).synchronize()
        used = torch.cuda.memory_allocated()
        if cp is not None:
            used += cp.get_default_memory_pool().used_bytes()
        return torch.cuda.mem_get_info()[0], used, _dlpack.live_exports()

    for i in range(100):  # warm-up: caching allocators, kernel attributes, ...
        cycle(i)
    free0, used0, live0 = measure()
    for i in range(CYCLES):
        y = cycle(i)
    assert_close(y, x64 @ w64.T)
    del y
    free1, used1, live1 = measure()
    assert free0 - free1 < 8 * MiB, f"free device memory fell by {(free0 - free1) / MiB:.1f} MiB"
    assert used1 - used0 < 8 * MiB, f"framework-allocated memory grew by {(used1 - used0) / MiB:.1f} MiB"
    assert live1 == live0, "DLPack exports were never released"


# ---- 8. DLPack capsules --------------------------------------------------------------------------------------

def test_legacy_capsule_consumed_twice(rng):
    torch = pytest.importorskip("torch")
    M, K = 96, 160
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    xb, x64 = half_bits(rng, (5, K))
    x = on_device("torch", xb)
    torch.cuda.synchronize()
    cap = torch.utils.dlpack.to_dlpack(x)
    y = flashspmm.linear(cap, W)
    assert isinstance(y, DeviceBuffer) and y.shape == (5, M)
    assert_close(torch.from_dlpack(y), x64 @ w64.T)
    with pytest.raises(ValueError, match="already consumed"):
        flashspmm.linear(cap, W)


def test_versioned_capsule_consumed_twice(rng):
    torch = pytest.importorskip("torch")
    M, K = 96, 160
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    xb, x64 = half_bits(rng, (5, K))
    x = on_device("torch", xb)
    torch.cuda.synchronize()
    try:
        cap = x.__dlpack__(max_version=(1, 0))
    except TypeError:
        pytest.skip("this torch does not export versioned DLPack capsules")
    if not _dlpack._capsule_is_valid(cap, b"dltensor_versioned"):
        pytest.skip("this torch answered max_version=(1, 0) with a legacy capsule")
    y = flashspmm.linear(cap, W)
    assert isinstance(y, DeviceBuffer)
    assert_close(torch.from_dlpack(y), x64 @ w64.T)
    with pytest.raises(ValueError, match="already consumed"):
        flashspmm.linear(cap, W)


# ---- 9. DeviceBuffer results (inputs with only __cuda_array_interface__) --------------------------------------

def test_device_buffer_export(rng):
    torch = pytest.importorskip("torch")
    M, K = 120, 200
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    xb, x64 = half_bits(rng, (6, K))
    bb, b64 = half_bits(rng, (M,))
    x_t = on_device("torch", xb)
    live0 = _dlpack.live_exports()
    y = flashspmm.linear(CudaArrayOnly(x_t), W, CudaArrayOnly(on_device("torch", bb)))
    assert isinstance(y, DeviceBuffer) and y.shape == (6, M) and y.dtype == "float16"
    ref = x64 @ w64.T + b64

    t = torch.from_dlpack(y)
    assert t.is_cuda and t.dtype == torch.float16 and t.data_ptr() == y.ptr  # zero-copy
    assert_close(t, ref)
    cai = y.__cuda_array_interface__
    assert cai["data"][0] == y.ptr and tuple(cai["shape"]) == (6, M)

    cp = None
    try:
        import cupy as cp
    except ImportError:
        pass
    if cp is not None:
        c = cp.from_dlpack(y)
        assert isinstance(c, cp.ndarray) and c.data.ptr == y.ptr
        assert_close(c, ref)
        del c
    del t
    gc.collect()
    assert _dlpack.live_exports() == live0, "a consumer's deleter did not release the export"


def test_device_buffer_export_to_jax(rng):
    pytest.importorskip("torch")
    jax, _ = jax_gpu()
    M, K = 72, 136
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    xb, x64 = half_bits(rng, (3, 2, K))
    y = flashspmm.linear(CudaArrayOnly(on_device("torch", xb)), W)
    assert isinstance(y, DeviceBuffer) and y.shape == (3, 2, M)
    j = jax.dlpack.from_dlpack(y)
    assert isinstance(j, jax.Array) and j.shape == (3, 2, M) and str(j.dtype) == "float16"
    assert_close(j, x64 @ w64.T)


# ---- 10. wrong device, dtype, layout --------------------------------------------------------------------------

def test_wrong_device_dtype_and_layout(rng):
    torch = pytest.importorskip("torch")
    M, K, N = 64, 96, 4
    _, _, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    xb, _ = half_bits(rng, (N, K))
    x = on_device("torch", xb)

    with pytest.raises(TypeError, match="float16"):
        flashspmm.linear(x.float(), W)
    with pytest.raises(TypeError, match="bfloat16"):
        flashspmm.linear(x.to(torch.bfloat16), W)  # dtype differs from W's
    with pytest.raises(ValueError, match=r"\.to\("):
        flashspmm.linear(x, Wc)  # W still on the CPU
    with pytest.raises(ValueError, match="host"):
        flashspmm.linear(xb.view(np.float16), W)  # numpy x with a device W
    with pytest.raises(ValueError, match="bias"):
        flashspmm.linear(x, W, torch.zeros(M, dtype=torch.float16))  # bias on the CPU
    xt = on_device("torch", np.ascontiguousarray(xb.T))  # [K, N]
    assert xt.t().stride() == (1, N)
    with pytest.raises(ValueError, match="contiguous"):
        flashspmm.linear(xt.t(), W)
    with pytest.raises(ValueError, match="contiguous"):
        flashspmm.linear(x, W, out=torch.empty(M, N, device="cuda", dtype=torch.float16).t())


# ---- 11. save / load onto the device --------------------------------------------------------------------------

def test_device_save_load(rng, tmp_path):
    pytest.importorskip("torch")
    M, K = 160, 224
    _, w64, Wc = sparse_weight(rng, M, K, sparsity=0.8, fmt="bitmap")
    _, v64, Vc = sparse_weight(rng, 96, K, sparsity=0.9, fmt="tiled_csl")
    path = tmp_path / "w.fspmm"
    Wc.save(path)

    W = flashspmm.load(path, device="cuda:0")
    assert W.device == "cuda:0" and W.format == "bitmap"
    assert W.to("cuda:0") is W and W.to("cuda") is W and W.to(0) is W
    assert W.to("cpu").blob().tobytes() == Wc.blob().tobytes() == path.read_bytes()
    np.testing.assert_array_equal(host_bits(W.to_dense()), host_bits(Wc.to_dense(raw=True)))
    xb, x64 = half_bits(rng, (3, K))
    x = on_device("torch", xb)
    assert_close(flashspmm.linear(x, W), x64 @ w64.T)

    model = tmp_path / "model.fspmm"
    flashspmm.save_model(model, {"w": W, "v": Vc.to("cuda:0")})
    layers = flashspmm.load_model(model, device="cuda:0")
    assert sorted(layers) == ["v", "w"]
    assert all(m.device == "cuda:0" for m in layers.values())
    assert layers["w"].blob().tobytes() == Wc.blob().tobytes()
    assert layers["v"].blob().tobytes() == Vc.blob().tobytes()
    assert_close(flashspmm.linear(x, layers["w"]), x64 @ w64.T)
    assert_close(flashspmm.linear(x, layers["v"]), x64 @ v64.T)
    only = flashspmm.load_model(model, device="cuda:0", names=["v"])
    assert list(only) == ["v"] and only["v"].device == "cuda:0"


# ---- raw device pointers (flashspmm.from_pointer) -----------------------------------------------------------

def test_from_pointer_device_views(rng):
    torch = pytest.importorskip("torch")
    bits, w64, W = sparse_weight(rng, 150, 200)
    W = W.to("cuda:0")
    xb, x64 = half_bits(rng, (5, 200))
    x = on_device("torch", xb)
    out = torch.full((5, 150), float("nan"), dtype=torch.float16, device="cuda:0")
    xv = flashspmm.from_pointer(x.data_ptr(), x.shape, "float16", device="cuda:0")
    assert isinstance(xv, flashspmm.ExternalArray) and xv.__cuda_array_interface__["strides"] == (400, 2)
    y = flashspmm.linear(xv, W)  # flashspmm allocates the result: a DeviceBuffer any library can import
    assert isinstance(y, DeviceBuffer)
    assert_close(torch.from_dlpack(y), x64 @ w64.T)
    ov = flashspmm.from_pointer(out.data_ptr(), out.shape, "float16", device=0)
    assert flashspmm.linear(xv, W, out=ov) is ov
    torch.cuda.synchronize()
    assert_close(out, x64 @ w64.T)
    ro = flashspmm.from_pointer(out.data_ptr(), out.shape, "float16", readonly=True)
    with pytest.raises(ValueError, match="read-only"):
        flashspmm.linear(xv, W, out=ro)
    # a strided weight given by address compresses on the GPU like the tensor itself
    wide = torch.zeros((150, 256), dtype=torch.float16, device="cuda:0")
    wide[:, :200] = on_device("torch", bits)
    wv = flashspmm.from_pointer(wide.data_ptr(), (150, 200), "float16", strides=(256, 1))
    assert flashspmm.compress(wv).blob().tobytes() == flashspmm.compress(bits, dtype="float16").blob().tobytes()
