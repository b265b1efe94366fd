"""The C API directly (through cffi), the installed header, and the C test program built with CMake."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import flashspmm
from flashspmm._native import ffi, lib

REPO = Path(__file__).resolve().parents[1]
STATUS_NAMES = [
    "FSPMM_OK",
    "FSPMM_ERR_INVALID_ARGUMENT",
    "FSPMM_ERR_NOT_SUPPORTED",
    "FSPMM_ERR_CORRUPT_BUFFER",
    "FSPMM_ERR_CUDA",
    "FSPMM_ERR_NO_DEVICE",
    "FSPMM_ERR_OUT_OF_MEMORY",
    "FSPMM_ERR_INTERNAL",
]


def last_error():
    return ffi.string(lib.fspmm_last_error()).decode()


def test_status_strings():
    for code, name in enumerate(STATUS_NAMES):
        assert ffi.string(lib.fspmm_status_string(code)).decode() == name
        assert getattr(lib, name) == code
    for bogus in (8, 99, 1000):
        assert lib.fspmm_status_string(bogus) != ffi.NULL
        assert ffi.string(lib.fspmm_status_string(bogus))


def _header_version():
    """(major, minor, patch) from the FSPMM_VERSION_* macros of include/flashspmm.h: the one source."""
    text = (REPO / "include" / "flashspmm.h").read_text()
    return tuple(
        int(re.search(rf"^#define FSPMM_VERSION_{part} (\d+)$", text, re.M).group(1))
        for part in ("MAJOR", "MINOR", "PATCH")
    )


def _skip_unless_installed():
    """Skip a check of the installed package layout when running against a plain CMake build."""
    if os.environ.get("FLASHSPMM_LIBRARY"):
        pytest.skip(
            "FLASHSPMM_LIBRARY points at a library outside an installed package: no installed layout "
            "(include/ and cmake/ beside the package) to check"
        )


def test_version_and_build_info():
    major, minor, patch = _header_version()
    version = f"{major}.{minor}.{patch}"
    assert lib.fspmm_version() == major * 10000 + minor * 100 + patch
    assert flashspmm.__version__ == version
    info = ffi.string(lib.fspmm_build_info()).decode()
    archs = info.split("architectures", 1)[1].strip()
    assert version in info and archs and archs != "unknown" and ("sm_" in archs or "compute_" in archs), info
    d = flashspmm.info()
    assert d["version"] == version and isinstance(d["device_count"], int)
    _skip_unless_installed()
    assert os.path.isfile(os.path.join(d["cmake_dir"], "flashspmmConfig.cmake"))
    assert os.path.isfile(os.path.join(d["include_dir"], "flashspmm.h"))


def test_device_count_is_ok_here():
    count = ffi.new("int *", -1)
    assert lib.fspmm_device_count(count) == lib.FSPMM_OK
    assert count[0] >= 0


def test_last_error_after_a_failure():
    size = ffi.new("size_t *")
    dense = np.zeros((4, 4), np.float16)
    p = ffi.cast("void *", dense.ctypes.data)
    status = lib.fspmm_compress_size_host(p, -1, 4, 4, lib.FSPMM_DTYPE_FLOAT16, lib.FSPMM_FORMAT_BITMAP, size, ffi.NULL)
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    message = last_error()
    assert "fspmm_compress_size_host" in message and "M" in message
    # a later success clears it
    assert (
        lib.fspmm_compress_size_host(p, 4, 4, 4, lib.FSPMM_DTYPE_FLOAT16, lib.FSPMM_FORMAT_BITMAP, size, ffi.NULL)
        == lib.FSPMM_OK
    )
    assert last_error() == ""


# Arguments that must be rejected before any memory is touched (run in a subprocess: a crash fails the test).
BAD_SIZE_CALLS = {
    "M=-1": "(p, -1, 4, 4, F16, BITMAP, size, NULL)",
    "K=-1": "(p, 4, -1, 4, F16, BITMAP, size, NULL)",
    "M=0": "(p, 0, 4, 4, F16, BITMAP, size, NULL)",
    "K=0": "(p, 4, 0, 4, F16, BITMAP, size, NULL)",
    "M*K overflows": "(p, 2**40, 2**40, 2**40, F16, BITMAP, size, NULL)",
    "M*ld overflows": "(p, 2**62, 4, 2**62, F16, BITMAP, size, NULL)",
    "ld<K": "(p, 4, 4, 3, F16, BITMAP, size, NULL)",
    "ld=-4": "(p, 4, 4, -4, F16, BITMAP, size, NULL)",
    "bad dtype": "(p, 4, 4, 4, 7, BITMAP, size, NULL)",
    "bad format": "(p, 4, 4, 4, F16, 9, size, NULL)",
    "NULL dense": "(NULL, 4, 4, 4, F16, BITMAP, size, NULL)",
    "NULL size": "(p, 4, 4, 4, F16, BITMAP, NULL, NULL)",
}
BAD_CALL_SCRIPT = r"""
import sys
import numpy as np
from flashspmm._native import ffi, lib
F16, BITMAP, NULL = lib.FSPMM_DTYPE_FLOAT16, lib.FSPMM_FORMAT_BITMAP, ffi.NULL
dense = np.zeros(64, np.float16)
p = ffi.cast("void *", dense.ctypes.data)
size = ffi.new("size_t *")
out = np.zeros(4096, np.uint8)
o = ffi.cast("void *", out.ctypes.data)
written = ffi.new("size_t *")
args = eval(sys.argv[1])
print(lib.fspmm_compress_size_host(*args))
print(ffi.string(lib.fspmm_last_error()).decode())
args2 = args[:6] + (o, 4096, written)
print(lib.fspmm_compress_host(*args2))
print(ffi.string(lib.fspmm_last_error()).decode())
"""


@pytest.mark.parametrize("case", sorted(BAD_SIZE_CALLS))
def test_bad_sizes_are_invalid_arguments(run_py, case):
    call = BAD_SIZE_CALLS[case]
    proc = run_py(BAD_CALL_SCRIPT, call)
    assert proc.returncode == 0, f"crashed (rc {proc.returncode}): {proc.stderr}"
    lines = proc.stdout.splitlines()
    assert int(lines[0]) == 1, f"fspmm_compress_size_host{call} returned {lines[0]} ({lines[1]!r})"
    assert lines[1], "no fspmm_last_error() message"
    if case != "NULL size":  # compress_host has no size pointer; that case is valid for it
        assert int(lines[2]) == 1, f"fspmm_compress_host returned {lines[2]} ({lines[3]!r})"


def _host_handle(blob):
    out = ffi.new("fspmm_matrix_t *")
    assert lib.fspmm_matrix_create_host(ffi.cast("void *", blob.ctypes.data), blob.size, out) == lib.FSPMM_OK
    return ffi.gc(out[0], lib.fspmm_matrix_destroy)


def test_other_host_functions_reject_bad_arguments():
    dense = np.full((4, 4), 0x7E00, np.uint16)  # a sentinel: nothing may be written by a failing call
    blob = flashspmm.compress(np.eye(4, dtype=np.float16)).blob()
    bp = ffi.cast("void *", blob.ctypes.data)
    dp = ffi.cast("void *", dense.ctypes.data)
    inv = lib.FSPMM_ERR_INVALID_ARGUMENT
    W = _host_handle(blob)
    assert lib.fspmm_decompress_host(W, dp, 4, 4, 3) == inv  # ld < K
    assert lib.fspmm_decompress_host(W, dp, 5, 4, 4) == inv  # not the matrix's shape: the capacity is checked
    assert lib.fspmm_decompress_host(W, dp, 4, 3, 4) == inv
    assert lib.fspmm_decompress_host(W, ffi.NULL, 4, 4, 4) == inv
    assert lib.fspmm_decompress_host(ffi.NULL, dp, 4, 4, 4) == inv
    assert (dense == 0x7E00).all()
    assert lib.fspmm_decompress_host(W, dp, 4, 4, 4) == lib.FSPMM_OK
    x = np.zeros((2, 4), np.float16)
    y = np.full((2, 4), np.nan, np.float16)
    xp, yp = ffi.cast("void *", x.ctypes.data), ffi.cast("void *", y.ctypes.data)
    assert lib.fspmm_linear_host(W, xp, 2, 4, 3, ffi.NULL, yp, 4, 4, 1.0, 0.0) == inv  # ldx < K
    assert lib.fspmm_linear_host(W, xp, 2, 4, 4, ffi.NULL, yp, 4, 3, 1.0, 0.0) == inv  # ldy < M
    assert lib.fspmm_linear_host(W, xp, 2, 5, 5, ffi.NULL, yp, 4, 4, 1.0, 0.0) == inv  # K is not the matrix's
    assert lib.fspmm_linear_host(W, xp, 2, 4, 4, ffi.NULL, yp, 5, 5, 1.0, 0.0) == inv  # M is not the matrix's
    assert lib.fspmm_linear_host(W, xp, -1, 4, 4, ffi.NULL, yp, 4, 4, 1.0, 0.0) == inv
    assert lib.fspmm_linear_host(W, ffi.NULL, 2, 4, 4, ffi.NULL, yp, 4, 4, 1.0, 0.0) == inv
    assert lib.fspmm_linear_host(ffi.NULL, xp, 2, 4, 4, ffi.NULL, yp, 4, 4, 1.0, 0.0) == inv
    assert np.isnan(y).all()
    out = ffi.new("fspmm_matrix_t *")
    out[0] = ffi.cast("fspmm_matrix_t", 0xA5A5A5A0)  # a sentinel: nothing is written on failure
    assert lib.fspmm_matrix_create_host(bp, 100, out) == lib.FSPMM_ERR_CORRUPT_BUFFER
    assert int(ffi.cast("uintptr_t", out[0])) == 0xA5A5A5A0
    assert lib.fspmm_matrix_create_host(ffi.NULL, blob.size, out) == inv
    assert lib.fspmm_matrix_create_host(bp, blob.size, ffi.NULL) == inv
    h = ffi.new("fspmm_header_t *")
    assert lib.fspmm_matrix_header(W, h) == lib.FSPMM_OK and h.M == 4 and h.K == 4
    device = ffi.new("int *")
    assert lib.fspmm_matrix_device(W, device) == lib.FSPMM_OK and device[0] == -1
    assert lib.fspmm_matrix_destroy(ffi.NULL) == lib.FSPMM_OK
    assert lib.fspmm_header_read(bp, 100, ffi.new("fspmm_header_t *")) == lib.FSPMM_ERR_CORRUPT_BUFFER
    assert lib.fspmm_header_read(bp, blob.size, ffi.NULL) == inv
    assert lib.fspmm_validate_host(bp, blob.size, ffi.NULL) == lib.FSPMM_OK
    bound = ffi.new("size_t *")
    assert lib.fspmm_blob_bytes_bound(2**40, 2**40, lib.FSPMM_FORMAT_BITMAP, bound) == inv
    assert lib.fspmm_blob_bytes_bound(-1, 4, lib.FSPMM_FORMAT_BITMAP, bound) == inv
    assert lib.fspmm_set_host_threads(-1) == inv
    assert lib.fspmm_set_host_threads(2) == lib.FSPMM_OK
    assert lib.fspmm_set_host_threads(0) == lib.FSPMM_OK


def test_plan_functions_reject_bad_arguments():
    blob = flashspmm.compress(np.eye(64, dtype=np.float16)).blob()
    W = _host_handle(blob)
    inv = lib.FSPMM_ERR_INVALID_ARGUMENT
    plan = ffi.new("fspmm_plan_t *")
    options = ffi.new("fspmm_linear_options_t *")
    assert lib.fspmm_linear_options_init(options) == lib.FSPMM_OK
    assert options.struct_bytes == ffi.sizeof("fspmm_linear_options_t") and options.split_k == 0
    assert options.kernel == lib.FSPMM_KERNEL_AUTO and options.decoder == lib.FSPMM_DECODER_AUTO
    plan[0] = ffi.cast("fspmm_plan_t", 0xA5A5A5A0)
    assert lib.fspmm_plan_create(W, 4, options, plan) == inv  # a host matrix
    assert int(ffi.cast("uintptr_t", plan[0])) == 0xA5A5A5A0
    assert "host memory" in last_error()
    assert lib.fspmm_plan_create(ffi.NULL, 4, options, plan) == inv
    assert lib.fspmm_plan_create(W, 4, options, ffi.NULL) == inv
    assert lib.fspmm_plan_destroy(ffi.NULL) == lib.FSPMM_OK
    ws = ffi.new("size_t *")
    assert lib.fspmm_plan_workspace_size(ffi.NULL, ws) == inv
    assert lib.fspmm_plan_info(ffi.NULL, 1, ffi.new("fspmm_plan_info_t *")) == inv
    assert (
        lib.fspmm_linear(ffi.NULL, ffi.NULL, 1, 64, 64, ffi.NULL, ffi.NULL, 64, 64, 1.0, 0.0, ffi.NULL, 0, ffi.NULL)
        == inv
    )
    assert "fspmm_plan_create" in last_error()
    assert lib.fspmm_linear_options_init(ffi.NULL) == inv


GPU_CALLS_SCRIPT = r"""
import numpy as np
import flashspmm
from flashspmm._native import ffi, lib

