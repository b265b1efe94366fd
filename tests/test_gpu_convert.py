"""GPU encoder and decoder against the CPU ones (marked `gpu`; skipped without a device).

The GPU encoder must write the CPU encoder's bytes exactly; the GPU decoder must give back the input
(-0.0 as +0.0). Inputs are fresh random matrices with NaN / Inf / subnormals / -0.0 sprinkled in, as torch or
cupy arrays (cupy's bfloat16 through flashspmm.from_pointer).
"""

import numpy as np
import pytest

import _format_reference as reference
import flashspmm
from _toolkit import (
    GPU_ARRAY_LIBS,
    NAN_BITS,
    assert_bits_equal,
    device_bytes,
    device_ptr,
    host_bits,
    host_bytes,
    is_nan_bits,
    on_device,
    require,
    sliced,
    sparse_bits,
    synchronize,
)
from flashspmm._native import ffi, lib

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1), (1, 300), (300, 1), (64, 64), (65, 63), (37, 301), (130, 70), (3000, 70), (5, 20000), (256, 1000)]
SPARSITIES = [0.0, 0.5, 0.7, 0.9, 0.99, 1.0]


def cpu_blob(bits, dtype, fmt):
    return flashspmm.compress(bits, format=fmt, dtype=dtype).blob()


def decompress_on_gpu(W, out_ptr, ld, stream=0):
    """The GPU decoder writing W into device memory at out_ptr (leading dimension ld), through the C API: the one
    place these tests call it directly."""
    M, K = W.shape
    return lib.fspmm_decompress(W._handle, ffi.cast("void *", out_ptr), M, K, ld, ffi.cast("void *", stream))


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_gpu_blob_equals_cpu_blob(rng, framework, dtype, shape, sparsity):
    m, k = shape
    bits, expected = sparse_bits(rng, m, k, dtype, sparsity)
    w = on_device(framework, bits, dtype)
    for fmt in ("auto", "smallest", "bitmap", "tiled_csl"):
        W = flashspmm.compress(w, format=fmt)
        assert W.device == "cuda:0"
        want = cpu_blob(bits, dtype, fmt)
        got = W.blob()
        assert got.size == want.size, fmt
        assert got.tobytes() == want.tobytes(), f"{fmt}: the GPU encoder's bytes differ from the CPU encoder's"
        if m * k <= 300 * 300:  # the document's reader agrees too
            assert_bits_equal(reference.decode(got.tobytes())[1], expected, f"{fmt}: FORMATS.md reader")
        dense = W.to_dense()
        if framework == "torch":
            torch = require("torch")
            assert isinstance(dense, torch.Tensor) and dense.is_cuda and dense.dtype == getattr(torch, dtype)
        synchronize()
        assert_bits_equal(host_bits(dense), expected, f"{fmt}: GPU decoder")


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_strided_and_unaligned_inputs(rng, fmt):
    """Row stride > K, and a start that is not 16-byte aligned (scalar load path)."""
    torch = require("torch")
    bits, _ = sparse_bits(rng, 150, 211, "float16", 0.6)
    want = bits.copy()
    want[want == 0x8000] = 0
    for col in (0, 1, 8):
        noise = rng.standard_normal((150, 300)).astype(np.float16).view(np.uint16)
        noise[:, col : col + 211] = bits
        wide = on_device("torch", noise)
        view = wide[:, col : col + 211]
        W = flashspmm.compress(view, format=fmt)
        assert W.blob().tobytes() == cpu_blob(bits, "float16", fmt).tobytes()
        out = torch.full((150, 300), float("nan"), dtype=torch.float16, device="cuda")
        status = decompress_on_gpu(W, out.data_ptr() + 2 * col, 300, torch.cuda.current_stream().cuda_stream)
        assert status == lib.FSPMM_OK, ffi.string(lib.fspmm_last_error()).decode()
        synchronize()
        assert_bits_equal(host_bits(out[:, col : col + 211]), want, "decoded into a strided view")
        around = host_bits(out)
        assert is_nan_bits(around[:, :col], "float16").all() and is_nan_bits(around[:, col + 211 :], "float16").all()


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
def test_cpu_blob_decoded_on_gpu(rng, framework):
    """A matrix moved to the GPU from a host blob decodes on the GPU through the C API too."""
    bits, expected = sparse_bits(rng, 200, 333, "bfloat16", 0.8)
    for fmt in ("bitmap", "tiled_csl"):
        W = flashspmm.compress(bits, format=fmt, dtype="bfloat16").to("cuda")
        out = on_device(framework, np.full((200, 333), NAN_BITS["bfloat16"], np.uint16), "bfloat16")
        synchronize()
        assert decompress_on_gpu(W, device_ptr(out), 333) == lib.FSPMM_OK
        synchronize()
        assert_bits_equal(host_bits(out), expected, f"{fmt}: GPU decoder")


