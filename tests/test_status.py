"""Exact statuses and messages (README "Errors"): every failure returns the documented status with a message that
says what to fix, writes no output (each output is filled with a sentinel first), keeps its message per thread,
and the library never prints.

The C functions taking a blob header or producing a linear result (fspmm_linear, fspmm_linear_workspace_size,
fspmm_decompress, fspmm_decompress_host, fspmm_linear_host) are reached through the Python API here
(flashspmm.linear, W.to_dense()); the others are called directly through cffi.
"""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import flashspmm
from _toolkit import as_dtype, is_sentinel, sentinel, sparse_bits, values, weight
from flashspmm._native import ffi, lib

NO_GPU = pytest.mark.skipif(flashspmm.device_count() > 0, reason="checks the behaviour on a machine without a GPU")
SENTINEL_WORD = 0xA5A5A5A5A5A5A5A5
FAKE = ffi.cast("void *", 0x10000)  # a 16-byte aligned address that is never dereferenced


def last_error():
    return ffi.string(lib.fspmm_last_error()).decode()


def status_name(status):
    return ffi.string(lib.fspmm_status_string(status)).decode()


def ptr(array):
    return ffi.cast("void *", array.ctypes.data)


def assert_status(status, expected, *needles, function=None):
    """The call returned `expected` (a status name) with a message naming the function and each needle."""
    message = last_error()
    assert status_name(status) == expected, f"got {status_name(status)} ({message!r}), expected {expected}"
    assert len(message) > 20, f"no useful message: {message!r}"
    if function:
        assert message.startswith(function + ": "), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def a_blob(rng, fmt="bitmap"):
    bits, _ = sparse_bits(rng, 70, 90, "float16", 0.6)
    return flashspmm.compress(bits, format=fmt, dtype="float16").blob().copy()


def filled_header():
    h = ffi.new("fspmm_header_t *")
    ffi.memmove(h, b"\xa5" * 128, 128)
    return h


def header_untouched(h):
    return bytes(ffi.buffer(h, 128)) == b"\xa5" * 128


# ---- host functions ---------------------------------------------------------------------------------------


def test_header_read_and_validate(rng):
    blob = a_blob(rng)
    h = filled_header()
    assert_status(
        lib.fspmm_header_read(ptr(blob), 127, h), "FSPMM_ERR_CORRUPT_BUFFER", "truncated", function="fspmm_header_read"
    )
    assert header_untouched(h)
    assert_status(lib.fspmm_header_read(ffi.NULL, blob.size, h), "FSPMM_ERR_INVALID_ARGUMENT", "prefix is NULL")
    assert_status(lib.fspmm_header_read(ptr(blob), blob.size, ffi.NULL), "FSPMM_ERR_INVALID_ARGUMENT", "out is NULL")
    for at, needle in [(0, "magic"), (4, "version"), (20, "checksum")]:
        bad = blob.copy()
        bad[at] ^= 0x40
        assert_status(lib.fspmm_header_read(ptr(bad), bad.size, h), "FSPMM_ERR_CORRUPT_BUFFER", needle)
        assert header_untouched(h)
        assert_status(
            lib.fspmm_validate_host(ptr(bad), bad.size, h),
            "FSPMM_ERR_CORRUPT_BUFFER",
            needle,
            function="fspmm_validate_host",
        )
        assert header_untouched(h)
    bad = blob.copy()
    bad[-1] ^= 0x01
    assert_status(lib.fspmm_validate_host(ptr(bad), bad.size, h), "FSPMM_ERR_CORRUPT_BUFFER", "checksum")
    assert header_untouched(h)
    assert_status(lib.fspmm_validate_host(ptr(blob), blob.size - 1, h), "FSPMM_ERR_CORRUPT_BUFFER", "truncated")
    assert header_untouched(h)
    assert_status(lib.fspmm_validate_host(ffi.NULL, blob.size, h), "FSPMM_ERR_INVALID_ARGUMENT", "blob is NULL")
    assert lib.fspmm_validate_host(ptr(blob), blob.size, h) == lib.FSPMM_OK and last_error() == ""


