"""SparseMatrix (one compressed weight blob on the host or a GPU, behind a validated C handle), compress() and
load()."""

from __future__ import annotations

import dataclasses
import numbers
import os
import threading
import weakref
from typing import BinaryIO

import numpy as np

from . import _arrays, _native
from ._arrays import ArrayLike, DeviceLike, DTypeLike
from ._native import Error, check, ffi, lib

__all__ = ["SparseMatrix", "BlobHeader", "compress", "load", "FORMATS", "DTYPES", "KERNELS", "DECODERS"]

FORMATS = {
    "auto": lib.FSPMM_FORMAT_AUTO,
    "auto_n8": lib.FSPMM_FORMAT_AUTO_N8,
    "auto_n1": lib.FSPMM_FORMAT_AUTO_N1,
    "bitmap": lib.FSPMM_FORMAT_BITMAP,
    "tiled_csl": lib.FSPMM_FORMAT_TILED_CSL,
    "smallest": lib.FSPMM_FORMAT_SMALLEST,
}
_AUTO_FORMATS = (lib.FSPMM_FORMAT_AUTO, lib.FSPMM_FORMAT_AUTO_N8, lib.FSPMM_FORMAT_AUTO_N1)
DTYPES = {"float16": lib.FSPMM_DTYPE_FLOAT16, "bfloat16": lib.FSPMM_DTYPE_BFLOAT16}
KERNELS = {
    "auto": lib.FSPMM_KERNEL_AUTO,
    "tensor_core": lib.FSPMM_KERNEL_TENSOR_CORE,
    "cuda_core": lib.FSPMM_KERNEL_CUDA_CORE,
    "streaming": lib.FSPMM_KERNEL_STREAMING,
}
DECODERS = {
    "auto": lib.FSPMM_DECODER_AUTO,
    "direct": lib.FSPMM_DECODER_DIRECT,
    "scatter": lib.FSPMM_DECODER_SCATTER,
    "rows": lib.FSPMM_DECODER_ROWS,
}
KERNEL_NAMES = {v: k for k, v in KERNELS.items()}
DECODER_NAMES = {v: k for k, v in DECODERS.items()}
_FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def _format_code(name):
    names = ", ".join(repr(k) for k in FORMATS)
    if not isinstance(name, str):
        raise TypeError(f"format must be a string ({names}), got {type(name).__qualname__}")
    key = name.lower().replace("-", "_")
    if key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; choose one of {names}")
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
        raise Error(
            lib.FSPMM_ERR_NO_DEVICE,
            "no CUDA device is available to flashspmm (fspmm_device_count() == 0); keep the matrix "
            "on the CPU or run on a machine with an NVIDIA GPU and driver",
        )
    if index is None:
        index = _native.get_device()
    if not 0 <= index < count:
        raise ValueError(f"device cuda:{index} does not exist; {count} CUDA device(s) are visible")
    return index


def _addr(array):
    return array.__array_interface__["data"][0]


@dataclasses.dataclass(frozen=True)
class BlobHeader:
    """The 128-byte blob header as the library validated it (read-only; docs/FORMATS.md names the fields)."""

    magic: int
    version: int
    format: int
    dtype: int
    M: int
    K: int
    nnz: int
    tile_m: int
    tile_k: int
    tiles_m: int
    tiles_k: int
    offsets_offset: int
    offsets_bytes: int
    data_offset: int
    data_bytes: int
    total_bytes: int
    payload_checksum: int
    max_tile_bytes: int
    header_checksum: int

    @classmethod
    def _of(cls, h):
        return cls(**{f.name: int(getattr(h, f.name)) for f in dataclasses.fields(cls)})


def _new_handle(create, *args):
    """Call a ``fspmm_matrix_create_*`` function; the handle is destroyed when the cdata is collected."""
    out = ffi.new("fspmm_matrix_t *")
    check(create(*args, out))
    return ffi.gc(out[0], lib.fspmm_matrix_destroy)


def _handle_header(handle):
    h = ffi.new("fspmm_header_t *")
    check(lib.fspmm_matrix_header(handle, h))
    return BlobHeader._of(h)


