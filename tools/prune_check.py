"""GPU pruning against the CPU on a few matrices, for compute-sanitizer runs (tools/device-check runs it under
memcheck, racecheck and synccheck): both scopes at three sparsities on matrices with many ties at the threshold
(values from seven levels) and Gaussian ones, up to 300 x 30000 (over a thousand work items of the tensor scope,
several groups of its tie pass), a strided slice, and (through the C API, in place) matrices that start 2 bytes
past a 16-byte boundary (no 16-byte accesses). Fresh inputs for every case; exits 1 on any difference from the
CPU's bits."""

import numpy as np
import torch

import flashspmm
from flashspmm._native import ffi, lib

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


def same_as_cpu_misaligned(h, sparsity, scope):
    """fspmm_prune in place on a contiguous copy of h that starts 2 bytes past a 16-byte boundary (no 16-byte
    accesses; flashspmm.prune always prunes an aligned copy)."""
    m, k = h.shape
    want = flashspmm.prune(h, sparsity, scope=scope).view(np.uint16)
    buf = torch.from_numpy(np.concatenate([np.zeros(1, np.float16), h.ravel()])).cuda()
    code = lib.FSPMM_PRUNE_TENSOR if scope == "tensor" else lib.FSPMM_PRUNE_ROW
    n = ffi.new("size_t *")
    assert lib.fspmm_prune_workspace_size(m, k, code, n) == lib.FSPMM_OK
    ws = torch.empty(max(int(n[0]), 1), dtype=torch.uint8, device="cuda")
    ptr = ffi.cast("void *", buf.data_ptr() + 2)
    stream = ffi.cast("void *", torch.cuda.current_stream().cuda_stream)
    status = lib.fspmm_prune(
        ptr, m, k, k, lib.FSPMM_DTYPE_FLOAT16, sparsity, code, ffi.cast("void *", ws.data_ptr()), int(n[0]), stream
    )
    assert status == lib.FSPMM_OK, ffi.string(lib.fspmm_last_error()).decode()
    got = buf.cpu().numpy().view(np.uint16)[1:].reshape(m, k)
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
    for scope in ("tensor", "row"):
        bad += not same_as_cpu_misaligned(values(shape, kind), 0.5, scope)
torch.cuda.synchronize()
print("prune_check: mismatches:", bad)
raise SystemExit(1 if bad else 0)