def report(name, status):
    message = ffi.string(lib.fspmm_last_error()).decode() if status else ""
    print(name, "=", status, ffi.string(lib.fspmm_status_string(status)).decode(), "|", message)

no_device = flashspmm.device_count() == 0
out = ffi.new("fspmm_matrix_t *")
report("plan_create(NULL matrix)", lib.fspmm_plan_create(ffi.NULL, 4, ffi.NULL, ffi.new("fspmm_plan_t *")))
report("linear(NULL plan)", lib.fspmm_linear(ffi.NULL, ffi.NULL, 4, 64, 64, ffi.NULL, ffi.NULL, 64, 64, 1.0, 0.0,
                                             ffi.NULL, 0, ffi.NULL))
report("decompress(NULL matrix)", lib.fspmm_decompress(ffi.NULL, ffi.NULL, 64, 64, 64, ffi.NULL))
if no_device:  # with a GPU these pointers would be real memory accesses on garbage
    p = ffi.new("void **")
    fake_ptr = ffi.cast("void *", 256)
    report("matrix_create_device", lib.fspmm_matrix_create_device(fake_ptr, 4096, ffi.NULL, out))
    report("pointer_device", lib.fspmm_pointer_device(fake_ptr, ffi.new("int *")))
    report("device_malloc", lib.fspmm_device_malloc(p, 1024))
    report("set_device(0)", lib.fspmm_set_device(0))
    report("memcpy", lib.fspmm_memcpy(fake_ptr, ffi.cast("void *", 512), 16, lib.FSPMM_COPY_DEVICE_TO_DEVICE,
                                      ffi.NULL))
    report("stream_synchronize", lib.fspmm_stream_synchronize(ffi.NULL))
