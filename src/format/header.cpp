// Blob header checks, whole-blob validation and the checksum (see docs/FORMATS.md).
#include "format/header.h"

#include <algorithm>
#include <atomic>
#include <string>

#include "common/error.h"
#include "common/parallel.h"
#include "format/host_formats.h"
#include "format/layout.h"

namespace fspmm {
namespace {

// Words per parallel checksum chunk (512 KiB).
constexpr int64_t kChecksumChunkWords = 1 << 16;

// Raise FSPMM_ERR_CORRUPT_BUFFER with `message`.
[[noreturn]] void corrupt(const std::string& message) { raise(FSPMM_ERR_CORRUPT_BUFFER, message); }

// Decimal text of an unsigned / signed 64-bit value.
std::string str(uint64_t v) { return std::to_string(v); }
std::string str(int64_t v) { return std::to_string(v); }

// Hexadecimal text of a 32-bit value, "0x1234ABCD".
std::string hex32(uint32_t v) {
    static const char digits[] = "0123456789ABCDEF";
    std::string s = "0x";
    for (int shift = 28; shift >= 0; shift -= 4) s += digits[(v >> shift) & 0xF];
    return s;
}

// Name of a (valid) format.
const char* format_name(int format) { return format == FSPMM_FORMAT_BITMAP ? "bitmap" : "tiled_csl"; }

// Raise unless a header field equals the value the rest of the header implies.
void expect_field(const char* name, uint64_t actual, uint64_t expected) {
    if (actual != expected)
        corrupt(std::string("header field ") + name + " is " + str(actual) + " but must be " + str(expected) +
                ": the header is corrupted");
}

// Raise unless M or K is within [1, 2^31 - 1].
void expect_dimension(const char* name, int64_t v) {
    if (v < 1 || v > kMaxDim)
        corrupt(std::string("header field ") + name + " = " + str(v) +
                " is outside [1, 2^31-1]: the header is corrupted");
}

// Checksum of the first 120 bytes of a header.
uint64_t header_checksum_of(const fspmm_header_t& h) {
    unsigned char bytes[kHeaderBytes];
    memcpy(bytes, &h, kHeaderBytes);
    return checksum(bytes, kHeaderChecksummed);
}

// Text naming tile t for error messages: "tile 7 (rows 64..127, columns 192..255)".
std::string tile_name(const Geometry& g, int64_t mt, int64_t kt) {
    const int64_t r0 = mt * kTileM, c0 = kt * kTileK;
    return "tile " + str(mt * g.tiles_k + kt) + " (rows " + str(r0) + ".." + str(r0 + tile_rows(g, mt) - 1) +
           ", columns " + str(c0) + ".." + str(c0 + tile_cols(g, kt) - 1) + ")";
}

// One tile being checked: where it is, for bounds and for error messages.
struct TileRef {
    const Geometry& g;
    int64_t mt, kt;
    int rows, cols;  // valid elements
    std::string name() const { return tile_name(g, mt, kt); }
};

// Check a Tiled-CSL tile of `size` bytes; returns its value count.
uint64_t check_csl_tile(const uint8_t* tile, uint64_t size, const TileRef& ref) {
    const int rows = ref.rows, cols = ref.cols;
    const uint64_t entries = size / 4;
    uint64_t count = 0;
    int64_t previous = -1;  // row-major index of the previous entry
    for (; count < entries; ++count) {
        const uint32_t e = load_u32(tile + 4 * count);
        const uint32_t pos = e & 0xFFFFu;
        if (pos >= static_cast<uint32_t>(kTileElems)) break;  // padding starts
        uint32_t r, c;
        unswizzle(pos, &r, &c);
        const int64_t index = static_cast<int64_t>(r) * kTileK + c;
        if (index <= previous)
            corrupt("tiled_csl " + ref.name() + ": entry " + str(count) + " is not in increasing row-major order");
        if (static_cast<int>(r) >= rows || static_cast<int>(c) >= cols)
            corrupt("tiled_csl " + ref.name() + ": entry " + str(count) + " lies outside the matrix");
        if (!is_stored(static_cast<uint16_t>(e >> 16)))
            corrupt("tiled_csl " + ref.name() + ": entry " + str(count) + " stores a zero value");
        previous = index;
    }
    const uint64_t padding = entries - count;
    if (padding != (4 - count % 4) % 4)
        corrupt("tiled_csl " + ref.name() + ": " + str(padding) + " padding entries after " + str(count) +
                " values (expected " + str((4 - count % 4) % 4) + ")");
    for (uint64_t k = 0; k < padding; ++k)
        if (load_u32(tile + 4 * (count + k)) != static_cast<uint32_t>(kCslPadPosition + k))
            corrupt("tiled_csl " + ref.name() + ": malformed padding entry " + str(count + k));
    return count;
}

// Mask of the bits of bitmap block j that lie inside a tile with `rows` x `cols` valid elements.
uint64_t bitmap_allowed_mask(uint32_t j, int rows, int cols) {
    const int vr = std::min(8, std::max(0, rows - 8 * static_cast<int>(bitmap_block_row(j))));
    const int vc = std::min(8, std::max(0, cols - 8 * static_cast<int>(bitmap_block_col(j))));
    const uint64_t row_bits = (1ull << vc) - 1;  // vc <= 8
    const uint64_t rows_mask = vr == 8 ? ~0ull : (1ull << (8 * vr)) - 1;
    return (row_bits * 0x0101010101010101ull) & rows_mask;
}

// Check a bitmap tile of `size` bytes; returns its value count.
uint64_t check_bitmap_tile(const uint8_t* tile, uint64_t size, const TileRef& ref) {
    const int rows = ref.rows, cols = ref.cols;
    if (size < static_cast<uint64_t>(kBitmapMaskBytes))
        corrupt("bitmap " + ref.name() + " holds " + str(size) + " bytes, fewer than its 512 mask bytes");
    uint64_t count = 0;
    for (uint32_t j = 0; j < static_cast<uint32_t>(kBlocksPerTile); ++j) {
        const uint64_t mask = load_u64(tile + 8 * j);
        if (mask & ~bitmap_allowed_mask(j, rows, cols))
            corrupt("bitmap " + ref.name() + ": block " + str(uint64_t{j}) + " marks elements outside the matrix");
        count += static_cast<uint64_t>(popcount64(mask));
    }
    if (size != bitmap_tile_bytes(count))
        corrupt("bitmap " + ref.name() + " holds " + str(size) + " bytes but its masks give " + str(count) +
                " values (" + str(bitmap_tile_bytes(count)) + " bytes)");
    const uint8_t* values = tile + kBitmapMaskBytes;
    for (uint64_t i = 0; i < count; ++i)
        if (!is_stored(load_u16(values + 2 * i)))
            corrupt("bitmap " + ref.name() + ": value " + str(i) + " is a stored zero");
    for (uint64_t b = kBitmapMaskBytes + 2 * count; b < size; ++b)
        if (tile[b] != 0) corrupt("bitmap " + ref.name() + ": nonzero padding byte");
    return count;
}

// Check the tile offset table and the gap after it; the blob is known to hold total_bytes.
void check_offsets(const uint8_t* blob, const fspmm_header_t& h, const Geometry& g) {
    const uint8_t* table = blob + h.offsets_offset;
    const uint64_t max_tile = h.format == FSPMM_FORMAT_BITMAP ? kBitmapMaxTileBytes : kCslMaxTileBytes;
    if (load_u64(table) != 0) corrupt("tile offset table: entry 0 is not 0");
    uint64_t previous = 0;
    for (uint64_t t = 1; t <= g.tiles; ++t) {
        const uint64_t off = load_u64(table + 8 * t);
        if (off < previous || off - previous > max_tile || off % 16 != 0 || off > h.data_bytes)
            corrupt("tile offset table: entry " + str(t) + " = " + str(off) + " is not a valid tile end (after " +
                    str(previous) + ")");
        previous = off;
    }
    if (previous != h.data_bytes)
        corrupt("tile offset table ends at " + str(previous) + " but data_bytes is " + str(h.data_bytes));
    for (uint64_t b = h.offsets_offset + h.offsets_bytes; b < h.data_offset; ++b)
        if (blob[b] != 0) corrupt("nonzero byte in the gap between the offset table and the tile data");
}

// Check every tile (multi-threaded over row stripes): structure, value count and largest tile size.
void check_tiles(const uint8_t* blob, const fspmm_header_t& h, const Geometry& g) {
    const uint8_t* table = blob + h.offsets_offset;
    const uint8_t* data = blob + h.data_offset;
    std::atomic<uint64_t> nnz{0}, max_bytes{0};
    parallel_for(g.tiles_m, 1, [&](int64_t mt_begin, int64_t mt_end) {
        uint64_t local_nnz = 0, local_max = 0;
        for (int64_t mt = mt_begin; mt < mt_end; ++mt) {
            for (int64_t kt = 0; kt < g.tiles_k; ++kt) {
                const uint64_t t = static_cast<uint64_t>(mt * g.tiles_k + kt);
                const uint64_t begin = load_u64(table + 8 * t), size = load_u64(table + 8 * t + 8) - begin;
                const TileRef ref{g, mt, kt, tile_rows(g, mt), tile_cols(g, kt)};
                local_nnz += h.format == FSPMM_FORMAT_BITMAP ? check_bitmap_tile(data + begin, size, ref)
                                                             : check_csl_tile(data + begin, size, ref);
                local_max = std::max(local_max, size);
            }
        }
        nnz.fetch_add(local_nnz, std::memory_order_relaxed);
        uint64_t seen = max_bytes.load(std::memory_order_relaxed);
        while (local_max > seen && !max_bytes.compare_exchange_weak(seen, local_max)) {}
    });
    if (nnz.load() != static_cast<uint64_t>(h.nnz))
        corrupt("the tiles hold " + str(nnz.load()) + " values but the header says nnz = " + str(h.nnz));
    if (max_bytes.load() != h.max_tile_bytes)
        corrupt("the largest tile is " + str(max_bytes.load()) +
                " bytes but the header says max_tile_bytes = " + str(uint64_t{h.max_tile_bytes}));
}

}  // namespace

Geometry make_geometry(int64_t M, int64_t K) {
    Geometry g;
    g.M = M;
    g.K = K;
    g.tiles_m = static_cast<int64_t>(ceil_div(static_cast<uint64_t>(M), kTileM));
    g.tiles_k = static_cast<int64_t>(ceil_div(static_cast<uint64_t>(K), kTileK));
    g.tiles = static_cast<uint64_t>(g.tiles_m) * static_cast<uint64_t>(g.tiles_k);
    g.offsets_bytes = (g.tiles + 1) * 8;
    g.data_offset = round_up(kHeaderBytes + g.offsets_bytes, 16);
    return g;
}

uint64_t checksum_from(const void* data, size_t bytes, uint64_t first_index) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    std::atomic<uint64_t> total{0};
    parallel_for(static_cast<int64_t>(bytes / 8), kChecksumChunkWords, [&](int64_t begin, int64_t end) {
        uint64_t sum = 0;
        for (int64_t i = begin; i < end; ++i)
            sum += checksum_term(load_u64(p + 8 * i), first_index + static_cast<uint64_t>(i));
        total.fetch_add(sum, std::memory_order_relaxed);
    });
    return total.load();
}

