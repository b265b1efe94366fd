"""Tensor-parallel decode benchmark: a LLaMA-2-70B-shaped model on P GPUs, dense fp16 against flashspmm sparse.

    python -m flashspmm.torch._bench_tp --tp 2 [--layers 8] [--batch 1,8,32] [--sparsity 50,70]

starts torchrun itself (``python -m torch.distributed.run --standalone --nproc-per-node 2 -m
flashspmm.torch._bench_tp ...``); under torchrun (LOCAL_RANK set) the module is the worker. The environment
defaults below are set before anything initialises NCCL, in the launcher and in every worker.

Per variant (dense; sparse at each ``--sparsity``), every rank builds the model with random float16 weights, one
decoder layer at a time on its GPU: the layer's whole dense weights are made (from a seed, the same on every
rank), then sharded in Megatron's pattern (q/k/v, gate/up column-parallel, o/down row-parallel): dense, each
rank keeps its shard as a plain weight (row-parallel layers all-reduce their outputs); sparse,
:func:`flashspmm.torch.parallelize` prunes each rank's shard by magnitude and compresses it. Embeddings, norms
and the LM head are replicated. Then per batch size: a prompt is prefilled into a static KV cache and decode
steps (one token per sequence, argmax fed back, positions and the 4-D mask advanced on the device) are timed,
captured in a CUDA graph (``--mode graph``, the default; NCCL collectives are captured too) or run eagerly.
Reported per (variant, batch): ms per step, tokens/s (batch x steps / time, the slowest rank), the speedup over
dense, weight GB per GPU, peak GB per GPU, and with ``--check`` the relative error of the logits against a
dense model holding the same pruned shards (must be <= 2e-2). Both variants keep q/k/v and gate/up as separate
matrices (``--fuse`` fuses the sparse ones, as ``parallelize`` does by default; the dense baseline stays
unfused, so that comparison is not like for like).

``--device cpu`` runs the same code on CPUs over gloo (eager, the CPU reference linear) to check the code path.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from typing import Dict, List, Optional

from .. import _bench_model
from .._bench_model import FORMAT_CHOICES, _int_list, _percent_list  # the option syntax of bench-model

# NVLink multicast (NVLS) stays off unless the environment says otherwise: a program using it can take a shared
# host's GPUs out of service. NCCL, torch's symmetric memory and NVSHMEM each have a switch; set before NCCL is
# initialised; values already in the environment win.
ENV_DEFAULTS: Dict[str, str] = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
for _key, _value in ENV_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

# bench-model's shapes; "tiny" (for checking the code path on CPUs) with head counts that 4 ranks divide
MODELS = {
    **_bench_model.MODELS,
    "tiny": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=256,
    ),
}
# the plan relative to one decoder layer (patterns match the ends of module names)
LAYER_PLAN = {
    "self_attn.q_proj": "colwise",
    "self_attn.k_proj": "colwise",
    "self_attn.v_proj": "colwise",
    "self_attn.o_proj": "rowwise",
    "mlp.gate_proj": "colwise",
    "mlp.up_proj": "colwise",
    "mlp.down_proj": "rowwise",
}
CHECK_TOL = 2e-2
FIELDS = [
    "model",
    "layers",
    "tp",
    "variant",
    "sparsity",
    "batch",
    "mode",
    "ms_per_step",
    "tokens_per_s",
    "speedup",
    "weight_gb_per_gpu",
    "peak_gb_per_gpu",
    "check_rel_err",
    "status",
]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m flashspmm.torch._bench_tp",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--tp",
        type=int,
        default=None,
        help="ranks (GPUs); without torchrun, the module launches torchrun with this many processes",
    )
    p.add_argument("--model", default="llama2-70b", choices=sorted(MODELS))
    p.add_argument("--layers", type=int, default=None, help="build only N decoder layers (short form)")
    p.add_argument("--batch", type=_int_list, default=[1, 8, 32], help="batch sizes (sequences decoded at once)")
    p.add_argument("--sparsity", type=_percent_list, default=[0.5, 0.7], help="percent list, e.g. 50,70")
    p.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens prefilled per sequence")
    p.add_argument("--steps", type=int, default=32, help="decode steps timed")
    p.add_argument("--mode", default="graph", choices=("graph", "eager"))
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES)
    p.add_argument("--fuse", action="store_true", help="fuse the sparse q/k/v and gate/up shards per rank")
    p.add_argument(
        "--check",
        action="store_true",
        help="compare each sparse model's logits with a dense model of the same pruned shards",
    )
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: gloo, eager (code path check)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", default="bench-tp.csv", help="written by rank 0")
    args = p.parse_args(argv)
    if args.tp is not None and args.tp < 1:
        p.error("--tp must be at least 1")
    if min(args.batch) < 1 or args.prompt < 1 or args.steps < 1:
        p.error("--batch, --prompt and --steps must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        return _launch(args, argv)
    code = _worker(args)
    # Leave without interpreter finalisation, all output written: torch's gloo backend can abort there (its worker
    # thread may free a collective's tensor after Python has begun finalising; seen with torch 2.13), and NCCL
    # communicators used in captured CUDA graphs can hang when destroyed (a known torch issue).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _launch(args: argparse.Namespace, argv: List[str]) -> int:
    """Start torchrun on this module with ``--tp`` processes (the environment defaults are inherited)."""
    if args.tp is None:
        print("give --tp N (the number of GPUs), or start the module with torchrun", file=sys.stderr)
        return 2
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={args.tp}",
        "-m",
        "flashspmm.torch._bench_tp",
        *argv,
    ]
    print(" ".join(f"{k}={os.environ[k]}" for k in ENV_DEFAULTS) + " " + " ".join(cmd), file=sys.stderr)
    return subprocess.call(cmd, env=dict(os.environ))


# ---- building -----------------------------------------------------------------------------------------------------


def make_config(name: str, layers: Optional[int]):
    import transformers

    spec = dict(MODELS[name])
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config = transformers.LlamaConfig(max_position_embeddings=4096, **spec)
    config._attn_implementation = "sdpa"
    return config


def _dense_row_class():
    import torch
    import torch.distributed as dist
    from torch import nn

    class DenseRowParallel(nn.Module):
        """The dense baseline's row-parallel layer: this rank's columns of W, outputs all-reduced, bias after."""

        def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
            super().__init__()
            self.weight = nn.Parameter(weight, requires_grad=False)
            self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.nn.functional.linear(x, self.weight)
            dist.all_reduce(y)
            return y if self.bias is None else y + self.bias

    return DenseRowParallel


def shard_dense(layer, rank: int, world: int, sparsity: Optional[float]) -> None:
    """The dense baseline: the plan's Linears of one decoder layer replaced by this rank's shards (pruned per shard
    row as parallelize prunes them when ``sparsity`` is given), heads per rank as parallelize sets them."""
    import torch
    from torch import nn

    import flashspmm.torch as fst
    from flashspmm.torch import parallel

    row_cls = _dense_row_class()
    chosen = parallel._sharded_layers(layer, parallel._compile_plan(LAYER_PLAN), world)
    changes = parallel._attention_changes(layer, chosen, world)
    with torch.no_grad():
        for name, style in chosen.items():
            linear = layer.get_submodule(name)
            w, b = linear.weight.detach(), linear.bias
            if style == "colwise":
                n = w.shape[0] // world
                shard = w[rank * n : (rank + 1) * n].contiguous()
                bias = None if b is None else b.detach()[rank * n : (rank + 1) * n].contiguous()
            else:
                k = w.shape[1] // world
                shard = w[:, rank * k : (rank + 1) * k].contiguous()
                bias = None if b is None else b.detach().clone()
            if sparsity is not None:
                shard = fst.prune_weight(shard, sparsity)
            if style == "colwise":
                new = nn.Linear(
                    shard.shape[1], shard.shape[0], bias=bias is not None, device=shard.device, dtype=shard.dtype
                )
                new.weight.copy_(shard)
                if bias is not None:
                    new.bias.copy_(bias)
                new.requires_grad_(False)
            else:
                new = row_cls(shard, bias)
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent), child, new)
            del shard, linear
    parallel._set_attention(layer, changes, local=True)


def build_model(
    config,
    device,
    *,
    rank: int,
    world: int,
    seed: int,
    sparse: bool,
    sparsity: Optional[float],
    format: str,
    fuse: bool,
):
    """A tensor-parallel LlamaForCausalLM of random float16 weights, built one decoder layer at a time.

    ``sparse``: each rank's shards pruned to ``sparsity`` and compressed (parallelize); else dense shards
    (pruned to ``sparsity`` when it is given: the reference of the sparse model). Every rank draws the same
    whole weights (same seeds), so the shards make one model."""
    import torch
    import transformers
    from torch import nn

    import flashspmm.torch as fst

    dtype = torch.float16
    H, V = config.hidden_size, config.vocab_size
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator(device=device).manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype) * std

    model.model.embed_tokens = nn.Embedding(V, H, device=device, dtype=dtype)
    model.lm_head = nn.Linear(H, V, bias=False, device=device, dtype=dtype)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(normal((V, H), 1.0))
        model.lm_head.weight.copy_(normal((V, H), H**-0.5))
    model.model.norm = type(model.model.norm)(H, eps=config.rms_norm_eps).to(device=device, dtype=dtype)
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config)
    layer_cls = type(model.model.layers[0])
    for i in range(config.num_hidden_layers):
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                layer = layer_cls(config, i)
        finally:
            torch.set_default_dtype(default)
        layer_gen = torch.Generator(device=device).manual_seed(seed * 1000 + 1 + i)
        with torch.no_grad():  # the layer's whole weights, the same on every rank
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(
                        torch.randn(m.weight.shape, generator=layer_gen, device=device, dtype=dtype)
                        * m.in_features**-0.5
                    )
        layer.eval()
        if sparse:
            fst.parallelize(layer, plan=LAYER_PLAN, sparsity=sparsity, format=format, fuse=fuse)
        else:
            shard_dense(layer, rank, world, sparsity)
        model.model.layers[i] = layer
        del layer
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"build_model left tensors on the meta device: {left[:3]}")
    return model.eval()


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


# ---- decoding -----------------------------------------------------------------------------------------------------


class Decoder(_bench_model.Decoder):
    """bench-model's decoder (prefill, then one decode step on device tensors, captured in a CUDA graph). Each
    rank's static cache sizes its layers from the first keys they get, so it holds that rank's heads; the capture
    runs in thread-local mode, as NCCL's watchdog thread keeps querying its events meanwhile."""

    def capture(self, warmup: int = 2) -> None:
        super().capture(warmup, capture_error_mode="thread_local")


