"""An independent reader of flashspmm blobs, written from docs/FORMATS.md alone (numpy only, nothing from
flashspmm): it ties the library's bytes to the document. If the library and this reader disagree, either the
code or the document is wrong; this file follows the document.

    header, dense = decode(blob)     # dense: uint16 bit patterns [M, K]; FormatError if a rule is broken
"""

import struct

import numpy as np

MAGIC = 0x4D505346
VERSION = 1
HEADER_BYTES = 128
TILE = 64
FORMAT_TILED_CSL, FORMAT_BITMAP = 1, 2
DTYPES = {1: "float16", 2: "bfloat16"}
FORMATS = {FORMAT_TILED_CSL: "tiled_csl", FORMAT_BITMAP: "bitmap"}
MAX_DIM = 2**31 - 1
MAX_TILE_BYTES = {FORMAT_TILED_CSL: 16384, FORMAT_BITMAP: 8704}
CSL_PAD = 4096

# (offset, struct code, name) of every header field ("Header (128 bytes)")
HEADER_FIELDS = [
    (0, "I", "magic"),
    (4, "H", "version"),
    (6, "B", "format"),
    (7, "B", "dtype"),
    (8, "q", "M"),
    (16, "q", "K"),
    (24, "q", "nnz"),
    (32, "I", "tile_m"),
    (36, "I", "tile_k"),
    (40, "q", "tiles_m"),
    (48, "q", "tiles_k"),
    (56, "Q", "offsets_offset"),
    (64, "Q", "offsets_bytes"),
    (72, "Q", "data_offset"),
    (80, "Q", "data_bytes"),
    (88, "Q", "total_bytes"),
    (96, "Q", "payload_checksum"),
    (104, "I", "max_tile_bytes"),
    (120, "Q", "header_checksum"),
]


class FormatError(ValueError):
    """The bytes break a rule of docs/FORMATS.md."""


def _require(cond, message):
    if not cond:
        raise FormatError(message)


def ceil_div(a, b):
    return (a + b - 1) // b


def round_up(a, b):
    return ceil_div(a, b) * b


def checksum(data):
    """ "Checksum": sum over the range's 8-byte little-endian words w_i of splitmix64-finalised (w_i + i * phi),
    modulo 2^64."""
    _require(len(data) % 8 == 0, "a checksummed range must be a multiple of 8 bytes")
    w = np.frombuffer(bytes(data), dtype="<u8").astype(np.uint64)
    i = np.arange(w.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = w + i * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))


def parse_header(blob):
    """The header fields as a dict, checked by rule 2 of "Validation" (and rule 1)."""
    blob = bytes(blob)
    _require(len(blob) >= HEADER_BYTES, f"{len(blob)} bytes: fewer than the 128-byte header")
    h = {name: struct.unpack_from("<" + code, blob, offset)[0] for offset, code, name in HEADER_FIELDS}
    h["reserved"] = blob[108:120]
    _require(h["magic"] == MAGIC, f"magic {h['magic']:#x}")
    _require(h["version"] == VERSION, f"version {h['version']}")
    _require(h["header_checksum"] == checksum(blob[:120]), "header checksum")
    _require(h["format"] in FORMATS, f"format {h['format']}")
    _require(h["dtype"] in DTYPES, f"dtype {h['dtype']}")
    M, K = h["M"], h["K"]
    _require(1 <= M <= MAX_DIM and 1 <= K <= MAX_DIM, f"shape {M} x {K}")
    _require(h["tile_m"] == TILE and h["tile_k"] == TILE, "tile sizes")
    tiles_m, tiles_k = ceil_div(M, TILE), ceil_div(K, TILE)
    _require((h["tiles_m"], h["tiles_k"]) == (tiles_m, tiles_k), "tile counts")
    offsets_bytes = (tiles_m * tiles_k + 1) * 8
    _require(h["offsets_offset"] == 128, "offsets_offset")
    _require(h["offsets_bytes"] == offsets_bytes, "offsets_bytes")
    _require(h["data_offset"] == round_up(128 + offsets_bytes, 16), "data_offset")
    _require(h["data_bytes"] % 16 == 0, "data_bytes is not a multiple of 16")
    _require(h["data_offset"] + h["data_bytes"] < 2**64, "data_offset + data_bytes overflows")
    _require(h["total_bytes"] == h["data_offset"] + h["data_bytes"], "total_bytes")
    _require(0 <= h["nnz"] <= M * K, "nnz")
    _require(
        h["max_tile_bytes"] % 16 == 0
        and h["max_tile_bytes"] <= MAX_TILE_BYTES[h["format"]]
        and h["max_tile_bytes"] <= h["data_bytes"],
        "max_tile_bytes",
    )
    _require(h["reserved"] == bytes(12), "reserved bytes are not zero")
    return h


def swizzle(r, c):
    return r * 64 + ((((c >> 3) ^ (r & 7)) << 3) | (c & 7))


def unswizzle(p):
    r = p >> 6
    c = ((((p >> 3) & 7) ^ (r & 7)) << 3) | (p & 7)
    return r, c


def block_row(j):
    return 2 * (j >> 4) + (j & 1)


