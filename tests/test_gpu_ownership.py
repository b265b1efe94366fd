"""Stream ordering and ownership on the GPU: every buffer a queued kernel reads stays alive and ordered."""

import numpy as np
import pytest

import flashspmm
from _toolkit import rows_decoder_built

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")


def _reference(x, w):
    return (x.double() @ w.double().T).float()


def _check(y, ref):
    err = (y.float() - ref).abs().max().item()
    assert err <= 2e-2 * max(1.0, ref.abs().max().item()), f"max error {err}"


def _busy(stream, ms=50):
    """Queue a kernel that keeps `stream` busy for about `ms` milliseconds."""
    with torch.cuda.stream(stream):
        torch.cuda._sleep(int(ms * 1.5e6))


def test_side_stream_with_a_copied_x():
    gen = torch.Generator(device="cuda").manual_seed(11)
    w = flashspmm.prune(torch.randn(512, 384, device="cuda", generator=gen, dtype=torch.float16), 0.6)
    W = flashspmm.compress(w)
    big = torch.randn(3, 8, 384, device="cuda", generator=gen, dtype=torch.float16)
    x = big[:, :4, :]  # rows that cannot be flattened: linear copies x
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    _busy(s)
    y = flashspmm.linear(x, W, stream=s)
    torch.cuda.current_stream().wait_stream(s)
    junk = [torch.full((4096, 4096), float("nan"), device="cuda", dtype=torch.float16) for _ in range(4)]
    s.synchronize()
    del junk
    _check(y.reshape(12, 512), _reference(x.reshape(12, 384), w))


def test_blob_outlives_a_side_stream_call():
    gen = torch.Generator(device="cuda").manual_seed(12)
    w = flashspmm.prune(torch.randn(1024, 1024, device="cuda", generator=gen, dtype=torch.float16), 0.5)
    W = flashspmm.compress(w)
    nbytes = W.nbytes
    x = torch.randn(8, 1024, device="cuda", generator=gen, dtype=torch.float16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    _busy(s)
    y = torch.empty(8, 1024, device="cuda", dtype=torch.float16)
    flashspmm.linear(x, W, out=y, stream=s)
    del W  # the caching allocator must not hand the blob's memory out before s has run
    junk = [torch.full((nbytes,), 0xFF, device="cuda", dtype=torch.uint8) for _ in range(8)]
    s.synchronize()
    del junk
    _check(y, _reference(x, w))


def test_plan_options_choose_the_kernel():
    gen = torch.Generator(device="cuda").manual_seed(13)
    w = flashspmm.prune(torch.randn(256, 512, device="cuda", generator=gen, dtype=torch.float16), 0.9)
    Wb = flashspmm.compress(w, format="bitmap")
    Wc = flashspmm.compress(w, format="tiled_csl")
    x1 = torch.randn(1, 512, device="cuda", generator=gen, dtype=torch.float16)
    x16 = torch.randn(16, 512, device="cuda", generator=gen, dtype=torch.float16)
    for decoder in ("direct", "scatter") + (("rows",) if rows_decoder_built() else ()):
        assert Wb.plan_info(16, decoder=decoder)["decoder"] == decoder
        _check(flashspmm.linear(x16, Wb, decoder=decoder), _reference(x16, w))
    assert Wc.plan_info(1)["kernel"] == "cuda_core"  # Tiled-CSL at 10 % density, one token
    assert Wc.plan_info(1, kernel="tensor_core")["kernel"] == "tensor_core"
    assert Wb.plan_info(1, kernel="cuda_core")["kernel"] == "cuda_core"
    assert Wb.plan_info(16, kernel="cuda_core")["kernel"] == "tensor_core"
    for kernel in ("tensor_core", "cuda_core"):
        _check(flashspmm.linear(x1, Wc, kernel=kernel), _reference(x1, w))
        _check(flashspmm.linear(x1, Wb, kernel=kernel), _reference(x1, w))
    with pytest.raises(flashspmm.Error, match="bitmap matrices only"):
        flashspmm.linear(x16, Wc, decoder="direct")
    assert Wb.plan_info(16, split_k=3)["split_k"] == 3


def test_graph_capture_with_cached_plans():
    gen = torch.Generator(device="cuda").manual_seed(14)
    w = flashspmm.prune(torch.randn(2048, 1024, device="cuda", generator=gen, dtype=torch.float16), 0.7)
    W = flashspmm.compress(w)
    x = torch.randn(4, 1024, device="cuda", generator=gen, dtype=torch.float16)
    flashspmm.linear(x, W)  # plans made outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = flashspmm.linear(x, W, split_k=4)
    x.copy_(torch.randn(4, 1024, device="cuda", generator=gen, dtype=torch.float16))
    g.replay()
    torch.cuda.synchronize()
    _check(y, _reference(x, w))


def test_matrix_from_a_device_array_and_corrupt_offsets():
    gen = torch.Generator(device="cuda").manual_seed(15)
    w = flashspmm.prune(torch.randn(130, 200, device="cuda", generator=gen, dtype=torch.float16), 0.5)
    W = flashspmm.compress(w)
    V = flashspmm.SparseMatrix.from_array(W.blob_array)
    assert V.device == W.device and torch.equal(V.to_dense(), W.to_dense())
    bad = W.blob_array.clone()
    bad[128 + 8] = 0xFF  # the first tile's end offset: out of range
    with pytest.raises(flashspmm.Error) as info:
        flashspmm.SparseMatrix.from_array(bad)
    assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER"


def test_cai_only_arrays_name_their_device():
    cupy = pytest.importorskip("cupy")
    w = cupy.asarray(flashspmm.prune(np.random.default_rng(16).standard_normal((64, 64)).astype(np.float16), 0.5))

    class CAIOnly:
        def __init__(self, a):
            self.__cuda_array_interface__ = a.__cuda_array_interface__

    W = flashspmm.compress(CAIOnly(w))
    assert W.device == f"cuda:{w.device.id}"


def test_jax_to_dense_is_ready_for_jax():
    jax = pytest.importorskip("jax")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("JAX has no GPU here")
    import jax.numpy as jnp

    rng = np.random.default_rng(17)
    w = flashspmm.prune(rng.standard_normal((2048, 2048)).astype(np.float16), 0.5)
    wj = jax.device_put(jnp.asarray(w), jax.devices("gpu")[0])
    W = flashspmm.compress(wj)
    for _ in range(3):
        d = W.to_dense()
        assert np.array_equal(np.asarray(d), w)