def _sync_streams(streams, device_index):
    """Wait for the side streams a device blob was read on before its memory goes back to its allocator."""
    try:
        with _native.on_device(device_index):
            for s in streams:
                lib.fspmm_stream_synchronize(ffi.cast("void *", s))
    except Exception:  # never raise from a finalizer
        pass


# Workspaces up to this size are kept per plan by the torch fast path on the default stream (a launch needs no
# particular contents, its split-K counters being tagged per launch): one allocation less per call where the
# host cost matters most, small matrices; larger ones take a fresh workspace from the caching allocator per
# call, shared by all matrices.
_KEEP_WORKSPACE_BYTES = 256 << 10


class _PlanEntry:
    """One cached launch configuration: the C plan (kept alive here), its address, this N's workspace bytes, and
    whether that workspace is small enough to be kept per plan for the default stream (``keep``)."""

    __slots__ = ("plan", "address", "workspace", "info", "keep")

    def __init__(self, plan, n):
        self.plan = plan
        self.address = int(ffi.cast("uintptr_t", plan))
        info = ffi.new("fspmm_plan_info_t *")
        check(lib.fspmm_plan_info(plan, n, info))
        self.workspace = int(info.workspace_bytes)
        self.info = info
        self.keep = 0 < self.workspace <= _KEEP_WORKSPACE_BYTES


def _create_plan(handle, max_n, split_k, kernel, decoder, flags=0):
    options = ffi.new("fspmm_linear_options_t *")
    check(lib.fspmm_linear_options_init(options))
    options.split_k = split_k
    options.kernel = kernel
    options.decoder = decoder
    options.flags = flags
    out = ffi.new("fspmm_plan_t *")
    check(lib.fspmm_plan_create(handle, max_n, options, out))
    return ffi.gc(out[0], lib.fspmm_plan_destroy)