def block_col(j):
    return 2 * ((j >> 2) & 3) + ((j >> 1) & 1)


def _is_zero_bits(v):
    return (v == 0x0000) | (v == 0x8000)


def _csl_tile(tile, rows, cols):
    """(r, c, value bits) of a Tiled-CSL tile ("Format 1"), checked by rule 6."""
    _require(len(tile) % 16 == 0, "Tiled-CSL tile is not a multiple of 16 bytes")
    entries = np.frombuffer(tile, dtype="<u4")
    position = (entries & 0xFFFF).astype(np.int64)
    value = (entries >> 16).astype(np.uint16)
    n = int(np.count_nonzero(position < CSL_PAD))
    _require(np.all(position[:n] < CSL_PAD), "a padding entry before a value entry")
    pad = entries[n:]
    _require(pad.size == (4 - n % 4) % 4, f"{pad.size} padding entries after {n} values")
    _require(np.array_equal(pad, CSL_PAD + np.arange(pad.size, dtype=np.uint32)), "padding entries")
    r, c = unswizzle(position[:n])
    order = r * 64 + c
    _require(np.all(np.diff(order) > 0), "entries not in strictly increasing row-major order")
    _require(np.all(r < rows) and np.all(c < cols), "an entry outside the matrix")
    _require(not np.any(_is_zero_bits(value[:n])), "a stored zero")
    return r, c, value[:n]


# mask bit i of block j -> tile (row, column): row-major within the block, blocks in mma order
_J, _I = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")  # [block, bit]
_BIT_ROW = 8 * block_row(_J) + (_I >> 3)
_BIT_COL = 8 * block_col(_J) + (_I & 7)


def _bitmap_tile(tile, rows, cols):
    """(r, c, value bits) of a bitmap tile ("Format 2"), checked by rule 6."""
    _require(len(tile) >= 512, "bitmap tile shorter than its 512 mask bytes")
    masks = np.frombuffer(tile[:512], dtype="<u8")
    # bit i of mask j, bit 0 the least significant: unpack each little-endian word least significant bit first
    bits = np.unpackbits(masks.view(np.uint8).reshape(64, 8), axis=1, bitorder="little").astype(bool)
    n = int(bits.sum())
    _require(len(tile) == 512 + round_up(2 * n, 16), f"bitmap tile of {len(tile)} bytes for {n} values")
    r, c = _BIT_ROW[bits], _BIT_COL[bits]  # row-major over [block, bit]: block 0 first, increasing bit index
    _require(np.all(r < rows) and np.all(c < cols), "a mask bit outside the matrix")
    value = np.frombuffer(tile[512 : 512 + 2 * n], dtype="<u2")
    _require(not np.any(_is_zero_bits(value)), "a stored zero")
    _require(not any(tile[512 + 2 * n :]), "non-zero padding bytes")
    return r, c, value


def decode(blob):
    """Validate a blob by docs/FORMATS.md and return (header dict, dense uint16 [M, K] bit patterns)."""
    blob = bytes(blob)
    h = parse_header(blob)
    _require(h["total_bytes"] <= len(blob), "truncated")
    blob = blob[: h["total_bytes"]]
    _require(h["payload_checksum"] == checksum(blob[128:]), "payload checksum")
    M, K, tiles_m, tiles_k = h["M"], h["K"], h["tiles_m"], h["tiles_k"]
    fmt, data_offset, data_bytes = h["format"], h["data_offset"], h["data_bytes"]
    offsets = np.frombuffer(blob, dtype="<u8", count=tiles_m * tiles_k + 1, offset=128).astype(np.int64)
    _require(offsets[0] == 0, "offsets[0] != 0")
    _require(np.all(offsets % 16 == 0), "an offset that is not a multiple of 16")
    sizes = np.diff(offsets)
    _require(np.all(sizes >= 0), "decreasing offsets")
    _require(np.all(sizes <= MAX_TILE_BYTES[fmt]), "a tile larger than the largest possible")
    _require(offsets[-1] == data_bytes, "the last offset is not data_bytes")
    _require(not any(blob[128 + h["offsets_bytes"] : data_offset]), "non-zero gap bytes")
    dense = np.zeros((tiles_m * TILE, tiles_k * TILE), dtype=np.uint16)
    nnz = 0
    for mt in range(tiles_m):
        rows = min(TILE, M - TILE * mt)
        for kt in range(tiles_k):
            t = mt * tiles_k + kt
            tile = blob[data_offset + offsets[t] : data_offset + offsets[t + 1]]
            cols = min(TILE, K - TILE * kt)
            if fmt == FORMAT_TILED_CSL:
                r, c, v = _csl_tile(tile, rows, cols)
            else:
                r, c, v = _bitmap_tile(tile, rows, cols)
            dense[TILE * mt + r, TILE * kt + c] = v
            nnz += v.size
    _require(nnz == h["nnz"], f"the tiles hold {nnz} values, the header says {h['nnz']}")
    _require(int(sizes.max()) == h["max_tile_bytes"], "max_tile_bytes is not the largest tile")
    return h, dense[:M, :K]