@pytest.mark.parametrize("sparsity", [0.7, 0.75, 0.77, 0.8])
def test_gpu_encoder_resolves_every_auto_range(rng, sparsity):
    """The GPU encoder resolves "auto", "auto_n8" and "auto_n1" as the CPU encoder does, also between their
    crossovers (73-78 %: the three choices differ there)."""
    bits, expected = sparse_bits(rng, 3000, 256, "float16", sparsity)
    w = on_device("torch", bits, "float16")
    chosen = set()
    for fmt in ("auto", "auto_n8", "auto_n1"):
        W = flashspmm.compress(w, format=fmt)
        want = cpu_blob(bits, "float16", fmt)
        assert W.blob().tobytes() == want.tobytes(), f"{fmt}: the GPU encoder's bytes differ from the CPU encoder's"
        chosen.add(W.format)
        synchronize()
        assert_bits_equal(host_bits(W.to_dense()), expected, f"{fmt}: GPU decoder")
    if sparsity in (0.75, 0.77):
        assert chosen == {"bitmap", "tiled_csl"}


def test_cupy_round_trip(rng):
    cp = require("cupy")
    bits, expected = sparse_bits(rng, 129, 257, "float16", 0.7)
    w = cp.asarray(bits.view(np.float16))
    W = flashspmm.compress(w)
    assert W.blob().tobytes() == cpu_blob(bits, "float16", "auto").tobytes()
    dense = W.to_dense()
    assert isinstance(dense, cp.ndarray) and dense.dtype == np.float16
    assert_bits_equal(host_bits(dense), expected, "cupy to_dense")


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
def test_strided_cupy_or_torch_view(rng, framework):
    bits, expected = sparse_bits(rng, 90, 140, "bfloat16", 0.5)
    wide = np.zeros((90, 200), np.uint16)
    wide[:, 3:143] = bits
    view = sliced(on_device(framework, wide, "bfloat16"), (slice(None), slice(3, 143)))
    for fmt in ("bitmap", "tiled_csl"):
        W = flashspmm.compress(view, format=fmt)
        assert W.blob().tobytes() == cpu_blob(bits, "bfloat16", fmt).tobytes()
        synchronize()
        assert_bits_equal(host_bits(W.to_dense()), expected, fmt)


class Phases:
    """The three C phases on one device matrix (torch or cupy memory), for the refusal tests."""

    def __init__(self, framework, bits):
        self.framework = framework
        self.w = on_device(framework, bits, "float16")
        self.m, self.k = bits.shape
        n = ffi.new("size_t *")
        assert lib.fspmm_compress_workspace_size(self.m, self.k, n) == lib.FSPMM_OK
        self.ws = device_bytes(framework, np.zeros(int(n[0]), np.uint8))
        self.ws_bytes = int(n[0])
        self.stream = ffi.NULL  # both frameworks' default stream: the legacy one
        synchronize()

    def count(self):
        return lib.fspmm_compress_count(
            ffi.cast("void *", device_ptr(self.w)),
            self.m,
            self.k,
            self.k,
            lib.FSPMM_DTYPE_FLOAT16,
            ffi.cast("void *", device_ptr(self.ws)),
            self.ws_bytes,
            self.stream,
        )

    def size(self, fmt=lib.FSPMM_FORMAT_BITMAP):
        n = ffi.new("size_t *")
        status = lib.fspmm_compress_size(
            ffi.cast("void *", device_ptr(self.ws)), self.ws_bytes, fmt, n, ffi.NULL, self.stream
        )
        return status, int(n[0])

    def write(self, out, out_bytes, m=None, fmt=lib.FSPMM_FORMAT_BITMAP):
        return lib.fspmm_compress(
            ffi.cast("void *", device_ptr(self.w)),
            m or self.m,
            self.k,
            self.k,
            lib.FSPMM_DTYPE_FLOAT16,
            fmt,
            ffi.cast("void *", device_ptr(self.ws)),
            self.ws_bytes,
            ffi.cast("void *", device_ptr(out)),
            out_bytes,
            self.stream,
        )


