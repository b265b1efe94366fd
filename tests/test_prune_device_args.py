"""Argument checks of fspmm_prune and fspmm_prune_workspace_size: they run before any CUDA call, so they need
no GPU (the addresses below are never dereferenced)."""

import pytest

from flashspmm._native import ffi, lib

FAKE = ffi.cast("void *", 0x10000)  # a 16-byte aligned address that is never dereferenced
ODD = ffi.cast("void *", 0x10001)  # not even 2-byte aligned
MISALIGNED = ffi.cast("void *", 0x10008)  # 2-byte but not 16-byte aligned


def last_error():
    return ffi.string(lib.fspmm_last_error()).decode()


def ws_bytes(m, k, scope):
    n = ffi.new("size_t *")
    assert lib.fspmm_prune_workspace_size(m, k, scope, n) == lib.FSPMM_OK
    return int(n[0])


def test_workspace_size():
    assert ws_bytes(1, 1, lib.FSPMM_PRUNE_ROW) == 0
    assert ws_bytes(4096, 4096, lib.FSPMM_PRUNE_ROW) == 0
    small, large = ws_bytes(1, 1, lib.FSPMM_PRUNE_TENSOR), ws_bytes(4096, 4096, lib.FSPMM_PRUNE_TENSOR)
    assert 0 < small < large and small % 16 == 0 and large % 16 == 0
    assert ws_bytes(100000, 70, lib.FSPMM_PRUNE_TENSOR) > ws_bytes(100, 70, lib.FSPMM_PRUNE_TENSOR)
    n = ffi.new("size_t *")
    assert lib.fspmm_prune_workspace_size(0, 5, lib.FSPMM_PRUNE_TENSOR, n) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "M = 0" in last_error()
    assert lib.fspmm_prune_workspace_size(5, 5, 9, n) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "scope" in last_error()
    assert lib.fspmm_prune_workspace_size(5, 5, lib.FSPMM_PRUNE_ROW, ffi.NULL) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "bytes is NULL" in last_error()


@pytest.mark.parametrize(
    "case, needle",
    [
        (dict(dense=ffi.NULL), "dense is NULL"),
        (dict(dense=ODD), "2-byte aligned"),
        (dict(m=0), "M = 0"),
        (dict(k=-1), "K = -1"),
        (dict(ld=10), "ld = 10"),
        (dict(dtype=7), "dtype = 7"),
        (dict(sparsity=1.5), "sparsity"),
        (dict(sparsity=-0.25), "sparsity"),
        (dict(sparsity=float("nan")), "sparsity"),
        (dict(scope=3), "scope"),
        (dict(scope=2), "scope"),
        (dict(ws=ffi.NULL), "workspace is NULL"),
        (dict(ws=MISALIGNED), "16-byte aligned"),
        (dict(ws_bytes=0), "workspace too small"),
    ],
)
def test_prune_rejects(case, needle):
    args = dict(
        dense=FAKE,
        m=40,
        k=50,
        ld=50,
        dtype=lib.FSPMM_DTYPE_FLOAT16,
        sparsity=0.5,
        scope=lib.FSPMM_PRUNE_TENSOR,
        ws=FAKE,
        ws_bytes=ws_bytes(40, 50, lib.FSPMM_PRUNE_TENSOR),
    )
    args.update(case)
    status = lib.fspmm_prune(
        args["dense"],
        args["m"],
        args["k"],
        args["ld"],
        args["dtype"],
        args["sparsity"],
        args["scope"],
        args["ws"],
        args["ws_bytes"],
        ffi.NULL,
    )
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert needle in last_error() and last_error().startswith("fspmm_prune")


def test_row_scope_needs_no_workspace():
    """Row scope takes a NULL workspace. Sparsity 0 zeroes nothing, so the matrix is never touched: the call
    succeeds on a GPU and reports the missing device elsewhere, never an argument error."""
    status = lib.fspmm_prune(
        FAKE, 40, 50, 50, lib.FSPMM_DTYPE_BFLOAT16, 0.0, lib.FSPMM_PRUNE_ROW, ffi.NULL, 0, ffi.NULL
    )
    assert status != lib.FSPMM_ERR_INVALID_ARGUMENT, last_error()
