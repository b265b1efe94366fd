"""A jitted LLaMA-style decode step (attention + MLP) whose seven projections are flashspmm matrices.

The same block runs four ways, with the same pruned weights:

  sparse jit    flashspmm.jax.linear inside jax.jit (XLA custom calls on XLA's stream)
  dense jit     jnp.dot with the pruned dense weights inside jax.jit (cuBLAS / XLA:CPU)
  sparse op     flashspmm.jax.linear without jit (each JAX operation dispatched on its own)
  eager         flashspmm.linear on JAX arrays (the DLPack path: every call leaves XLA and the host waits)

The check compares every output with the dense jitted one; --time measures a decode step at batch 1 and 8
and prints a table.

    python examples/jax_decode.py                        # small dims, check only (CPU or GPU)
    python examples/jax_decode.py --dims llama3-8b --time --sparsity 0.7
    python examples/jax_decode.py --dims 4096,11008,32,8 --time --batches 1,8,16
"""

import argparse
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import flashspmm
import flashspmm.jax as fj

# hidden, intermediate, heads, kv heads
DIMS = {
    "small": (256, 704, 4, 2),
    "llama2-7b": (4096, 11008, 32, 32),
    "llama3-8b": (4096, 14336, 32, 8),
    "llama2-13b": (5120, 13824, 40, 40),
    "llama2-70b": (8192, 28672, 64, 8),
}
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def parse_dims(text):
    if text in DIMS:
        return DIMS[text]
    try:
        hidden, inter, heads, kv = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--dims must be one of {sorted(DIMS)} or HIDDEN,INTERMEDIATE,HEADS,KV_HEADS") from None
    if hidden % heads or heads % kv:
        raise SystemExit("HIDDEN must be a multiple of HEADS, and HEADS of KV_HEADS")
    return hidden, inter, heads, kv


def make_weights(rng, hidden, inter, heads, kv, sparsity, dtype):
    """Pruned dense weights [out, in] (nn.Linear layout) on JAX's default device, and the norms."""
    head_dim = hidden // heads
    shapes = {
        "q": (hidden, hidden),
        "k": (kv * head_dim, hidden),
        "v": (kv * head_dim, hidden),
        "o": (hidden, hidden),
        "gate": (inter, hidden),
        "up": (inter, hidden),
        "down": (hidden, inter),
    }
    dense = {}
    for name, (m, k) in shapes.items():
        w = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32) / math.sqrt(k), dtype=dtype)
        dense[name] = fj.prune(w, sparsity)  # eager, on w's device; a JAX array again
    norms = {
        "attn_norm": jnp.asarray(1 + 0.1 * rng.standard_normal(hidden), dtype=jnp.float32),
        "mlp_norm": jnp.asarray(1 + 0.1 * rng.standard_normal(hidden), dtype=jnp.float32),
    }
    return dense, norms


def rmsnorm(x, weight, eps=1e-5):
    xf = x.astype(jnp.float32)
    return (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps) * weight).astype(x.dtype)


def rope(x, pos, base=10000.0):
    """Rotary embedding of x [B, heads, head_dim] at position pos (a traced scalar)."""
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = pos.astype(jnp.float32) * freq
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).astype(x.dtype)


def block(proj, norms, x, cache_k, cache_v, pos, heads, kv):
    """One decode step: x [B, hidden] (one new token per sequence), caches [B, T, kv, head_dim] -> (x, caches).

    proj(h, name) computes h @ W_name.T; everything else is plain JAX.
    """
    B, hidden = x.shape
    head_dim = hidden // heads
    h = rmsnorm(x, norms["attn_norm"])
    q = rope(proj(h, "q").reshape(B, heads, head_dim), pos)
    k = rope(proj(h, "k").reshape(B, kv, head_dim), pos)
    v = proj(h, "v").reshape(B, kv, head_dim)
    cache_k = jax.lax.dynamic_update_slice(cache_k, k[:, None], (0, pos, 0, 0))
    cache_v = jax.lax.dynamic_update_slice(cache_v, v[:, None], (0, pos, 0, 0))
    group = heads // kv
    qg = q.reshape(B, kv, group, head_dim).astype(jnp.float32)
    scores = jnp.einsum("bkgd,btkd->bkgt", qg, cache_k.astype(jnp.float32)) / math.sqrt(head_dim)
    visible = jnp.arange(cache_k.shape[1]) <= pos
    scores = jnp.where(visible, scores, -jnp.inf)
    attn = jnp.einsum("bkgt,btkd->bkgd", jax.nn.softmax(scores, axis=-1), cache_v.astype(jnp.float32))
    x = x + proj(attn.reshape(B, hidden).astype(x.dtype), "o")
    h = rmsnorm(x, norms["mlp_norm"])
    g = proj(h, "gate").astype(jnp.float32)
    u = proj(h, "up").astype(jnp.float32)
    x = x + proj((jax.nn.silu(g) * u).astype(x.dtype), "down")
    return x, cache_k, cache_v


def sparse_proj(weights):
    return lambda h, name: fj.linear(h, weights[name])


def dense_proj(weights):
    # fp32 accumulation rounded once, as flashspmm does
    return lambda h, name: jnp.dot(h, weights[name].T, preferred_element_type=jnp.float32).astype(h.dtype)


def eager_proj(matrices):
    # flashspmm.linear on JAX arrays: DLPack in, a JAX array out (the host waits for the kernel's stream)
    return lambda h, name: flashspmm.linear(h, matrices[name])


