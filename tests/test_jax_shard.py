"""flashspmm.jax under jax.shard_map on four host CPU devices: W split by rows and by columns, a 2-D mesh,
to_dense, grad and vmap inside shard_map, device errors, and the tensor-parallel MLP example.

XLA_FLAGS=--xla_force_host_platform_device_count=4 must be set before JAX starts, so every case runs in a
fresh interpreter with a shared prelude. Skipped when JAX is not installed.
"""

import os
import secrets
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, os.pardir, "examples")

PRELUDE = textwrap.dedent("""
    import sys
    import numpy as np
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P
    import flashspmm, flashspmm.jax as fj
    from _toolkit import as_dtype, from_f32, sparse_bits, to_f64

    assert len(jax.devices()) == 4, jax.devices()
    seed = int(sys.argv[1])
    print("numpy seed:", seed)
    rng = np.random.default_rng(seed)
    mesh = jax.make_mesh((4,), ("tp",))

    def bits(a):
        return np.ascontiguousarray(np.asarray(a)).view(np.uint16)

    def rel_err(y, ref):
        return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))

    def sparse(m, k, sparsity=0.6, dtype="float16"):
        b, _ = sparse_bits(rng, m, k, dtype, sparsity, specials=False)
        return as_dtype(b, dtype), to_f64(b, dtype)

    def rand(shape, dtype="float16"):
        b = from_f32(rng.standard_normal(shape, dtype=np.float32), dtype)
        return as_dtype(b, dtype), to_f64(b, dtype)

    def shmap(f, in_specs, out_specs):
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs))
""")