uint64_t checksum(const void* data, size_t bytes) { return checksum_from(data, bytes, 0); }

void check_header(const fspmm_header_t& h) {
    if (h.magic != kMagic)
        corrupt("not a flashspmm blob: magic is " + hex32(h.magic) + ", expected " + hex32(kMagic) + " (\"FSPM\")");
    if (h.version != kVersion)
        corrupt("unsupported blob version " + str(uint64_t{h.version}) + " (this library reads version 1)");
    if (header_checksum_of(h) != h.header_checksum) corrupt("header checksum mismatch: the header is corrupted");
    if (h.format != FSPMM_FORMAT_TILED_CSL && h.format != FSPMM_FORMAT_BITMAP)
        corrupt("invalid format " + str(uint64_t{h.format}) + " in the header (1 = tiled_csl, 2 = bitmap)");
    if (h.dtype != FSPMM_DTYPE_FLOAT16 && h.dtype != FSPMM_DTYPE_BFLOAT16)
        corrupt("invalid dtype " + str(uint64_t{h.dtype}) + " in the header (1 = float16, 2 = bfloat16)");
    expect_dimension("M", h.M);
    expect_dimension("K", h.K);
    expect_field("tile_m", h.tile_m, kTileM);
    expect_field("tile_k", h.tile_k, kTileK);
    const Geometry g = make_geometry(h.M, h.K);
    expect_field("tiles_m", static_cast<uint64_t>(h.tiles_m), static_cast<uint64_t>(g.tiles_m));
    expect_field("tiles_k", static_cast<uint64_t>(h.tiles_k), static_cast<uint64_t>(g.tiles_k));
    expect_field("offsets_offset", h.offsets_offset, kHeaderBytes);
    expect_field("offsets_bytes", h.offsets_bytes, g.offsets_bytes);
    expect_field("data_offset", h.data_offset, g.data_offset);
    if (h.data_bytes % 16 != 0) corrupt("header field data_bytes = " + str(h.data_bytes) + " is not a multiple of 16");
    if (h.data_bytes > UINT64_MAX - h.data_offset)
        corrupt("header field data_bytes = " + str(h.data_bytes) + " is impossibly large");
    expect_field("total_bytes", h.total_bytes, h.data_offset + h.data_bytes);
    const uint64_t elements = static_cast<uint64_t>(h.M) * static_cast<uint64_t>(h.K);
    if (h.nnz < 0 || static_cast<uint64_t>(h.nnz) > elements)
        corrupt("header field nnz = " + str(h.nnz) + " is outside [0, M*K = " + str(elements) + "]");
    const uint64_t max_tile = h.format == FSPMM_FORMAT_BITMAP ? kBitmapMaxTileBytes : kCslMaxTileBytes;
    if (h.max_tile_bytes % 16 != 0 || h.max_tile_bytes > max_tile || h.max_tile_bytes > h.data_bytes)
        corrupt("header field max_tile_bytes = " + str(uint64_t{h.max_tile_bytes}) + " is not a valid " +
                format_name(h.format) + " tile size");
    for (uint8_t b : h.reserved)
        if (b != 0) corrupt("reserved header bytes are not zero");
}

