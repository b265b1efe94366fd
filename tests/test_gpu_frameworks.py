"""GPU results in the caller's framework (torch, cupy, JAX): linear and compress round trips, mixed frameworks,
out= in place, pruning, saving and loading onto the device, and the errors for a wrong device, dtype or layout
(marked `gpu`; skipped without a device). Inputs come from the seeded `rng`; results are checked element by
element against float64 (_toolkit.assert_close)."""

import numpy as np
import pytest

import flashspmm
from _toolkit import (
    as_dtype,
    assert_bits_equal,
    assert_close,
    assert_on_cuda,
    bits_of,
    host_bits,
    on_device,
    random_bits,
    require,
    sliced,
    synchronize,
    to_f64,
    values,
    weight,
)

pytestmark = pytest.mark.gpu

FORMATS = ["bitmap", "tiled_csl", "auto"]
FRAMEWORK_DTYPES = [("torch", "float16"), ("torch", "bfloat16"), ("cupy", "float16"), ("jax", "float16")]


def device_values(rng, framework, shape, dtype="float16"):
    host, v64 = values(rng, shape, dtype)
    return on_device(framework, bits_of(host), dtype), v64


def sparse_weight(rng, M, K, dtype="float16", sparsity=0.7, fmt="auto"):
    """A pruned random weight: (bits [M, K], float64 values, SparseMatrix compressed on the CPU, not moved)."""
    bits, w64 = weight(rng, M, K, dtype, sparsity)
    return bits, w64, flashspmm.compress(bits, format=fmt, dtype=dtype)


# ---- pruning on the GPU ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["row", "tensor"])
def test_prune_torch_cuda_matches_cpu(rng, scope):
    torch = require("torch")
    w = as_dtype(random_bits(rng, (96, 130), "float16"), "float16")
    got = flashspmm.prune(torch.from_numpy(w.copy()).cuda(), 0.7, scope=scope)
    assert isinstance(got, torch.Tensor) and got.is_cuda and got.dtype == torch.float16
    assert_bits_equal(host_bits(got), bits_of(flashspmm.prune(w, 0.7, scope=scope)), "GPU vs CPU pruning")


def test_prune_cupy(rng):
    cp = require("cupy")
    w = as_dtype(random_bits(rng, (40, 64), "float16"), "float16")
    got = flashspmm.prune(cp.asarray(w), 0.5)
    assert isinstance(got, cp.ndarray)
    assert_bits_equal(host_bits(got), bits_of(flashspmm.prune(w, 0.5)), "GPU vs CPU pruning")


# ---- linear: the result comes back in x's framework ------------------------------------------------------------


@pytest.mark.parametrize("framework,dtype", FRAMEWORK_DTYPES)
@pytest.mark.parametrize("lead", [(7,), (2, 3)])
def test_linear_round_trip(rng, framework, dtype, lead):
    M, K = 200, 328
    _, w64, Wc = sparse_weight(rng, M, K, dtype)
    W = Wc.to("cuda")
    assert W.device == "cuda:0"
    x, x64 = device_values(rng, framework, lead + (K,), dtype)
    b, b64 = device_values(rng, framework, (M,), dtype)
    y = flashspmm.linear(x, W, b)
    assert_on_cuda(y, framework, dtype)
    assert tuple(y.shape) == lead + (M,)
    synchronize()
    assert_close(y, x64 @ w64.T + b64, dtype)


# ---- compress from device arrays: same blob as the CPU encoder, to_dense in the same framework -----------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("framework,dtype", FRAMEWORK_DTYPES)
def test_compress_round_trip(rng, framework, dtype, fmt):
    M, K = 136, 200
    bits, w64 = weight(rng, M, K, dtype, 0.75)
    W = flashspmm.compress(on_device(framework, bits, dtype), format=fmt)
    assert W.device == "cuda:0"
    cpu = flashspmm.compress(bits, format=fmt, dtype=dtype)
    assert (W.shape, W.dtype, W.format, W.nnz) == (cpu.shape, cpu.dtype, cpu.format, cpu.nnz)
    assert W.blob().tobytes() == cpu.blob().tobytes(), "the device encoder's blob differs from the CPU encoder's"

    dense = W.to_dense()
    assert_on_cuda(dense, framework, dtype)
    assert tuple(dense.shape) == (M, K)
    synchronize()
    assert_bits_equal(host_bits(dense), bits, "to_dense on the GPU")

    x, x64 = device_values(rng, framework, (5, K), dtype)
    y = flashspmm.linear(x, W)
    assert_on_cuda(y, framework, dtype)
    synchronize()
    assert_close(y, x64 @ w64.T, dtype)


