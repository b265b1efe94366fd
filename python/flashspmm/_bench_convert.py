"""`python -m flashspmm bench-convert`: format conversion and pruning throughput on the GPU, next to the CPU.

Per point: GPU encoder time (count phase + write phase, CUDA events, median), its throughput counted as
dense bytes read + blob bytes written per second and as a fraction of the measured device-to-device copy
bandwidth; the GPU decoder (blob read + dense written); GPU magnitude pruning (row and tensor scope, dense
read + written); and the CPU encoder (fspmm_compress_host, all host threads) on the same matrix.
Needs PyTorch with CUDA. Writes a CSV.
"""

import argparse
import csv
import statistics
import sys
import time

import numpy as np

from . import _bench
from ._matrix import SparseMatrix
from ._native import check, ffi, lib

DTYPE = {"float16": lib.FSPMM_DTYPE_FLOAT16, "bfloat16": lib.FSPMM_DTYPE_BFLOAT16}
FORMAT = {"bitmap": lib.FSPMM_FORMAT_BITMAP, "tiled_csl": lib.FSPMM_FORMAT_TILED_CSL}


def _ptr(t):
    return ffi.cast("void *", t.data_ptr())


def _median_events(torch, body, reps):
    """Median seconds of each segment of `body(marks)`; body records events through marks()."""
    results = []
    for _ in range(reps + 1):  # the first run warms up
        events = []

        def mark():
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            events.append(e)

        body(mark)
        events[-1].synchronize()
        results.append([a.elapsed_time(b) * 1e-3 for a, b in zip(events, events[1:])])
    return [statistics.median(seg) for seg in zip(*results[1:])]


