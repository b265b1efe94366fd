"""SparseMatrix (one compressed weight blob on the host or a GPU), compress() and load()."""

import os
import weakref

import numpy as np

from . import _arrays, _native
from ._native import Error, check, ffi, lib

__all__ = ["SparseMatrix", "compress", "load", "FORMATS", "DTYPES"]

FORMATS = {"auto": lib.FSPMM_FORMAT_AUTO, "tiled_csl": lib.FSPMM_FORMAT_TILED_CSL, "bitmap": lib.FSPMM_FORMAT_BITMAP}
DTYPES = {"float16": lib.FSPMM_DTYPE_FLOAT16, "bfloat16": lib.FSPMM_DTYPE_BFLOAT16}
_FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def _format_code(name):
    if not isinstance(name, str):
        raise TypeError(f"format must be a string ('auto', 'bitmap' or 'tiled_csl'), got {type(name).__qualname__}")
    key = name.lower().replace("-", "_")
    if key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of 'auto', 'bitmap', 'tiled_csl'")
    return FORMATS[key]


def _parse_device(device):
    """'cpu' -> None; 'cuda' / 'cuda:N' / N / torch.device -> N (checked against the visible devices)."""
    if hasattr(device, "type") and hasattr(device, "index"):  # torch.device and look-alikes
        device = str(device)
    if isinstance(device, bool):
        raise TypeError("device must be 'cpu', 'cuda', 'cuda:N' or an int")
    if isinstance(device, int):
        index = device
    elif isinstance(device, str):
        text = device.strip().lower()
        if text == "cpu":
            return None
        if text == "cuda":
            index = None
        elif text.startswith("cuda:") and text[5:].isdigit():
            index = int(text[5:])
        else:
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or an int; got {device!r}")
    else:
        raise TypeError(f"device must be 'cpu', 'cuda', 'cuda:N' or an int; got {type(device).__qualname__}")
    count = _native.device_count()
    if count == 0:
        raise Error(lib.FSPMM_ERR_NO_DEVICE,
                    "no CUDA device is available to flashspmm (fspmm_device_count() == 0); keep the matrix "
                    "on the CPU or run on a machine with an NVIDIA GPU and driver")
    if index is None:
        index = _native.get_device()
    if not 0 <= index < count:
        raise ValueError(f"device cuda:{index} does not exist; {count} CUDA device(s) are visible")
    return index


def _addr(array):
    return array.__array_interface__["data"][0]


