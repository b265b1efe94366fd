"""flashspmm.jax on JAX's CPU backend: jit, vmap, scan, grad, to_dense, pytree round trips, trace-time errors.

Every jitted result is compared bit for bit with the eager flashspmm.linear on numpy (the same C++ reference
runs behind the XLA custom call) and with a float64 reference. Skipped when JAX is not installed.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on GPU machines: leave GPU memory alone

import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402

import flashspmm  # noqa: E402
import flashspmm.jax as fj  # noqa: E402
from _toolkit import as_dtype, from_f32, sparse_bits, to_f64  # noqa: E402

TOL = {"float16": 1e-3, "bfloat16": 8e-3}
DTYPES = [
    "float16",
    pytest.param("bfloat16", marks=pytest.mark.skipif(ml_dtypes is None, reason="bfloat16 arrays need ml_dtypes")),
]
EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples")


@pytest.fixture(autouse=True)
def cpu():
    """Run every test on JAX's CPU backend (also on machines with a GPU)."""
    device = jax.devices("cpu")[0]
    with jax.default_device(device):
        yield device


def bits(a):
    return np.ascontiguousarray(np.asarray(a)).view(np.uint16)


def rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))


def make(rng, dtype, m, k, sparsity=0.6, fmt="auto", scale=1.0):
    """(numpy W, flashspmm.SparseMatrix, JaxSparseMatrix, float64 W) of a random sparse matrix."""
    w_bits, _ = sparse_bits(rng, m, k, dtype, sparsity, specials=False)
    if scale != 1.0:
        w_bits = from_f32(to_f64(w_bits, dtype).astype(np.float32) * scale, dtype)
        w_bits[w_bits == 0x8000] = 0  # an underflow to -0.0 is not stored
    w = as_dtype(w_bits, dtype)
    Ws = flashspmm.compress(w, format=fmt)
    return w, Ws, fj.from_sparse(Ws), to_f64(w_bits, dtype)


def rand(rng, shape, dtype, scale=1.0):
    b = from_f32(rng.standard_normal(shape, dtype=np.float32) * scale, dtype)
    return as_dtype(b, dtype), to_f64(b, dtype)


def f64(a, dtype):
    return to_f64(bits(a), dtype)


# ---- linear ---------------------------------------------------------------------------------------------------


def test_import_flashspmm_does_not_import_jax():
    code = (
        "import sys, flashspmm; assert 'jax' not in sys.modules, 'flashspmm imported jax'; "
        "import flashspmm.jax; assert 'jax' in sys.modules; print('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n", [1, 5, 70])
@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_equals_eager_bit_for_bit(rng, dtype, fmt, n, with_bias, jit):
    m, k = 97, 203
    _, Ws, W, w64 = make(rng, dtype, m, k, fmt=fmt)
    x, x64 = rand(rng, (n, k), dtype)
    bias, b64 = rand(rng, (m,), dtype) if with_bias else (None, 0.0)
    f = jax.jit(fj.linear) if jit else fj.linear
    y = f(x, W, bias)
    assert isinstance(y, jax.Array) and y.shape == (n, m) and y.dtype == W.dtype
    eager = flashspmm.linear(x, Ws, bias)
    assert np.array_equal(bits(y), bits(eager))
    assert rel_err(f64(y, dtype), x64 @ w64.T + b64) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha,beta", [(0.5, 0.0), (1.0, 1.0), (-2.0, 0.25)])
def test_alpha_beta_out(rng, dtype, alpha, beta):
    n, m, k = 6, 130, 70
    _, Ws, W, w64 = make(rng, dtype, m, k)
    x, x64 = rand(rng, (n, k), dtype)
    bias, b64 = rand(rng, (m,), dtype)
    out, o64 = rand(rng, (n, m), dtype)
    f = jax.jit(lambda x, W, b, o: fj.linear(x, W, b, alpha=alpha, beta=beta, out=o))
    y = f(x, W, bias, out)
    assert np.array_equal(bits(out), bits(as_dtype(from_f32(o64.astype(np.float32), dtype), dtype)))  # not written
    eager = flashspmm.linear(x, Ws, bias, out=out.copy(), alpha=alpha, beta=beta)
    assert np.array_equal(bits(y), bits(eager))
    assert rel_err(f64(y, dtype), alpha * (x64 @ w64.T) + b64 + beta * o64) <= TOL[dtype]


