"""Command line: ``flashspmm COMMAND ...`` (the console script) or ``python -m flashspmm COMMAND ...``.

Commands are registered in :data:`COMMANDS`; ``flashspmm --help`` lists them and ``flashspmm COMMAND --help``
describes one.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

PROG = "flashspmm"

# The subcommands, in the order `--help` lists them: (name, module, function). `module.function(subparsers)`
# adds the command's parser with `subparsers.add_parser(name, ...)` and returns it; the parser's `run` default
# (`parser.set_defaults(run=...)`) runs the command with the parsed arguments and returns the exit status, and
# where it sets none, `module.run(args)` does. A command in a module of its own plugs in with one line, e.g.
# ("sparsify", "flashspmm._cli_sparsify", "add_parser"). A module this install lacks leaves its command listed
# as unavailable rather than breaking the others.
COMMANDS: list[tuple[str, str, str]] = [
    ("info", __name__, "add_info_parser"),
    ("demo", __name__, "add_demo_parser"),
    ("bench", __name__, "add_bench_parser"),
    ("bench-convert", __name__, "add_bench_convert_parser"),
    ("bench-overhead", "flashspmm._bench_overhead", "add_parser"),
    ("bench-model", "flashspmm._bench_model", "add_parser"),
    ("sparsify", "flashspmm._cli_sparsify", "add_parser"),
]


class CommandError(Exception):
    """Arguments that are well-formed but unusable together: reported like an argparse error (exit status 2)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default shown after its help."""


class _VersionAction(argparse.Action):
    """``--version``: the version of the loaded library, imported only when asked for (so --help works even
    where the library cannot load)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import flashspmm

        print(f"{PROG} {flashspmm.__version__}")
        parser.exit(0)


# ---------------------------------------------------------------------------------------------------- info


def add_info_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info",
        help="version, build (compiled GPU architectures), CUDA devices, install paths",
        description="Show the flashspmm installation: version, build, CUDA devices, library, header and CMake paths.",
        formatter_class=_Formatter,
    )
    p.set_defaults(run=run_info)
    return p


def run_info(args: argparse.Namespace) -> int:
    """Print the installation summary."""
    import flashspmm

    d = flashspmm.info()
    print(f"flashspmm {d['version']}")
    print(f"build:        {d['build']}")
    print(f"CUDA devices: {d['device_count']}")
    print(f"library:      {d['library']}")
    print(f"include dir:  {d['include_dir']}")
    print(f"cmake dir:    {d['cmake_dir']}   (cmake -Dflashspmm_DIR=<this>)")
    return 0


# ---------------------------------------------------------------------------------------------------- demo

# The demo holds W several times over (a float32 draw, the pruned copies of every sparsity, the blobs, a float64
# reference): about 20 bytes per element. 2^27 elements (e.g. 8192 x 16384) stays within a few GB.
DEMO_MAX_ELEMENTS = 1 << 27
DEMO_MAX_TOKENS = 4096


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi], with a message naming the range otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{lo}, {hi}]")
        return value

    return parse