class SparseMatrix:
    """A compressed sparse weight matrix W [M, K] (PyTorch ``nn.Linear`` layout), on the host or a GPU.

    The matrix is one self-describing blob (header, tile offsets, tile data; see docs/FORMATS.md).
    Create one with :func:`compress` or :func:`load` (or :meth:`from_blob`); multiply with
    :func:`flashspmm.linear`. A host copy of the 128-byte header is kept for device matrices too, so
    launches never read device memory on the host.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("create a SparseMatrix with flashspmm.compress(), flashspmm.load() or SparseMatrix.from_blob()")

    @classmethod
    def _new(cls, header, host_blob=None, device_ptr=None, device_index=None, owner=None, origin=None):
        self = object.__new__(cls)
        self._header = header            # cdata "fspmm_header_t *" (host memory, owned)
        self._host = host_blob           # read-only numpy uint8 array, or None for a device matrix
        self._ptr = device_ptr           # device address (int), or None for a host matrix
        self._device_index = device_index
        self._owner = owner              # framework array holding the device blob, or None
        self._origin = origin            # _arrays.Origin of the dense matrix compressed, or None
        if device_ptr and owner is None:  # memory from fspmm_device_malloc
            fin = weakref.finalize(self, _arrays.free_device, device_ptr, device_index)
            fin.atexit = False           # at interpreter exit the CUDA context goes away by itself
        return self

    # ---- construction --------------------------------------------------------------------------------

    @classmethod
    def _from_validated_host(cls, blob):
        """Validate a host blob (numpy uint8) and wrap it as a host matrix."""
        header = ffi.new("fspmm_header_t *")
        check(lib.fspmm_validate_host(_native.as_ptr(_addr(blob)), blob.size, header))
        blob = blob[: int(header.total_bytes)]
        blob.flags.writeable = False
        return cls._new(header, host_blob=blob)

    @classmethod
    def from_blob(cls, data, *, device="cpu"):
        """Wrap a blob given as bytes-like data (bytes, bytearray, memoryview, numpy uint8 array).

        The data is copied and validated (:class:`flashspmm.Error` with ``FSPMM_ERR_CORRUPT_BUFFER`` for a
        truncated or corrupted blob), then placed on ``device``.
        """
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8:
                raise TypeError(f"a blob array must have dtype uint8, got {data.dtype}")
            blob = np.array(data, copy=True).reshape(-1)
        else:
            try:
                blob = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8).copy()
            except TypeError:
                raise TypeError(f"blob data must be bytes-like or a uint8 numpy array, got {type(data).__qualname__}") from None
        return cls._from_validated_host(blob).to(device)

    # ---- properties ----------------------------------------------------------------------------------

    @property
    def shape(self):
        """(M, K): out features x in features."""
        return (int(self._header.M), int(self._header.K))

    @property
    def dtype(self):
        """"float16" or "bfloat16"."""
        return _DTYPE_NAMES[int(self._header.dtype)]

    @property
    def format(self):
        """"bitmap" or "tiled_csl"."""
        return _FORMAT_NAMES[int(self._header.format)]

    @property
    def nnz(self):
        """Number of stored nonzeros (NaN and ±Inf count; ±0.0 does not)."""
        return int(self._header.nnz)

    @property
    def nbytes(self):
        """Size of the blob in bytes (header included)."""
        return int(self._header.total_bytes)

    @property
    def density(self):
        """nnz / (M * K)."""
        m, k = self.shape
        return self.nnz / (m * k)

    @property
    def compression_ratio(self):
        """Dense bytes (2 per element) / blob bytes."""
        m, k = self.shape
        return 2.0 * m * k / self.nbytes

    @property
    def device(self):
        """"cpu" or "cuda:N"."""
        return "cpu" if self._ptr is None else f"cuda:{self._device_index}"

    @property
    def header(self):
        """The host copy of the blob header (a cffi ``fspmm_header_t *``; treat it as read-only)."""
        return self._header

    @property
    def data_ptr(self):
        """Address of the blob: device memory for a CUDA matrix, host memory for a CPU one."""
        return self._ptr if self._ptr is not None else _addr(self._host)

    # ---- conversion ----------------------------------------------------------------------------------

    def blob(self):
        """The blob's bytes, in host memory, as a read-only numpy uint8 array (copied from a GPU if needed)."""
        if self._host is not None:
            return self._host
        out = np.empty(self.nbytes, dtype=np.uint8)
        with _native.on_device(self._device_index):
            check(lib.fspmm_memcpy(_native.as_ptr(_addr(out)), ffi.cast("void *", self._ptr), self.nbytes,
                                   lib.FSPMM_COPY_DEVICE_TO_HOST, ffi.NULL))
        out.flags.writeable = False
        return out

    def to_dense(self, *, raw=False):
        """Decompress to a dense matrix [M, K].

        A device matrix compressed from a GPU array (torch, cupy, JAX, ...) is decompressed on the GPU and
        comes back in that array's framework, on its device and current stream (cupy, which has no bfloat16,
        gets the bit patterns as uint16). Other matrices give a numpy array on the host: float16, or
        ml_dtypes.bfloat16 (needs ml_dtypes). With ``raw=True`` the result is always the uint16 bit patterns
        in a host numpy array. Entries that were -0.0 come back as +0.0; every other value, NaN payloads
        included, comes back bit for bit.
        """
        m, k = self.shape
        if self._ptr is not None and self._origin is not None and not raw:
            origin = self._origin
            dense = origin.empty((m, k), self.dtype)
            with _native.on_device(self._device_index):
                check(lib.fspmm_decompress(self._header, ffi.cast("void *", self._ptr),
                                           _native.as_ptr(_arrays.describe(dense, "dense").ptr), k,
                                           _native.as_ptr(origin.stream())))
            return origin.wrap(dense)
        dtype = np.dtype(np.uint16) if raw else _arrays.numpy_dtype(self.dtype)
        blob = self.blob()
        dense = np.empty((m, k), dtype=dtype)
        check(lib.fspmm_decompress_host(_native.as_ptr(_addr(blob)), blob.size, _native.as_ptr(_addr(dense)), k))
        return dense

    def save(self, file):
        """Write the blob bytes exactly (a path or a binary file object); works for device matrices too."""
        data = self.blob()
        if hasattr(file, "write"):
            file.write(data.tobytes())
            return
        with open(os.fspath(file), "wb") as f:
            f.write(data.tobytes())

    def to(self, device):
        """This matrix on ``device`` ("cpu", "cuda", "cuda:N" or an int); ``self`` if it is already there.

        A blob is validated on the host (fspmm_validate_host) before it is uploaded.
        """
        index = _parse_device(device)
        if index is None:
            if self._host is not None:
                return self
            return SparseMatrix._from_validated_host(np.array(self.blob()))
        if self._ptr is not None and self._device_index == index:
            return self
        host = self.blob()
        header = ffi.new("fspmm_header_t *")
        check(lib.fspmm_validate_host(_native.as_ptr(_addr(host)), host.size, header))
        p = ffi.new("void **")
        with _native.on_device(index):
            check(lib.fspmm_device_malloc(p, self.nbytes))
            ptr = int(ffi.cast("uintptr_t", p[0]))
            status = lib.fspmm_memcpy(p[0], _native.as_ptr(_addr(host)), self.nbytes,
                                      lib.FSPMM_COPY_HOST_TO_DEVICE, ffi.NULL)
            if status != lib.FSPMM_OK:
                err = Error(status, _native.last_error())
                lib.fspmm_device_free(p[0])
                raise err
        return SparseMatrix._new(header, device_ptr=ptr, device_index=index)

    def cpu(self):
        """Shorthand for ``to("cpu")``."""
        return self.to("cpu")

    def cuda(self, device=None):
        """Shorthand for ``to("cuda")`` / ``to(device)``."""
        return self.to("cuda" if device is None else device)

    def __reduce__(self):
        # pickle as the blob's bytes plus the device; unpickling validates the blob again
        return (_rebuild, (self.blob().tobytes(), self.device))

    def __repr__(self):
        m, k = self.shape
        return (f"SparseMatrix(shape=({m}, {k}), dtype={self.dtype}, format={self.format}, nnz={self.nnz}, "
                f"density={self.density:.4f}, nbytes={self.nbytes}, device={self.device})")