def test_beta_zero_ignores_out(rng):
    _, Ws, W, _ = make(rng, "float16", 64, 64)
    x, _ = rand(rng, (3, 64), "float16")
    poison = np.full((3, 64), np.nan, dtype=np.float16)
    y = jax.jit(lambda x, o: fj.linear(x, W, out=o))(x, poison)
    assert np.isfinite(np.asarray(y, dtype=np.float32)).all()
    assert np.array_equal(bits(y), bits(flashspmm.linear(x, Ws)))


@pytest.mark.parametrize("shape", [(203,), (2, 3, 203), (1, 1, 4, 203)])
def test_any_leading_dimensions(rng, shape):
    _, Ws, W, _ = make(rng, "float16", 97, 203)
    x, _ = rand(rng, shape, "float16")
    y = jax.jit(fj.linear)(x, W)
    assert y.shape == shape[:-1] + (97,)
    assert np.array_equal(bits(y), bits(flashspmm.linear(x, Ws)))


def test_empty_x(rng):
    _, _, W, _ = make(rng, "float16", 40, 50)
    y = jax.jit(fj.linear)(jnp.zeros((0, 50), jnp.float16), W)
    assert y.shape == (0, 40)


def test_split_k_does_not_change_cpu_results(rng):
    _, Ws, W, _ = make(rng, "float16", 70, 300)
    x, _ = rand(rng, (4, 300), "float16")
    y = jax.jit(lambda x: fj.linear(x, W, split_k=3))(x)
    assert np.array_equal(bits(y), bits(flashspmm.linear(x, Ws)))


def test_lowered_program_holds_the_custom_call(rng):
    _, _, W, _ = make(rng, "float16", 64, 64)
    x, _ = rand(rng, (2, 64), "float16")
    text = jax.jit(fj.linear).lower(x, W).as_text()
    assert "flashspmm_linear" in text


# ---- vmap, scan -----------------------------------------------------------------------------------------------


def test_vmap_folds_batch_into_rows(rng):
    _, Ws, W, _ = make(rng, "float16", 97, 203)
    x, _ = rand(rng, (5, 3, 203), "float16")
    bias, _ = rand(rng, (97,), "float16")
    f = jax.vmap(lambda x: fj.linear(x, W, bias))
    y = jax.jit(f)(x)
    assert y.shape == (5, 3, 97)
    assert np.array_equal(bits(y), bits(flashspmm.linear(x, Ws, bias)))
    # one FFI call per platform branch (cpu, cuda): the batch is one launch, not a loop
    assert str(jax.make_jaxpr(f)(x)).count("ffi_call[") == 2


def test_vmap_axes_and_nesting(rng):
    _, Ws, W, _ = make(rng, "float16", 64, 130)
    x, _ = rand(rng, (3, 4, 2, 130), "float16")
    f = jax.vmap(jax.vmap(lambda x: fj.linear(x, W), in_axes=1), in_axes=2)  # x[:, :, j] then x[:, i]
    y = jax.jit(f)(x)
    expected = flashspmm.linear(np.ascontiguousarray(np.transpose(x, (2, 1, 0, 3))), Ws)
    assert y.shape == (2, 4, 3, 64)
    assert np.array_equal(bits(y), bits(expected))


