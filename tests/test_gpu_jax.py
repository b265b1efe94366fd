"""flashspmm.jax on a CUDA device (marked `gpu`): jitted results equal to the eager flashspmm.linear bit for bit,
vmap / scan / grad / shard_map on the GPU, no host synchronisation inside a jitted step, a 1000-step jitted loop
without memory growth, and the decode example's timing mode.

Each case draws fresh inputs from the printed seed (the `rng` fixture).
"""

import os

# JAX would otherwise take 75 % of the GPU memory at its first use, leaving little to torch and cupy.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import flashspmm  # noqa: E402
from _toolkit import as_dtype, from_f32, require, sparse_bits, to_f64  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = {"float16": 1e-3, "bfloat16": 8e-3}
DTYPES = [
    "float16",
    pytest.param("bfloat16", marks=pytest.mark.skipif(ml_dtypes is None, reason="bfloat16 arrays need ml_dtypes")),
]
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples")
MiB = 1 << 20


@pytest.fixture(scope="module")
def jx():
    """(jax, jax.numpy, flashspmm.jax, the first GPU), or skip."""
    jax = require("jax")  # skips without JAX or without a GPU it can see
    gpus = jax.devices("gpu")
    import jax.numpy as jnp

    import flashspmm.jax as fj

    return jax, jnp, fj, gpus[0]


def bits(a):
    return np.ascontiguousarray(np.asarray(a)).view(np.uint16)


def rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def f64(a, dtype):
    return to_f64(bits(a), dtype)


def make(jx, rng, dtype, m, k, sparsity=0.6, fmt="auto", scale=1.0):
    """(SparseMatrix compressed on the GPU from a JAX array, the same blob as a JaxSparseMatrix, float64 W)."""
    jax, jnp, fj, gpu = jx
    w_bits, _ = sparse_bits(rng, m, k, dtype, sparsity, specials=False)
    if scale != 1.0:
        w_bits = from_f32(to_f64(w_bits, dtype).astype(np.float32) * scale, dtype)
        w_bits[w_bits == 0x8000] = 0  # an underflow to -0.0 would come back from to_dense as +0.0
    w_gpu = jax.device_put(as_dtype(w_bits, dtype), gpu)
    Ws = flashspmm.compress(w_gpu, format=fmt)  # the GPU encoder (DLPack input)
    assert Ws.device == f"cuda:{gpu.id}"
    W = fj.from_sparse(Ws, device=gpu)
    return Ws, W, to_f64(w_bits, dtype)


def rand(jx, rng, shape, dtype, scale=1.0):
    jax, _, _, gpu = jx
    b = from_f32(rng.standard_normal(shape, dtype=np.float32) * scale, dtype)
    return jax.device_put(as_dtype(b, dtype), gpu), to_f64(b, dtype)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("fmt,sparsity", [("bitmap", 0.5), ("bitmap", 0.99), ("tiled_csl", 0.9)])
@pytest.mark.parametrize("n", [1, 8, 33, 130])
@pytest.mark.parametrize("dtype", DTYPES)
def test_jit_equals_eager_bit_for_bit(jx, rng, dtype, n, fmt, sparsity, with_bias):
    jax, jnp, fj, gpu = jx
    m, k = 300, 520
    Ws, W, w64 = make(jx, rng, dtype, m, k, sparsity, fmt)
    x, x64 = rand(jx, rng, (n, k), dtype)
    bias, b64 = rand(jx, rng, (m,), dtype) if with_bias else (None, 0.0)
    y = jax.jit(fj.linear)(x, W, bias)
    assert y.devices() == {gpu} and y.shape == (n, m) and y.dtype == W.dtype
    eager = flashspmm.linear(x, Ws, bias)  # DLPack in, a JAX array out
    assert np.array_equal(bits(y), bits(eager))
    assert rel_err(f64(y, dtype), x64 @ w64.T + b64) <= TOL[dtype]
    assert np.array_equal(bits(fj.linear(x, W, bias)), bits(y))  # the un-jitted call too


@pytest.mark.parametrize("split_k", [1, 3, 8])
def test_split_k_and_accumulate(jx, rng, split_k):
    jax, jnp, fj, gpu = jx
    Ws, W, w64 = make(jx, rng, "float16", 256, 2048)
    x, x64 = rand(jx, rng, (16, 2048), "float16")
    out, o64 = rand(jx, rng, (16, 256), "float16")
    f = jax.jit(lambda x, o: fj.linear(x, W, alpha=0.5, beta=-1.0, out=o, split_k=split_k))
    y = f(x, out)
    torch = pytest.importorskip("torch")  # the eager path with beta needs a writable out: a torch tensor

    o_t = torch.from_numpy(bits(out).view(np.int16).copy()).view(torch.float16).to(f"cuda:{gpu.id}")
    x_t = torch.from_numpy(bits(x).view(np.int16).copy()).view(torch.float16).to(f"cuda:{gpu.id}")
    W_t = Ws.to(f"cuda:{gpu.id}")
    flashspmm.linear(x_t, W_t, out=o_t, alpha=0.5, beta=-1.0, split_k=split_k)
    torch.cuda.synchronize()
    assert np.array_equal(bits(y), o_t.view(torch.int16).cpu().numpy().view(np.uint16))
    assert rel_err(f64(y, "float16"), 0.5 * (x64 @ w64.T) - o64) <= TOL["float16"]


