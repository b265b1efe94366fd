"""Exact dense -> blob -> dense round trips on the CPU, sizes, and the format choice of "auto"."""

import numpy as np
import pytest

import flashspmm
from _toolkit import as_dtype, assert_bits_equal, checksum, sparse_bits

FORMATS = ["bitmap", "tiled_csl", "auto"]
DTYPES = ["float16", "bfloat16"]
SHAPES = [(1, 1), (7, 13), (63, 64), (64, 65), (65, 127), (129, 1), (1, 200), (1000, 999)]
SPARSITIES = [0.0, 0.5, 0.9, 0.999, 1.0]


def compress_bits(bits, dtype, fmt):
    """Compress uint16 bit patterns as a float16 / bfloat16 array (bfloat16 through ml_dtypes)."""
    return flashspmm.compress(as_dtype(bits, dtype), format=fmt)


def check_round_trip(W, expected, dtype, fmt):
    m, k = expected.shape
    assert W.shape == (m, k)
    assert W.dtype == dtype
    assert W.device == "cpu"
    assert W.format in ("bitmap", "tiled_csl") and (fmt == "auto" or W.format == fmt)
    assert W.nnz == int(np.count_nonzero(expected))
    assert W.density == pytest.approx(W.nnz / (m * k))
    got = W.to_dense(raw=True)
    assert got.dtype == np.uint16 and got.shape == (m, k)
    assert_bits_equal(got, expected, "to_dense")


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(rng, fmt, dtype, shape, sparsity):
    bits, expected = sparse_bits(rng, *shape, dtype, sparsity)
    W = compress_bits(bits, dtype, fmt)
    check_round_trip(W, expected, dtype, fmt)


@pytest.mark.parametrize("fmt,dtype,sparsity", [("auto", "float16", 0.5), ("tiled_csl", "bfloat16", 0.9)])
def test_round_trip_llm_size(rng, fmt, dtype, sparsity):
    bits, expected = sparse_bits(rng, 4096, 4096, dtype, sparsity)
    W = compress_bits(bits, dtype, fmt)
    check_round_trip(W, expected, dtype, fmt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_dense_dtype(rng, dtype):
    bits, expected = sparse_bits(rng, 33, 70, dtype, 0.5, specials=False)
    dense = flashspmm.compress(as_dtype(bits, dtype)).to_dense()
    assert dense.dtype == as_dtype(expected, dtype).dtype
    assert np.array_equal(dense.view(np.uint16), expected)


def test_bfloat16_from_raw_bits(rng):
    """bfloat16 weights given as uint16 bit patterns (no ml_dtypes needed)."""
    bits, expected = sparse_bits(rng, 70, 90, "bfloat16", 0.7)
    W = flashspmm.compress(bits, format="bitmap", dtype="bfloat16")
    assert W.dtype == "bfloat16"
    assert np.array_equal(W.to_dense(raw=True), expected)
    W16 = flashspmm.compress(bits.view(np.int16), dtype="float16")
    assert W16.dtype == "float16"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_leading_dimension(rng, fmt, dtype):
    """W as a column slice of a wider array: rows have a stride larger than K."""
    big, big_expected = sparse_bits(rng, 150, 300, dtype, 0.6)
    for cols in (slice(0, 130), slice(7, 200), slice(299, 300)):
        view = big[:, cols]
        assert view.strides[0] == 300 * 2
        W = compress_bits(view, dtype, fmt)
        check_round_trip(W, big_expected[:, cols], dtype, fmt)
    every_other_row = big[::2, 3:100]
    check_round_trip(compress_bits(every_other_row, dtype, fmt), big_expected[::2, 3:100], dtype, fmt)


def test_same_input_same_blob(rng):
    bits, _ = sparse_bits(rng, 200, 300, "float16", 0.8)
    a = flashspmm.compress(bits.view(np.float16), format="bitmap").blob()
    b = flashspmm.compress(
        np.ascontiguousarray(np.pad(bits, ((0, 0), (0, 5)))[:, :300]).view(np.float16), format="bitmap"
    ).blob()
    assert np.array_equal(a, b)


@pytest.mark.parametrize("fmt", ["bitmap", "tiled_csl"])
@pytest.mark.parametrize("shape", [(1, 1), (65, 127), (300, 200)], ids=str)
def test_sizes_are_consistent(rng, tmp_path, fmt, shape):
    bits, _ = sparse_bits(rng, *shape, "float16", 0.7)
    W = flashspmm.compress(bits.view(np.float16), format=fmt)
    h = W.header
    m, k = shape
    blob = W.blob()
    assert W.nbytes == blob.size == h.total_bytes
    assert h.magic == 0x4D505346 and bytes(blob[:4]) == b"FSPM"
    assert h.tiles_m == -(-m // h.tile_m) and h.tiles_k == -(-k // h.tile_k)
    assert h.offsets_offset == 128
    assert h.offsets_bytes == (h.tiles_m * h.tiles_k + 1) * 8
    assert h.data_offset % 16 == 0 and h.data_bytes % 16 == 0
    assert h.data_offset >= h.offsets_offset + h.offsets_bytes
    assert h.total_bytes == h.data_offset + h.data_bytes
    per_nonzero = 2 if fmt == "bitmap" else 4
    assert h.data_bytes >= per_nonzero * W.nnz
    bound = flashspmm._native.ffi.new("size_t *")
    flashspmm._native.check(flashspmm._native.lib.fspmm_blob_bytes_bound(m, k, W.header.format, bound))
    assert W.nbytes <= bound[0]
    path = tmp_path / "w.fspmm"
    W.save(path)
    assert path.stat().st_size == W.nbytes
    # checksums as docs/FORMATS.md defines them
    raw = blob.tobytes()
    assert h.header_checksum == checksum(raw[:120])
    assert h.payload_checksum == checksum(raw[128:])


def blob_bound(m, k, fmt):
    """fspmm_blob_bytes_bound for an m x k matrix in format fmt (a name)."""
    bound = flashspmm._native.ffi.new("size_t*")
    flashspmm._native.check(flashspmm._native.lib.fspmm_blob_bytes_bound(m, k, flashspmm._matrix.FORMATS[fmt], bound))
    return bound[0]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.6, 0.8, 0.9, 0.97, 0.99, 1.0])