def check_logits(model, device):
    """Logits of a fixed input without a cache: 2 sequences of 16 tokens and 1 token."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(1234)
    out = []
    with torch.no_grad():
        for shape in ((2, 16), (1, 1)):
            ids = torch.randint(0, model.config.vocab_size, shape, generator=gen).to(device)
            out.append(model(input_ids=ids, use_cache=False).logits.double())
    return out


# ---- the run --------------------------------------------------------------------------------------------------


def _max_over_ranks(value: float, device) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _print_table(rows: List[dict]) -> None:
    header = [
        "variant",
        "batch",
        "mode",
        "ms/step",
        "tokens/s",
        "speedup",
        "weights GB/GPU",
        "peak GB/GPU",
        "check",
        "status",
    ]
    lines = [header]
    for r in rows:

        def fmt(key, spec):
            v = r.get(key)
            return "" if v in (None, "") else format(v, spec)

        lines.append(
            [
                r["variant"],
                str(r["batch"]),
                r["mode"],
                fmt("ms_per_step", ".2f"),
                fmt("tokens_per_s", ".1f"),
                fmt("speedup", ".2f"),
                fmt("weight_gb_per_gpu", ".2f"),
                fmt("peak_gb_per_gpu", ".2f"),
                fmt("check_rel_err", ".1e"),
                r["status"],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


def _worker(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if args.tp is not None and args.tp != world:
        print(f"--tp {args.tp} but torchrun started {world} processes", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            print(f"rank {local_rank}: only {torch.cuda.device_count()} GPU(s) visible", file=sys.stderr)
            return 2
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    mode = args.mode if cuda else "eager"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    try:
        config = make_config(args.model, args.layers)
        cache_len = args.prompt + args.steps + 8
        variants = [] if args.no_dense else [("dense", False, None)]
        variants += [(f"sparse{round(s * 100)}" + ("+fused" if args.fuse else ""), True, s) for s in args.sparsity]
        rows: List[dict] = []
        dense_tps: Dict[int, float] = {}
        for name, sparse, sparsity in variants:
            check = None
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if args.check and sparse:
                reference = build_model(
                    config,
                    device,
                    rank=rank,
                    world=world,
                    seed=args.seed,
                    sparse=False,
                    sparsity=sparsity,
                    format=args.format,
                    fuse=False,
                )
                expected = check_logits(reference, device)
                del reference
                if cuda:
                    torch.cuda.empty_cache()
            model = build_model(
                config,
                device,
                rank=rank,
                world=world,
                seed=args.seed,
                sparse=sparse,
                sparsity=sparsity,
                format=args.format,
                fuse=args.fuse,
            )
            if args.check and sparse:
                got = check_logits(model, device)
                check = max(float((g - e).norm() / e.norm()) for g, e in zip(got, expected))
                del expected, got
            wbytes = _max_over_ranks(weight_bytes(model), device)
            for batch in args.batch:
                row = {
                    "model": args.model,
                    "layers": config.num_hidden_layers,
                    "tp": world,
                    "variant": name,
                    "sparsity": sparsity or 0.0,
                    "batch": batch,
                    "mode": mode,
                    "weight_gb_per_gpu": wbytes / 1e9,
                    "check_rel_err": check,
                    "status": "ok",
                }
                try:
                    decoder = Decoder(model, batch, args.prompt, cache_len, device, seed=args.seed + batch)
                    if mode == "graph":
                        decoder.capture()
                    decoder.run(2)  # replays once more before timing
                    dist.barrier()
                    seconds = _max_over_ranks(decoder.run(args.steps), device)
                    ids = decoder.ids.clone()
                    gathered = [torch.empty_like(ids) for _ in range(world)]
                    dist.all_gather(gathered, ids)
                    finite = bool(torch.isfinite(decoder.logits).all())
                    row.update(ms_per_step=1e3 * seconds / args.steps, tokens_per_s=batch * args.steps / seconds)
                    if not finite or not all(torch.equal(g, gathered[0]) for g in gathered):
                        row["status"] = "FAIL: non-finite logits or ranks disagree on the tokens"
                    if name == "dense":
                        dense_tps[batch] = row["tokens_per_s"]
                    elif batch in dense_tps:
                        row["speedup"] = row["tokens_per_s"] / dense_tps[batch]
                    del decoder
                except Exception as exc:  # e.g. out of memory at a large batch: reported in the table
                    row["status"] = f"FAIL: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                if cuda:
                    row["peak_gb_per_gpu"] = _max_over_ranks(torch.cuda.max_memory_allocated(device), device) / 1e9
                if check is not None and check > CHECK_TOL:
                    row["status"] = f"FAIL: logits check {check:.2e} > {CHECK_TOL}"
                rows.append(row)
                if rank == 0:
                    print(
                        f"{name} batch {batch}: {row.get('tokens_per_s', float('nan')):.1f} tokens/s ({row['status']})",
                        file=sys.stderr,
                        flush=True,
                    )
            del model
        if rank == 0:
            name = torch.cuda.get_device_name(device) if cuda else "CPU"
            print(
                f"\n{args.model}, {config.num_hidden_layers} layers, tensor parallel over {world} x {name}, "
                f"prompt {args.prompt}, {args.steps} decode steps, {mode}"
            )
            _print_table(rows)
            with open(args.csv, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                writer.writeheader()
                for r in rows:
                    writer.writerow({k: r.get(k, "") for k in FIELDS})
            print(f"wrote {args.csv}")
        dist.barrier()  # every rank is done with the group before any tears it down
        return 0 if all(r["status"] == "ok" for r in rows) else 1
    finally:
        if mode != "graph":  # see main(): after graph captures the process just exits
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
