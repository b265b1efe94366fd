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
STATUS_NAMES = ["FSPMM_OK", "FSPMM_ERR_INVALID_ARGUMENT", "FSPMM_ERR_NOT_SUPPORTED", "FSPMM_ERR_CORRUPT_BUFFER",
                "FSPMM_ERR_CUDA", "FSPMM_ERR_NO_DEVICE", "FSPMM_ERR_OUT_OF_MEMORY", "FSPMM_ERR_INTERNAL"]


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
    return tuple(int(re.search(rf"^#define FSPMM_VERSION_{part} (\d+)$", text, re.M).group(1))
                 for part in ("MAJOR", "MINOR", "PATCH"))


def _skip_unless_installed():
    """Skip a check of the installed package layout when running against a plain CMake build."""
    if os.environ.get("FLASHSPMM_LIBRARY"):
        pytest.skip("FLASHSPMM_LIBRARY points at a library outside an installed package: no installed layout "
                    "(include/ and cmake/ beside the package) to check")


def test_version_and_build_info():
    major, minor, patch = _header_version()
    version = f"{major}.{minor}.{patch}"
    assert lib.fspmm_version() == major * 10000 + minor * 100 + patch
    assert flashspmm.__version__ == version
    info = ffi.string(lib.fspmm_build_info()).decode()
    assert version in info and "sm_" in info
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
    status = lib.fspmm_compress_size_host(p, -1, 4, 4, lib.FSPMM_DTYPE_FLOAT16, lib.FSPMM_FORMAT_BITMAP, size,
                                          ffi.NULL)
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT
    message = last_error()
    assert "fspmm_compress_size_host" in message and "M" in message
    # a later success clears it
    assert lib.fspmm_compress_size_host(p, 4, 4, 4, lib.FSPMM_DTYPE_FLOAT16, lib.FSPMM_FORMAT_BITMAP, size,
                                        ffi.NULL) == lib.FSPMM_OK
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


def test_other_host_functions_reject_bad_arguments():
    dense = np.zeros((4, 4), np.float16)
    blob = flashspmm.compress(np.eye(4, dtype=np.float16)).blob()
    bp = ffi.cast("void *", blob.ctypes.data)
    dp = ffi.cast("void *", dense.ctypes.data)
    inv = lib.FSPMM_ERR_INVALID_ARGUMENT
    assert lib.fspmm_decompress_host(bp, blob.size, dp, 3) == inv  # ld < K
    assert lib.fspmm_decompress_host(bp, blob.size, ffi.NULL, 4) == inv
    assert lib.fspmm_decompress_host(ffi.NULL, blob.size, dp, 4) in (inv, lib.FSPMM_ERR_CORRUPT_BUFFER)
    x = np.zeros((2, 4), np.float16)
    y = np.zeros((2, 4), np.float16)
    xp, yp = ffi.cast("void *", x.ctypes.data), ffi.cast("void *", y.ctypes.data)
    assert lib.fspmm_linear_host(bp, blob.size, xp, 2, 3, ffi.NULL, yp, 4, 1.0, 0.0) == inv  # ldx < K
    assert lib.fspmm_linear_host(bp, blob.size, xp, 2, 4, ffi.NULL, yp, 3, 1.0, 0.0) == inv  # ldy < M
    assert lib.fspmm_linear_host(bp, blob.size, xp, -1, 4, ffi.NULL, yp, 4, 1.0, 0.0) == inv
    assert lib.fspmm_linear_host(bp, blob.size, ffi.NULL, 2, 4, ffi.NULL, yp, 4, 1.0, 0.0) == inv
    assert lib.fspmm_header_read(bp, 100, ffi.new("fspmm_header_t *")) != lib.FSPMM_OK
    assert lib.fspmm_header_read(bp, blob.size, ffi.NULL) == inv
    assert lib.fspmm_validate_host(bp, blob.size, ffi.NULL) == lib.FSPMM_OK
    bound = ffi.new("size_t *")
    assert lib.fspmm_blob_bytes_bound(2 ** 40, 2 ** 40, lib.FSPMM_FORMAT_BITMAP, bound) == inv
    assert lib.fspmm_blob_bytes_bound(-1, 4, lib.FSPMM_FORMAT_BITMAP, bound) == inv
    assert lib.fspmm_set_host_threads(-1) == inv
    assert lib.fspmm_set_host_threads(2) == lib.FSPMM_OK
    assert lib.fspmm_set_host_threads(0) == lib.FSPMM_OK


GPU_CALLS_SCRIPT = r"""
import numpy as np
import flashspmm
from flashspmm._native import ffi, lib

def report(name, status):
    message = ffi.string(lib.fspmm_last_error()).decode() if status else ""
    print(name, "=", status, ffi.string(lib.fspmm_status_string(status)).decode(), "|", message)

fake = ffi.new("fspmm_header_t *")          # all zero: not a valid header
h = flashspmm.compress(np.eye(64, dtype=np.float16)).header
ws = ffi.new("size_t *")
no_device = flashspmm.device_count() == 0
report("linear(fake header)", lib.fspmm_linear(fake, ffi.NULL, ffi.NULL, 4, 64, ffi.NULL, ffi.NULL, 64, 1.0, 0.0,
                                               0, ffi.NULL, 0, ffi.NULL))
report("workspace_size(fake header)", lib.fspmm_linear_workspace_size(fake, 4, 0, ws))
report("linear(NULL header)", lib.fspmm_linear(ffi.NULL, ffi.NULL, ffi.NULL, 4, 64, ffi.NULL, ffi.NULL, 64, 1.0,
                                               0.0, 0, ffi.NULL, 0, ffi.NULL))
if no_device:  # with a GPU these pointers would be real launches on garbage
    p = ffi.new("void **")
    fake_ptr = ffi.cast("void *", 256)
    report("linear(real header)", lib.fspmm_linear(h, fake_ptr, fake_ptr, 4, 64, ffi.NULL, fake_ptr, 64, 1.0, 0.0,
                                                   0, ffi.NULL, 0, ffi.NULL))
    report("device_malloc", lib.fspmm_device_malloc(p, 1024))
    report("set_device(0)", lib.fspmm_set_device(0))
    report("memcpy", lib.fspmm_memcpy(fake_ptr, ffi.cast("void *", 512), 16, lib.FSPMM_COPY_DEVICE_TO_DEVICE,
                                      ffi.NULL))
    report("stream_synchronize", lib.fspmm_stream_synchronize(ffi.NULL))
print("free(NULL) =", lib.fspmm_device_free(ffi.NULL))
"""


def test_gpu_entry_points_fail_cleanly(run_py):
    proc = run_py(GPU_CALLS_SCRIPT)
    assert proc.returncode == 0, f"crashed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for line in lines[:-1]:
        status = int(line.split("=")[1].split()[0])
        assert status != 0, f"expected a failure status: {line}"
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
    src.write_text('#include "flashspmm.h"\n'
                   "typedef char header_is_128_bytes[sizeof(fspmm_header_t) == 128 ? 1 : -1];\n"
                   "int use(void) { fspmm_header_t h; (void)h; return fspmm_version() + FSPMM_VERSION; }\n")
    include = _installed("include")
    for target in (os.path.join(include, "flashspmm.h"), str(src)):
        proc = subprocess.run([exe, std, "-Wall", "-Wextra", "-pedantic", "-Werror", "-fsyntax-only",
                               "-x", lang, "-I", include, target], capture_output=True, text=True)
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
        [cmake, "-S", str(source), "-B", str(build), f"-Dflashspmm_DIR={flashspmm.cmake_dir()}",
         "-DCMAKE_BUILD_TYPE=Release"],
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