class SparseMatrix:
    """A compressed sparse weight matrix W [M, K] (PyTorch ``nn.Linear`` layout), on the host or a GPU.

    The matrix is one self-describing blob (header, tile offsets, tile data; see docs/FORMATS.md) behind a C
    handle that validated it once and keeps the header privately. Create one with :func:`compress`,
    :func:`load`, :meth:`from_blob` or :meth:`from_array`; multiply with :func:`flashspmm.linear`, which
    caches a launch plan per N on the matrix.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError(
            "create a SparseMatrix with flashspmm.compress(), flashspmm.load(), "
            "SparseMatrix.from_blob() or SparseMatrix.from_array()"
        )

    @classmethod
    def _new(
        cls, handle, *, host_blob=None, device_ptr=None, device_index=None, owner=None, origin=None, free_on_exit=False
    ):
        self = object.__new__(cls)
        self._handle = handle  # cdata fspmm_matrix_t (destroyed with it)
        self._meta = _handle_header(handle)
        self._host = host_blob  # numpy uint8 array, or None for a device matrix
        self._ptr = device_ptr  # device address (int), or None for a host matrix
        self._device_index = device_index
        self._owner = owner  # array holding the device blob (torch, cupy, DeviceBuffer, ...)
        self._origin = origin  # _arrays.Origin of the dense matrix compressed, or None
        self._plans = {}  # (max_n, split_k, kernel, decoder) -> cdata fspmm_plan_t
        self._entries = {}  # (N, split_k, kernel, decoder) -> _PlanEntry
        self._kept = {}  # plan address -> workspace tensor kept for the default stream
        self._lock = threading.Lock()
        self._side_streams = set()  # streams other than the owner's that read the blob (non-torch owners)
        self._torch_dtype = None
        if device_ptr and owner is None:  # memory from fspmm_device_malloc
            fin = weakref.finalize(self, _arrays.free_device, device_ptr, device_index)
            fin.atexit = False
        elif device_ptr and _arrays.framework_of(owner) != "torch":
            fin = weakref.finalize(self, _sync_streams, self._side_streams, device_index)
            fin.atexit = False
        return self

    # ---- construction --------------------------------------------------------------------------------

    @classmethod
    def _from_validated_host(cls, blob):
        """Validate a host blob (a numpy uint8 array flashspmm owns) and wrap it as a host matrix."""
        header = ffi.new("fspmm_header_t *")
        if lib.fspmm_header_read(_native.as_ptr(_addr(blob)), blob.size, header) == lib.FSPMM_OK:
            blob = blob[: min(blob.size, int(header.total_bytes))]  # the handle points at exactly the blob kept
        blob.flags.writeable = False
        handle = _new_handle(lib.fspmm_matrix_create_host, _native.as_ptr(_addr(blob)), blob.size)
        return cls._new(handle, host_blob=blob)

    @classmethod
    def _from_device(cls, ptr, nbytes, device_index, owner, origin=None, stream=0):
        """Wrap a blob already in device memory (its prefix is validated)."""
        with _native.on_device(device_index):
            handle = _new_handle(lib.fspmm_matrix_create_device, _native.as_ptr(ptr), nbytes, _native.as_ptr(stream))
        return cls._new(handle, device_ptr=ptr, device_index=device_index, owner=owner, origin=origin)

    @classmethod
    def from_blob(
        cls, data: bytes | bytearray | memoryview | np.ndarray, *, device: DeviceLike = "cpu"
    ) -> SparseMatrix:
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
                raise TypeError(
                    f"blob data must be bytes-like or a uint8 numpy array, got {type(data).__qualname__}"
                ) from None
        return cls._from_validated_host(blob).to(device)

    @classmethod
    def from_array(cls, blob: ArrayLike) -> SparseMatrix:
        """Wrap a 1-D uint8 array that holds a blob, without a copy, keeping a reference to it.

        A host array (numpy, torch CPU tensor, ...) is validated in full; a CUDA array (torch, cupy, any
        ``__cuda_array_interface__`` or DLPack object) has its header and tile offset table validated (the one
        host synchronisation, on its framework's current stream), which is what the kernels rely on to stay
        inside the blob. The array must not be changed while the matrix is used.
        """
        if isinstance(blob, SparseMatrix):
            raise TypeError("blob is already a SparseMatrix")
        info = _arrays.describe(blob, "blob")
        if info.dtype != "uint8" or info.ndim != 1:
            raise TypeError(f"blob must be a 1-D uint8 array, got dtype {info.dtype} and shape {info.shape}")
        if info.shape[0] > 1 and info.strides[0] != 1:
            raise ValueError(f"blob must be contiguous; use {info.contiguous_hint()}")
        if not info.is_cuda:
            host = _arrays.host_uint8_view(info)
            handle = _new_handle(lib.fspmm_matrix_create_host, _native.as_ptr(info.ptr), info.shape[0])
            matrix = cls._new(handle, host_blob=host)
            matrix._owner = blob
            return matrix
        return cls._from_device(
            info.ptr,
            info.shape[0],
            info.device_index,
            owner=blob,
            origin=_arrays.Origin.of(info),
            stream=info.stream or 0,
        )

    # ---- properties ----------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """(M, K): out features x in features."""
        return (self._meta.M, self._meta.K)

    @property
    def dtype(self) -> str:
        """ "float16" or "bfloat16"."""
        return _DTYPE_NAMES[self._meta.dtype]

    @property
    def format(self) -> str:
        """ "bitmap" or "tiled_csl"."""
        return _FORMAT_NAMES[self._meta.format]

    @property
    def nnz(self) -> int:
        """Number of stored nonzeros (NaN and ±Inf count; ±0.0 does not)."""
        return self._meta.nnz

    @property
    def nbytes(self) -> int:
        """Size of the blob in bytes (header included)."""
        return self._meta.total_bytes

    @property
    def density(self) -> float:
        """nnz / (M * K)."""
        m, k = self.shape
        return self.nnz / (m * k)

    @property
    def compression_ratio(self) -> float:
        """Dense bytes (2 per element) / blob bytes."""
        m, k = self.shape
        return 2.0 * m * k / self.nbytes

    @property
    def device(self) -> str:
        """ "cpu" or "cuda:N"."""
        return "cpu" if self._ptr is None else f"cuda:{self._device_index}"

    @property
    def header(self) -> BlobHeader:
        """The blob header as the library validated it (a frozen copy: the matrix's own header cannot be edited)."""
        return self._meta

    @property
    def data_ptr(self) -> int:
        """Address of the blob: device memory for a CUDA matrix, host memory for a CPU one."""
        return self._ptr if self._ptr is not None else _addr(self._host)

    @property
    def blob_array(self) -> ArrayLike:
        """The array holding the blob: read-only numpy for a host matrix; for a device matrix the array it was
        allocated as (a torch tensor or cupy array when compressed from one, the array given to
        :meth:`from_array`, or a :class:`flashspmm.DeviceBuffer`)."""
        if self._ptr is None:
            return self._host
        if self._owner is not None:
            return self._owner
        return _arrays.DeviceBuffer((self.nbytes,), "uint8", self._device_index, _base=self, _ptr=self._ptr)

    # ---- plans ---------------------------------------------------------------------------------------

    def _entry(self, n, split_k, kernel, decoder):
        """The cached plan entry for N tokens (created on first use; plans serve N up to a power of two)."""
        key = (n, split_k, kernel, decoder)
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        max_n = 64
        while max_n < n:
            max_n *= 2
        with self._lock:
            pkey = (max_n, split_k, kernel, decoder)
            plan = self._plans.get(pkey)
            if plan is None:
                plan = self._plans[pkey] = _create_plan(self._handle, max_n, split_k, kernel, decoder)
            entry = _PlanEntry(plan, n)
            self._entries[key] = entry
        return entry

    def plan_info(self, n: int = 1, *, split_k: int = 0, kernel: str = "auto", decoder: str = "auto") -> dict:
        """What :func:`flashspmm.linear` launches for ``n`` tokens with these options (device matrices only):
        ``{"kernel", "decoder", "n_tile", "split_k", "grid", "shared_memory_bytes", "workspace_bytes"}``."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive int (the number of tokens), got {n!r}")
        split_k = _split_count(split_k)
        if self._ptr is None:
            raise ValueError("plans are made for device matrices: use W.to('cuda') first")
        entry = self._entry(int(n), split_k, _choice(kernel, KERNELS, "kernel"), _choice(decoder, DECODERS, "decoder"))
        i = entry.info
        return {
            "kernel": KERNEL_NAMES[int(i.kernel)],
            "decoder": DECODER_NAMES[int(i.decoder)],
            "n_tile": int(i.n_tile),
            "split_k": int(i.split_k),
            "grid": (int(i.grid_x), int(i.grid_y), int(i.grid_z)),
            "shared_memory_bytes": int(i.shared_memory_bytes),
            "workspace_bytes": int(i.workspace_bytes),
        }

    # ---- conversion ----------------------------------------------------------------------------------

    def blob(self) -> np.ndarray:
        """The blob's bytes, in host memory, as a read-only numpy uint8 array (copied from a GPU if needed)."""
        if self._host is not None:
            return self._host
        out = np.empty(self.nbytes, dtype=np.uint8)
        with _native.on_device(self._device_index):
            check(
                lib.fspmm_memcpy(
                    _native.as_ptr(_addr(out)),
                    ffi.cast("void *", self._ptr),
                    self.nbytes,
                    lib.FSPMM_COPY_DEVICE_TO_HOST,
                    ffi.NULL,
                )
            )
        out.flags.writeable = False
        return out

    def to_dense(self, *, raw: bool = False) -> ArrayLike:
        """Decompress to a dense matrix [M, K].

        A device matrix compressed from a GPU array (torch, cupy, JAX, ...) is decompressed on the GPU and
        comes back in that array's framework, on its device and current stream (cupy, which has no bfloat16,
        gets the bit patterns as uint16; a JAX result is made ready for JAX first). Other matrices give a numpy
        array on the host: float16, or ml_dtypes.bfloat16 (needs ml_dtypes). With ``raw=True`` the result is
        always the uint16 bit patterns in a host numpy array. Entries that were -0.0 come back as +0.0; every
        other value, NaN payloads included, comes back bit for bit.
        """
        m, k = self.shape
        if self._ptr is not None and self._origin is not None and not raw:
            origin = self._origin
            dense = origin.empty((m, k), self.dtype)
            stream = origin.stream()
            with _native.on_device(self._device_index):
                check(
                    lib.fspmm_decompress(
                        self._handle,
                        _native.as_ptr(_arrays.describe(dense, "dense").ptr),
                        m,
                        k,
                        k,
                        _native.as_ptr(stream),
                    )
                )
            self._read_on(stream)
            return origin.wrap(dense, stream)
        dtype = np.dtype(np.uint16) if raw else _arrays.numpy_dtype(self.dtype)
        host = self if self._host is not None else SparseMatrix._from_validated_host(np.array(self.blob()))
        dense = np.empty((m, k), dtype=dtype)
        check(lib.fspmm_decompress_host(host._handle, _native.as_ptr(_addr(dense)), m, k, k))
        return dense

    def _read_on(self, stream: int) -> None:
        """Keep the blob's memory from being reused before work queued on ``stream`` has read it."""
        if self._owner is None:
            return
        if not _arrays.record_use(self._owner, stream):  # its allocator cannot order the reuse: wait when freed
            self._side_streams.add(stream)

    def save(self, file: str | os.PathLike | BinaryIO) -> None:
        """Write the blob bytes exactly (a path or a binary file object); works for device matrices too."""
        data = self.blob()
        if hasattr(file, "write"):
            file.write(data.tobytes())
            return
        with open(os.fspath(file), "wb") as f:
            f.write(data.tobytes())

    def to(self, device: DeviceLike) -> SparseMatrix:
        """This matrix on ``device`` ("cpu", "cuda", "cuda:N" or an int); ``self`` if it is already there.

        A blob is validated on the host before it is uploaded.
        """
        index = _parse_device(device)
        if index is None:
            if self._host is not None:
                return self
            return SparseMatrix._from_validated_host(np.array(self.blob()))
        if self._ptr is not None and self._device_index == index:
            return self
        host = self if self._host is not None else SparseMatrix._from_validated_host(np.array(self.blob()))
        blob = host._host
        p = ffi.new("void **")
        with _native.on_device(index):
            check(lib.fspmm_device_malloc(p, self.nbytes))
            ptr = int(ffi.cast("uintptr_t", p[0]))
            try:
                check(
                    lib.fspmm_memcpy(
                        p[0], _native.as_ptr(_addr(blob)), self.nbytes, lib.FSPMM_COPY_HOST_TO_DEVICE, ffi.NULL
                    )
                )
                handle = _new_handle(lib.fspmm_matrix_create_device, p[0], self.nbytes, ffi.NULL)
            except BaseException:
                lib.fspmm_device_free(p[0])
                raise
        return SparseMatrix._new(handle, device_ptr=ptr, device_index=index)

    def cpu(self) -> SparseMatrix:
        """Shorthand for ``to("cpu")``."""
        return self.to("cpu")

    def cuda(self, device: DeviceLike | None = None) -> SparseMatrix:
        """Shorthand for ``to("cuda")`` / ``to(device)``."""
        return self.to("cuda" if device is None else device)

    def __reduce__(self):
        # pickle as the blob's bytes plus the device; unpickling validates the blob again
        return (_rebuild, (self.blob().tobytes(), self.device))

    def __repr__(self) -> str:
        m, k = self.shape
        return (
            f"SparseMatrix(shape=({m}, {k}), dtype={self.dtype}, format={self.format}, nnz={self.nnz}, "
            f"density={self.density:.4f}, nbytes={self.nbytes}, device={self.device})"
        )


def _choice(value, table, what):
    """The C enum value of a string option (kernel=, decoder=)."""
    try:
        return table[value]
    except (KeyError, TypeError):
        if not isinstance(value, str):
            raise TypeError(
                f"{what} must be a string, one of {sorted(table)}; got {type(value).__qualname__}"
            ) from None
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(table)}") from None


def _split_count(split_k):
    """split_k= as an int: 0 (automatic) or a number of K slices; a launch has at most 65535 (the grid's y
    dimension), and more slices than K tiles run as one per K tile."""
    if isinstance(split_k, bool) or not isinstance(split_k, numbers.Integral):
        raise TypeError(f"split_k must be an int, got {type(split_k).__qualname__}")
    if not 0 <= split_k <= 65535:
        raise ValueError(f"split_k must be 0 (automatic) or a number of K slices up to 65535, got {split_k}")
    return int(split_k)


def _rebuild(data, device):
    return SparseMatrix.from_blob(data, device=device)


def _compress_host(ptr, m, k, ld, dtype_code, format_code):
    size = ffi.new("size_t *")
    chosen = ffi.new("fspmm_format_t *")
    src = _native.as_ptr(ptr)
    check(lib.fspmm_compress_size_host(src, m, k, ld, dtype_code, format_code, size, chosen))
    blob = np.empty(int(size[0]), dtype=np.uint8)
    written = ffi.new("size_t *")
    check(
        lib.fspmm_compress_host(
            src, m, k, ld, dtype_code, int(chosen[0]), _native.as_ptr(_addr(blob)), blob.size, written
        )
    )
    blob = blob[: int(written[0])]
    blob.flags.writeable = False
    return SparseMatrix._new(
        _new_handle(lib.fspmm_matrix_create_host, _native.as_ptr(_addr(blob)), blob.size), host_blob=blob
    )


def _compress_device(info, m, k, ld, dtype_code, format_code):
    """Compress a device matrix on its GPU; the blob is allocated by the matrix's framework."""
    origin = _arrays.Origin.of(info)
    stream_int = info.stream or 0
    stream = _native.as_ptr(stream_int)
    src = _native.as_ptr(info.ptr)
    with _native.on_device(info.device_index):
        ws_bytes = ffi.new("size_t *")
        check(lib.fspmm_compress_workspace_size(m, k, ws_bytes))
        ws, ws_addr = _arrays.workspace(info, int(ws_bytes[0]), stream_int)
        ws_ptr = _native.as_ptr(ws_addr)
        check(lib.fspmm_compress_count(src, m, k, ld, dtype_code, ws_ptr, ws_bytes[0], stream))
        size = ffi.new("size_t *")
        chosen = ffi.new("fspmm_format_t *")
        check(lib.fspmm_compress_size(ws_ptr, ws_bytes[0], format_code, size, chosen, stream))
        blob = origin.empty((int(size[0]),), "uint8")
        blob_ptr = _arrays.describe(blob, "blob").ptr
        check(
            lib.fspmm_compress(
                src, m, k, ld, dtype_code, chosen[0], ws_ptr, ws_bytes[0], _native.as_ptr(blob_ptr), size[0], stream
            )
        )
        # waits for the write and reports a refused one (the matrix changed meanwhile)
        check(lib.fspmm_compress_size(ws_ptr, ws_bytes[0], chosen[0], size, ffi.NULL, stream))
    del ws  # freed by its framework, ordered after the work on the stream
    return SparseMatrix._from_device(
        blob_ptr, int(size[0]), info.device_index, owner=blob, origin=origin, stream=stream_int
    )


def _dtype_name(dtype: DTypeLike) -> str | None:
    """ "float16" / "bfloat16" from a string or a numpy / torch / JAX / ml_dtypes dtype; None for None."""
    if dtype is None:
        return None
    if isinstance(dtype, type):  # numpy / ml_dtypes scalar types (np.float16, ml_dtypes.bfloat16, jnp.bfloat16)
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            pass
    name = str(getattr(dtype, "name", dtype)).replace("torch.", "").lower()
    if name in ("float16", "half"):
        return "float16"
    if name == "bfloat16":
        return "bfloat16"
    raise ValueError(f"dtype must be float16 or bfloat16 (a string, or a numpy / torch / JAX dtype), got {dtype!r}")


def compress(w: ArrayLike, *, format: str = "auto", dtype: DTypeLike = None, prefer: str = "speed") -> SparseMatrix:
    """Compress a dense weight matrix W [M, K] into a :class:`SparseMatrix`.

    Args:
        w: 2-D float16 or bfloat16 array: numpy (bfloat16 through ml_dtypes), a torch tensor, a cupy array,
            a JAX array or any ``__cuda_array_interface__`` / DLPack object. Rows may have any stride (a
            leading dimension >= K); the last dimension must have unit stride. A uint16/int16 array is
            accepted as raw bit patterns when ``dtype`` says which type they hold.
        format: "auto" (the format predicted to multiply faster at decode sizes, N <= 16: Tiled-CSL below
            about 22 % density on matrices of more than 2048 rows, else bitmap; docs/FORMATS.md), "auto_n8" and
            "auto_n1" (the same for N <= 8 and for one token: Tiled-CSL below about 22 % and 27 % density),
            "smallest" (the smaller blob), "bitmap" or "tiled_csl".
        dtype: None (from the array) or float16 / bfloat16 (a string or a numpy / torch / JAX dtype) for raw
            16-bit arrays.
        prefer: what "auto" optimises: "speed" (the default) or "memory" (then any "auto" is "smallest").
            Ignored for the other formats.

    Returns:
        a SparseMatrix on the array's device. A device array is compressed on its GPU (the same bytes as
        the CPU encoder), on its framework's current stream, into memory allocated by its framework; the
        call waits for that stream once, to learn the blob size.
    """
    format_code = _format_code(format)
    if prefer not in ("speed", "memory"):
        raise ValueError(f"prefer must be 'speed' or 'memory', got {prefer!r}")
    if prefer == "memory" and format_code in _AUTO_FORMATS:
        format_code = lib.FSPMM_FORMAT_SMALLEST
    if isinstance(w, SparseMatrix):
        raise TypeError("w is already a SparseMatrix")
    dtype = _dtype_name(dtype)
    info = _arrays.describe(w, "w")
    if info.dtype in ("float16", "bfloat16"):
        if dtype is not None and dtype != info.dtype:
            raise TypeError(f"w has dtype {info.dtype} but dtype={dtype!r} was requested; convert w first")
        dtype_name = info.dtype
    elif info.dtype in ("uint16", "int16") and dtype is not None:
        dtype_name = dtype
    else:
        hint = "w.astype(np.float16)" if info.framework == "numpy" else "w.half() / w.astype(float16)"
        raise TypeError(
            f"w has dtype {info.dtype}; flashspmm compresses float16 or bfloat16 weights: convert first, e.g. {hint}"
        )
    if info.ndim != 2:
        raise ValueError(f"w must be a 2-D matrix [M, K] (out features x in features), got shape {info.shape}")
    if info.shape[0] == 0 or info.shape[1] == 0:
        raise ValueError(f"w must not be empty, got shape {info.shape}")
    m, k, ld = _arrays.matrix_view(info, "w")
    if info.is_cuda:
        return _compress_device(info, m, k, ld, DTYPES[dtype_name], format_code)
    return _compress_host(info.ptr, m, k, ld, DTYPES[dtype_name], format_code)


def _read_all(file):
    """The bytes of a path or a binary file object, as a numpy uint8 array."""
    if hasattr(file, "read"):
        data = file.read()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("the file object must be opened in binary mode ('rb')")
        return np.frombuffer(bytes(data), dtype=np.uint8).copy()
    with open(os.fspath(file), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        blob = np.empty(max(size, 1), dtype=np.uint8)
        got = f.readinto(memoryview(blob)[:size]) if size else 0
    return blob[:got]


def load(file: str | os.PathLike | BinaryIO, *, device: DeviceLike = "cpu") -> SparseMatrix:
    """Read a blob written by :meth:`SparseMatrix.save` (a path or a binary file object), validate it and
    place it on ``device``.

    A truncated, corrupted or foreign file raises :class:`flashspmm.Error` (``FSPMM_ERR_CORRUPT_BUFFER``); a
    model file (:func:`flashspmm.save_model`) is refused with a message naming :func:`flashspmm.load_model`.
    """
    blob = _read_all(file)
    from ._model import is_model_file  # _model imports this module

    if is_model_file(bytes(blob[:64])):
        name = getattr(file, "name", file)
        raise Error(
            lib.FSPMM_ERR_CORRUPT_BUFFER,
            f"{name} is a flashspmm model file (many matrices): read it with flashspmm.load_model()",
        )
    return SparseMatrix._from_validated_host(blob).to(device)