def test_vmap_with_batched_out_and_bias(rng):
    n, m, k, b = 3, 80, 96, 4
    _, Ws, W, w64 = make(rng, "float16", m, k)
    x, x64 = rand(rng, (b, n, k), "float16")
    out, o64 = rand(rng, (b, n, m), "float16")
    y = jax.jit(jax.vmap(lambda x, o: fj.linear(x, W, beta=0.5, out=o)))(x, out)
    assert np.array_equal(bits(y), bits(flashspmm.linear(x, Ws, beta=0.5, out=out.copy())))
    # a bias per batch element (added after the product: compared with float64 only)
    bias, b64 = rand(rng, (b, m), "float16")
    y = jax.jit(jax.vmap(lambda x, bb: fj.linear(x, W, bb)))(x, bias)
    assert rel_err(f64(y, "float16"), x64 @ w64.T + b64[:, None, :]) <= TOL["float16"]
    # only the bias batched: x is broadcast
    y = jax.vmap(lambda bb: fj.linear(x[0], W, bb))(bias)
    assert rel_err(f64(y, "float16"), x64[0] @ w64.T + b64[:, None, :]) <= TOL["float16"]


def test_vmap_over_W_is_an_error(rng):
    _, _, W, _ = make(rng, "float16", 64, 64)
    x, _ = rand(rng, (2, 64), "float16")
    blobs = jnp.stack([W.blob, W.blob])
    with pytest.raises(ValueError, match="vmap over W"):
        jax.vmap(lambda blob: fj.linear(x, fj.JaxSparseMatrix(blob, W.header)))(blobs)


def test_scan_and_fori_loop(rng):
    k = 96
    _, Ws, W, _ = make(rng, "float16", k, k, sparsity=0.5, scale=0.2)
    x, _ = rand(rng, (4, k), "float16")
    steps = 6
    ys, _ = jax.jit(lambda h: jax.lax.scan(lambda h, _: (fj.linear(h, W), None), h, None, length=steps))(x)
    yf = jax.jit(lambda h: jax.lax.fori_loop(0, steps, lambda i, h: fj.linear(h, W), h))(x)
    h = x
    for _ in range(steps):
        h = flashspmm.linear(h, Ws)
    assert np.abs(np.asarray(h, dtype=np.float32)).max() > 0  # the chain did not vanish
    assert np.array_equal(bits(ys), bits(h)) and np.array_equal(bits(yf), bits(h))


# ---- grad -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_for_x_bias_and_out(rng, dtype):
    n, m, k = 5, 90, 140
    alpha, beta = 0.75, -0.5
    _, _, W, w64 = make(rng, dtype, m, k)
    x, _ = rand(rng, (n, k), dtype)
    bias, _ = rand(rng, (m,), dtype)
    out, _ = rand(rng, (n, m), dtype)
    c = rng.standard_normal((n, m)).astype(np.float32)

    def loss(x, bias, out):
        y = fj.linear(x, W, bias, alpha=alpha, beta=beta, out=out)
        return jnp.sum(y.astype(jnp.float32) * c)

    gx, gb, go = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, bias, out)
    c64 = c.astype(np.float64)
    assert gx.dtype == x.dtype and gb.dtype == bias.dtype and go.dtype == out.dtype
    assert rel_err(f64(gx, dtype), alpha * c64 @ w64) <= TOL[dtype]
    assert rel_err(f64(gb, dtype), c64.sum(axis=0)) <= TOL[dtype]
    assert rel_err(f64(go, dtype), beta * c64) <= TOL[dtype]
    # under vmap too
    gv = jax.vmap(jax.grad(lambda x: jnp.sum(fj.linear(x, W).astype(jnp.float32))))(x)
    assert rel_err(f64(gv, dtype), np.broadcast_to(w64.sum(axis=0), (n, k))) <= TOL[dtype]


def test_grad_with_respect_to_W_is_a_clear_error(rng):
    _, _, W, _ = make(rng, "float16", 32, 32)
    x, _ = rand(rng, (2, 32), "float16")
    with pytest.raises(TypeError, match="uint8|integer|real"):
        jax.grad(lambda W: jnp.sum(fj.linear(x, W).astype(jnp.float32)))(W)