@pytest.mark.parametrize("framework", ["torch", "cupy"])
def test_compress_strided_rows(rng, framework):
    M, K = 70, 130
    bits, _ = weight(rng, M, K + 40, "float16", 0.6)
    wide = on_device(framework, bits)
    w = sliced(wide, (slice(None), slice(5, K + 5)))  # row stride K + 40 and a 10-byte offset
    W = flashspmm.compress(w, format="bitmap")
    assert W.device == "cuda:0"
    expect = np.ascontiguousarray(bits[:, 5 : K + 5])
    assert W.blob().tobytes() == flashspmm.compress(expect, format="bitmap", dtype="float16").blob().tobytes()
    dense = W.to_dense()
    assert_on_cuda(dense, framework)
    synchronize()
    assert_bits_equal(host_bits(dense), expect, "to_dense of a strided device matrix")


# ---- mixed frameworks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x_from,w_from", [("torch", "cupy"), ("cupy", "torch")])
def test_mixed_frameworks(rng, x_from, w_from):
    require("torch")
    require("cupy")
    M, K = 150, 256
    wb, w64 = weight(rng, M, K, "float16", 0.7)
    W = flashspmm.compress(on_device(w_from, wb))
    assert W.device == "cuda:0"
    x, x64 = device_values(rng, x_from, (9, K))
    b, b64 = device_values(rng, w_from, (M,))
    y = flashspmm.linear(x, W, b)
    assert_on_cuda(y, x_from)
    synchronize()
    assert_close(y, x64 @ w64.T + b64, "float16")


# ---- out= in place ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework,lead", [("torch", (6,)), ("torch", (2, 3)), ("cupy", (6,)), ("cupy", (2, 3))])
def test_out_accumulates_in_place(rng, framework, lead):
    M, K = 190, 264
    _, w64, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda:0")
    x, x64 = device_values(rng, framework, lead + (K,))
    b, b64 = device_values(rng, framework, (M,))
    out, o64 = device_values(rng, framework, lead + (M,))
    alpha, beta = 0.75, -0.5
    got = flashspmm.linear(x, W, b, out=out, alpha=alpha, beta=beta)
    assert got is out
    synchronize()
    assert_close(out, alpha * (x64 @ w64.T) + b64 + beta * o64, "float16")


# ---- wrong device, dtype, layout ------------------------------------------------------------------------------------


def test_wrong_device_dtype_and_layout(rng):
    torch = require("torch")
    M, K, N = 64, 96, 4
    _, _, Wc = sparse_weight(rng, M, K)
    W = Wc.to("cuda")
    xb = random_bits(rng, (N, K), "float16")
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
    out = torch.full((M, N), 7.0, device="cuda", dtype=torch.float16)
    with pytest.raises(ValueError, match="contiguous"):
        flashspmm.linear(x, W, out=out.t())
    assert bool((out == 7.0).all()), "a refused call wrote its output"


# ---- save / load onto the device ------------------------------------------------------------------------------------


def test_device_save_load(rng, tmp_path):
    require("torch")
    M, K = 160, 224
    _, w64, Wc = sparse_weight(rng, M, K, sparsity=0.8, fmt="bitmap")
    _, v64, Vc = sparse_weight(rng, 96, K, sparsity=0.9, fmt="tiled_csl")
    path = tmp_path / "w.fspmm"
    Wc.save(path)

    W = flashspmm.load(path, device="cuda:0")
    assert W.device == "cuda:0" and W.format == "bitmap"
    assert W.to("cuda:0") is W and W.to("cuda") is W and W.to(0) is W
    assert W.to("cpu").blob().tobytes() == Wc.blob().tobytes() == path.read_bytes()
    assert_bits_equal(host_bits(W.to_dense()), Wc.to_dense(raw=True), "to_dense of a loaded matrix")
    x, x64 = device_values(rng, "torch", (3, K))
    assert_close(flashspmm.linear(x, W), x64 @ w64.T, "float16")

    model = tmp_path / "model.fspmm"
    flashspmm.save_model(model, {"w": W, "v": Vc.to("cuda:0")})
    layers = flashspmm.load_model(model, device="cuda:0")
    assert sorted(layers) == ["v", "w"]
    assert all(m.device == "cuda:0" for m in layers.values())
    assert layers["w"].blob().tobytes() == Wc.blob().tobytes()
    assert layers["v"].blob().tobytes() == Vc.blob().tobytes()
    assert_close(flashspmm.linear(x, layers["w"]), x64 @ w64.T, "float16")
    assert_close(flashspmm.linear(x, layers["v"]), x64 @ v64.T, "float16")
    only = flashspmm.load_model(model, device="cuda:0", names=["v"])
    assert list(only) == ["v"] and only["v"].device == "cuda:0"
    assert to_f64(host_bits(only["v"].to_dense()), "float16").shape == (96, K)