def _sparsities(text: str) -> list[float]:
    """An argparse type: a comma-separated list of sparsities, each a fraction in [0, 1)."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a number (give fractions, e.g. 0.5,0.7,0.9)") from None
        if not 0.0 <= value < 1.0:  # also refuses NaN
            raise argparse.ArgumentTypeError(
                f"sparsity {item} is outside [0, 1): it is the fraction of weights set to zero, e.g. 0.7 for 70 %"
            )
        values.append(value)
    return values


def add_demo_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="compress a pruned LLM-sized weight in each format, check it, and multiply with it",
        description="Compress a magnitude-pruned fp16 weight W [m x k] at several sparsities in each format, check "
        "that it decompresses exactly, and compute y = x @ W.T against a float64 reference (on the GPU through "
        "torch or cupy when one is usable, else on the CPU).",
        formatter_class=_Formatter,
    )
    p.add_argument("--m", type=_int_in(1, DEMO_MAX_ELEMENTS), default=4096, help="out features (rows of W)")
    p.add_argument("--k", type=_int_in(1, DEMO_MAX_ELEMENTS), default=4096, help="in features (columns of W)")
    p.add_argument("--tokens", type=_int_in(1, DEMO_MAX_TOKENS), default=8, help="batch of tokens N for linear")
    # A string default goes through `type` like the command line, and --help shows it as it would be typed.
    p.add_argument("--sparsity", type=_sparsities, default="0.5,0.7,0.9", help="fractions of zeros, in [0, 1)")
    p.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0, help="seed of the random weights and inputs")
    p.set_defaults(run=run_demo)
    return p


def _gpu_framework() -> tuple[str | None, str]:
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


def run_demo(args: argparse.Namespace) -> int:
    """Compress a pruned weight at several sparsities, verify round trips, run linear."""
    import flashspmm

    if args.m * args.k > DEMO_MAX_ELEMENTS:
        raise CommandError(
            f"--m {args.m} --k {args.k} is {args.m * args.k} elements; the demo allows at most {DEMO_MAX_ELEMENTS} "
            f"(it keeps several copies of W, about 20 bytes per element), e.g. --m 8192 --k 16384"
        )
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    print(
        f"flashspmm {flashspmm.__version__} demo: one LLM-shaped fp16 weight W [{args.m} x {args.k}], "
        f"Gaussian values (seed {args.seed}), magnitude-pruned per row"
    )
    w = (rng.standard_normal((args.m, args.k), dtype=np.float32) * 0.02).astype(np.float16)
    dense_mb = w.nbytes / 1e6
    x = rng.standard_normal((args.tokens, args.k), dtype=np.float32).astype(np.float16)

    fw, why = _gpu_framework()
    print()
    print(f"{'sparsity':>8}  {'format':<10} {'stored as':<10} {'MB':>8} {'vs dense':>9} {'round trip':>11}")
    print(f"{'':>8}  {'dense':<10} {'':<10} {dense_mb:8.2f} {'1.00x':>9}")
    ok = True
    auto_matrices = {}
    for sparsity in args.sparsity:
        wp = flashspmm.prune(w, sparsity)  # magnitude pruning, per row
        for fmt in ("bitmap", "tiled_csl", "auto"):
            W = flashspmm.compress(wp, format=fmt)
            same = np.array_equal(W.to_dense().view(np.uint16), wp.view(np.uint16))
            ok &= same
            print(
                f"{sparsity:8.0%}  {fmt:<10} {W.format:<10} {W.nbytes / 1e6:8.2f} "
                f"{W.compression_ratio:8.2f}x {'exact' if same else 'MISMATCH':>11}"
            )
            if fmt == "auto":
                auto_matrices[sparsity] = (wp, W)

    print()
    if fw:
        print(f"linear: y = x @ W.T for {args.tokens} tokens on the GPU (through {fw})")
    else:
        print(f"linear: y = x @ W.T for {args.tokens} tokens on the CPU ({why}; the C++ reference path)")
    x64 = x.astype(np.float64)
    for sparsity, (wp, W) in auto_matrices.items():
        ref = x64 @ wp.astype(np.float64).T
        t0 = time.perf_counter()
        y = _run_linear(fw, x, W)
        dt = time.perf_counter() - t0
        scale = np.linalg.norm(ref)
        # An all-zero reference (x or W all zeros) has no relative error: compare absolutely then.
        err = np.linalg.norm(y.astype(np.float64) - ref) / (scale if scale > 0 else 1.0)
        good = err <= 1e-3
        ok &= bool(good)
        print(
            f"  {sparsity:4.0%} sparse, {W.format:<9}: relative error vs float64 numpy {err:.2e} "
            f"({'ok' if good else 'TOO LARGE'}), {dt * 1e3:.1f} ms{' incl. transfers' if fw else ''}"
        )
    print()
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - t_start:.1f} s")
    return 0 if ok else 1


def _run_linear(fw: str | None, x: np.ndarray, W: Any) -> np.ndarray:
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


# ----------------------------------------------------------------------------------- bench, bench-convert
# The benchmark modules parse their own options (their main(argv) holds the argparse parser): these commands
# hand the rest of the command line over unchanged ("pass-through"), so `flashspmm bench --help` shows theirs.


def _add_passthrough(subparsers: Any, name: str, module: str, help: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help, add_help=False, formatter_class=_Formatter)
    p.set_defaults(run=lambda argv: _run_module(name, module, argv), passthrough=True)
    return p


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    return _add_passthrough(
        subparsers,
        "bench",
        "flashspmm._bench",
        "GPU SpMM benchmarks against cuBLAS (needs PyTorch with CUDA; flashspmm bench --help)",
    )


def add_bench_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    return _add_passthrough(
        subparsers,
        "bench-convert",
        "flashspmm._bench_convert",
        "GPU compress / decompress / prune throughput (needs PyTorch with CUDA; flashspmm bench-convert --help)",
    )


def _run_module(command: str, module: str, argv: Sequence[str]) -> int:
    """Hand over to a benchmark module's main(argv) if this install has it."""
    try:
        bench = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        print(f"{PROG} {command}: this install has no benchmark module ({module}).", file=sys.stderr)
        return 2
    result = bench.main(list(argv))
    return 0 if result is None else int(result)


# ---------------------------------------------------------------------------------------------------- main


def _add_unavailable(subparsers: Any, name: str, module: str) -> None:
    """List a command whose module this install lacks; running it says so (exit status 2)."""

    def run(argv: Sequence[str]) -> int:
        print(f"{PROG} {name}: this install has no module {module}.", file=sys.stderr)
        return 2

    p = subparsers.add_parser(name, help=f"(unavailable: no module {module})", add_help=False)
    p.set_defaults(run=run, passthrough=True)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The whole command line: the top-level parser, and name -> parser of each entry of COMMANDS."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="flashspmm: unstructured-sparse LLM weights on NVIDIA Tensor Cores. "
        f"`{PROG} COMMAND --help` describes a command; `python -m flashspmm` is the same program.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version of the loaded library and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, module_name, function in COMMANDS:
        try:
            module = sys.modules.get(module_name) or importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            _add_unavailable(subparsers, name, module_name)
            continue
        sub = getattr(module, function)(subparsers)
        if sub.get_default("run") is None:
            sub.set_defaults(run=module.run)
    return parser, dict(subparsers.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flashspmm`` and of the ``flashspmm`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = build_parser()
    # A pass-through command takes the rest of the line as it is (argparse would claim its options).
    if argv and argv[0] in commands and commands[argv[0]].get_default("passthrough"):
        return commands[argv[0]].get_default("run")(argv[1:])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except CommandError as exc:
        commands[args.command].print_usage(sys.stderr)
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
