"""Run one fspmm_linear per kernel variant on an fp16 weight, for profiling under ncu.

    ncu --clock-control none --kernel-name regex:spmm_kernel --metrics ... python3 tools/profile_kernels.py \
        [N] [sparsities, e.g. 0.5,0.9] [variants, e.g. bitmap:rows,tiled_csl] [shape MxK, default 9216x9216]

A variant is format[:decoder] (the pipelined Tensor Core kernel, or the CUDA-core one where `auto` would pick it),
or bitmap:streaming (the warp-streaming kernel).
"""

import sys

import torch

import flashspmm

N = int(sys.argv[1]) if len(sys.argv) > 1 else 16
SPARSITIES = [float(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0.5, 0.7, 0.9]
NAMES = sys.argv[3].split(",") if len(sys.argv) > 3 else ["bitmap:rows", "bitmap:scatter", "bitmap:direct", "tiled_csl"]
M, K = (int(v) for v in (sys.argv[4] if len(sys.argv) > 4 else "9216x9216").split("x"))
VARIANTS = [tuple((name + ":").split(":")[:2]) for name in NAMES]
gen = torch.Generator(device="cuda").manual_seed(0)
for sparsity in SPARSITIES:
    w = torch.randn(M, K, device="cuda", generator=gen).half()
    w.masked_fill_(torch.rand(M, K, device="cuda", generator=gen) < sparsity, 0)
    x = torch.randn(N, K, device="cuda", generator=gen).half()
    for fmt, decoder in VARIANTS:
        W = flashspmm.compress(w, format=fmt)
        if decoder == "streaming":
            y = flashspmm.linear(x, W, kernel="streaming")
        else:
            y = flashspmm.linear(x, W, decoder=decoder or "auto", kernel="tensor_core" if decoder else "auto")
        torch.cuda.synchronize()
        print(f"{M}x{K} N={N} sparsity {sparsity} {fmt}:{decoder} done", flush=True)