def run(args):
    try:
        import torch
    except ImportError:
        print("flashspmm bench-convert needs PyTorch with CUDA (pip install torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("flashspmm bench-convert needs a CUDA device", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(0)
    bw = _bench.copy_bandwidth(torch)
    print(f"# card: {card}; copy bandwidth {bw / 1e12:.2f} TB/s (read + write); {args.dtype}")
    tdtype = getattr(torch, args.dtype)
    dtype = DTYPE[args.dtype]
    stream = ffi.cast("void *", torch.cuda.current_stream().cuda_stream)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(4321)
    rows = []
    print(
        f"{'M':>6} {'K':>6} {'sp%':>4} {'format':>9} {'MB':>7} {'count_us':>9} {'write_us':>9} {'enc_TB/s':>8} "
        f"{'%copy':>6} {'dec_us':>8} {'dec_%copy':>9} {'cpu_ms':>8} {'cpu_GB/s':>8}"
    )
    for M, K in args.shapes:
        dense_bytes = M * K * 2
        w0 = torch.randn(M, K, device="cuda", generator=gen).to(tdtype)
        n = ffi.new("size_t *")
        check(lib.fspmm_compress_workspace_size(M, K, n))
        ws_bytes = int(n[0])
        ws = torch.empty(ws_bytes, dtype=torch.uint8, device="cuda")
        for sp in args.sparsity:
            w = _bench.prune_random(torch, w0.clone(), sp / 100.0, gen)
            w_host = w.cpu().view(torch.int16).numpy()
            for fmt in args.formats:
                check(lib.fspmm_compress_count(_ptr(w), M, K, K, dtype, _ptr(ws), ws_bytes, stream))
                check(lib.fspmm_compress_size(_ptr(ws), ws_bytes, FORMAT[fmt], n, ffi.NULL, stream))
                blob_bytes = int(n[0])
                blob = torch.empty(blob_bytes, dtype=torch.uint8, device="cuda")
                dense = torch.empty_like(w)

                def encode(mark):
                    mark()
                    check(lib.fspmm_compress_count(_ptr(w), M, K, K, dtype, _ptr(ws), ws_bytes, stream))
                    mark()
                    check(
                        lib.fspmm_compress(
                            _ptr(w), M, K, K, dtype, FORMAT[fmt], _ptr(ws), ws_bytes, _ptr(blob), blob_bytes, stream
                        )
                    )
                    mark()

                t_count, t_write = _median_events(torch, encode, args.reps)
                check(lib.fspmm_compress_size(_ptr(ws), ws_bytes, FORMAT[fmt], n, ffi.NULL, stream))
                handle = SparseMatrix.from_array(blob)._handle

                def decode(mark):
                    mark()
                    check(lib.fspmm_decompress(handle, _ptr(dense), M, K, K, stream))
                    mark()

                (t_dec,) = _median_events(torch, decode, args.reps)
                if not torch.equal(dense.view(torch.int16), w.view(torch.int16).masked_fill(w == 0, 0)):
                    print(f"# decoded matrix differs from the input ({M}x{K} {sp}% {fmt})", file=sys.stderr)
                    return 1
                host_blob = np.empty(blob_bytes, dtype=np.uint8)
                t0 = time.perf_counter()
                check(
                    lib.fspmm_compress_host(
                        ffi.cast("void *", w_host.ctypes.data),
                        M,
                        K,
                        K,
                        dtype,
                        FORMAT[fmt],
                        ffi.cast("void *", host_blob.ctypes.data),
                        blob_bytes,
                        ffi.NULL,
                    )
                )
                t_cpu = time.perf_counter() - t0
                if not np.array_equal(host_blob, blob.cpu().numpy()):
                    print(f"# GPU blob differs from the CPU blob ({M}x{K} {sp}% {fmt})", file=sys.stderr)
                    return 1
                moved = dense_bytes + blob_bytes
                t_enc = t_count + t_write
                row = dict(
                    card=card,
                    M=M,
                    K=K,
                    sparsity=sp,
                    format=fmt,
                    dtype=args.dtype,
                    blob_bytes=blob_bytes,
                    dense_bytes=dense_bytes,
                    count_us=t_count * 1e6,
                    write_us=t_write * 1e6,
                    encode_tbps=moved / t_enc / 1e12,
                    encode_frac_copy=moved / t_enc / bw,
                    decode_us=t_dec * 1e6,
                    decode_frac_copy=moved / t_dec / bw,
                    cpu_encode_ms=t_cpu * 1e3,
                    cpu_encode_gbps=moved / t_cpu / 1e9,
                    copy_tbps=bw / 1e12,
                )
                rows.append(row)
                print(
                    f"{M:>6} {K:>6} {sp:>4} {fmt:>9} {blob_bytes / 1e6:>7.1f} {t_count * 1e6:>9.1f} "
                    f"{t_write * 1e6:>9.1f} {moved / t_enc / 1e12:>8.2f} {100 * moved / t_enc / bw:>6.1f} "
                    f"{t_dec * 1e6:>8.1f} {100 * moved / t_dec / bw:>9.1f} {t_cpu * 1e3:>8.1f} "
                    f"{moved / t_cpu / 1e9:>8.2f}",
                    flush=True,
                )
                blob = dense = None
        # pruning (dense read + dense written), both scopes, at the first sparsity
        for scope, code in (("row", lib.FSPMM_PRUNE_ROW), ("tensor", lib.FSPMM_PRUNE_TENSOR)):
            check(lib.fspmm_prune_workspace_size(M, K, code, n))
            pws = torch.empty(max(int(n[0]), 16), dtype=torch.uint8, device="cuda")
            w = w0.clone()

            def prune(mark, scope_code=code, workspace=pws):
                w.copy_(w0)
                mark()
                check(
                    lib.fspmm_prune(
                        _ptr(w),
                        M,
                        K,
                        K,
                        dtype,
                        args.sparsity[0] / 100.0,
                        scope_code,
                        _ptr(workspace),
                        workspace.numel(),
                        stream,
                    )
                )
                mark()

            (t_prune,) = _median_events(torch, prune, args.reps)
            rows.append(
                dict(
                    card=card,
                    M=M,
                    K=K,
                    sparsity=args.sparsity[0],
                    format=f"prune_{scope}",
                    dtype=args.dtype,
                    dense_bytes=dense_bytes,
                    prune_us=t_prune * 1e6,
                    prune_frac_copy=2 * dense_bytes / t_prune / bw,
                    copy_tbps=bw / 1e12,
                )
            )
            print(
                f"{M:>6} {K:>6} {args.sparsity[0]:>4} {'prune_' + scope:>12}  {t_prune * 1e6:>9.1f} us "
                f"{100 * 2 * dense_bytes / t_prune / bw:>6.1f} %copy",
                flush=True,
            )
        w0 = ws = w = None
        torch.cuda.empty_cache()
    if args.csv:
        keys = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m flashspmm bench-convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--shapes", type=_bench._parse_shapes, default=_bench.SUITE, help="MxK list")
    ap.add_argument("--sparsity", type=_bench._parse_list, default=[50, 70, 90], help="percent list")
    ap.add_argument("--formats", type=lambda s: s.split(","), default=["bitmap", "tiled_csl"])
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--csv", default="bench-convert.csv")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