def last_error():
    return ffi.string(lib.fspmm_last_error()).decode()


@pytest.mark.parametrize("framework", GPU_ARRAY_LIBS)
def test_refused_writes_leave_out_untouched(rng, framework):
    bits, _ = sparse_bits(rng, 100, 200, "float16", 0.5, specials=False)
    p = Phases(framework, bits)
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "no count" in last_error()  # never counted
    assert p.count() == lib.FSPMM_OK
    status, size = p.size()
    assert status == lib.FSPMM_OK and size == cpu_blob(bits, "float16", "bitmap").size
    out = device_bytes(framework, np.full(size, 0xA5, np.uint8))
    synchronize()
    # too small: nothing written, reported by the next size query
    assert p.write(out, size - 16) == lib.FSPMM_OK
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "out_bytes was smaller" in last_error()
    assert (host_bytes(out) == 0xA5).all()
    # different shape from the count phase: nothing written
    assert p.write(out, size, m=99) == lib.FSPMM_OK
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "differ" in last_error()
    assert (host_bytes(out) == 0xA5).all()
    # the matrix changed between the phases: no valid header
    changed = bits.copy()
    at = int(np.flatnonzero(changed.reshape(-1) == 0)[0])
    changed.reshape(-1)[at] = 0x3C00  # a zero becomes 1.0, in place in device memory
    one = np.array([0x3C00], np.uint16)
    assert (
        lib.fspmm_memcpy(
            ffi.cast("void *", device_ptr(p.w) + 2 * at),
            ffi.cast("void *", one.ctypes.data),
            2,
            lib.FSPMM_COPY_HOST_TO_DEVICE,
            ffi.NULL,
        )
        == lib.FSPMM_OK
    )
    assert p.write(out, size) == lib.FSPMM_OK
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "changed" in last_error()
    assert (host_bytes(out)[:128] == 0xA5).all()
    # counted again: a good blob
    assert p.count() == lib.FSPMM_OK
    status, size = p.size()
    out = device_bytes(framework, np.zeros(size, np.uint8))
    synchronize()
    assert p.write(out, size) == lib.FSPMM_OK and p.size()[0] == lib.FSPMM_OK
    host = host_bytes(out)
    assert lib.fspmm_validate_host(ffi.cast("void *", host.ctypes.data), host.size, ffi.NULL) == lib.FSPMM_OK
    assert_bits_equal(reference.decode(host.tobytes())[1], changed, "the blob of the changed matrix")


def test_compress_is_graph_capturable(rng):
    """The count and write phases enqueue work only: both can be captured and replayed."""
    torch = require("torch")
    bits, _ = sparse_bits(rng, 96, 160, "float16", 0.7, specials=False)
    p = Phases("torch", bits)
    assert p.count() == lib.FSPMM_OK
    size = p.size()[1]
    out = torch.empty((size,), dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        p.stream = ffi.cast("void *", side.cuda_stream)
        with torch.cuda.graph(g, stream=side):
            assert p.count() == lib.FSPMM_OK
            assert p.write(out, size) == lib.FSPMM_OK
    out.fill_(0)
    g.replay()
    torch.cuda.synchronize()
    assert host_bytes(out).tobytes() == cpu_blob(bits, "float16", "bitmap").tobytes()
