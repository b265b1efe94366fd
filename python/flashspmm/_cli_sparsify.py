"""``flashspmm sparsify IN OUT --sparsity 0.5``: prune and compress a safetensors checkpoint, tensor by tensor.

IN is a ``.safetensors`` file or a directory (one file, or shards with ``model.safetensors.index.json``). Every
selected weight ``<module>.weight`` (default: the 2-D float16/bfloat16 weights inside the transformer blocks,
names like ``model.layers.3.mlp.up_proj.weight``) becomes a flashspmm blob ``<module>.blob`` in the layout
:func:`flashspmm.torch.save_sparse` writes, so :func:`flashspmm.torch.load_sparse` and
:func:`flashspmm.torch.from_pretrained` read the result; every other tensor is copied unchanged. The work runs
on the GPU when there is one (through torch), else on the CPU.

Nothing is left behind on failure: the output is written under a temporary name next to OUT and renamed when
complete. Everything that can be checked up front (the files, the index, dtypes, the options) is checked before
the first tensor is converted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from typing import List, Optional

# compress(format=...) names (flashspmm._matrix.FORMATS), here without loading the library
FORMAT_CHOICES = ("auto", "auto_n8", "auto_n1", "bitmap", "tiled_csl", "smallest")

DESCRIPTION = (
    "Prune a safetensors checkpoint (file or sharded directory) to SPARSITY and store the selected "
    "weights as flashspmm blobs; other tensors are copied unchanged."
)
DEFAULT_INCLUDE = r"\.\d+\."  # a numbered element of a block list: model.layers.<i>. / h.<i>. / decoder.layers.<i>.
_FLOAT_TYPES = ("F16", "BF16")


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "input",
        metavar="IN",
        help="a .safetensors file, or a directory holding model.safetensors or "
        "shards with model.safetensors.index.json",
    )
    p.add_argument("output", metavar="OUT", help="the file (IN is a file) or directory (IN is a directory) to write")
    p.add_argument(
        "--sparsity",
        type=float,
        required=True,
        default=argparse.SUPPRESS,
        help="fraction of zeros per row, in [0, 1), e.g. 0.5",
    )
    p.add_argument(
        "--method",
        default="magnitude",
        help="pruning method: magnitude (the smallest |w| of each "
        "row; Wanda needs activations: use flashspmm.torch.sparsify)",
    )
    p.add_argument(
        "--include",
        default=None,
        metavar="REGEX",
        help="sparsify the 2-D weights whose module name matches REGEX (unset: those inside the "
        f"transformer blocks, i.e. names matching {DEFAULT_INCLUDE!r})",
    )
    p.add_argument("--exclude", default=None, metavar="REGEX", help="leave the weights matching REGEX dense")
    p.add_argument(
        "--format",
        default="auto",
        choices=FORMAT_CHOICES,
        help="compressed format (auto: the one predicted faster per matrix at N <= 16 tokens, auto_n8 / auto_n1: "
        "at N <= 8 / one token; smallest: the smaller blob)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float16", "bfloat16"),
        help="convert selected weights of other float dtypes (F32, ...) to this dtype first",
    )
    p.add_argument("--device", default="auto", help="auto (a GPU when torch sees one), cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``sparsify`` subcommand on an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "sparsify",
        help="prune and compress a safetensors checkpoint",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _configure(p)
    p.set_defaults(run=run)
    return p


class CliError(Exception):
    """A problem with the input or the options, reported as one line."""


def _fail(msg: str) -> int:
    print(f"flashspmm sparsify: error: {msg}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    """Run the conversion described by ``args`` (see :func:`add_parser`); returns the exit status."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return _fail("this command needs PyTorch: pip install torch")
    import flashspmm

    try:
        return _convert(args)
    except (CliError, FileNotFoundError, ValueError, TypeError, KeyError, OSError, flashspmm.Error) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        return _fail(text)


def _select(ckpt, include: Optional[str], exclude: Optional[str]) -> List[str]:
    try:
        inc = re.compile(include if include is not None else DEFAULT_INCLUDE)
        exc = re.compile(exclude) if exclude is not None else None
    except re.error as err:
        raise CliError(f"bad regular expression: {err}") from None
    chosen = []
    for name in ckpt.keys():
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        info = ckpt.info(name)
        if len(info.shape) != 2 or not inc.search(module) or (exc is not None and exc.search(module)):
            continue
        if include is None and info.dtype not in _FLOAT_TYPES and not info.dtype.startswith("F"):
            continue  # integer tensors inside blocks are not weights to prune
        chosen.append(name)
    return chosen