# ---- to_dense -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dense_exact(rng, dtype, fmt):
    w_bits, expected = sparse_bits(rng, 77, 150, dtype, 0.7, specials=True)  # NaN, Inf, subnormals, -0.0
    W = fj.compress(as_dtype(w_bits, dtype), format=fmt)
    assert W.format == fmt and W.dtype == jnp.dtype(dtype)
    assert np.array_equal(bits(W.to_dense()), expected)
    assert np.array_equal(bits(jax.jit(fj.to_dense)(W)), expected)


# ---- pytree ---------------------------------------------------------------------------------------------------


def test_pytree_flatten_device_put_pickle(rng, cpu):
    _, Ws, W, _ = make(rng, "float16", 70, 90)
    leaves, tree = jax.tree_util.tree_flatten(W)
    assert len(leaves) == 1 and leaves[0] is W.blob and leaves[0].dtype == jnp.uint8
    W2 = jax.tree_util.tree_unflatten(tree, leaves)
    assert isinstance(W2, fj.JaxSparseMatrix) and W2.header == W.header and W2.shape == (70, 90)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path({"w": W})[0]]
    assert paths == ["['w'].blob"]
    placed = jax.device_put(W, cpu)
    assert isinstance(placed, fj.JaxSparseMatrix) and placed.blob.committed and placed.blob.devices() == {cpu}
    restored = pickle.loads(pickle.dumps(W))
    x, _ = rand(rng, (3, 90), "float16")
    ref = bits(flashspmm.linear(x, Ws))
    for M in (W2, placed, restored, jax.tree_util.tree_map(lambda a: a, W)):
        assert np.array_equal(bits(jax.jit(fj.linear)(x, M)), ref)
    assert jax.eval_shape(fj.linear, x, W).shape == (3, 70)


def test_params_saved_and_restored(rng, tmp_path):
    """A model's parameters (sparse matrices among dense arrays) saved leaf by leaf and restored into the same
    structure, as checkpointing libraries do; and through pickle."""
    layers = []
    for _ in range(2):
        _, _, W, _ = make(rng, "float16", 64, 64, scale=0.3)
        b, _ = rand(rng, (64,), "float16")
        layers.append({"w": W, "b": jnp.asarray(b)})
    params = {"layers": layers, "scale": jnp.float32(0.5)}

    def forward(params, x):
        for layer in params["layers"]:
            x = fj.linear(x, layer["w"], layer["b"])
        return x * params["scale"].astype(x.dtype)

    x, _ = rand(rng, (3, 64), "float16")
    ref = bits(jax.jit(forward)(params, x))

    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    np.savez(tmp_path / "params.npz", **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
    with np.load(tmp_path / "params.npz") as data:
        loaded = [jnp.asarray(data[jax.tree_util.keystr(p)]) for p, _ in flat]
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), loaded)
    assert np.array_equal(bits(jax.jit(forward)(restored, x)), ref)

    (tmp_path / "params.pkl").write_bytes(pickle.dumps(params))
    unpickled = pickle.loads((tmp_path / "params.pkl").read_bytes())
    assert np.array_equal(bits(jax.jit(forward)(unpickled, x)), ref)


def test_jit_traces_once_per_matrix(rng):
    traces = []

    @jax.jit
    def f(x, W):
        traces.append(1)
        return fj.linear(x, W)

    _, _, W1, _ = make(rng, "float16", 64, 64)
    _, _, W2, _ = make(rng, "float16", 64, 64)
    x, _ = rand(rng, (2, 64), "float16")
    f(x, W1)
    f(x, W1)
    f(x, jax.tree_util.tree_map(lambda a: a + 0, W1))  # same header: same program, new blob
    assert len(traces) == 1
    f(x, W2)  # another matrix: another header, another program
    assert len(traces) == 2