def test_blob_bytes_bound():
    out = ffi.new("size_t *", SENTINEL_WORD)
    assert_status(
        lib.fspmm_blob_bytes_bound(0, 4, lib.FSPMM_FORMAT_BITMAP, out),
        "FSPMM_ERR_INVALID_ARGUMENT",
        "M = 0",
        "[1, 2^31-1]",
        function="fspmm_blob_bytes_bound",
    )
    assert_status(
        lib.fspmm_blob_bytes_bound(4, 2**31, lib.FSPMM_FORMAT_BITMAP, out),
        "FSPMM_ERR_INVALID_ARGUMENT",
        "K = 2147483648",
    )
    assert_status(
        lib.fspmm_blob_bytes_bound(4, 4, 7, out), "FSPMM_ERR_INVALID_ARGUMENT", "format = 7", "FSPMM_FORMAT_AUTO"
    )
    assert_status(
        lib.fspmm_blob_bytes_bound(4, 4, lib.FSPMM_FORMAT_BITMAP, ffi.NULL),
        "FSPMM_ERR_INVALID_ARGUMENT",
        "bytes is NULL",
    )
    assert out[0] == SENTINEL_WORD


COMPRESS_CASES = {  # name: (M, K, ld, dtype, format, pointer, needles)
    "M = 0": (0, 4, 4, 1, 0, True, ["M = 0"]),
    "K < 0": (4, -3, 4, 1, 0, True, ["K = -3"]),
    "ld < K": (4, 8, 7, 1, 0, True, ["ld = 7", "ld >= K"]),
    "bad dtype": (4, 4, 4, 3, 0, True, ["dtype = 3", "FSPMM_DTYPE_FLOAT16"]),
    "bad format": (4, 4, 4, 1, 6, True, ["format = 6", "FSPMM_FORMAT_BITMAP", "FSPMM_FORMAT_AUTO_N1"]),
    "NULL dense": (4, 4, 4, 1, 0, False, ["dense is NULL"]),
}


@pytest.mark.parametrize("case", sorted(COMPRESS_CASES))
def test_compress_host_arguments(case):
    m, k, ld, dtype, fmt, real, needles = COMPRESS_CASES[case]
    dense = np.ones(64, np.float16)
    src = ptr(dense) if real else ffi.NULL
    size = ffi.new("size_t *", SENTINEL_WORD)
    chosen = ffi.new("fspmm_format_t *")
    ffi.memmove(chosen, b"\xa5" * ffi.sizeof("fspmm_format_t"), ffi.sizeof("fspmm_format_t"))
    chosen_before = bytes(ffi.buffer(chosen))
    assert_status(
        lib.fspmm_compress_size_host(src, m, k, ld, dtype, fmt, size, chosen),
        "FSPMM_ERR_INVALID_ARGUMENT",
        *needles,
        function="fspmm_compress_size_host",
    )
    assert size[0] == SENTINEL_WORD and bytes(ffi.buffer(chosen)) == chosen_before
    out = sentinel(4096)
    written = ffi.new("size_t *", SENTINEL_WORD)
    assert_status(
        lib.fspmm_compress_host(src, m, k, ld, dtype, fmt, ptr(out), out.size, written),
        "FSPMM_ERR_INVALID_ARGUMENT",
        *needles,
        function="fspmm_compress_host",
    )
    assert is_sentinel(out) and written[0] == SENTINEL_WORD
    assert (dense == 1).all()