def _device(choice: str):
    import torch

    import flashspmm

    if choice == "auto":
        try:
            gpu = torch.cuda.is_available() and flashspmm.device_count() > 0
        except Exception:  # a driver problem: the CPU still works
            gpu = False
        return torch.device("cuda" if gpu else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError):
        raise CliError(f"--device must be auto, cpu, cuda or cuda:N, got {choice!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise CliError(f"--device must be auto, cpu, cuda or cuda:N, got {choice!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: torch sees no CUDA device")
    return device


class _Progress:
    def __init__(self, total: int, tensors: int, enabled: bool):
        self.bar = None
        self.done = 0
        self.tensors = tensors
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="sparsify", file=sys.stderr
                )
            except ImportError:
                self.bar = None

    def update(self, nbytes: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(nbytes)
            self.bar.set_postfix_str(f"{self.done}/{self.tensors} tensors", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _convert(args: argparse.Namespace) -> int:
    import torch

    from . import compress, prune
    from ._matrix import FORMATS
    from ._native import check, ffi, lib
    from .torch import _compat
    from .torch._checkpoint import INDEX_NAME, Checkpoint
    from .torch._safetensors import DTYPES, SafetensorsWriter

    sparsity = args.sparsity
    if not (0.0 <= sparsity < 1.0):
        raise CliError(f"--sparsity must be in [0, 1) (e.g. 0.5 for 50 % zeros), got {sparsity}")
    if args.method != "magnitude":
        raise CliError(
            f"--method {args.method!r} is not available here: the command line prunes by magnitude; "
            f"Wanda needs calibration activations (flashspmm.torch.sparsify(model, ..., method='wanda'))"
        )
    src, dst = os.path.abspath(args.input), os.path.abspath(args.output)
    if not os.path.exists(src):
        raise CliError(f"no such file or directory: {args.input}")
    if src == dst:
        raise CliError("OUT must differ from IN")
    in_dir = os.path.isdir(src)
    if os.path.exists(dst) and not args.force:
        raise CliError(f"{args.output} exists; choose another OUT or pass --force to replace it")
    if os.path.exists(dst) and os.path.isdir(dst) != in_dir:
        raise CliError(
            f"{args.output} exists and is {'a directory' if os.path.isdir(dst) else 'a file'}, but IN is "
            f"{'a directory' if in_dir else 'a file'}: --force replaces only the same kind"
        )
    ckpt = Checkpoint(src)  # every header, the index and the shards are checked here
    targets = _select(ckpt, args.include, args.exclude)
    target_set = set(targets)
    for name in targets:
        info = ckpt.info(name)
        if info.dtype not in _FLOAT_TYPES and not (args.dtype and info.dtype.startswith("F")):
            raise CliError(
                f"{name} has dtype {info.dtype}; flashspmm compresses F16 or BF16 weights: convert the "
                f"checkpoint, pass --dtype float16 / bfloat16, or leave it out with --exclude"
            )
        if min(info.shape) == 0:
            raise CliError(f"{name} is empty (shape {info.shape})")
    for name in targets:
        blob_name = name[: -len(".weight")] + ".blob"
        if blob_name in ckpt.where:
            raise CliError(f"{blob_name} is already in the checkpoint (is IN already sparsified?)")
    device = _device(args.device)
    fmt_code = FORMATS[args.format]  # the same names as compress(format=...)
    convert_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(args.dtype)

    def bound(M: int, K: int) -> int:
        size = ffi.new("size_t *")
        check(lib.fspmm_blob_bytes_bound(M, K, fmt_code, size))
        return int(size[0])

    # the output files: one per input file, same names
    parent = os.path.dirname(dst) or "."
    if not os.path.isdir(parent):
        raise CliError(f"the folder of OUT does not exist: {parent}")
    if in_dir:
        work = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=parent)
    else:
        fd, work = tempfile.mkstemp(prefix=f".{os.path.basename(dst)}.", suffix=".tmp", dir=parent)
        os.close(fd)
    total_in = sum(ckpt.info(n).nbytes for n in ckpt.keys())
    progress = _Progress(total_in, len(ckpt.keys()), not args.no_progress)
    t0 = time.perf_counter()
    dense_in = sparse_out = 0
    all_layers, weight_map, total_out = {}, {}, 0
    try:
        for sf in ckpt.files:
            names = sf.keys()
            blobs = [n for n in names if n in target_set]
            others = [n for n in names if n not in target_set]
            others.sort(key=lambda n: -DTYPES[sf.tensors[n].dtype][1])  # larger elements first: aligned tensors
            plan, layers, room = [], {}, {}
            for n in blobs:
                module = n[: -len(".weight")]
                M, K = sf.tensors[n].shape
                plan.append((module + ".blob", "U8", None, bound(M, K)))
                bias = module + ".bias"
                layers[module] = {
                    "blob": module + ".blob",
                    "bias": bias if bias in ckpt.where else None,
                    "shape": [M, K],
                    "dtype": None,
                    "format": None,
                    "parts": None,
                }
                room[module] = dict(layers[module], dtype="bfloat16", format="tiled_csl")  # the longest values
            for n in others:
                info = sf.tensors[n]
                plan.append((n, info.dtype, info.shape, info.nbytes))
            meta_room = {"format": "pt", "flashspmm": json.dumps({"version": 1, "layers": room, "aliases": {}})}
            out_path = os.path.join(work, os.path.basename(sf.path)) if in_dir else work
            writer = SafetensorsWriter(out_path, plan, meta_room)
            try:
                for n in blobs:
                    module = n[: -len(".weight")]
                    w = sf.tensor(n, device)
                    if convert_dtype is not None and w.dtype != convert_dtype:
                        w = w.to(convert_dtype)
                    with torch.no_grad():
                        pruned = _compat.as_torch(prune(w, sparsity), w)
                        W = compress(pruned, format=args.format)
                    del w, pruned
                    blob = W.blob()
                    layers[module]["format"] = W.format
                    layers[module]["dtype"] = W.dtype
                    size = writer.write(module + ".blob", blob)
                    dense_in += sf.tensors[n].nbytes
                    sparse_out += size
                    weight_map[module + ".blob"] = os.path.basename(sf.path)
                    progress.update(sf.tensors[n].nbytes)
                    del W, blob
                for n in others:
                    writer.write(n, sf.raw(n))
                    weight_map[n] = os.path.basename(sf.path)
                    progress.update(sf.tensors[n].nbytes)
            except BaseException:
                writer.abort()
                raise
            total_out += writer.close(
                {"format": "pt", "flashspmm": json.dumps({"version": 1, "layers": layers, "aliases": {}})}
            )
            all_layers.update(layers)
        if in_dir:
            if os.path.isfile(os.path.join(src, INDEX_NAME)):
                index = {
                    "metadata": {
                        "total_size": total_out,
                        "flashspmm": {"version": 1, "layers": all_layers, "aliases": {}},
                    },
                    "weight_map": weight_map,
                }
                with open(os.path.join(work, INDEX_NAME), "w") as f:
                    json.dump(index, f, indent=2)
            for entry in os.listdir(src):  # config.json, tokenizer files, ...: copied as they are
                path = os.path.join(src, entry)
                if os.path.isfile(path) and not entry.endswith(".safetensors") and entry != INDEX_NAME:
                    shutil.copy2(path, os.path.join(work, entry))
        progress.close()
        if os.path.exists(dst):  # --force
            if os.path.isdir(dst) and not os.path.islink(dst):
                shutil.rmtree(dst)
            else:
                os.remove(dst)
        os.replace(work, dst)
        work = None
    finally:
        progress.close()
        if work is not None:
            if os.path.isdir(work):
                shutil.rmtree(work, ignore_errors=True)
            elif os.path.exists(work):
                os.remove(work)
    seconds = time.perf_counter() - t0
    print(
        f"{args.input} -> {args.output}: {len(targets)} of {len(ckpt.keys())} tensors sparsified to "
        f"{sparsity:.0%} on {device} in {seconds:.1f} s ({dense_in / max(seconds, 1e-9) / 1e9:.2f} GB/s of dense "
        f"input)"
    )
    ratio = dense_in / sparse_out if sparse_out else float("nan")
    print(f"  sparsified weights: {dense_in / 1e9:.3f} GB dense -> {sparse_out / 1e9:.3f} GB compressed ({ratio:.2f}x)")
    print(f"  checkpoint: {total_in / 1e9:.3f} GB -> {total_out / 1e9:.3f} GB")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m flashspmm._cli_sparsify IN OUT --sparsity S ...`` (the same as ``flashspmm sparsify``)."""
    parser = _configure(
        argparse.ArgumentParser(
            prog="flashspmm sparsify", description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