def test_smallest_picks_the_smaller_format(rng, sparsity):
    bits, _ = sparse_bits(rng, 256, 320, "float16", sparsity, specials=False)
    w = bits.view(np.float16)
    bitmap = flashspmm.compress(w, format="bitmap")
    csl = flashspmm.compress(w, format="tiled_csl")
    small = flashspmm.compress(w, format="smallest")
    assert small.nbytes == min(bitmap.nbytes, csl.nbytes)
    assert small.format == ("bitmap" if bitmap.nbytes <= csl.nbytes else "tiled_csl")
    same = bitmap if small.format == "bitmap" else csl
    assert np.array_equal(small.blob(), same.blob())
    if sparsity <= 0.8:
        assert small.format == "bitmap"
    if 0.99 <= sparsity < 1.0:
        assert small.format == "tiled_csl"
    assert small.nbytes <= blob_bound(256, 320, "smallest")
    assert np.array_equal(flashspmm.compress(w, prefer="memory").blob(), small.blob())
    assert flashspmm.compress(w, format="bitmap", prefer="memory").format == "bitmap"


def test_prefer_is_checked(rng):
    w = sparse_bits(rng, 8, 8, "float16", 0.5, specials=False)[0].view(np.float16)
    for bad in ("size", "", None, 1):
        with pytest.raises(ValueError, match="prefer must be 'speed' or 'memory'"):
            flashspmm.compress(w, prefer=bad)