def _rebuild(data, device):
    return SparseMatrix.from_blob(data, device=device)


def _compress_host(ptr, m, k, ld, dtype_code, format_code):
    size = ffi.new("size_t *")
    chosen = ffi.new("fspmm_format_t *")
    src = _native.as_ptr(ptr)
    check(lib.fspmm_compress_size_host(src, m, k, ld, dtype_code, format_code, size, chosen))
    blob = np.empty(int(size[0]), dtype=np.uint8)
    written = ffi.new("size_t *")
    check(lib.fspmm_compress_host(src, m, k, ld, dtype_code, int(chosen[0]), _native.as_ptr(_addr(blob)),
                                  blob.size, written))
    blob = blob[: int(written[0])]
    header = ffi.new("fspmm_header_t *")
    check(lib.fspmm_header_read(_native.as_ptr(_addr(blob)), blob.size, header))
    blob.flags.writeable = False
    return SparseMatrix._new(header, host_blob=blob)


def _compress_device(info, m, k, ld, dtype_code, format_code):
    """Compress a device matrix on its GPU; the blob is allocated by the matrix's framework."""
    origin = _arrays.Origin.of(info)
    stream = _native.as_ptr(info.stream or 0)
    src = _native.as_ptr(info.ptr)
    with _native.on_device(info.device_index):
        ws_bytes = ffi.new("size_t *")
        check(lib.fspmm_compress_workspace_size(m, k, ws_bytes))
        ws, ws_addr = _arrays.workspace(info, int(ws_bytes[0]), info.stream or 0)
        ws_ptr = _native.as_ptr(ws_addr)
        check(lib.fspmm_compress_count(src, m, k, ld, dtype_code, ws_ptr, ws_bytes[0], stream))
        size = ffi.new("size_t *")
        chosen = ffi.new("fspmm_format_t *")
        check(lib.fspmm_compress_size(ws_ptr, ws_bytes[0], format_code, size, chosen, stream))
        blob = origin.empty((int(size[0]),), "uint8")
        blob_ptr = _arrays.describe(blob, "blob").ptr
        check(lib.fspmm_compress(src, m, k, ld, dtype_code, chosen[0], ws_ptr, ws_bytes[0], _native.as_ptr(blob_ptr),
                                 size[0], stream))
        # waits for the write and reports a refused one (the matrix changed meanwhile)
        check(lib.fspmm_compress_size(ws_ptr, ws_bytes[0], chosen[0], size, ffi.NULL, stream))
        head = np.empty(128, dtype=np.uint8)
        check(lib.fspmm_memcpy(_native.as_ptr(_addr(head)), _native.as_ptr(blob_ptr), head.size,
                               lib.FSPMM_COPY_DEVICE_TO_HOST, stream))
    header = ffi.new("fspmm_header_t *")
    check(lib.fspmm_header_read(_native.as_ptr(_addr(head)), head.size, header))
    del ws  # freed by its framework, ordered after the work on the stream
    return SparseMatrix._new(header, device_ptr=blob_ptr, device_index=info.device_index, owner=blob, origin=origin)