def test_vmap_scan_grad_to_dense(jx, rng):
    jax, jnp, fj, gpu = jx
    k = 256
    Ws, W, w64 = make(jx, rng, "float16", k, k, 0.5, scale=0.15)
    x, x64 = rand(jx, rng, (4, 3, k), "float16")
    # vmap: one launch with the batch folded into rows, the same bits as eager on the whole x
    yv = jax.jit(jax.vmap(lambda t: fj.linear(t, W)))(x)
    assert np.array_equal(bits(yv), bits(flashspmm.linear(x, Ws)))
    # scan: a chain of products, the same bits as the eager chain
    steps = 8
    ys, _ = jax.jit(lambda h: jax.lax.scan(lambda h, _: (fj.linear(h, W), None), h, None, length=steps))(x[0])
    h = x[0]
    for _ in range(steps):
        h = flashspmm.linear(h, Ws)
    assert np.abs(np.asarray(h, dtype=np.float32)).max() > 0
    assert np.array_equal(bits(ys), bits(h))
    # grad for x: alpha * dy @ W
    c = rng.standard_normal((3, k)).astype(np.float32)
    gx = jax.jit(jax.grad(lambda t: jnp.sum(fj.linear(t, W).astype(jnp.float32) * c)))(x[0])
    assert rel_err(f64(gx, "float16"), c.astype(np.float64) @ w64) <= TOL["float16"]
    # to_dense: the matrix back, bit for bit
    expected = from_f32(w64.astype(np.float32), "float16")
    assert np.array_equal(bits(jax.jit(fj.to_dense)(W)), expected)
    assert np.array_equal(bits(W.to_dense()), expected)


def test_shard_map_on_one_gpu(jx, rng):
    jax, jnp, fj, gpu = jx
    from jax.sharding import PartitionSpec as P

    mesh = jax.sharding.Mesh(np.array([gpu]), ("tp",))
    w_bits, _ = sparse_bits(rng, 192, 320, "float16", 0.7, specials=False)
    w = jax.device_put(as_dtype(w_bits, "float16"), gpu)
    Wr = fj.shard_rows(w, mesh, "tp")
    Wc = fj.shard_cols(w, mesh, "tp")
    x, x64 = rand(jx, rng, (5, 320), "float16")
    x_rep = jax.device_put(x, jax.sharding.NamedSharding(mesh, P()))
    x_split = jax.device_put(x, jax.sharding.NamedSharding(mesh, P(None, "tp")))
    rows = jax.jit(
        jax.shard_map(lambda x, W: fj.linear(x, W), mesh=mesh, in_specs=(P(), Wr.spec), out_specs=P(None, "tp"))
    )(x_rep, Wr)
    cols = jax.jit(
        jax.shard_map(
            lambda x, W: jax.lax.psum(fj.linear(x, W), "tp"),
            mesh=mesh,
            in_specs=(P(None, "tp"), Wc.spec),
            out_specs=P(),
        )
    )(x_split, Wc)
    eager = flashspmm.linear(x, flashspmm.compress(w, format=Wr.format))
    assert np.array_equal(bits(rows), bits(eager)) and np.array_equal(bits(cols), bits(eager))


def test_pytree_moves_to_the_gpu_and_pickles(jx, rng):
    jax, jnp, fj, gpu = jx
    import pickle

    w_bits, _ = sparse_bits(rng, 130, 250, "float16", 0.6, specials=False)
    Ws = flashspmm.compress(as_dtype(w_bits, "float16"))  # the CPU encoder
    W_cpu = fj.from_sparse(Ws, device=jax.devices("cpu")[0])
    W = jax.device_put(W_cpu, gpu)
    assert isinstance(W, fj.JaxSparseMatrix) and W.blob.devices() == {gpu}
    x, _ = rand(jx, rng, (7, 250), "float16")
    y = jax.jit(fj.linear)(x, W)
    assert y.devices() == {gpu}
    assert np.array_equal(bits(y), bits(flashspmm.linear(x, Ws.to(f"cuda:{gpu.id}"))))
    again = jax.device_put(pickle.loads(pickle.dumps(W)), gpu)
    assert np.array_equal(bits(jax.jit(fj.linear)(x, again)), bits(y))


def _busy(jax, jnp, gpu, iterations):
    """A jitted chain of float32 matmuls (unrolled: a straight-line program the host only enqueues) and its
    input; the chain's result stays finite."""
    a = jax.device_put(jnp.eye(8192, dtype=jnp.float32) * 0.5 + 1e-4, gpu)

    @jax.jit
    def busy(a):
        for _ in range(iterations):
            a = jnp.tanh(jnp.matmul(a, a, precision=jax.lax.Precision.HIGHEST))
        return a

    return busy, a