def run(body, timeout=600):
    """Run PRELUDE + body with four host devices; fail with its output if it fails."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip(),
        PYTHONPATH=os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p),
    )
    code = PRELUDE + textwrap.dedent(body) + "\nprint('ok')\n"
    r = subprocess.run(
        [sys.executable, "-c", code, str(secrets.randbits(63))],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), r.stdout + r.stderr


def test_split_by_rows_outputs_concatenated():
    run("""
        w, w64 = sparse(128, 200)
        W = fj.shard_rows(w, mesh, "tp")
        assert W.shards == 4 and W.split == "rows" and W.shape == (128, 200) and W.shard_shape == (32, 200)
        assert W.spec == P("tp") and len(W.blob.sharding.device_set) == 4
        x, x64 = rand((5, 200))
        b, b64 = rand((128,))
        # x and the bias slice: x replicated, bias split like W's rows
        f = shmap(lambda x, W, b: fj.linear(x, W, b), (P(), W.spec, P("tp")), P(None, "tp"))
        y = f(x, W, jax.device_put(b, NamedSharding(mesh, P("tp"))))
        eager = np.concatenate([flashspmm.linear(x, flashspmm.compress(w[32 * i:32 * (i + 1)], format=W.format),
                                                 b[32 * i:32 * (i + 1)]) for i in range(4)], axis=1)
        assert np.array_equal(bits(y), bits(eager)), "not the eager per-shard results"
        assert rel_err(to_f64(bits(y), "float16"), x64 @ w64.T + b64) < 1e-3
        # each device holds its own shard, as its own blob
        shards = W.to_sparse_shards()
        assert [s.shape for s in shards] == [(32, 200)] * 4
        assert sum(s.nnz for s in shards) == W.nnz == int(np.count_nonzero(w))
        # to_dense inside shard_map gives the shards back
        d = shmap(lambda W: fj.to_dense(W), (W.spec,), P("tp"))(W)
        assert np.array_equal(bits(d), bits(w))
    """)


def test_split_by_columns_partial_sums_psum():
    run("""
        w, w64 = sparse(96, 256, dtype="bfloat16")
        W = fj.shard_cols(w, mesh, "tp")
        assert W.shape == (96, 256) and W.shard_shape == (96, 64)
        x, x64 = rand((3, 256), "bfloat16")
        xs = jax.device_put(x, NamedSharding(mesh, P(None, "tp")))
        f = shmap(lambda x, W: jax.lax.psum(fj.linear(x, W).astype(jnp.float32), "tp"), (P(None, "tp"), W.spec), P())
        y = np.asarray(f(xs, W), dtype=np.float64)
        parts = [flashspmm.linear(x[:, 64 * i:64 * (i + 1)], flashspmm.compress(w[:, 64 * i:64 * (i + 1)],
                                  format=W.format)) for i in range(4)]
        eager = sum(to_f64(bits(p), "bfloat16") for p in parts)
        assert np.abs(y - eager).max() <= 1e-6 * max(np.abs(eager).max(), 1), "psum of partials differs"
        assert rel_err(y, x64 @ w64.T) < 8e-3
        # outside shard_map a split matrix is a clear error
        try:
            fj.linear(x, W)
        except ValueError as e:
            assert "shard_map" in str(e), e
        else:
            raise AssertionError("no error for a split matrix outside shard_map")
    """)


def test_shards_with_different_formats_share_one():
    run("""
        # the first quarter of the rows 97 % sparse (Tiled-CSL alone would be the smaller), the rest 40 %
        a, _ = sparse(32, 512, 0.97)
        b, _ = sparse(96, 512, 0.4)
        w = np.concatenate([a, b])
        w64 = w.astype(np.float64)
        assert flashspmm.compress(a, format="smallest").format != flashspmm.compress(b[:32], format="smallest").format
        W = fj.shard_rows(w, mesh, "tp", format="smallest")
        assert {s.format for s in W.to_sparse_shards()} == {W.format}
        x, x64 = rand((4, 512))
        y = shmap(lambda x, W: fj.linear(x, W), (P(), W.spec), P(None, "tp"))(x, W)
        assert rel_err(to_f64(bits(y), "float16"), x64 @ w64.T) < 1e-3
    """)


def test_two_dimensional_mesh_grad_and_vmap():
    run("""
        mesh2 = jax.make_mesh((2, 2), ("dp", "tp"))
        w, w64 = sparse(64, 128)
        W = fj.shard_rows(w, mesh2, "tp")  # split over tp, replicated over dp
        x, x64 = rand((6, 128))
        xs = jax.device_put(x, NamedSharding(mesh2, P("dp")))
        f = jax.jit(jax.shard_map(lambda x, W: fj.linear(x, W), mesh=mesh2, in_specs=(P("dp"), W.spec),
                                  out_specs=P("dp", "tp")))
        y = f(xs, W)
        assert rel_err(to_f64(bits(y), "float16"), x64 @ w64.T) < 1e-3
        # grad for x through shard_map (replicated x: the psum of the per-device gradients)
        c = rng.standard_normal((6, 64)).astype(np.float32)
        g = shmap(lambda x, W: fj.linear(x, W), (P(), fj.shard_rows(w, mesh, "tp").spec), P(None, "tp"))
        Wt = fj.shard_rows(w, mesh, "tp")
        gx = jax.jit(jax.grad(lambda x: jnp.sum(g(x, Wt).astype(jnp.float32) * c)))(x)
        assert rel_err(to_f64(bits(gx), "float16"), c.astype(np.float64) @ w64) < 1e-3
        # vmap inside shard_map
        xb, xb64 = rand((3, 2, 128))
        v = shmap(lambda x, W: jax.vmap(lambda t: fj.linear(t, W))(x), (P(), Wt.spec), P(None, None, "tp"))(xb, Wt)
        assert rel_err(to_f64(bits(v), "float16"), xb64 @ w64.T) < 1e-3
    """)


def test_device_mismatch_is_a_clear_error():
    run("""
        w, _ = sparse(32, 64)
        d0, d1 = jax.devices()[:2]
        W = fj.compress(w, device=d1)
        x = jax.device_put(rand((2, 64))[0], d0)
        try:
            fj.linear(x, W)
        except ValueError as e:
            assert "jax.device_put(W" in str(e), e
        else:
            raise AssertionError("no error for x and W on different devices")
        assert fj.linear(jax.device_put(x, d1), W).devices() == {d1}
    """)


def test_tensor_parallel_mlp_example():
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(EXAMPLES, "jax_tp_mlp.py"),
            "--cpu-devices",
            "4",
            "--seed",
            str(secrets.randbits(31)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), r.stdout + r.stderr