# The rule of "auto" (docs/PERFORMANCE.md, "How auto chooses"): bitmap for matrices of at most 2048 rows and
# above 50 % density; otherwise the format predicted faster, Tiled-CSL from about 78 % sparsity up.
@pytest.mark.parametrize(
    "m,k,sparsity,expected",
    [
        (2112, 128, 0.0, "bitmap"),
        (2112, 128, 0.5, "bitmap"),
        (2112, 128, 0.7, "bitmap"),
        (2112, 128, 0.75, "bitmap"),
        (2112, 128, 0.81, "tiled_csl"),
        (2112, 128, 0.87, "tiled_csl"),
        (2112, 128, 0.9, "tiled_csl"),
        (2112, 128, 0.99, "tiled_csl"),
        (2112, 128, 1.0, "tiled_csl"),
        (2048, 256, 0.9, "bitmap"),
        (2048, 256, 1.0, "bitmap"),
        (1, 1, 0.0, "bitmap"),
        (3000, 1, 0.0, "bitmap"),
    ],
)
def test_auto_picks_the_predicted_faster_format(rng, m, k, sparsity, expected):
    bits, _ = sparse_bits(rng, m, k, "float16", sparsity, specials=False)
    w = bits.view(np.float16)
    auto = flashspmm.compress(w, format="auto")
    assert auto.format == expected
    assert np.array_equal(auto.blob(), flashspmm.compress(w, format=expected).blob())
    assert auto.nbytes <= blob_bound(m, k, "auto")
    # the C API reports the same choice and size, and never AUTO or SMALLEST as the chosen format
    ffi, lib = flashspmm._native.ffi, flashspmm._native.lib
    for name, fmt in (("auto", expected), ("smallest", flashspmm.compress(w, format="smallest").format)):
        size, chosen = ffi.new("size_t*"), ffi.new("fspmm_format_t*")
        ptr = ffi.cast("void*", bits.ctypes.data)
        code = flashspmm._matrix.FORMATS[name]
        flashspmm._native.check(lib.fspmm_compress_size_host(ptr, m, k, k, lib.FSPMM_DTYPE_FLOAT16, code, size, chosen))
        assert chosen[0] == flashspmm._matrix.FORMATS[fmt]
        assert size[0] == flashspmm.compress(w, format=fmt).nbytes


# The same rule for a narrower decode range: "auto_n8" (N <= 8) crosses at about 77 %, "auto_n1" (one token, where
# the CUDA-core kernel runs Tiled-CSL) at about 73 %; both keep matrices of at most 2048 rows as bitmaps.
@pytest.mark.parametrize(
    "fmt,m,k,sparsity,expected",
    [
        ("auto_n1", 2112, 128, 0.5, "bitmap"),
        ("auto_n1", 2112, 128, 0.7, "bitmap"),
        ("auto_n1", 2112, 128, 0.75, "tiled_csl"),
        ("auto_n1", 2112, 128, 0.9, "tiled_csl"),
        ("auto_n1", 2048, 256, 0.9, "bitmap"),
        ("auto_n8", 2112, 128, 0.75, "bitmap"),
        ("auto_n8", 2112, 128, 0.79, "tiled_csl"),
        ("auto_n8", 2048, 256, 0.9, "bitmap"),
    ],
)
def test_auto_for_a_decode_range(rng, fmt, m, k, sparsity, expected):
    bits, _ = sparse_bits(rng, m, k, "float16", sparsity, specials=False)
    w = bits.view(np.float16)
    W = flashspmm.compress(w, format=fmt)
    assert W.format == expected
    assert np.array_equal(W.blob(), flashspmm.compress(w, format=expected).blob())
    assert W.nbytes <= blob_bound(m, k, fmt)
    size, chosen = flashspmm._native.ffi.new("size_t*"), flashspmm._native.ffi.new("fspmm_format_t*")
    ptr = flashspmm._native.ffi.cast("void*", bits.ctypes.data)
    code = flashspmm._matrix.FORMATS[fmt]
    lib = flashspmm._native.lib
    flashspmm._native.check(lib.fspmm_compress_size_host(ptr, m, k, k, lib.FSPMM_DTYPE_FLOAT16, code, size, chosen))
    assert (chosen[0], size[0]) == (flashspmm._matrix.FORMATS[expected], W.nbytes)
    # prefer="memory" turns every automatic choice into "smallest"
    smallest = flashspmm.compress(w, format="smallest")
    assert flashspmm.compress(w, format=fmt, prefer="memory").format == smallest.format


@pytest.mark.parametrize(
    "sparsity,bitmap_ratio,csl_ratio", [(0.5, 1.78, 1.0), (0.7, 2.76, 1.67), (0.8, 3.8, 2.5), (0.9, 6.15, 5.0)]
)
def test_byte_ratios_match_the_design(rng, sparsity, bitmap_ratio, csl_ratio):
    """Bitmap: 2 B per nonzero + 1 bit per element; Tiled-CSL: 4 B per nonzero (within 2 %)."""
    bits, _ = sparse_bits(rng, 1024, 1024, "float16", sparsity, specials=False)
    w = bits.view(np.float16)
    assert flashspmm.compress(w, format="bitmap").compression_ratio == pytest.approx(bitmap_ratio, rel=0.02)
    assert flashspmm.compress(w, format="tiled_csl").compression_ratio == pytest.approx(csl_ratio, rel=0.02)
