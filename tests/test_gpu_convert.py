"""GPU encoder and decoder against the CPU ones (marked `gpu`; skipped without a device).

The GPU encoder must write the CPU encoder's bytes exactly; the GPU decoder must give back the input
(-0.0 as +0.0). Inputs are fresh random matrices with NaN / Inf / subnormals / -0.0 sprinkled in.
"""
import numpy as np
import pytest

import flashspmm
from flashspmm._native import ffi, lib

from _data import sparse_bits

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.gpu

TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16}
SHAPES = [(1, 1), (1, 300), (300, 1), (64, 64), (65, 63), (37, 301), (130, 70), (3000, 70), (5, 20000),
          (256, 1000)]
SPARSITIES = [0.0, 0.5, 0.7, 0.9, 0.99, 1.0]


def to_torch(bits, dtype):
    """uint16 numpy bits -> torch CUDA tensor of dtype (bit for bit)."""
    return torch.from_numpy(bits.view(np.int16).copy()).cuda().view(TORCH_DTYPE[dtype])


def torch_bits(t):
    """torch fp16/bf16 tensor -> uint16 numpy bits."""
    return t.contiguous().view(torch.int16).cpu().numpy().view(np.uint16)


def cpu_blob(bits, dtype, fmt):
    return flashspmm.compress(bits, format=fmt, dtype=dtype).blob()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_gpu_blob_equals_cpu_blob(rng, dtype, shape, sparsity):
    m, k = shape
    bits, expected = sparse_bits(rng, m, k, dtype, sparsity)
    w = to_torch(bits, dtype)
    for fmt in ("auto", "bitmap", "tiled_csl"):
        W = flashspmm.compress(w, format=fmt)
        assert W.device == f"cuda:{w.device.index}"
        want = cpu_blob(bits, dtype, fmt)
        got = W.blob()
        assert got.size == want.size, fmt
        np.testing.assert_array_equal(got, want, err_msg=fmt)
        dense = W.to_dense()
        assert isinstance(dense, torch.Tensor) and dense.is_cuda and dense.dtype == w.dtype
        np.testing.assert_array_equal(torch_bits(dense), expected, err_msg=fmt)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
def test_strided_and_unaligned_inputs(rng, fmt):
    """Row stride > K, and a start that is not 16-byte aligned (scalar load path)."""
    bits, _ = sparse_bits(rng, 150, 211, "float16", 0.6)
    wide = torch.zeros((150, 300), dtype=torch.float16, device="cuda")
    for col in (0, 1, 8):
        wide.normal_()
        wide[:, col:col + 211] = to_torch(bits, "float16")
        view = wide[:, col:col + 211]
        W = flashspmm.compress(view, format=fmt)
        np.testing.assert_array_equal(W.blob(), cpu_blob(bits, "float16", fmt))
        out = torch.full((150, 300), float("nan"), dtype=torch.float16, device="cuda")
        check = lib.fspmm_decompress(W.header, ffi.cast("void *", W.data_ptr),
                                     ffi.cast("void *", out.data_ptr() + 2 * col), 300,
                                     ffi.cast("void *", torch.cuda.current_stream().cuda_stream))
        assert check == lib.FSPMM_OK, ffi.string(lib.fspmm_last_error()).decode()
        got = torch_bits(out[:, col:col + 211])
        want = bits.copy()
        want[want == 0x8000] = 0
        np.testing.assert_array_equal(got, want)
        assert torch.isnan(out[:, :col]).all() and torch.isnan(out[:, col + 211:]).all()  # nothing outside


def test_cpu_blob_decoded_on_gpu(rng):
    """A matrix moved to the GPU from a host blob decodes on the GPU through the C API too."""
    bits, expected = sparse_bits(rng, 200, 333, "bfloat16", 0.8)
    for fmt in ("bitmap", "tiled_csl"):
        W = flashspmm.compress(bits, format=fmt, dtype="bfloat16").to("cuda")
        out = torch.full((200, 333), float("nan"), dtype=torch.bfloat16, device="cuda")
        assert lib.fspmm_decompress(W.header, ffi.cast("void *", W.data_ptr), ffi.cast("void *", out.data_ptr()),
                                    333, ffi.NULL) == lib.FSPMM_OK
        torch.cuda.synchronize()
        np.testing.assert_array_equal(torch_bits(out), expected)