def test_save_load_compress_from_jax_array(rng, tmp_path, cpu):
    w, Ws, _, _ = make(rng, "float16", 50, 70)
    wj = jax.device_put(jnp.asarray(w), cpu)
    W = fj.compress(wj)
    assert W.blob.devices() == {cpu}
    assert np.array_equal(np.asarray(W.blob), Ws.blob())  # the same bytes as the numpy compression
    W.save(tmp_path / "w.fspmm")
    W2 = fj.load(tmp_path / "w.fspmm")
    assert W2.header == W.header and np.array_equal(np.asarray(W2.blob), np.asarray(W.blob))
    assert np.array_equal(W.to_sparse().blob(), Ws.blob())
    assert "JaxSparseMatrix(shape=(50, 70), dtype=float16" in repr(W)


# ---- errors ---------------------------------------------------------------------------------------------------


def test_trace_time_errors(rng):
    _, Ws, W, _ = make(rng, "float16", 64, 96)
    x, _ = rand(rng, (2, 96), "float16")
    jit = jax.jit

    def raises(exc, match, f, *args):
        with pytest.raises(exc, match=match):
            jit(f)(*args)

    raises(TypeError, r"x.astype\(jnp.float16\)", lambda x: fj.linear(x, W), x.astype(np.float32))
    raises(ValueError, r"W is \[M=64, K=96\], x must be \[\.\.\., 96\]", lambda x: fj.linear(x, W), x[:, :90])
    raises(ValueError, r"bias must have shape \(64,\)", lambda x, b: fj.linear(x, W, b), x, np.zeros(63, np.float16))
    raises(TypeError, r"bias.astype", lambda x, b: fj.linear(x, W, b), x, np.zeros(64, np.float32))
    raises(ValueError, "needs `out`", lambda x: fj.linear(x, W, beta=1.0), x)
    raises(
        ValueError,
        r"out must have shape \(2, 64\)",
        lambda x, o: fj.linear(x, W, beta=1.0, out=o),
        x,
        np.zeros((3, 64), np.float16),
    )
    raises(TypeError, "from_sparse", lambda x: fj.linear(x, Ws), x)
    raises(TypeError, "JaxSparseMatrix", lambda x: fj.linear(x, jnp.zeros((64, 96), jnp.float16)), x)
    raises(TypeError, "Python number", lambda x, a: fj.linear(x, W, alpha=a), x, 2.0)
    raises(ValueError, "split_k", lambda x: fj.linear(x, W, split_k=-1), x)
    raises(TypeError, "split_k", lambda x: fj.linear(x, W, split_k=1.5), x)
    bad = fj.JaxSparseMatrix(W.blob[:-16], W.header)
    raises(ValueError, "do not belong", lambda x, W: fj.linear(x, W), x, bad)
    raises(TypeError, "eagerly", lambda w: fj.compress(w).blob, jnp.zeros((8, 8), jnp.float16))
    with pytest.raises(ValueError, match="128 header bytes"):
        fj.JaxSparseMatrix(W.blob, W.header[:64])


def test_corrupted_blob_is_reported_by_the_cpu_handler(rng):
    _, _, W, _ = make(rng, "float16", 64, 96)
    x, _ = rand(rng, (2, 96), "float16")
    blob = np.array(W.blob)
    blob[-20] ^= 0x40  # a payload byte: the header still matches, the payload checksum does not
    bad = fj.JaxSparseMatrix(jnp.asarray(blob), W.header)
    with pytest.raises(Exception, match="checksum"):
        jax.block_until_ready(jax.jit(fj.linear)(x, bad))
    with pytest.raises(Exception, match="checksum"):
        jax.block_until_ready(fj.to_dense(bad))


# ---- examples -------------------------------------------------------------------------------------------------


def test_decode_example_runs_on_cpu():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "jax_decode.py"), "--batches", "1,3", "--seq", "16"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check passed" in r.stdout
