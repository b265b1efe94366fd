"""`python -m flashspmm bench`: flashspmm's GPU kernels against dense cuBLAS (torch.matmul) in the same run.

Per point: median time (CUDA events around CUDA-graph replays that rotate over enough copies of the
weights that they are never L2-resident), speedup over cuBLAS, effective bandwidth of the bytes moved
(compressed W + x + y), its fraction of the measured device-to-device copy bandwidth, and the fraction of the
format's byte limit reached (the speedup over the one its bytes allow: dense bytes over compressed bytes, x and
y included, that is the speedup at cuBLAS's bandwidth).
Needs PyTorch with CUDA. Writes a CSV and, with matplotlib, a PNG (speedup vs sparsity, one line per N).
"""

import argparse
import csv
import math
import statistics
import sys

import numpy as np

import flashspmm

from ._cli_sparsify import FORMAT_CHOICES

SUITE = [
    (9216, 9216),
    (36864, 9216),
    (9216, 36864),
    (28672, 8192),
    (4096, 4096),
    (11008, 4096),
    (4096, 11008),
    (8192, 8192),
    (8192, 28672),
]
TARGET_SHAPES = [(9216, 9216), (36864, 9216), (9216, 36864), (28672, 8192)]
# Issue targets: geometric-mean speedup over cuBLAS on TARGET_SHAPES, fp16.
TARGETS = {50: (1.3, 1.2, 1.0), 70: (1.9, 1.7, 1.3), 80: (2.5, 2.2, 1.5), 90: (3.5, 2.8, 1.7)}


# Projection shapes (out x in features) of one decoder layer of whole models, with how many of each the layer
# has (q/o, k/v under grouped-query attention, gate/up, down), for --models and its time-weighted summary.
MODEL_LAYERS = {
    "llama2-7b": {(4096, 4096): 4, (11008, 4096): 2, (4096, 11008): 1},
    "llama2-13b": {(5120, 5120): 4, (13824, 5120): 2, (5120, 13824): 1},
    "llama3-8b": {(4096, 4096): 2, (1024, 4096): 2, (14336, 4096): 2, (4096, 14336): 1},
    "llama2-70b": {(8192, 8192): 2, (1024, 8192): 2, (28672, 8192): 2, (8192, 28672): 1},
}
MODEL_SHAPES = {name: sorted(layer) for name, layer in MODEL_LAYERS.items()}


def _variant(fmt):
    """ "base[:choice]" -> (base format, linear() keyword arguments): a bitmap decoder (direct, scatter, rows) or
    a kernel (tensor_core, cuda_core, streaming) chosen through the plan options."""
    base, _, choice = fmt.partition(":")
    if not choice:
        return base, {}
    if choice in ("tensor_core", "cuda_core", "streaming"):
        return base, {"kernel": choice}
    return base, {"decoder": choice}


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def _parse_list(text, cast=int):
    return [cast(v) for v in text.split(",") if v]


def _parse_shapes(text):
    return [tuple(int(d) for d in s.lower().split("x")) for s in text.split(",") if s]


def copy_bandwidth(torch, nbytes=1 << 30, reps=10):
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    a.random_(0, 255)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    return 2 * nbytes / statistics.median(times)