def _timed_busy(jax, jnp, gpu):
    """(busy function, its input, seconds it runs on the device) with at least 0.3 s of device work."""
    iterations = 16
    for _ in range(4):
        busy, a = _busy(jax, jnp, gpu, iterations)
        jax.block_until_ready(busy(a))  # compile
        t0 = time.perf_counter()
        jax.block_until_ready(busy(a))
        seconds = time.perf_counter() - t0
        if seconds >= 0.3:
            return busy, a, seconds
        iterations *= 2
    pytest.skip(f"could not make 0.3 s of device work ({seconds:.3f} s with {iterations // 2} matmuls)")


def test_no_host_synchronisation(jx, rng):
    """A jitted linear enqueued behind long device work returns at once: its handler neither waits for the
    stream nor copies anything to the host."""
    jax, jnp, fj, gpu = jx
    Ws, W, _ = make(jx, rng, "float16", 4096, 4096, 0.7)
    x, _ = rand(jx, rng, (8, 4096), "float16")
    lin = jax.jit(fj.linear)
    jax.block_until_ready(lin(x, W))
    busy, a, busy_seconds = _timed_busy(jax, jnp, gpu)

    # 1. a separate jitted linear dispatched while the busy program runs on the same device
    t0 = time.perf_counter()
    pending = busy(a)
    t_busy_dispatch = time.perf_counter() - t0
    y = lin(x, W)
    t_linear = time.perf_counter() - t0 - t_busy_dispatch
    jax.block_until_ready((pending, y))
    t_total = time.perf_counter() - t0
    if t_busy_dispatch > 0.5 * busy_seconds:
        pytest.skip("this JAX waits while dispatching the busy program; asynchrony cannot be observed")
    assert t_total >= 0.5 * busy_seconds
    assert t_linear < 0.25 * t_total, (t_linear, t_total)

    # 2. inside one jitted step, the linear ordered after the busy work by a data dependency
    @jax.jit
    def step(a, x):
        a = busy(a)
        x = x + (a[0, 0] * 0).astype(x.dtype)
        return fj.linear(x, W), a

    jax.block_until_ready(step(a, x))
    t0 = time.perf_counter()
    out = step(a, x)
    t_dispatch = time.perf_counter() - t0
    jax.block_until_ready(out)
    t_total = time.perf_counter() - t0
    assert t_total >= 0.5 * busy_seconds
    assert t_dispatch < 0.25 * t_total, (t_dispatch, t_total)
    assert np.array_equal(bits(out[0]), bits(flashspmm.linear(x, Ws)))


def test_jitted_loop_of_1000_steps_without_memory_growth(jx, rng):
    jax, jnp, fj, gpu = jx
    stats = gpu.memory_stats()
    if not stats or "bytes_in_use" not in stats:
        pytest.skip("this JAX reports no device memory statistics")
    k = 1024
    Ws, W, _ = make(jx, rng, "float16", k, k, 0.7, scale=0.5)
    x, _ = rand(jx, rng, (8, k), "float16")

    def scale(h):  # exact power-of-two normalisation (max |h| into [1, 2)): no vanishing, no overflow
        hf = h.astype(jnp.float32)
        exponent = (jax.lax.bitcast_convert_type(jnp.max(jnp.abs(hf)), jnp.int32) >> 23) & 0xFF
        factor = jax.lax.bitcast_convert_type((254 - exponent) << 23, jnp.float32)  # exactly 2^(127 - exponent)
        return (hf * factor).astype(h.dtype)

    step = jax.jit(lambda h: scale(fj.linear(h, W)), donate_argnums=0)
    h = jnp.array(x)
    for _ in range(10):
        h = step(h)
    jax.block_until_ready(h)
    before = gpu.memory_stats()["bytes_in_use"]
    for _ in range(990):
        h = step(h)
    jax.block_until_ready(h)
    after = gpu.memory_stats()["bytes_in_use"]
    assert after - before <= 1 * MiB, f"device memory grew by {after - before} bytes over 990 steps"

    # the same 1000 steps inside one jitted loop, and eagerly through flashspmm.linear
    looped = jax.jit(lambda h: jax.lax.fori_loop(0, 1000, lambda i, h: scale(fj.linear(h, W)), h))(x)
    scale_jit = jax.jit(scale)
    e = x
    for _ in range(1000):
        e = scale_jit(flashspmm.linear(e, Ws))
    assert np.abs(np.asarray(e, dtype=np.float32)).max() > 0
    assert np.array_equal(bits(h), bits(e)) and np.array_equal(bits(looped), bits(e))
    assert gpu.memory_stats()["bytes_in_use"] - after <= 16 * MiB


def test_decode_example_checks_and_times(jx):
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    r = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "jax_decode.py"), "--time", "--repeats", "2", "--iters", "5"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed" in r.stdout and "sparse/dense jit" in r.stdout
