"""Command line: ``python -m flashspmm info | demo | bench | bench-convert ...``."""

import argparse
import importlib
import importlib.util
import sys
import time

import numpy as np

USAGE = """usage: python -m flashspmm COMMAND [ARGS]

commands:
  info    version, build (compiled GPU architectures), CUDA devices, install paths
  demo    compress a pruned LLM-sized weight in each format, check it, and multiply with it
  bench   GPU benchmarks against cuBLAS (python -m flashspmm bench --help)
  bench-convert  GPU compress / decompress / prune throughput (python -m flashspmm bench-convert --help)
"""


def cmd_info(argv):
    """Print the installation summary."""
    import flashspmm

    argparse.ArgumentParser(prog="python -m flashspmm info", description="Show the flashspmm installation.").parse_args(argv)
    d = flashspmm.info()
    print(f"flashspmm {d['version']}")
    print(f"build:        {d['build']}")
    print(f"CUDA devices: {d['device_count']}")
    print(f"library:      {d['library']}")
    print(f"include dir:  {d['include_dir']}")
    print(f"cmake dir:    {d['cmake_dir']}   (cmake -Dflashspmm_DIR=<this>)")
    return 0


def _gpu_framework():
    """'torch' or 'cupy' if a GPU is usable through one of them, else None (with the reason)."""
    import flashspmm

    if flashspmm.device_count() == 0:
        return None, "no CUDA device"
    for name in ("torch", "cupy"):
        if importlib.util.find_spec(name) is None:
            continue
        try:
            mod = importlib.import_module(name)
            if name == "torch" and not mod.cuda.is_available():
                continue
            return name, ""
        except Exception:  # a broken install: try the next one
            continue
    return None, "neither torch nor cupy (with CUDA) is importable"


def cmd_demo(argv):
    """Compress a pruned weight at several sparsities, verify round trips, run linear."""
    import flashspmm

    p = argparse.ArgumentParser(prog="python -m flashspmm demo", description=cmd_demo.__doc__)
    p.add_argument("--m", type=int, default=4096, help="out features (rows of W), default 4096")
    p.add_argument("--k", type=int, default=4096, help="in features (columns of W), default 4096")
    p.add_argument("--tokens", type=int, default=8, help="batch of tokens N for linear, default 8")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    print(f"flashspmm {flashspmm.__version__} demo: one LLM-shaped fp16 weight W [{a.m} x {a.k}], "
          f"Gaussian values, magnitude-pruned per row")
    w = (rng.standard_normal((a.m, a.k), dtype=np.float32) * 0.02).astype(np.float16)
    dense_mb = w.nbytes / 1e6
    x = rng.standard_normal((a.tokens, a.k), dtype=np.float32).astype(np.float16)

    fw, why = _gpu_framework()
    print()
    print(f"{'sparsity':>8}  {'format':<10} {'stored as':<10} {'MB':>8} {'vs dense':>9} {'round trip':>11}")
    print(f"{'':>8}  {'dense':<10} {'':<10} {dense_mb:8.2f} {'1.00x':>9}")
    ok = True
    auto_matrices = {}
    for sparsity in (0.5, 0.7, 0.9):
        wp = flashspmm.prune(w, sparsity)  # magnitude pruning, per row
        for fmt in ("bitmap", "tiled_csl", "auto"):
            W = flashspmm.compress(wp, format=fmt)
            same = np.array_equal(W.to_dense().view(np.uint16), wp.view(np.uint16))
            ok &= same
            print(f"{sparsity:8.0%}  {fmt:<10} {W.format:<10} {W.nbytes / 1e6:8.2f} "
                  f"{W.compression_ratio:8.2f}x {'exact' if same else 'MISMATCH':>11}")
            if fmt == "auto":
                auto_matrices[sparsity] = (wp, W)

    print()
    if fw:
        print(f"linear: y = x @ W.T for {a.tokens} tokens on the GPU (through {fw})")
    else:
        print(f"linear: y = x @ W.T for {a.tokens} tokens on the CPU ({why}; the C++ reference path)")
    x64 = x.astype(np.float64)
    for sparsity, (wp, W) in auto_matrices.items():
        ref = x64 @ wp.astype(np.float64).T
        t0 = time.perf_counter()
        y = _run_linear(fw, x, W)
        dt = time.perf_counter() - t0
        err = np.linalg.norm(y.astype(np.float64) - ref) / np.linalg.norm(ref)
        good = err <= 1e-3
        ok &= bool(good)
        print(f"  {sparsity:4.0%} sparse, {W.format:<9}: relative error vs float64 numpy {err:.2e} "
              f"({'ok' if good else 'TOO LARGE'}), {dt * 1e3:.1f} ms{' incl. transfers' if fw else ''}")
    print()
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - t_start:.1f} s")
    return 0 if ok else 1


def _run_linear(fw, x, W):
    import flashspmm

    if fw == "torch":
        import torch

        xd = torch.from_numpy(x).cuda()
        y = flashspmm.linear(xd, W.to(f"cuda:{xd.device.index}"))
        return y.cpu().numpy()
    if fw == "cupy":
        import cupy

        xd = cupy.asarray(x)
        y = flashspmm.linear(xd, W.to(f"cuda:{xd.device.id}"))
        return cupy.asnumpy(y)
    return flashspmm.linear(x, W)


def _run_module(command, module, argv):
    """Hand over to a benchmark module if this install has it."""
    try:
        bench = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        print(f"python -m flashspmm {command}: this install has no benchmark module ({module}).", file=sys.stderr)
        return 2
    result = bench.main(argv)
    return 0 if result is None else int(result)


def cmd_bench(argv):
    """GPU SpMM benchmarks against cuBLAS (flashspmm._bench)."""
    return _run_module("bench", "flashspmm._bench", argv)


def cmd_bench_convert(argv):
    """GPU conversion and pruning benchmarks (flashspmm._bench_convert)."""
    return _run_module("bench-convert", "flashspmm._bench_convert", argv)


COMMANDS = {"info": cmd_info, "demo": cmd_demo, "bench": cmd_bench, "bench-convert": cmd_bench_convert}


def main(argv=None):
    """Entry point of ``python -m flashspmm`` and of the ``flashspmm`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
