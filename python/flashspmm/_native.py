"""Loading of libflashspmm through cffi in ABI mode, and status-code handling.

The C declarations are not repeated here: they are read from the installed header
(``flashspmm/include/flashspmm.h``), between the markers ``/* FSPMM_CDEF_BEGIN */`` and
``/* FSPMM_CDEF_END */``, so the header stays the one source of truth.

Environment overrides (for development against a library built outside the wheel):
``FLASHSPMM_LIBRARY`` (path of libflashspmm.so) and ``FLASHSPMM_HEADER`` (path of flashspmm.h).
"""

import os
import re

import cffi

__all__ = ["ffi", "lib", "Error", "check", "library_path", "header_path", "package_dir", "as_ptr"]

package_dir = os.path.dirname(os.path.abspath(__file__))

_BEGIN = "/* FSPMM_CDEF_BEGIN */"
_END = "/* FSPMM_CDEF_END */"

_REINSTALL_HINT = (
    "Reinstall flashspmm from a source checkout with "
    "`pip install .` (this builds libflashspmm.so; it needs CMake >= 3.24 and a CUDA toolkit >= 12 with nvcc), "
    "or point FLASHSPMM_LIBRARY and FLASHSPMM_HEADER at a built library and its header."
)


def _first_existing(candidates):
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    return None


def _locate(env_name, installed, source_tree):
    override = os.environ.get(env_name)
    if override:
        if not os.path.isfile(override):
            raise ImportError(f"flashspmm: {env_name}={override!r} does not name a file")
        return override
    return _first_existing([installed, source_tree])


# Installed layout: <site-packages>/flashspmm/{libflashspmm.so, include/flashspmm.h, cmake/}.
# The source-tree fallback lets python/flashspmm find include/flashspmm.h in a checkout.
header_path = _locate(
    "FLASHSPMM_HEADER",
    os.path.join(package_dir, "include", "flashspmm.h"),
    os.path.join(package_dir, os.pardir, os.pardir, "include", "flashspmm.h"),
)
library_path = _locate("FLASHSPMM_LIBRARY", os.path.join(package_dir, "libflashspmm.so"), None)

if header_path is None:
    raise ImportError(f"flashspmm: the C header flashspmm.h was not found next to the package. {_REINSTALL_HINT}")
if library_path is None:
    raise ImportError(
        f"flashspmm is installed without its native library: libflashspmm.so was not found in {package_dir}. "
        f"{_REINSTALL_HINT}"
    )


def _read_cdef(path):
    """Return the declarations between the cdef markers of the header, without comments."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin = text.find(_BEGIN)
    end = text.find(_END)
    if begin < 0 or end < 0 or end < begin:
        raise ImportError(f"flashspmm: {path} lacks the markers {_BEGIN} ... {_END}")
    body = text[begin + len(_BEGIN) : end]
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    body = re.sub(r"//[^\n]*", " ", body)
    return body


ffi = cffi.FFI()
ffi.cdef(_read_cdef(header_path))
try:
    lib = ffi.dlopen(os.path.abspath(library_path))
except OSError as exc:  # a broken or foreign .so
    raise ImportError(f"flashspmm: cannot load {library_path}: {exc}. {_REINSTALL_HINT}") from exc


# The per-call entry point once more, with every address as an integer: arrays give their addresses as ints,
# and cffi would otherwise need a cast to a pointer object for each of them on every call (the hot path of
# flashspmm.linear). Same function, same ABI (pointers and uintptr_t are passed alike on every platform the
# library builds for).
_ffi_addr = cffi.FFI()
_ffi_addr.cdef("""int fspmm_linear(uintptr_t plan, uintptr_t x, int64_t N, int64_t K, int64_t ldx, uintptr_t bias,
                                 uintptr_t y, int64_t M, int64_t ldy, float alpha, float beta, uintptr_t workspace,
                                 size_t workspace_bytes, uintptr_t stream);""")
lib_addr = _ffi_addr.dlopen(os.path.abspath(library_path))


def status_name(code):
    """Name of a status code, e.g. ``"FSPMM_ERR_CORRUPT_BUFFER"``."""
    return ffi.string(lib.fspmm_status_string(int(code))).decode("utf-8", "replace")


def last_error():
    """The library's thread-local message about the last failure on this thread ("" if none)."""
    return ffi.string(lib.fspmm_last_error()).decode("utf-8", "replace")


class Error(RuntimeError):
    """A flashspmm C API call failed.

    Attributes:
        status: the status name, e.g. ``"FSPMM_ERR_CORRUPT_BUFFER"``.
        code: the numeric ``fspmm_status_t`` value.
        detail: the library's message (``fspmm_last_error()``), possibly empty.
    """

    def __init__(self, code, detail=""):
        self.code = int(code)
        self.status = status_name(code)
        self.detail = detail
        super().__init__(f"{self.status}: {detail}" if detail else self.status)


def check(status):
    """Raise :class:`Error` (with ``fspmm_last_error()``) if ``status`` is not ``FSPMM_OK``."""
    if status != lib.FSPMM_OK:
        raise Error(status, last_error())


def as_ptr(address, ctype="void *"):
    """A cffi pointer for an integer address (0 gives NULL)."""
    return ffi.cast(ctype, int(address)) if address else ffi.NULL


def version_string():
    """``"major.minor.patch"`` of the loaded library."""
    v = int(lib.fspmm_version())
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def build_info():
    """The library's build description (version, CUDA version, compiled architectures)."""
    return ffi.string(lib.fspmm_build_info()).decode("utf-8", "replace")


def device_count():
    """Number of CUDA devices usable by the library (0 when there is no driver or device)."""
    count = ffi.new("int *")
    check(lib.fspmm_device_count(count))
    return int(count[0])


def get_device():
    """The library's current CUDA device."""
    dev = ffi.new("int *")
    check(lib.fspmm_get_device(dev))
    return int(dev[0])


def pointer_device(address):
    """The CUDA device holding ``address`` (-1 for host memory)."""
    dev = ffi.new("int *")
    check(lib.fspmm_pointer_device(as_ptr(address), dev))
    return int(dev[0])


class on_device:
    """Context manager: make ``index`` the current CUDA device, restore the previous one on exit."""

    def __init__(self, index):
        self.index = int(index)
        self.previous = None

    def __enter__(self):
        previous = ffi.new("int *")
        if lib.fspmm_get_device(previous) == lib.FSPMM_OK:
            self.previous = int(previous[0])
        if self.previous != self.index:
            check(lib.fspmm_set_device(self.index))
        return self

    def __exit__(self, *exc):
        if self.previous is not None and self.previous != self.index:
            lib.fspmm_set_device(self.previous)
        return False
