"""``flashspmm bench-model``: decode speed of LLaMA-shaped models, dense fp16 against flashspmm sparse, one run.

Models are built from ``transformers.LlamaConfig`` shapes with random weights, directly on the device, one decoder
layer at a time (no download). Per model: the dense model, then for each sparsity the same weights pruned per row
by magnitude; where the dense model fits, its pruned copy gives reference logits before the layers are
compressed (``sparsify``), else (LLaMA-2-70B on one GPU) each layer is compressed right after it is created and
the first layer's matrices are checked one by one. Decoding: a prompt is prefilled into a static KV cache
(``transformers.StaticCache``), then decode steps (one token per sequence: feed back the argmax, advance the
positions and the mask, all on the device) are captured in a CUDA graph and replayed, so Python's per-call cost
does not hide the weights' cost (``--mode eager`` times the same step without graphs).

Reported per (model, variant, batch): ms per decode step (= per token of a sequence), tokens/s (batch x steps /
time), speedup over dense, weight bytes, peak GPU memory, the logits check (relative error against the dense
model with the same pruned weights, must be <= 2e-2), and with graphs the speedup of the model's projections
measured alone in the same run (``kernel_speedup``: the geometric mean over the projection roles;
``kernel_speedup_tw``, the "kernels" column: time-weighted, dense time over sparse time of one layer's
projections) and the dense projections' share of the dense step (``proj_share``, the "proj" column: the rest of
the step, attention, norms, the LM head, is the same in both models, so ``1 / (1 - proj_share)`` bounds the
model's speedup).
CSV (``--csv``) and, with matplotlib, a PNG (``--png``).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import math
import sys
import time
from typing import Dict, List, Optional, Tuple

from ._cli_sparsify import FORMAT_CHOICES

MODELS: Dict[str, dict] = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "llama2-13b": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        vocab_size=32000,
    ),
    "llama3-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
    ),
    "llama2-70b": dict(
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
    # for tests of this code path on the CPU
    "tiny": dict(
        hidden_size=128,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
    ),
}
DEFAULT_MODELS = ["llama2-7b", "llama2-13b", "llama3-8b", "llama2-70b"]
CHECK_TOL = 2e-2
FIELDS = [
    "model",
    "layers",
    "variant",
    "sparsity",
    "batch",
    "prompt",
    "cache_len",
    "mode",
    "ms_per_step",
    "tokens_per_s",
    "speedup",
    "kernel_speedup",
    "kernel_speedup_tw",
    "proj_share",
    "weight_gb",
    "peak_gb",
    "check_rel_err",
    "status",
]
DESCRIPTION = "Decode tokens/s of LLaMA-shaped models (random weights): dense fp16 against flashspmm sparse."


def _percent_list(text: str) -> List[float]:
    values = []
    for v in text.split(","):
        if v.strip():
            x = float(v)
            values.append(x / 100 if x >= 1 else x)
    for x in values:
        if not 0 < x < 1:
            raise argparse.ArgumentTypeError(f"sparsity {x} is not in (0, 1) (give percent, e.g. 50,70)")
    return values


def _int_list(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--batch", type=_int_list, default="1,8,32", help="batch sizes (sequences decoded at once)")
    p.add_argument("--sparsity", type=_percent_list, default="50,70", help="percent list")
    p.add_argument("--layers", type=int, default=None, help="build only N decoder layers per model (short form)")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens prefilled per sequence")
    p.add_argument("--steps", type=int, default=64, help="decode steps timed")
    p.add_argument("--cache-len", type=int, default=None, help="static KV cache length (unset: prompt + steps + 16)")
    p.add_argument("--mode", default="graph", help="graph (CUDA graphs), eager, or graph,eager")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (eager only; for testing the code path)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick",
        action="store_true",
        help="short form: every model shape with 2 decoder layers, 16 decode steps, 32-token prompt",
    )
    p.add_argument(
        "--big",
        action="store_true",
        help="LLaMA-2-70B on one GPU: 80 layers at 50 %%, batch 8, a 4096-token KV cache (dense is "
        "reported as not fitting)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the logits check")
    p.add_argument("--csv", default="bench-model.csv")
    p.add_argument("--png", default="bench-model.png")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel degree: above 1, runs LLaMA-2-70B shapes over torchrun on that many GPUs "
        "(flashspmm.torch._bench_tp, which takes --layers, --batch, --sparsity too)",
    )
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``bench-model`` subcommand on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "bench-model",
        help="decode tokens/s of LLaMA-shaped models, dense vs sparse",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _configure(p)
    p.set_defaults(run=run)
    return p


# ---- building --------------------------------------------------------------------------------------------------


def _progress(iterable, enabled: bool, desc: str, total: Optional[int] = None):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)


def make_config(name: str, layers: Optional[int]):
    import transformers

    spec = dict(MODELS[name])
    if layers is not None:
        spec["num_hidden_layers"] = layers
    config = transformers.LlamaConfig(max_position_embeddings=8192, **spec)
    config._attn_implementation = "sdpa"
    return config


def build_model(
    config,
    device,
    *,
    seed: int,
    sparsity: Optional[float] = None,
    compress_layers: bool = False,
    format: str = "auto",
    progress: bool = True,
    check_first: bool = False,
):
    """A LlamaForCausalLM with random float16 weights on ``device``, one decoder layer at a time.

    ``sparsity``: every decoder Linear pruned in place (magnitude, per row). ``compress_layers``: each layer is
    sparsified right after it is created, so the dense model never exists (what lets 70B fit); with
    ``check_first`` the first layer's compressed matrices are compared with their pruned dense weights.
    Returns (model, worst relative error of that check or None). The weights depend only on ``seed``.
    """
    import torch
    import transformers
    from torch import nn

    import flashspmm.torch as fst

    dtype = torch.float16
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    H, V = config.hidden_size, config.vocab_size

    def normal(shape, std):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype) * std

    model.model.embed_tokens = nn.Embedding(V, H, device=device, dtype=dtype)
    model.model.embed_tokens.weight.data.copy_(normal((V, H), 0.02))
    model.lm_head = nn.Linear(H, V, bias=False, device=device, dtype=dtype)
    model.lm_head.weight.data.copy_(normal((V, H), 0.02))
    model.model.norm = type(model.model.norm)(H, eps=config.rms_norm_eps).to(device=device, dtype=dtype)
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config)
    layer_cls = type(model.model.layers[0])
    worst = None
    for i in _progress(range(config.num_hidden_layers), progress, "build", config.num_hidden_layers):
        torch.manual_seed(seed * 1000 + 1 + i)  # this layer's weights, the same in every build
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                layer = layer_cls(config, i)
        finally:
            torch.set_default_dtype(old)
        layer.eval()
        if sparsity is not None:
            with torch.no_grad():
                for m in layer.modules():
                    if isinstance(m, nn.Linear):
                        m.weight.copy_(fst.prune_weight(m.weight, sparsity))
            if compress_layers:
                refs = {}
                if check_first and i == 0:
                    for name, m in layer.named_modules():
                        if isinstance(m, nn.Linear):
                            x = torch.randn(4, m.in_features, device=device, dtype=dtype)
                            refs[name] = (x, m(x).double())
                fst.sparsify(layer, sparsity, format=format, progress=False)
                with torch.no_grad():
                    for name, (x, ref) in refs.items():
                        got = layer.get_submodule(name)(x).double()
                        err = float((got - ref).norm() / ref.norm())
                        worst = err if worst is None else max(worst, err)
        model.model.layers[i] = layer
        del layer
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"build_model left tensors on the meta device: {left[:3]}")
    return model.eval(), worst


def weight_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


# ---- decoding --------------------------------------------------------------------------------------------------


def _forward_params(model) -> set:
    return set(inspect.signature(type(model).forward).parameters)


def make_static_cache(config, batch: int, cache_len: int, device, dtype):
    """transformers.StaticCache, whatever its constructor asks for in this transformers version."""
    import transformers

    params = set(inspect.signature(transformers.StaticCache.__init__).parameters)
    kwargs = {"config": config, "max_cache_len": cache_len}
    for key, value in (("max_batch_size", batch), ("batch_size", batch), ("device", device), ("dtype", dtype)):
        if key in params:
            kwargs[key] = value
    return transformers.StaticCache(**kwargs)


class Decoder:
    """Prefill + decode steps of one model at one batch size under a static KV cache.

    The step reads only device tensors (token ids, positions, the 4-D attention mask) and updates them on the
    device (argmax fed back, positions + 1, the next mask column set), so it can be captured once in a CUDA graph
    and replayed as is. A 4-D boolean mask is passed, which the models take as prepared (no mask building, which
    may synchronise with the host inside a capture).
    """

    def __init__(self, model, batch: int, prompt: int, cache_len: int, device, seed: int = 0):
        import torch

        self.torch = torch
        self.model = model
        self.device = torch.device(device)
        params = _forward_params(model)
        self.cache_key = "cache" if "cache" in params else "past_key_values"
        self.pass_cache_position = "cache_position" in params
        self.keep_key = (
            "logits_to_keep"
            if "logits_to_keep" in params
            else ("num_logits_to_keep" if "num_logits_to_keep" in params else None)
        )
        cfg = model.config
        self.cache = make_static_cache(cfg, batch, cache_len, self.device, torch.float16)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        ids = torch.randint(0, cfg.vocab_size, (batch, prompt), generator=gen).to(self.device)
        positions = torch.arange(prompt, device=self.device)
        keys = torch.arange(cache_len, device=self.device)
        prefill_mask = (keys[None, :] <= positions[:, None]).expand(batch, 1, prompt, cache_len).contiguous()
        with torch.no_grad():
            out = self._forward(ids, positions.expand(batch, prompt), positions, prefill_mask, keep=1)
        self.prompt_ids = ids
        self.ids = out.logits[:, -1:].argmax(-1)  # [B, 1]
        self.position = torch.full((batch, 1), prompt, dtype=torch.long, device=self.device)
        self.cache_position = torch.full((1,), prompt, dtype=torch.long, device=self.device)
        self.mask = (keys < prompt).expand(batch, 1, 1, cache_len).contiguous()  # [B, 1, 1, L]
        self.pos = prompt
        self.cache_len = cache_len
        self.logits = None
        self.graph = None
        self.history = []  # tokens fed by the warm-up steps of capture()

    def _forward(self, ids, position_ids, cache_position, mask, keep=None):
        kwargs = {
            "input_ids": ids,
            "position_ids": position_ids,
            "attention_mask": mask,
            self.cache_key: self.cache,
            "use_cache": True,
        }
        if self.pass_cache_position:
            kwargs["cache_position"] = cache_position
        if keep is not None and self.keep_key is not None:
            kwargs[self.keep_key] = keep
        return self.model(**kwargs)

    def step(self):
        """One decode step for every sequence (device tensors only)."""
        self.mask.index_fill_(3, self.cache_position, True)
        out = self._forward(self.ids, self.position, self.cache_position, self.mask)
        self.ids.copy_(out.logits[:, -1:].argmax(-1))
        self.position.add_(1)
        self.cache_position.add_(1)
        self.logits = out.logits
        return out.logits

    def capture(self, warmup: int = 2, capture_error_mode: str = "global"):
        """Warm up on a side stream (plans, split-K workspaces and, for tensor parallel runs, NCCL communicators
        are set up there), then capture one step in a CUDA graph. ``capture_error_mode="thread_local"`` lets other
        threads (NCCL's watchdog) keep querying their events during the capture."""
        torch = self.torch
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                self.history.append(self.ids.clone())
                self.step()
                self.pos += 1
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, capture_error_mode=capture_error_mode):
            self.step()  # recorded, not run: the position does not advance

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` decode steps (graph replays when captured)."""
        torch = self.torch
        if self.pos + steps > self.cache_len:
            raise ValueError(f"the KV cache holds {self.cache_len} tokens, {self.pos + steps} needed")
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(steps):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self.step()
        if cuda:
            torch.cuda.synchronize(self.device)
        self.pos += steps
        return time.perf_counter() - t0


def logits_check(model, reference_logits: Dict[str, object]) -> Optional[float]:
    """Worst relative error of ``model``'s logits against ``reference_logits`` (from :func:`check_logits`)."""
    if not reference_logits:
        return None
    got = check_logits(model, reference_logits["_device"])
    worst = 0.0
    for key, ref in reference_logits.items():
        if key == "_device":
            continue
        err = float((got[key] - ref).norm() / ref.norm())
        worst = max(worst, err)
    return worst


def check_logits(model, device) -> Dict[str, object]:
    """Logits of fixed inputs, no cache: 2 sequences of 16 tokens (many-token products) and 1 token (N = 1)."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(1234)
    V = model.config.vocab_size
    out = {"_device": device}
    with torch.no_grad():
        for key, shape in (("prefill", (2, 16)), ("one_token", (1, 1))):
            ids = torch.randint(0, V, shape, generator=gen).to(device)
            out[key] = model(input_ids=ids, use_cache=False).logits.double()
    return out


def kernel_speedup(
    model, batch: int, device, *, layers: int = 4, reps: int = 10
) -> Optional[Tuple[float, float, float]]:
    """The model's sparse projections against dense F.linear at N = batch, each alone: (geometric-mean speedup
    over the projection roles, dense seconds per decoder layer, sparse seconds per decoder layer).

    Per projection role (qkv_proj, o_proj, gate_up_proj, down_proj), the matrices of the first ``layers`` decoder
    layers are called in turn inside one CUDA graph, so the weights do not stay in L2 between calls; the dense
    counterparts are the same matrices decompressed (the pruned weights, exactly), freed afterwards. The two
    per-layer times sum the roles (their ratio is the time-weighted speedup).
    """
    import torch
    import torch.nn.functional as F

    import flashspmm.torch as fst

    roles: Dict[str, list] = {}
    for name, m in model.named_modules():
        if (
            isinstance(m, fst.SparseLinear)
            and ".layers." in name
            and int(name.split(".layers.")[1].split(".")[0]) < layers
        ):
            roles.setdefault(name.split(".")[-1], []).append(m)
    if not roles:
        return None
    ratios = []
    per_layer = [0.0, 0.0]  # dense, sparse seconds per decoder layer, summed over the roles
    for mods in roles.values():
        dense_weights = [m.to_dense() for m in mods]
        x = torch.randn(batch, mods[0].in_features, device=device, dtype=torch.float16)

        def sparse():
            for m in mods:
                torch.ops.flashspmm.linear(x, m.blob, None, m.out_features, m.in_features)

        def dense():
            for w in dense_weights:
                F.linear(x, w)

        times = []
        for fn in (sparse, dense):
            with torch.no_grad():
                fn()
                torch.cuda.synchronize(device)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                g.replay()
                torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                for _ in range(reps):
                    g.replay()
                torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            del g
        ratios.append(times[1] / times[0])
        per_layer[0] += times[1] / (reps * len(mods))
        per_layer[1] += times[0] / (reps * len(mods))
        dense_weights.clear()  # freed before the next role is decompressed
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)), per_layer[0], per_layer[1]


# ---- the run ---------------------------------------------------------------------------------------------------


def _kv_bytes(config, batch: int, cache_len: int) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * batch * config.num_key_value_heads * head_dim * cache_len * 2


def _dense_bytes(config) -> int:
    H, inter, V, L = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (H // config.num_attention_heads)
    per_layer = H * (H + 2 * kv) + H * H + 3 * H * inter + 2 * H
    return 2 * (L * per_layer + 2 * V * H + H)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args`` (see :func:`add_parser`); returns the exit status."""
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"bench-model needs torch and transformers ({exc.name} is missing)", file=sys.stderr)
        return 2
    import flashspmm.torch  # noqa: F401  (registers the op before anything is traced or captured)

    if args.tp > 1:  # the tensor-parallel benchmark, launched with torchrun
        from .torch import _bench_tp

        argv = [
            "--tp",
            str(args.tp),
            "--batch",
            ",".join(map(str, args.batch)),
            "--sparsity",
            ",".join(str(round(100 * s)) for s in args.sparsity),
        ]
        if args.layers is not None:
            argv += ["--layers", str(args.layers)]
        return _bench_tp.main(argv)
    if args.quick:
        args.layers = 2 if args.layers is None else args.layers
        args.steps, args.prompt = 16, 32
    if args.big:
        args.models, args.sparsity, args.batch = "llama2-70b", [0.5], [8]
        args.layers, args.cache_len = None, 4096
        args.prompt = 512 if args.prompt == 128 else args.prompt
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("bench-model: torch sees no CUDA device (use --device cpu to test the code path)", file=sys.stderr)
            return 2
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    elif "graph" in modes:
        modes = [m for m in modes if m != "graph"] or ["eager"]
    cache_len = args.cache_len or args.prompt + args.steps + 16
    progress = not args.no_progress
    rows: List[dict] = []
    failures = 0
    print(_row_text(None), flush=True)

    def emit(row):
        rows.append(row)
        print(_row_text(row), flush=True)

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    for model_name in models:
        config = make_config(model_name, args.layers)
        dense_fits = free is None or _dense_bytes(config) + _kv_bytes(config, max(args.batch), cache_len) < 0.9 * free
        dense_ms: Dict[tuple, float] = {}
        base = dict(model=model_name, layers=config.num_hidden_layers, prompt=args.prompt, cache_len=cache_len)
        for sparsity in [None] + list(args.sparsity):
            variant = "dense" if sparsity is None else f"sparse{round(sparsity * 100)}"
            empty = dict(
                base,
                variant=variant,
                sparsity=sparsity or 0.0,
                batch="",
                mode="",
                ms_per_step="",
                tokens_per_s="",
                speedup="",
                kernel_speedup="",
                kernel_speedup_tw="",
                proj_share="",
                weight_gb="",
                peak_gb="",
                check_rel_err="",
                status="",
            )
            if sparsity is None and not dense_fits:
                emit(
                    dict(
                        empty,
                        weight_gb=_dense_bytes(config) / 1e9,
                        status=f"does not fit ({_dense_bytes(config) / 1e9:.0f} GB of dense weights, "
                        f"{free / 1e9:.0f} GB free)",
                    )
                )
                continue
            try:
                ok = _bench_variant(
                    args,
                    config,
                    device,
                    modes,
                    sparsity,
                    dense_fits,
                    cache_len,
                    free,
                    dense_ms,
                    lambda **kw: emit(dict(empty, **kw)),
                    progress,
                )
                failures += not ok
            except Exception as exc:  # one failing variant must not cost the rest of the run
                failures += 1
                import traceback

                traceback.print_exc()
                oom = isinstance(exc, torch.cuda.OutOfMemoryError)
                text = str(exc).splitlines()[0][:100] if str(exc) else ""
                emit(dict(empty, status=("out of memory: " if oom else f"error: {type(exc).__name__}: ") + text))
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    _write_csv(args.csv, rows)
    _plot(args.png, rows)
    print(f"wrote {args.csv}" + (f" and {args.png}" if args.png and _has_matplotlib() else ""))
    return 1 if failures else 0


def _bench_variant(
    args, config, device, modes, sparsity, dense_fits, cache_len, free, dense_ms, emit, progress
) -> bool:
    """Build one variant (dense, or sparse at ``sparsity``), check it and time it at every batch size; False when
    the logits check failed. Rows go to ``emit``; the model is freed when this returns."""
    import torch

    import flashspmm.torch as fst

    check = ""
    if sparsity is None:
        model, _ = build_model(config, device, seed=args.seed, progress=progress)
    elif dense_fits:
        model, _ = build_model(config, device, seed=args.seed, sparsity=sparsity, progress=progress)
        reference = None if args.no_check else check_logits(model, device)
        fst.sparsify(model, sparsity, format=args.format, progress=progress)
        check = "" if reference is None else logits_check(model, reference)
        del reference
    else:
        model, worst = build_model(
            config,
            device,
            seed=args.seed,
            sparsity=sparsity,
            compress_layers=True,
            format=args.format,
            progress=progress,
            check_first=not args.no_check,
        )
        check = "" if worst is None else worst
    wbytes = weight_bytes(model)
    check_ok = check == "" or check <= CHECK_TOL
    status = "ok" if check_ok else f"CHECK FAILED (> {CHECK_TOL})"
    for batch in args.batch:
        if free is not None and _kv_bytes(config, batch, cache_len) > 0.9 * torch.cuda.mem_get_info(device)[0]:
            emit(batch=batch, weight_gb=wbytes / 1e9, check_rel_err=check, status="KV cache does not fit")
            continue
        timed_kernels = sparsity is not None and device.type == "cuda" and "graph" in modes
        kt = kernel_speedup(model, batch, device) if timed_kernels else None
        for mode in modes:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            decoder = Decoder(model, batch, args.prompt, cache_len, device, seed=args.seed)
            if mode == "graph":
                decoder.capture()
            else:
                decoder.run(2)  # warm-up
            steps = min(args.steps, cache_len - decoder.pos)
            seconds = decoder.run(steps)
            ms = seconds / steps * 1e3
            key = (batch, mode)
            if sparsity is None:
                dense_ms[key] = ms
            peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else ""
            graph_kernels = kt is not None and mode == "graph"
            emit(
                batch=batch,
                mode=mode,
                ms_per_step=ms,
                tokens_per_s=batch * steps / seconds,
                speedup=dense_ms[key] / ms if key in dense_ms else "",
                kernel_speedup=kt[0] if graph_kernels else "",
                kernel_speedup_tw=kt[1] / kt[2] if graph_kernels else "",
                # the dense projections' share of the dense step (what a faster sparse kernel can take off it)
                proj_share=kt[1] * config.num_hidden_layers * 1e3 / dense_ms[key]
                if graph_kernels and key in dense_ms
                else "",
                weight_gb=wbytes / 1e9,
                peak_gb=peak,
                check_rel_err=check,
                status=status,
            )
            del decoder
    return check_ok


def _num(value, spec: str, suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _row_text(row: Optional[dict]) -> str:
    """One result line (the header line for None)."""
    if row is None:
        return (
            f"{'model':>11} {'lay':>4} {'variant':>9} {'batch':>5} {'mode':<5} {'ms/step':>9} {'tokens/s':>10} "
            f"{'speedup':>7} {'kernels':>7} {'proj':>5} {'weights':>9} {'peak':>9} {'check':>8}  status"
        )
    return (
        f"{row['model']:>11} {row['layers']:>4} {row['variant']:>9} {str(row['batch']):>5} {row['mode']:<5} "
        f"{_num(row['ms_per_step'], '9.3f')} {_num(row['tokens_per_s'], '10.1f')} "
        f"{_num(row['speedup'], '6.2f', 'x'):>7} {_num(row['kernel_speedup_tw'], '6.2f', 'x'):>7} "
        f"{_num(row['proj_share'] * 100 if row['proj_share'] != '' else '', '4.0f', '%'):>5} "
        f"{_num(row['weight_gb'], '6.2f', ' GB'):>9} {_num(row['peak_gb'], '6.2f', ' GB'):>9} "
        f"{_num(row['check_rel_err'], '8.1e')}  {row['status']}"
    )


def _write_csv(path: str, rows: List[dict]) -> None:
    if not path:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plot(path: str, rows: List[dict]) -> None:
    """Tokens/s per model and batch, one bar per variant (graph mode where measured)."""
    if not path or not _has_matplotlib():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r["tokens_per_s"]]
    mode = "graph" if any(r["mode"] == "graph" for r in timed) else "eager"
    timed = [r for r in timed if r["mode"] == mode]
    if not timed:
        return
    groups = sorted({(r["model"], r["batch"]) for r in timed}, key=lambda g: (list(MODELS).index(g[0]), g[1]))
    variants = sorted({r["variant"] for r in timed}, key=lambda v: (v != "dense", v))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * len(variants) / 2), 4))
    width = 0.8 / len(variants)
    for j, v in enumerate(variants):
        values = []
        for g in groups:
            match = [r["tokens_per_s"] for r in timed if (r["model"], r["batch"]) == g and r["variant"] == v]
            values.append(match[0] if match else 0)
        ax.bar([i + j * width for i in range(len(groups))], values, width, label=v)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{m}\nB={b}" for m, b in groups], fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.set_yscale("log")
    ax.set_title(f"decode tokens/s ({mode}), dense fp16 vs flashspmm")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m flashspmm._bench_model ...`` (the same as ``flashspmm bench-model``)."""
    parser = _configure(
        argparse.ArgumentParser(
            prog="flashspmm bench-model",
            description=DESCRIPTION,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
