"""A tensor-parallel LLaMA MLP block with flashspmm weights under jax.shard_map.

gate and up are split by out features (each device holds F/D rows of each, compressed on that device), down
by in features (F/D columns); x is replicated. Each device computes its slice of silu(x Wg^T) * (x Wu^T) and
its partial product with Wd; one psum adds the partials: the only communication of the block.

    python examples/jax_tp_mlp.py --cpu-devices 4      # four host CPU devices (no GPU needed)
    python examples/jax_tp_mlp.py                      # every visible GPU
    python examples/jax_tp_mlp.py --hidden 4096 --intermediate 14336 --tokens 8
"""

import argparse
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-devices", type=int, default=0, help="run on this many host CPU devices")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cpu_devices:  # must be set before JAX starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.cpu_devices}"
        )
        os.environ["JAX_PLATFORMS"] = "cpu"

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P

    import flashspmm.jax as fj

    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("tp",))
    H, F, N = args.hidden, args.intermediate, args.tokens  # hidden, intermediate (feed-forward), tokens
    rng = np.random.default_rng(args.seed)

    def weight(m, k):
        w = (rng.standard_normal((m, k)) / np.sqrt(k)).astype(np.float16)
        return np.asarray(fj.prune(w, args.sparsity))

    w_gate, w_up, w_down = weight(F, H), weight(F, H), weight(H, F)
    # eager: each device compresses its own shard; the blobs are padded to one size and laid out P("tp")
    Wg = fj.shard_rows(w_gate, mesh, "tp")
    Wu = fj.shard_rows(w_up, mesh, "tp")
    Wd = fj.shard_cols(w_down, mesh, "tp")
    print(f"{len(devices)} x {devices[0].device_kind}; gate {Wg}\n  down {Wd}")

    def mlp_shard(x, Wg, Wu, Wd):  # per device: x [N, H], Wg / Wu [F/D, H], Wd [H, F/D]
        g = fj.linear(x, Wg).astype(jnp.float32)
        u = fj.linear(x, Wu).astype(jnp.float32)
        h = (jax.nn.silu(g) * u).astype(x.dtype)  # [N, F/D]: this device's features
        partial = fj.linear(h, Wd).astype(jnp.float32)  # [N, H]: this device's share of the sum
        return jax.lax.psum(partial, "tp").astype(x.dtype)

    mlp = jax.jit(jax.shard_map(mlp_shard, mesh=mesh, in_specs=(P(), Wg.spec, Wu.spec, Wd.spec), out_specs=P()))
    # the column-parallel layer alone: each device's slice of the output, concatenated
    gate = jax.jit(
        jax.shard_map(lambda x, W: fj.linear(x, W), mesh=mesh, in_specs=(P(), Wg.spec), out_specs=P(None, "tp"))
    )

    x = jnp.asarray(rng.standard_normal((N, H)), dtype=jnp.float16)
    y = np.asarray(mlp(x, Wg, Wu, Wd), dtype=np.float64)
    g = np.asarray(gate(x, Wg), dtype=np.float64)

    xf = np.asarray(x, dtype=np.float64)
    g_ref = xf @ w_gate.astype(np.float64).T
    u_ref = xf @ w_up.astype(np.float64).T
    y_ref = (g_ref / (1 + np.exp(-g_ref)) * u_ref) @ w_down.astype(np.float64).T
    err_g = np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)
    err_y = np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref)
    print(f"column-parallel gate: relative error {err_g:.2e}; whole MLP block: relative error {err_y:.2e}")
    if not (err_g < 2e-3 and err_y < 2e-2):
        print("FAILED: the sharded results differ from the float64 reference")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