fspmm_header_t validate_prefix(const void* prefix, size_t prefix_bytes, size_t blob_bytes) {
    if (prefix_bytes < static_cast<size_t>(kHeaderBytes) || blob_bytes < static_cast<size_t>(kHeaderBytes))
        corrupt("buffer holds " + str(uint64_t{blob_bytes < prefix_bytes ? blob_bytes : prefix_bytes}) +
                " bytes, fewer than the 128-byte header: the blob is truncated");
    const uint8_t* p = static_cast<const uint8_t*>(prefix);
    fspmm_header_t h;
    memcpy(&h, p, kHeaderBytes);
    check_header(h);
    if (h.total_bytes > blob_bytes)
        corrupt("blob is truncated: header says " + str(h.total_bytes) + " bytes but the buffer holds " +
                str(uint64_t{blob_bytes}));
    if (prefix_bytes < h.data_offset)
        corrupt("internal: the prefix does not hold the tile offset table");  // a caller bug, not the blob's
    const Geometry g = make_geometry(h.M, h.K);
    check_offsets(p, h, g);
    // What the kernels rely on without reading the tiles: none is larger than the shared-memory slot sized
    // from max_tile_bytes, and a bitmap tile holds at least its masks.
    const uint8_t* table = p + h.offsets_offset;
    const uint64_t min_tile = h.format == FSPMM_FORMAT_BITMAP ? kBitmapMaskBytes : 0;
    for (uint64_t t = 0; t < g.tiles; ++t) {
        const uint64_t size = load_u64(table + 8 * t + 8) - load_u64(table + 8 * t);
        if (size > h.max_tile_bytes || size < min_tile)
            corrupt("tile " + str(t) + " holds " + str(size) + " bytes, outside [" + str(min_tile) +
                    ", max_tile_bytes = " + str(uint64_t{h.max_tile_bytes}) + "]");
    }
    return h;
}

fspmm_header_t validate_blob(const void* blob, size_t bytes) {
    if (bytes < static_cast<size_t>(kHeaderBytes))
        corrupt("buffer holds " + str(uint64_t{bytes}) +
                " bytes, fewer than the 128-byte header: the blob is truncated");
    const uint8_t* p = static_cast<const uint8_t*>(blob);
    fspmm_header_t h;
    memcpy(&h, p, kHeaderBytes);
    check_header(h);
    if (h.total_bytes > bytes)
        corrupt("blob is truncated: header says " + str(h.total_bytes) + " bytes but the buffer holds " +
                str(uint64_t{bytes}));
    const uint64_t payload = h.total_bytes - kHeaderBytes;
    if (checksum_from(p + kHeaderBytes, payload, 0) != h.payload_checksum)
        corrupt("payload checksum mismatch: the blob is corrupted");
    const Geometry g = make_geometry(h.M, h.K);
    check_offsets(p, h, g);
    check_tiles(p, h, g);
    return h;
}

}  // namespace fspmm