def compress(w, *, format="auto", dtype=None):
    """Compress a dense weight matrix W [M, K] into a :class:`SparseMatrix`.

    Args:
        w: 2-D float16 or bfloat16 array: numpy (bfloat16 through ml_dtypes), a torch tensor, a cupy array
            or any ``__cuda_array_interface__`` object. Rows may have any stride (a leading dimension >= K);
            the last dimension must have unit stride. A uint16/int16 array is accepted as raw bit patterns
            when ``dtype`` says which type they hold.
        format: "auto" (the smaller blob), "bitmap" or "tiled_csl".
        dtype: None (from the array) or "float16" / "bfloat16" for raw 16-bit arrays.

    Returns:
        a SparseMatrix on the array's device. A device array is compressed on its GPU (the same bytes as
        the CPU encoder), on its framework's current stream, into memory allocated by its framework; the
        call waits for that stream once, to learn the blob size.
    """
    format_code = _format_code(format)
    if isinstance(w, SparseMatrix):
        raise TypeError("w is already a SparseMatrix")
    info = _arrays.describe(w, "w")
    if info.dtype in ("float16", "bfloat16"):
        if dtype is not None and dtype != info.dtype:
            raise TypeError(f"w has dtype {info.dtype} but dtype={dtype!r} was requested; convert w first")
        dtype_name = info.dtype
    elif info.dtype in ("uint16", "int16") and dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float16' or 'bfloat16', got {dtype!r}")
        dtype_name = dtype
    else:
        hint = "w.astype(np.float16)" if info.framework == "numpy" else "w.half() / w.astype(float16)"
        raise TypeError(
            f"w has dtype {info.dtype}; flashspmm compresses float16 or bfloat16 weights: convert first, "
            f"e.g. {hint}")
    if info.ndim != 2:
        raise ValueError(f"w must be a 2-D matrix [M, K] (out features x in features), got shape {info.shape}")
    if info.shape[0] == 0 or info.shape[1] == 0:
        raise ValueError(f"w must not be empty, got shape {info.shape}")
    m, k, ld = _arrays.matrix_view(info, "w")
    if info.is_cuda:
        return _compress_device(info, m, k, ld, DTYPES[dtype_name], format_code)
    return _compress_host(info.ptr, m, k, ld, DTYPES[dtype_name], format_code)


def load(path, *, device="cpu"):
    """Read a blob written by :meth:`SparseMatrix.save`, validate it and place it on ``device``.

    A truncated, corrupted or foreign file raises :class:`flashspmm.Error` (``FSPMM_ERR_CORRUPT_BUFFER``).
    """
    with open(os.fspath(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        blob = np.empty(max(size, 1), dtype=np.uint8)
        got = f.readinto(memoryview(blob)[:size]) if size else 0
    return SparseMatrix._from_validated_host(blob[:got]).to(device)