def make_steps(dense, sparse, matrices, norms, heads, kv):
    """name -> step(x, cache_k, cache_v, pos) for the four variants."""

    def with_weights(proj):
        return lambda x, ck, cv, pos: block(proj, norms, x, ck, cv, pos, heads, kv)

    def sparse_jit_step(weights, x, ck, cv, pos):  # weights passed as arguments: the pytree way
        return block(sparse_proj(weights), norms, x, ck, cv, pos, heads, kv)

    sparse_jit = jax.jit(sparse_jit_step)
    dense_jit = jax.jit(lambda weights, x, ck, cv, pos: block(dense_proj(weights), norms, x, ck, cv, pos, heads, kv))
    return {
        "sparse jit": lambda x, ck, cv, pos: sparse_jit(sparse, x, ck, cv, pos),
        "dense jit": lambda x, ck, cv, pos: dense_jit(dense, x, ck, cv, pos),
        "sparse op": with_weights(sparse_proj(sparse)),
        "eager": with_weights(eager_proj(matrices)),
    }


def inputs(rng, batch, hidden, kv, head_dim, seq, dtype):
    x = jnp.asarray(rng.standard_normal((batch, hidden), dtype=np.float32), dtype=dtype)
    ck = jnp.asarray(rng.standard_normal((batch, seq, kv, head_dim), dtype=np.float32), dtype=dtype)
    cv = jnp.asarray(rng.standard_normal((batch, seq, kv, head_dim), dtype=np.float32), dtype=dtype)
    return x, ck, cv, jnp.int32(seq // 2)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check(steps, rng, batch, hidden, kv, head_dim, seq, dtype, tol):
    """Every variant against the dense jitted step; returns the worst relative error."""
    args = inputs(rng, batch, hidden, kv, head_dim, seq, dtype)
    ref = steps["dense jit"](*args)
    worst = 0.0
    for name, step in steps.items():
        out = step(*args)
        errs = [rel_err(o, r) for o, r in zip(out, ref)]
        worst = max(worst, max(errs))
        print(
            f"  batch {batch:3d}  {name:10s}  relative error vs dense jit: x {errs[0]:.2e}, k cache {errs[1]:.2e}, "
            f"v cache {errs[2]:.2e}"
        )
        if not all(np.isfinite(np.asarray(o, dtype=np.float32)).all() for o in out):
            raise SystemExit(f"{name}: non-finite output")
    if worst > tol:
        raise SystemExit(f"FAILED: a variant differs from dense jit by {worst:.2e} > {tol:.0e}")
    # the jitted sparse step is deterministic: the same bits twice
    a, b = steps["sparse jit"](*args)[0], steps["sparse jit"](*args)[0]
    if not np.array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16)):
        raise SystemExit("FAILED: two runs of the jitted sparse step differ")
    return worst


def time_step(step, args, repeats, iters):
    """Median milliseconds per step over `repeats` runs of `iters` back-to-back steps on the same inputs (every
    variant copies its caches the same way: no donation, which the eager variants could not use)."""
    x, ck, cv, pos = args
    for _ in range(3):  # compile and warm up
        out = step(x, ck, cv, pos)
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = step(x, ck, cv, pos)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", default="small", help=f"{', '.join(DIMS)} or HIDDEN,INTERMEDIATE,HEADS,KV_HEADS")
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    p.add_argument("--seq", type=int, default=128, help="KV cache length")
    p.add_argument("--batches", default="1,8", help="batch sizes (tokens per step)")
    p.add_argument("--time", action="store_true", help="time every variant and print a table")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--skip-check", action="store_true")
    args = p.parse_args(argv)

    hidden, inter, heads, kv = parse_dims(args.dims)
    head_dim = hidden // heads
    dtype = jnp.dtype(args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % (1 << 32))
    rng = np.random.default_rng(seed)
    device = jax.devices()[0]
    print(
        f"device {device.device_kind} ({device.platform}); hidden {hidden}, intermediate {inter}, heads {heads}, "
        f"kv heads {kv}; {args.dtype}, sparsity {args.sparsity}; seed {seed}"
    )

    dense, norms = make_weights(rng, hidden, inter, heads, kv, args.sparsity, dtype)
    matrices = {name: flashspmm.compress(w) for name, w in dense.items()}  # on the weights' device
    sparse = {name: fj.from_sparse(m, device=device) for name, m in matrices.items()}
    sparse_bytes = sum(w.nbytes for w in sparse.values())
    dense_bytes = sum(w.size * w.dtype.itemsize for w in dense.values())
    print(
        f"weights: dense {dense_bytes / 2**20:.1f} MiB, compressed {sparse_bytes / 2**20:.1f} MiB "
        f"({', '.join(f'{n} {sparse[n].format}' for n in PROJECTIONS)})"
    )
    steps = make_steps(dense, sparse, matrices, norms, heads, kv)

    if not args.skip_check:
        tol = 2e-2 if args.dtype == "float16" else 8e-2
        worst = max(check(steps, rng, b, hidden, kv, head_dim, args.seq, dtype, tol) for b in batches)
        print(f"check passed: worst relative error {worst:.2e} (tolerance {tol:.0e})")

    if args.time:
        rows = []
        for b in batches:
            step_args = inputs(rng, b, hidden, kv, head_dim, args.seq, dtype)
            ms = {name: time_step(step, step_args, args.repeats, args.iters) for name, step in steps.items()}
            rows.append((b, ms))
        print(
            f"\ndecode step, one block, {device.device_kind}: milliseconds per step (median of {args.repeats} x "
            f"{args.iters})"
        )
        names = list(steps)
        print(f"{'batch':>5}  " + "  ".join(f"{n:>11}" for n in names) + "  sparse/dense jit  jit/eager")
        for b, ms in rows:
            print(
                f"{b:>5}  "
                + "  ".join(f"{ms[n]:>11.3f}" for n in names)
                + f"  {ms['dense jit'] / ms['sparse jit']:>15.2f}x  {ms['eager'] / ms['sparse jit']:>8.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