print("free(NULL) =", lib.fspmm_device_free(ffi.NULL))
"""

# Without a device the device entry points report FSPMM_ERR_NO_DEVICE; handle checks come first.
EXPECTED_GPU_STATUS = {
    "plan_create(NULL matrix)": "FSPMM_ERR_INVALID_ARGUMENT",
    "linear(NULL plan)": "FSPMM_ERR_INVALID_ARGUMENT",
    "decompress(NULL matrix)": "FSPMM_ERR_INVALID_ARGUMENT",
}


def test_gpu_entry_points_fail_cleanly(run_py):
    proc = run_py(GPU_CALLS_SCRIPT)
    assert proc.returncode == 0, f"crashed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    no_device = flashspmm.device_count() == 0
    for line in lines[:-1]:
        name = line.split(" = ")[0]
        status_name = line.split("=", 1)[1].split()[1]
        expected = EXPECTED_GPU_STATUS.get(name, "FSPMM_ERR_NO_DEVICE" if no_device else None)
        assert status_name == expected, f"expected {expected}: {line}"
        assert "|" in line and line.split("|", 1)[1].strip(), f"no message: {line}"
    assert lines[-1] == "free(NULL) = 0"


def _installed(*parts):
    return os.path.join(os.path.dirname(flashspmm.__file__), *parts)


@pytest.mark.parametrize("compiler,std", [("cc", "-std=c99"), ("c++", "-std=c++17")])
def test_header_compiles(tmp_path, compiler, std):
    _skip_unless_installed()
    exe = shutil.which(compiler)
    if exe is None:
        pytest.skip(f"no {compiler} on PATH")
    lang = "c" if compiler == "cc" else "c++"
    src = tmp_path / ("t.c" if lang == "c" else "t.cpp")
    src.write_text(
        '#include "flashspmm.h"\n'
        "typedef char header_is_128_bytes[sizeof(fspmm_header_t) == 128 ? 1 : -1];\n"
        "int use(void) { fspmm_header_t h; (void)h; return fspmm_version() + FSPMM_VERSION; }\n"
    )
    include = _installed("include")
    for target in (os.path.join(include, "flashspmm.h"), str(src)):
        proc = subprocess.run(
            [exe, std, "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only", "-x", lang, "-I", include, target],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr


def test_c_program_builds_and_passes(tmp_path):
    """tests/c built against the installed package with find_package(flashspmm CONFIG)."""
    _skip_unless_installed()
    source = REPO / "tests" / "c"
    assert (source / "CMakeLists.txt").is_file(), "tests/c/CMakeLists.txt is missing"
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not on PATH")
    build = tmp_path / "build"
    steps = [
        [
            cmake,
            "-S",
            str(source),
            "-B",
            str(build),
            f"-Dflashspmm_DIR={flashspmm.cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        [cmake, "--build", str(build), "--parallel", "2"],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    programs = [p for p in build.rglob("test_capi") if p.is_file() and os.access(p, os.X_OK)]
    assert programs, "the build produced no test_capi program"
    proc = subprocess.run([str(programs[0])], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"test_capi failed (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr}"
    assert "0 failed" in proc.stdout, proc.stdout[-4000:]


def test_installed_layout():
    """The wheel holds one library file (no versioned copies), the header and the CMake package files."""
    _skip_unless_installed()
    libs = sorted(p.name for p in Path(_installed()).glob("libflashspmm*"))
    assert libs == ["libflashspmm.so"], f"expected only libflashspmm.so in the package, found {libs}"
    cmake_files = {p.name for p in Path(flashspmm.cmake_dir()).iterdir()}
    assert {"flashspmmConfig.cmake", "flashspmmConfigVersion.cmake", "flashspmmTargets.cmake"} <= cmake_files
    assert Path(flashspmm.include_dir(), "flashspmm.h").is_file()
