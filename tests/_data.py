"""Random test matrices with exact sparsity and IEEE special values, as 16-bit patterns."""

import numpy as np

try:
    import ml_dtypes
except ImportError:  # bfloat16 tests then use raw uint16 bit patterns
    ml_dtypes = None

# NaN (quiet, signalling, negative, all-ones payload), +Inf, -Inf, smallest subnormals, largest finite
SPECIALS = {
    "float16": [0x7E00, 0x7C01, 0xFE00, 0xFFFF, 0x7C00, 0xFC00, 0x0001, 0x8001, 0x7BFF],
    "bfloat16": [0x7FC0, 0x7F81, 0xFFC0, 0xFFFF, 0x7F80, 0xFF80, 0x0001, 0x8001, 0x7F7F],
}
NEG_ZERO = 0x8000


def random_bits(rng, shape, dtype):
    """Gaussian values of `dtype` ("float16"/"bfloat16") as uint16 bit patterns."""
    f = rng.standard_normal(shape, dtype=np.float32)
    if dtype == "float16":
        return f.astype(np.float16).view(np.uint16)
    return (f.view(np.uint32) >> 16).astype(np.uint16)


def sparse_bits(rng, m, k, dtype, sparsity, specials=True):
    """An [m, k] uint16 matrix of `dtype` bits with round(sparsity * m * k) zeros.

    With `specials`, some nonzeros become NaN / ±Inf / subnormals and some zeros become -0.0.
    Returns (bits, expected): expected is what a round trip must give back (-0.0 -> +0.0).
    """
    bits = random_bits(rng, (m, k), dtype).reshape(-1)
    n = m * k
    zeros = int(round(sparsity * n))
    order = rng.permutation(n)
    zero_pos, nz_pos = order[:zeros], order[zeros:]
    bits[zero_pos] = 0
    if specials:
        sp = np.array(SPECIALS[dtype], dtype=np.uint16)
        count = min(len(nz_pos), max(1, len(nz_pos) // 50), 64)
        if count:
            pos = rng.choice(nz_pos, size=count, replace=False)
            bits[pos] = sp[rng.integers(0, len(sp), size=count)]
        nzero_neg = min(len(zero_pos), max(1, len(zero_pos) // 50), 64)
        if nzero_neg:
            bits[rng.choice(zero_pos, size=nzero_neg, replace=False)] = NEG_ZERO
    bits = bits.reshape(m, k)
    expected = bits.copy()
    expected[expected == NEG_ZERO] = 0
    return bits, expected


def as_dtype(bits, dtype):
    """View uint16 bits as a float16 / ml_dtypes.bfloat16 numpy array."""
    if dtype == "float16":
        return bits.view(np.float16)
    if ml_dtypes is None:
        raise RuntimeError("ml_dtypes is not installed")
    return bits.view(ml_dtypes.bfloat16)


def to_f64(bits, dtype):
    """Exact float64 values of fp16 / bf16 bit patterns."""
    if dtype == "float16":
        return bits.view(np.float16).astype(np.float64)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def from_f32(values, dtype):
    """Round float32 values to fp16 / bf16 bits (bf16: round to nearest even)."""
    values = np.asarray(values, dtype=np.float32)
    if dtype == "float16":
        return values.astype(np.float16).view(np.uint16)
    u = values.view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def checksum(data):
    """The blob checksum (docs/FORMATS.md): sum of splitmix64(word_i + i * golden) over 8-byte LE words."""
    w = np.frombuffer(bytes(data), dtype="<u8").astype(np.uint64)
    i = np.arange(w.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = w + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))
