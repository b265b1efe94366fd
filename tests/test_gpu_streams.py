"""Stream ordering and CUDA graphs on the GPU: the current stream of torch and cupy, an explicit stream= (object or
int), and capture / replay under torch (marked `gpu`; skipped without a device). The inputs are produced by a long
chain of work on the stream, so a call that is not ordered after it reads unfinished data."""

import numpy as np
import pytest

import flashspmm
from _toolkit import assert_close, bits_of, host_bits, on_device, require, sub_seed, synchronize, to_f64, values, weight

pytestmark = pytest.mark.gpu


def device_weight(rng, M, K, sparsity=0.7):
    bits, w64 = weight(rng, M, K, "float16", sparsity)
    return w64, flashspmm.compress(bits, dtype="float16").to("cuda")


def workspace_bytes(W, N, split_k=0):
    """Split-K workspace the library plans for W and N on device 0 (the one place these tests ask for it)."""
    return W.plan_info(N, split_k=split_k)["workspace_bytes"]


def torch_slow_x(torch, rng, N, K):
    """[N, K] float16 (row stride 4096) at the end of a long chain of work on torch's current stream."""
    g = torch.Generator(device="cuda").manual_seed(sub_seed(rng))
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(20_000_000)  # keep the stream busy a few ms more
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16, generator=g)
    c = a
    for _ in range(4):
        c = (c @ a) * (1.0 / 64)  # entries stay about N(0, 1)
    return c[:N, :K]


def cupy_slow_x(cp, rng, N, K):
    """Like torch_slow_x, on cupy's current stream."""
    a = cp.random.RandomState(sub_seed(rng) % 2**31).standard_normal((4096, 4096), dtype=cp.float32)
    a = a.astype(cp.float16)
    c = a
    for _ in range(4):
        c = (c @ a) * cp.float16(1.0 / 64)
    return c[:N, :K]


def f64(a):
    return to_f64(host_bits(a), "float16")


def test_torch_current_stream_orders_producer_and_consumer(rng):
    torch = require("torch")
    M, K, N = 512, 1024, 8
    w64, W = device_weight(rng, M, K)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch_slow_x(torch, rng, N, K)
        y = flashspmm.linear(x, W)
        consumed = y.float() * 2  # read on the same stream, before any host synchronisation
    s.synchronize()
    ref = f64(x) @ w64.T
    assert_close(y, ref, "float16")
    assert_close(consumed.double().cpu().numpy() / 2, ref, "float16")


@pytest.mark.parametrize("as_int", [False, True])
def test_torch_explicit_stream(rng, as_int):
    torch = require("torch")
    M, K, N = 512, 1024, 8
    w64, W = device_weight(rng, M, K)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch_slow_x(torch, rng, N, K)
    # x is still being produced on s; the call is made from the default stream but ordered on s
    y = flashspmm.linear(x, W, stream=s.cuda_stream if as_int else s)
    s.synchronize()
    assert_close(y, f64(x) @ w64.T, "float16")


@pytest.mark.parametrize("how", ["stream_object", "current_stream"])
def test_cupy_streams(rng, how):
    cp = require("cupy")
    M, K, N = 512, 1024, 8
    w64, W = device_weight(rng, M, K)
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
    ref = f64(x) @ w64.T
    assert_close(y, ref, "float16")
    if how == "current_stream":
        assert_close(cp.asnumpy(consumed).astype(np.float64) / 2, ref, "float16")


# ---- CUDA graphs under torch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("M,K,N", [(512, 1024, 4), (256, 16384, 4)])
@pytest.mark.parametrize("with_out", [True, False])
def test_torch_cuda_graph_capture(rng, M, K, N, with_out):
    torch = require("torch")
    w64, W = device_weight(rng, M, K, sparsity=0.8)
    if K == 16384:
        assert workspace_bytes(W, N) > 0, "this shape was chosen to need a split-K workspace"
    x_host, _ = values(rng, (N, K), "float16")
    x = on_device("torch", bits_of(x_host))
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
        new_host, n64 = values(rng, (N, K), "float16")
        x.copy_(on_device("torch", bits_of(new_host)))
        y.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        assert_close(y, n64 @ w64.T, "float16")
    synchronize()