def test_compress_host_output_too_small(rng):
    bits, _ = sparse_bits(rng, 50, 70, "float16", 0.5)
    size = ffi.new("size_t *")
    assert lib.fspmm_compress_size_host(ptr(bits), 50, 70, 70, 1, 2, size, ffi.NULL) == lib.FSPMM_OK
    out = sentinel(int(size[0]))
    written = ffi.new("size_t *", SENTINEL_WORD)
    assert_status(
        lib.fspmm_compress_host(ptr(bits), 50, 70, 70, 1, 2, ptr(out), out.size - 1, written),
        "FSPMM_ERR_INVALID_ARGUMENT",
        f"needs {out.size} bytes",
        "fspmm_compress_size_host",
    )
    assert is_sentinel(out) and written[0] == SENTINEL_WORD
    assert_status(
        lib.fspmm_compress_host(ptr(bits), 50, 70, 70, 1, 2, ffi.NULL, out.size, written),
        "FSPMM_ERR_INVALID_ARGUMENT",
        "out is NULL",
    )


@pytest.mark.parametrize(
    "args, needles",
    [
        (dict(ld=3), ["ld = 3"]),
        (dict(sparsity=1.01), ["sparsity", "[0, 1]"]),
        (dict(sparsity=float("nan")), ["sparsity"]),
        (dict(scope=4), ["scope", "FSPMM_PRUNE_ROW"]),
        (dict(dtype=0), ["dtype = 0"]),
        (dict(m=-1), ["M = -1"]),
    ],
)
def test_prune_host_arguments(rng, args, needles):
    call = dict(m=4, k=8, ld=8, dtype=1, sparsity=0.5, scope=0)
    call.update(args)
    dense = sentinel((4, 8), "float16")
    assert_status(
        lib.fspmm_prune_host(
            ptr(dense), call["m"], call["k"], call["ld"], call["dtype"], call["sparsity"], call["scope"]
        ),
        "FSPMM_ERR_INVALID_ARGUMENT",
        *needles,
        function="fspmm_prune_host",
    )
    assert is_sentinel(dense)


def test_set_host_threads():
    assert_status(
        lib.fspmm_set_host_threads(-1),
        "FSPMM_ERR_INVALID_ARGUMENT",
        "threads = -1",
        "pass 0",
        function="fspmm_set_host_threads",
    )
    assert lib.fspmm_set_host_threads(0) == lib.FSPMM_OK


# ---- GPU entry points on a machine without a GPU: FSPMM_ERR_NO_DEVICE, nothing written ------------------------


def _gpu_calls():
    """name -> (call returning a status, check that its outputs are untouched)."""
    ws = ffi.new("size_t *")
    assert lib.fspmm_compress_workspace_size(40, 50, ws) == lib.FSPMM_OK
    ws_bytes = int(ws[0])
    size = ffi.new("size_t *", SENTINEL_WORD)
    device = ffi.new("int *", 0x5A5A)
    host = sentinel(64)
    return {
        "fspmm_compress_count": (
            lambda: lib.fspmm_compress_count(FAKE, 40, 50, 50, 1, FAKE, ws_bytes, ffi.NULL),
            lambda: True,
        ),
        "fspmm_compress_size": (
            lambda: lib.fspmm_compress_size(FAKE, ws_bytes, 0, size, ffi.NULL, ffi.NULL),
            lambda: size[0] == SENTINEL_WORD,
        ),
        "fspmm_compress": (
            lambda: lib.fspmm_compress(FAKE, 40, 50, 50, 1, 2, FAKE, ws_bytes, FAKE, 1 << 20, ffi.NULL),
            lambda: True,
        ),
        "fspmm_prune": (lambda: lib.fspmm_prune(FAKE, 40, 50, 50, 1, 0.5, 0, ffi.NULL, 0, ffi.NULL), lambda: True),
        "fspmm_stream_synchronize": (lambda: lib.fspmm_stream_synchronize(ffi.NULL), lambda: True),
        "fspmm_get_device": (lambda: lib.fspmm_get_device(device), lambda: device[0] == 0x5A5A),
        "fspmm_set_device": (lambda: lib.fspmm_set_device(0), lambda: True),
        "fspmm_device_free": (lambda: lib.fspmm_device_free(FAKE), lambda: True),
        "fspmm_memcpy": (
            lambda: lib.fspmm_memcpy(ptr(host), FAKE, 64, lib.FSPMM_COPY_DEVICE_TO_HOST, ffi.NULL),
            lambda: is_sentinel(host),
        ),
    }


