"""Argument checks of the GPU conversion entry points: they run before any CUDA call, so they need no GPU."""

import pytest

from flashspmm._native import ffi, lib

FAKE = ffi.cast("void *", 0x10000)  # a 16-byte aligned address that is never dereferenced
ODD = ffi.cast("void *", 0x10001)  # not even 2-byte aligned
MISALIGNED = ffi.cast("void *", 0x10008)  # 2-byte but not 16-byte aligned


def last_error():
    return ffi.string(lib.fspmm_last_error()).decode()


def ws_bytes(m, k):
    n = ffi.new("size_t *")
    assert lib.fspmm_compress_workspace_size(m, k, n) == lib.FSPMM_OK
    return int(n[0])


def test_workspace_size_grows_with_tiles():
    assert ws_bytes(1, 1) >= 128 + 2
    assert ws_bytes(64 * 100, 64 * 100) >= 128 + 2 * 100 * 100
    n = ffi.new("size_t *")
    assert lib.fspmm_compress_workspace_size(0, 5, n) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "M = 0" in last_error()
    assert lib.fspmm_compress_workspace_size(5, 5, ffi.NULL) == lib.FSPMM_ERR_INVALID_ARGUMENT


@pytest.mark.parametrize(
    "case, needle",
    [
        (dict(dense=ffi.NULL), "dense is NULL"),
        (dict(dense=ODD), "2-byte aligned"),
        (dict(ld=10), "ld = 10"),
        (dict(dtype=7), "dtype = 7"),
        (dict(ws=ffi.NULL), "workspace is NULL"),
        (dict(ws=MISALIGNED), "16-byte aligned"),
        (dict(ws_bytes=16), "workspace too small"),
    ],
)
def test_count_rejects(case, needle):
    args = dict(dense=FAKE, m=40, k=50, ld=50, dtype=lib.FSPMM_DTYPE_FLOAT16, ws=FAKE, ws_bytes=ws_bytes(40, 50))
    args.update(case)
    status = lib.fspmm_compress_count(
        args["dense"], args["m"], args["k"], args["ld"], args["dtype"], args["ws"], args["ws_bytes"], ffi.NULL
    )
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert needle in last_error() and last_error().startswith("fspmm_compress_count")


@pytest.mark.parametrize(
    "case, needle",
    [
        (dict(fmt=9), "format = 9"),
        (dict(out=ffi.NULL), "out is NULL"),
        (dict(out=MISALIGNED), "out must be 16-byte aligned"),
        (dict(out_bytes=100), "cannot hold even the header"),
        (dict(ws_bytes=0), "workspace too small"),
    ],
)
def test_write_rejects(case, needle):
    args = dict(fmt=lib.FSPMM_FORMAT_AUTO, out=FAKE, out_bytes=1 << 20, ws_bytes=ws_bytes(40, 50))
    args.update(case)
    status = lib.fspmm_compress(
        FAKE,
        40,
        50,
        50,
        lib.FSPMM_DTYPE_FLOAT16,
        args["fmt"],
        FAKE,
        args["ws_bytes"],
        args["out"],
        args["out_bytes"],
        ffi.NULL,
    )
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert needle in last_error()


def test_size_and_decompress_reject():
    n = ffi.new("size_t *")
    assert lib.fspmm_compress_size(FAKE, 1 << 20, 6, n, ffi.NULL, ffi.NULL) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "format = 6" in last_error()
    assert lib.fspmm_compress_size(FAKE, 64, 0, n, ffi.NULL, ffi.NULL) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "too small" in last_error()
    assert lib.fspmm_decompress(ffi.NULL, FAKE, 10, 10, 10, ffi.NULL) == lib.FSPMM_ERR_INVALID_ARGUMENT
    assert "matrix is NULL" in last_error()