def time_rotation(torch, calls, reps):
    """Median seconds per call of `calls` (closures over distinct buffers), run as one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in calls:  # warm-up (plans, caches) outside the capture
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in calls:
            f()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3 / len(calls))
    return statistics.median(times)


def copies_for(nbytes, l2_bytes, cap=64):
    """How many copies to rotate over so the working set is 3x the L2 cache."""
    return int(min(cap, max(1, math.ceil(3 * l2_bytes / max(nbytes, 1)))))


def prune_random(torch, w, sparsity, gen):
    """Uniform random pruning: zero round(sparsity * numel) entries chosen at random."""
    if sparsity <= 0:
        return w
    mask = torch.rand(w.shape, device=w.device, generator=gen) < sparsity
    return w.masked_fill_(mask, 0)


def run(args):
    try:
        import torch
    except ImportError:
        print("flashspmm bench needs PyTorch with CUDA (pip install torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("flashspmm bench needs a CUDA device", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    card = torch.cuda.get_device_name(0)
    tdtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    bw = copy_bandwidth(torch)
    print(
        f"# card: {card}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MB; "
        f"copy bandwidth {bw / 1e12:.2f} TB/s (read + write)"
    )
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    rows = []
    header = (
        f"{'M':>6} {'K':>6} {'sp%':>4} {'N':>4} {'format':>14} {'MB':>8} {'us':>9} {'cublas_us':>9} "
        f"{'speedup':>7} {'TB/s':>6} {'%copy':>6} {'%limit':>6}"
    )
    print(header)
    bases = {_variant(f)[0] for f in args.formats}
    for M, K in args.shapes:
        dense_bytes = M * K * 2
        w_master = torch.randn(M, K, device="cuda", generator=gen).to(tdtype)
        for sp in args.sparsity:
            w = prune_random(torch, w_master.clone(), sp / 100.0, gen)
            w_host = w.cpu()
            w_np = w_host.view(torch.int16).numpy().view(np.float16 if args.dtype == "float16" else _bf16())
            mats = {}
            # the library's choices (format/choose.h) for the automatic formats asked for
            autos = {b: flashspmm.compress(w_np, format=b).format for b in bases if b.startswith("auto")}
            for fmt in ("bitmap", "tiled_csl"):
                host = flashspmm.compress(w_np, format=fmt)
                n_copies = copies_for(host.nbytes, l2)
                mats[fmt] = [host.to("cuda") for _ in range(n_copies)]
            dense_copies = [w] + [w.clone() for _ in range(copies_for(dense_bytes, l2) - 1)]
            for N in args.n:
                x = torch.randn(N, K, device="cuda", generator=gen).to(tdtype)
                y = torch.empty(N, M, device="cuda", dtype=tdtype)
                t_cublas = time_rotation(
                    torch, [lambda d=d: torch.matmul(x, d.t(), out=y) for d in dense_copies], args.reps
                )
                io_bytes = N * K * 2 + N * M * 2
                for fmt, split_k in [(f, k) for f in args.formats for k in args.split_k]:
                    base, options = _variant(fmt)
                    if split_k:
                        options = dict(options, split_k=split_k)
                        fmt = f"{fmt}/k{split_k}"
                    real = autos.get(base, base)
                    blobs = mats[real]
                    if options.get("kernel") == "cuda_core" and (16 if real == "tiled_csl" else 1) < N:
                        continue  # the CUDA-core kernel serves one token (Tiled-CSL: up to 16)
                    if options.get("kernel") == "streaming" and N > 16:
                        continue  # the streaming kernel serves up to 16 tokens
                    t = time_rotation(
                        torch, [lambda W=W: flashspmm.linear(x, W, out=y, **options) for W in blobs], args.reps
                    )
                    nbytes = blobs[0].nbytes + io_bytes
                    limit = byte_limit(blobs[0].nbytes, dense_bytes, io_bytes)
                    row = dict(
                        card=card,
                        M=M,
                        K=K,
                        sparsity=sp,
                        N=N,
                        format=fmt,
                        resolved=real,
                        blob_bytes=blobs[0].nbytes,
                        dense_bytes=dense_bytes,
                        us=t * 1e6,
                        cublas_us=t_cublas * 1e6,
                        speedup=t_cublas / t,
                        tbps=nbytes / t / 1e12,
                        frac_copy=nbytes / t / bw,
                        cublas_frac_copy=(dense_bytes + io_bytes) / t_cublas / bw,
                        copy_tbps=bw / 1e12,
                        byte_limit=limit,
                        frac_limit=t_cublas / t / limit,
                    )
                    rows.append(row)
                    print(
                        f"{M:>6} {K:>6} {sp:>4} {N:>4} {fmt:>14} {blobs[0].nbytes / 1e6:>8.1f} {t * 1e6:>9.1f} "
                        f"{t_cublas * 1e6:>9.1f} {t_cublas / t:>7.2f} {nbytes / t / 1e12:>6.2f} "
                        f"{100 * nbytes / t / bw:>6.1f} {100 * t_cublas / t / limit:>6.1f}",
                        flush=True,
                    )
            mats = dense_copies = w = w_host = None  # free device memory before the next point
        w_master = None
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            writer.writeheader()
            writer.writerows(rows)
    summarize(rows, card)
    if getattr(args, "models", None):
        summarize_models(rows, args.models, card)
    if args.png:
        plot(rows, args.png, card)
    return 0


def byte_limit(blob_bytes, dense_bytes, io_bytes):
    """The speedup over cuBLAS that a format's bytes allow: dense bytes over compressed bytes (x and y
    included in both), i.e. the speedup of a kernel that moved its bytes at cuBLAS's bandwidth."""
    return (dense_bytes + io_bytes) / (blob_bytes + io_bytes)


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def summarize(rows, card):
    """Geometric-mean speedup on the target shapes, per format, sparsity and N bucket, vs the targets."""
    print(f"\n# geometric-mean speedup over cuBLAS on {', '.join(f'{m}x{k}' for m, k in TARGET_SHAPES)} ({card})")
    buckets = [("N<=16", lambda n: n <= 16, 0), ("N=32", lambda n: n == 32, 1), ("N=64", lambda n: n == 64, 2)]
    for fmt in sorted({r["format"] for r in rows}):
        print(f"{fmt:>9}  sp%  " + "  ".join(f"{b[0]:>14}" for b in buckets))
        for sp in sorted({r["sparsity"] for r in rows}):
            cells = []
            for _name, pred, idx in buckets:
                sel = [
                    r["speedup"]
                    for r in rows
                    if r["format"] == fmt and r["sparsity"] == sp and pred(r["N"]) and (r["M"], r["K"]) in TARGET_SHAPES
                ]
                g = _geomean(sel)
                tgt = TARGETS.get(sp, (None, None, None))[idx]
                mark = "" if tgt is None or not sel else (" ok" if g >= tgt else f" <{tgt}")
                cells.append(f"{g:>8.2f}{mark:<6}" if sel else f"{'-':>14}")
            print(f"{'':>9}  {sp:>3}  " + "  ".join(cells))