GPU_CALLS = sorted(_gpu_calls())


@NO_GPU
@pytest.mark.parametrize("name", GPU_CALLS)
def test_gpu_entry_point_reports_no_device(name):
    call, untouched = _gpu_calls()[name]
    assert_status(call(), "FSPMM_ERR_NO_DEVICE", "CUDA", function=name)
    assert "device" in last_error() and "driver" in last_error(), last_error()
    assert untouched(), f"{name} wrote an output although it failed"


@NO_GPU
def test_device_malloc_reports_no_device_and_writes_nothing():
    p = ffi.new("void **", ffi.cast("void *", 0xA5A5A5A0))
    assert_status(lib.fspmm_device_malloc(p, 1024), "FSPMM_ERR_NO_DEVICE", "CUDA", function="fspmm_device_malloc")
    assert int(ffi.cast("uintptr_t", p[0])) == 0xA5A5A5A0


@NO_GPU
def test_device_malloc_reports_no_device():
    p = ffi.new("void **")
    assert_status(lib.fspmm_device_malloc(p, 1024), "FSPMM_ERR_NO_DEVICE", "CUDA", function="fspmm_device_malloc")


def test_device_count_and_argument_checks_need_no_device():
    count = ffi.new("int *", -1)
    assert lib.fspmm_device_count(count) == lib.FSPMM_OK and count[0] >= 0
    assert_status(lib.fspmm_memcpy(FAKE, FAKE, 16, 9, ffi.NULL), "FSPMM_ERR_INVALID_ARGUMENT", "FSPMM_COPY_")
    assert_status(lib.fspmm_memcpy(ffi.NULL, FAKE, 16, 1, ffi.NULL), "FSPMM_ERR_INVALID_ARGUMENT", "NULL")
    assert_status(lib.fspmm_device_malloc(ffi.NULL, 16), "FSPMM_ERR_INVALID_ARGUMENT", "ptr is NULL")
    assert lib.fspmm_device_free(ffi.NULL) == lib.FSPMM_OK
    assert lib.fspmm_memcpy(FAKE, FAKE, 0, 3, ffi.NULL) == lib.FSPMM_OK  # nothing to copy: no device needed


@NO_GPU
def test_python_gpu_paths_report_no_device(rng, tmp_path):
    blob = a_blob(rng)
    W = flashspmm.SparseMatrix.from_blob(blob)
    path = tmp_path / "w.fspmm"
    W.save(path)
    for attempt in (
        lambda: W.to("cuda"),
        lambda: W.cuda(),
        lambda: flashspmm.load(path, device="cuda:0"),
        lambda: flashspmm.SparseMatrix.from_blob(blob, device=0),
        lambda: flashspmm.from_pointer(0x10000, (2, 2), "float16", device="cuda"),
    ):
        with pytest.raises(flashspmm.Error) as info:
            attempt()
        assert info.value.status == "FSPMM_ERR_NO_DEVICE"
        assert "no CUDA device" in str(info.value) and "CPU" in str(info.value)


