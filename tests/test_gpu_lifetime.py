"""Device memory lifetime: no growth over many create / use / destroy cycles of matrices, results and DLPack
exports (marked `gpu`; skipped without a device)."""

import gc

import pytest

import flashspmm
from _toolkit import CudaArrayOnly, assert_close, bits_of, on_device, require, values, weight
from flashspmm import _dlpack

pytestmark = pytest.mark.gpu

MiB = 1 << 20
CYCLES = 10_000


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_create_destroy_cycles_do_not_leak(rng, framework):
    torch = require("torch")
    cp = require("cupy") if framework == "cupy" else None
    M = K = 64
    wb, w64 = weight(rng, M, K, "float16", 0.5)
    x_host, x64 = values(rng, (4, K), "float16")
    xb = bits_of(x_host)
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
    assert_close(y, x64 @ w64.T, "float16")
    del y
    free1, used1, live1 = measure()
    assert free0 - free1 < 8 * MiB, f"free device memory fell by {(free0 - free1) / MiB:.1f} MiB"
    assert used1 - used0 < 8 * MiB, f"framework-allocated memory grew by {(used1 - used0) / MiB:.1f} MiB"
    assert live1 == live0, "DLPack exports were never released"
