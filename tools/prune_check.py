"""GPU pruning against the CPU on a few matrices, for compute-sanitizer runs (tools/device-check runs it under
memcheck, racecheck and synccheck): both scopes at three sparsities on matrices with many ties at the threshold
(values from seven levels) and Gaussian ones, up to 300 x 30000 (over a thousand work items of the tensor scope,
several groups of its tie pass), and a strided slice (no 16-byte accesses). Fresh inputs for every case; exits 1
on any difference from the CPU's bits."""

import numpy as np
import torch

import flashspmm

rng = np.random.default_rng(1)
LEVELS = np.array([-1.5, -1, -0.5, 0, 0.5, 1, 1.5], np.float16)
CASES = [
    ((300, 30000), "gaussian"),
    ((300, 30000), "ties"),
    ((1000, 1000), "ties"),
    ((256, 3000), "ties"),  # worked on as rows of 2048 entries (tensor scope)
    ((1000, 9216), "gaussian"),  # the same, with K = 9216 (every fifth span of a row half empty otherwise)
    ((64, 8200), "gaussian"),
    ((3, 70), "ties"),
]


def values(shape, kind):
    if kind == "ties":
        return rng.choice(LEVELS, size=shape)
    return rng.standard_normal(shape).astype(np.float16)


def same_as_cpu(w_gpu, w_cpu, sparsity, scope):
    want = flashspmm.prune(w_cpu, sparsity, scope=scope).view(np.uint16)
    got = flashspmm.prune(w_gpu, sparsity, scope=scope).cpu().numpy().view(np.uint16)
    return np.array_equal(got, want)


bad = 0
for shape, kind in CASES:
    for sparsity in (0.37, 0.5, 0.9):
        for scope in ("tensor", "row"):
            h = values(shape, kind)
            bad += not same_as_cpu(torch.from_numpy(h).cuda(), h, sparsity, scope)
    wide = torch.from_numpy(values((shape[0], shape[1] + 3), kind)).cuda()
    piece = wide[:, 1 : shape[1] + 1]
    bad += not same_as_cpu(piece, piece.cpu().numpy(), 0.5, "tensor")
torch.cuda.synchronize()
print("prune_check: mismatches:", bad)
raise SystemExit(1 if bad else 0)