# ---- the Python API: documented statuses, nothing written on failure -------------------------------------------


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_corrupt_blobs_are_corrupt_buffer_errors(rng, fmt):
    blob = a_blob(rng, fmt)
    for data in (blob[:100], blob[:-16], np.concatenate([blob[:200], np.zeros(blob.size - 200, np.uint8)])):
        with pytest.raises(flashspmm.Error) as info:
            flashspmm.SparseMatrix.from_blob(data)
        assert info.value.status == "FSPMM_ERR_CORRUPT_BUFFER" and info.value.code == lib.FSPMM_ERR_CORRUPT_BUFFER
        assert len(info.value.detail) > 20 and info.value.detail.startswith("fspmm_matrix_create_host: ")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_failed_linear_writes_nothing(rng, dtype):
    w_bits, _ = weight(rng, 30, 40, dtype, 0.5)
    W = flashspmm.compress(as_dtype(w_bits, dtype))
    x, _ = values(rng, (3, 40), dtype)
    bad_calls = [
        (ValueError, dict(bias=np.zeros(29, x.dtype))),
        (TypeError, dict(bias=np.zeros(30, np.float32))),
        (ValueError, dict(beta=0.5, out=None)),
        (TypeError, dict(alpha=None)),
        (ValueError, dict(split_k=-2)),
    ]
    for error, kwargs in bad_calls:
        out = sentinel((3, 30), dtype)
        kwargs.setdefault("out", out)
        with pytest.raises(error):
            flashspmm.linear(x, W, **kwargs)
        assert is_sentinel(out), f"linear wrote out although it raised for {kwargs}"
    out = sentinel((3, 30), dtype)
    with pytest.raises(ValueError, match="x.shape"):
        flashspmm.linear(x[:, :39], W, out=out)
    assert is_sentinel(out)


# ---- fspmm_last_error is per thread ---------------------------------------------------------------------------


def test_last_error_is_per_thread():
    """Two threads fail with different messages in turn; each still reads its own afterwards, and a third that
    only succeeded reads ""."""
    barrier = threading.Barrier(4)  # three workers and this thread
    seen = {}

    def worker(name, call):
        status = call()
        barrier.wait(timeout=30)  # all three have made their call
        barrier.wait(timeout=30)  # ... and this thread failed too
        seen[name] = (status, last_error())

    size = ffi.new("size_t *")
    dense = np.ones(16, np.float16)
    threads = [
        threading.Thread(target=worker, args=("M", lambda: lib.fspmm_blob_bytes_bound(-7, 4, 2, size))),
        threading.Thread(target=worker, args=("threads", lambda: lib.fspmm_set_host_threads(-3))),
        threading.Thread(
            target=worker, args=("ok", lambda: lib.fspmm_compress_size_host(ptr(dense), 4, 4, 4, 1, 0, size, ffi.NULL))
        ),
    ]
    for t in threads:
        t.daemon = True  # a broken test must not keep the interpreter alive
        t.start()
    try:
        barrier.wait(timeout=30)
        assert lib.fspmm_set_host_threads(-99) != lib.FSPMM_OK  # the main thread fails too, in between
        barrier.wait(timeout=30)
    finally:
        for t in threads:
            t.join(timeout=30)
    assert seen["M"][0] == lib.FSPMM_ERR_INVALID_ARGUMENT and "M = -7" in seen["M"][1]
    assert seen["threads"][0] == lib.FSPMM_ERR_INVALID_ARGUMENT and "threads = -3" in seen["threads"][1]
    assert seen["ok"] == (lib.FSPMM_OK, "")
    assert "threads = -99" in last_error()


# ---- the library never prints -----------------------------------------------------------------------------------