def test_cupy_round_trip(rng):
    cp = pytest.importorskip("cupy")
    bits, expected = sparse_bits(rng, 129, 257, "float16", 0.7)
    w = cp.asarray(bits.view(np.float16))
    W = flashspmm.compress(w)
    np.testing.assert_array_equal(W.blob(), cpu_blob(bits, "float16", "auto"))
    dense = W.to_dense()
    assert isinstance(dense, cp.ndarray) and dense.dtype == np.float16
    np.testing.assert_array_equal(cp.asnumpy(dense).view(np.uint16), expected)


class Phases:
    """The three C phases on one torch matrix, for the refusal tests."""

    def __init__(self, w):
        self.w, (self.m, self.k) = w, w.shape
        n = ffi.new("size_t *")
        assert lib.fspmm_compress_workspace_size(self.m, self.k, n) == lib.FSPMM_OK
        self.ws = torch.empty(int(n[0]), dtype=torch.uint8, device="cuda")
        self.stream = ffi.cast("void *", torch.cuda.current_stream().cuda_stream)

    def ptr(self, t):
        return ffi.cast("void *", t.data_ptr())

    def count(self):
        return lib.fspmm_compress_count(self.ptr(self.w), self.m, self.k, self.k, lib.FSPMM_DTYPE_FLOAT16,
                                        self.ptr(self.ws), self.ws.numel(), self.stream)

    def size(self, fmt=lib.FSPMM_FORMAT_BITMAP):
        n = ffi.new("size_t *")
        status = lib.fspmm_compress_size(self.ptr(self.ws), self.ws.numel(), fmt, n, ffi.NULL, self.stream)
        return status, int(n[0])

    def write(self, out, out_bytes, m=None, fmt=lib.FSPMM_FORMAT_BITMAP):
        return lib.fspmm_compress(self.ptr(self.w), m or self.m, self.k, self.k, lib.FSPMM_DTYPE_FLOAT16, fmt,
                                  self.ptr(self.ws), self.ws.numel(), self.ptr(out), out_bytes, self.stream)


def last_error():
    return ffi.string(lib.fspmm_last_error()).decode()


def test_refused_writes_leave_out_untouched(rng):
    bits, _ = sparse_bits(rng, 100, 200, "float16", 0.5, specials=False)
    p = Phases(to_torch(bits, "float16"))
    status, _ = p.size()
    assert status != lib.FSPMM_OK and "no count" in last_error()  # never counted
    assert p.count() == lib.FSPMM_OK
    status, size = p.size()
    assert status == lib.FSPMM_OK and size == cpu_blob(bits, "float16", "bitmap").size
    out = torch.full((size,), 0xA5, dtype=torch.uint8, device="cuda")
    # too small: nothing written, reported by the next size query
    assert p.write(out, size - 16) == lib.FSPMM_OK
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "out_bytes was smaller" in last_error()
    assert bool((out == 0xA5).all())
    # different shape from the count phase: nothing written
    assert p.write(out, size, m=99) == lib.FSPMM_OK
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "differ" in last_error()
    assert bool((out == 0xA5).all())
    # the matrix changed between the phases: no valid header
    p.w.view(-1)[torch.nonzero(p.w.view(-1) == 0)[0]] = 1.0
    assert p.write(out, size) == lib.FSPMM_OK
    status, _ = p.size()
    assert status == lib.FSPMM_ERR_INVALID_ARGUMENT and "changed" in last_error()
    assert bool((out[:128] == 0xA5).all())
    # counted again: a good blob
    assert p.count() == lib.FSPMM_OK
    status, size = p.size()
    out = torch.empty((size,), dtype=torch.uint8, device="cuda")
    assert p.write(out, size) == lib.FSPMM_OK and p.size()[0] == lib.FSPMM_OK
    host = out.cpu().numpy()
    assert lib.fspmm_validate_host(ffi.cast("void *", host.ctypes.data), host.size, ffi.NULL) == lib.FSPMM_OK


def test_compress_is_graph_capturable(rng):
    """The count and write phases enqueue work only: both can be captured and replayed."""
    bits, _ = sparse_bits(rng, 96, 160, "float16", 0.7, specials=False)
    w = to_torch(bits, "float16")
    p = Phases(w)
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
    np.testing.assert_array_equal(out.cpu().numpy(), cpu_blob(bits, "float16", "bitmap"))