def summarize_models(rows, models, card):
    """Time-weighted speedup over cuBLAS of one decoder layer's projections per model: the sum of cuBLAS times
    over the layer's matrices divided by the sum of flashspmm's (the best format measured for each matrix), as a
    whole model's decode step would see it, per sparsity and N; and the slowest projection against cuBLAS."""
    print(f"\n# one decoder layer's projections, time-weighted speedup over cuBLAS, best format per matrix ({card})")
    print(f"{'model':>11} {'sp%':>4} {'N':>4} {'speedup':>8} {'slowest projection':>28}")
    for model in models:
        layer = MODEL_LAYERS[model]
        for sp in sorted({r["sparsity"] for r in rows}):
            for n in sorted({r["N"] for r in rows}):
                dense = sparse = 0.0
                slowest = (float("inf"), None)
                for shape, count in layer.items():
                    sel = [r for r in rows if (r["M"], r["K"]) == shape and r["sparsity"] == sp and r["N"] == n]
                    if not sel:
                        break
                    best = min(sel, key=lambda r: r["us"])
                    dense += count * best["cublas_us"]
                    sparse += count * best["us"]
                    slowest = min(slowest, (best["speedup"], f"{shape[0]}x{shape[1]} {best['format']}"))
                else:
                    print(f"{model:>11} {sp:>4} {n:>4} {dense / sparse:>8.2f} {slowest[1]:>22} {slowest[0]:>5.2f}")


def plot(rows, path, card):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written")
        return
    fmts = sorted({r["format"] for r in rows})
    fig, axes = plt.subplots(1, len(fmts), figsize=(5 * len(fmts), 4), squeeze=False)
    for ax, fmt in zip(axes[0], fmts):
        for N in sorted({r["N"] for r in rows}):
            sps = sorted({r["sparsity"] for r in rows})
            ys = [
                _geomean([r["speedup"] for r in rows if r["format"] == fmt and r["N"] == N and r["sparsity"] == sp])
                for sp in sps
            ]
            ax.plot(sps, ys, marker="o", label=f"N={N}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"{fmt} (geomean over shapes)")
        ax.set_xlabel("sparsity %")
        ax.set_ylabel("speedup over cuBLAS")
        ax.legend()
    fig.suptitle(f"flashspmm vs cuBLAS, {card}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m flashspmm bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shapes", type=_parse_shapes, default=SUITE, help="MxK list, e.g. 9216x9216,4096x4096")
    ap.add_argument("--n", type=_parse_list, default=[1, 8, 16, 32, 64], help="token counts, e.g. 1,8,16")
    ap.add_argument("--sparsity", type=_parse_list, default=[50, 60, 70, 80, 90, 95], help="percent list")
    ap.add_argument(
        "--formats",
        type=lambda s: s.split(","),
        default=None,
        help="bitmap, tiled_csl, auto (auto_n8, auto_n1: for N <= 8, one token); bitmap:direct / bitmap:scatter / bitmap:rows force a bitmap decoder, "
        "FORMAT:cuda_core / FORMAT:tensor_core / FORMAT:streaming a kernel (CUDA cores: N = 1, Tiled-CSL "
        "N <= 16; streaming: bitmap, N <= 16)",
    )
    ap.add_argument(
        "--split-k",
        type=_parse_list,
        default=[0],
        help="split-K counts to run each format with (0 = the plan's choice), e.g. 0,2,4,8; rows FORMAT/kS",
    )
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="the four target shapes, N 1,8,16,32,64, sparsity 50-90")
    ap.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=None,
        help=f"the projection shapes of these models instead of --shapes: {', '.join(MODEL_SHAPES)}",
    )
    ap.add_argument("--csv", default="bench.csv")
    ap.add_argument("--png", default="bench.png")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.n, args.sparsity = TARGET_SHAPES, [1, 8, 16, 32, 64], [50, 70, 80, 90]
        if args.formats is None:
            args.formats = ["bitmap:rows", "bitmap:scatter", "bitmap:direct", "tiled_csl", "auto"]
            if "without the rows decoder" in flashspmm.info()["build"]:  # built with -DFSPMM_ROWS_DECODER=OFF
                args.formats.remove("bitmap:rows")
    if args.formats is None:
        args.formats = ["bitmap", "tiled_csl", "auto"]
    known = [f for f in FORMAT_CHOICES if f != "smallest"]  # the formats a point times (smallest: no kernel of its own)
    bad = [f for f in args.formats if _variant(f)[0] not in known]
    if bad:
        ap.error(f"unknown format(s) {bad}: use {', '.join(known)} (optionally FORMAT:CHOICE)")
    if args.models:
        unknown = [m for m in args.models if m not in MODEL_SHAPES]
        if unknown:
            ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODEL_SHAPES)}")
        args.shapes = sorted({s for m in args.models for s in MODEL_SHAPES[m]})
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