SILENT_SCRIPT = r"""
import json, os, sys
import numpy as np
import flashspmm
from flashspmm._native import ffi, lib

statuses = []
F = ffi.cast("void *", 0x10000)
dense = np.ones((8, 8), np.float16)
p = ffi.cast("void *", dense.ctypes.data)
size = ffi.new("size_t *")
h = ffi.new("fspmm_header_t *")
blob = flashspmm.compress(dense).blob().copy()
b = ffi.cast("void *", blob.ctypes.data)
bad = blob.copy(); bad[9] ^= 1
q = ffi.cast("void *", bad.ctypes.data)
calls = [
    lambda: lib.fspmm_header_read(b, 10, h), lambda: lib.fspmm_header_read(q, bad.size, h),
    lambda: lib.fspmm_validate_host(q, bad.size, h), lambda: lib.fspmm_validate_host(b, blob.size - 1, h),
    lambda: lib.fspmm_blob_bytes_bound(2**40, 2**40, 2, size), lambda: lib.fspmm_blob_bytes_bound(4, 4, 9, size),
    lambda: lib.fspmm_compress_size_host(p, -1, 8, 8, 1, 0, size, ffi.NULL),
    lambda: lib.fspmm_compress_size_host(p, 8, 8, 8, 9, 0, size, ffi.NULL),
    lambda: lib.fspmm_compress_host(p, 8, 8, 8, 1, 2, F, 16, size),
    lambda: lib.fspmm_prune_host(p, 8, 8, 7, 1, 0.5, 0), lambda: lib.fspmm_prune_host(p, 8, 8, 8, 1, 2.0, 0),
    lambda: lib.fspmm_set_host_threads(-1), lambda: lib.fspmm_status_string(12345) and 1,
    lambda: lib.fspmm_compress_workspace_size(0, 1, size), lambda: lib.fspmm_prune_workspace_size(1, 1, 7, size),
    lambda: lib.fspmm_compress_count(F, 8, 8, 8, 1, F, 1, ffi.NULL),
    lambda: lib.fspmm_compress(F, 8, 8, 8, 1, 2, F, 1 << 20, F, 16, ffi.NULL),
    lambda: lib.fspmm_prune(F, 8, 8, 8, 1, 0.5, 1, ffi.NULL, 0, ffi.NULL),
    lambda: lib.fspmm_memcpy(F, F, 16, 7, ffi.NULL), lambda: lib.fspmm_device_malloc(ffi.NULL, 16),
]
if flashspmm.device_count() == 0:  # GPU calls with fake pointers only where they cannot reach a GPU
    calls += [lambda: lib.fspmm_compress_count(F, 8, 8, 8, 1, F, 1 << 20, ffi.NULL),
              lambda: lib.fspmm_compress_size(F, 1 << 20, 0, size, ffi.NULL, ffi.NULL),
              lambda: lib.fspmm_prune(F, 8, 8, 8, 1, 0.5, 0, ffi.NULL, 0, ffi.NULL),
              lambda: lib.fspmm_stream_synchronize(ffi.NULL), lambda: lib.fspmm_set_device(3),
              lambda: lib.fspmm_get_device(ffi.new("int *")), lambda: lib.fspmm_device_free(F),
              lambda: lib.fspmm_memcpy(F, F, 16, 3, ffi.NULL), lambda: lib.fspmm_device_malloc(ffi.new("void **"), 64)]
for call in calls:
    statuses.append(int(call()))
# the Python API over the rest (linear, to_dense, load) on bad input
W = flashspmm.SparseMatrix.from_blob(blob)
for attempt in (lambda: flashspmm.SparseMatrix.from_blob(bad), lambda: flashspmm.SparseMatrix.from_blob(blob[:50]),
                lambda: flashspmm.linear(np.ones((2, 7), np.float16), W),
                lambda: flashspmm.linear(np.ones((2, 8), np.float16), W, beta=1.0),
                lambda: flashspmm.prune(dense, 3.0), lambda: W.to("cuda:7"), lambda: flashspmm.load("/nonexistent")):
    try:
        attempt()
    except Exception as exc:
        statuses.append(type(exc).__name__)
flashspmm.linear(np.ones((2, 8), np.float16), W)
W.to_dense()
sys.stdout.flush()
sys.stderr.flush()
os.write(int(sys.argv[1]), json.dumps(statuses).encode())  # a separate pipe: stdout and stderr stay empty
"""


STATUS_CODES = set(range(1, 8))


def test_library_never_prints():
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", SILENT_SCRIPT, str(write_end)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(write_end,),
        env=dict(os.environ),
    )
    os.close(write_end)
    out, err = proc.communicate(timeout=300)
    with os.fdopen(read_end) as f:
        report = f.read()
    assert proc.returncode == 0, f"rc {proc.returncode}:\n{err.decode()}"
    assert out == b"" and err == b"", f"the library printed:\nstdout: {out!r}\nstderr: {err!r}"
    statuses = json.loads(report)
    assert sum(1 for s in statuses if s != 0) >= 25, statuses  # the error paths were reached
    assert all(s == 0 or s in STATUS_CODES or isinstance(s, str) for s in statuses), statuses
