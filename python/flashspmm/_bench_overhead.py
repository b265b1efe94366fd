"""`flashspmm bench-overhead`: host time of one flashspmm.linear call against torch.nn.functional.linear.

A loop of back-to-back calls on tiny problems is bound by the host, so its wall time per call is the host cost
of the Python call path (argument checks, plan look-up, output allocation, the C call). Both functions run in
the same process on the same tensors; the ratio is what the README's "within 1.5x of F.linear" refers to.
Needs PyTorch with CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import flashspmm

_DEFAULT_SHAPES = "256x256,4096x4096"


def _per_call(fn, calls, repeats, torch):
    """Median over `repeats` of the wall time per call of `calls` back-to-back calls (seconds)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "bench-overhead",
        help="host time per linear call vs torch.nn.functional.linear",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--shapes", default=_DEFAULT_SHAPES, help="MxK list")
    p.add_argument("--n", type=int, default=1, help="tokens per call")
    p.add_argument("--calls", type=int, default=2000, help="calls per timed loop")
    p.add_argument("--repeats", type=int, default=5, help="timed loops (the median is reported)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of zeros in W")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("bench-overhead needs PyTorch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("bench-overhead needs a CUDA device", file=sys.stderr)
        return 2
    print(f"# {torch.cuda.get_device_name(0)}; N = {args.n}; {args.calls} calls per loop, median of {args.repeats}")
    print(f"{'M':>6} {'K':>6} {'F.linear_us':>12} {'flashspmm_us':>13} {'ratio':>6} {'bias_us':>8} {'ratio':>6}")
    torch.manual_seed(0)
    worst = 0.0
    for shape in args.shapes.split(","):
        M, K = (int(v) for v in shape.lower().split("x"))
        w = flashspmm.prune(torch.randn(M, K, device="cuda", dtype=torch.float16), args.sparsity)
        W = flashspmm.compress(w)
        x = torch.randn(args.n, K, device="cuda", dtype=torch.float16)
        b = torch.randn(M, device="cuda", dtype=torch.float16)
        with torch.inference_mode():
            dense = _per_call(lambda: F.linear(x, w), args.calls, args.repeats, torch)
            sparse = _per_call(lambda: flashspmm.linear(x, W), args.calls, args.repeats, torch)
            dense_b = _per_call(lambda: F.linear(x, w, b), args.calls, args.repeats, torch)
            sparse_b = _per_call(lambda: flashspmm.linear(x, W, b), args.calls, args.repeats, torch)
        worst = max(worst, sparse / dense, sparse_b / dense_b)
        print(
            f"{M:>6} {K:>6} {dense * 1e6:>12.1f} {sparse * 1e6:>13.1f} {sparse / dense:>6.2f} "
            f"{sparse_b * 1e6:>8.1f} {sparse_b / dense_b:>6.2f}",
            flush=True,
        )
    print(f"# worst ratio {worst:.2f} (target <= 1.5)")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="flashspmm")
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["bench-overhead", *(sys.argv[1:] if argv is None else argv)])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
