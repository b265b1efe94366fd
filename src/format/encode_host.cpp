// CPU encoder: dense fp16/bf16 matrix -> blob, in two passes over row stripes (count, then write).
#include <algorithm>
#include <atomic>

// FSPMM_PORTABLE_SCAN selects the portable row scan on x86 too (for testing it).
#if defined(__SSE2__) && !defined(FSPMM_PORTABLE_SCAN)
#define FSPMM_SSE2_SCAN 1
#include <emmintrin.h>
#endif

#include "common/error.h"
#include "common/parallel.h"
#include "format/choose.h"
#include "format/header.h"
#include "format/host_formats.h"
#include "format/layout.h"

namespace fspmm {
namespace {

#if defined(FSPMM_SSE2_SCAN)
// Bit c set iff element c of a full 64-element row segment is stored (SSE2: 8 elements per compare).
inline uint64_t row_mask_full(const uint16_t* p) {
    const __m128i low15 = _mm_set1_epi16(0x7FFF);
    const __m128i zero = _mm_setzero_si128();
    uint64_t zeros = 0;
    for (int q = 0; q < 4; ++q) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q + 8));
        const __m128i za = _mm_cmpeq_epi16(_mm_and_si128(a, low15), zero);
        const __m128i zb = _mm_cmpeq_epi16(_mm_and_si128(b, low15), zero);
        const uint32_t bits = static_cast<uint32_t>(_mm_movemask_epi8(_mm_packs_epi16(za, zb)));
        zeros |= static_cast<uint64_t>(bits) << (16 * q);
    }
    return ~zeros;
}
#else
// SWAR constants: four 16-bit lanes per 64-bit word.
constexpr uint64_t kLaneLow15 = 0x7FFF7FFF7FFF7FFFull;
constexpr uint64_t kLaneHigh = 0x8000800080008000ull;
// Multiplier that gathers the four lane flags (bits 0, 16, 32, 48) into bits 45..48, lane order kept.
constexpr uint64_t kGatherLanes = 0x0000200040008001ull;

// Bit 15 of each lane is set iff that lane holds a stored value (not +-0).
inline uint64_t stored_lanes(uint64_t w) { return ((w & kLaneLow15) + kLaneLow15) & kLaneHigh; }

// Four lane flags from stored_lanes() -> bits 0..3.
inline uint64_t lanes_to_nibble(uint64_t flags) { return (((flags >> 15) * kGatherLanes) >> 45) & 0xFu; }

// Bit c set iff element c of a full 64-element row segment is stored (portable word operations).
inline uint64_t row_mask_full(const uint16_t* p) {
    uint64_t mask = 0;
    for (int w = 0; w < 16; ++w) mask |= lanes_to_nibble(stored_lanes(load_u64(p + 4 * w))) << (4 * w);
    return mask;
}
#endif

// Same for a row segment of `cols` < 64 elements.
inline uint64_t row_mask_partial(const uint16_t* p, int cols) {
    uint64_t mask = 0;
    for (int c = 0; c < cols; ++c) mask |= static_cast<uint64_t>(is_stored(p[c])) << c;
    return mask;
}

// Stored values in a full 64-element row segment.
inline uint32_t count_full(const uint16_t* p) { return static_cast<uint32_t>(popcount64(row_mask_full(p))); }

// Stored values in a row segment of `cols` < 64 elements.
inline uint32_t count_partial(const uint16_t* p, int cols) {
    uint32_t n = 0;
    for (int c = 0; c < cols; ++c) n += is_stored(p[c]);
    return n;
}

// Pointer to element (row, col) of the dense matrix.
inline const uint16_t* element(const DenseView& d, int64_t row, int64_t col) { return d.data + row * d.ld + col; }

// Rows of row stripe mt inside the matrix.
inline int valid_rows(const DenseView& d, int64_t mt) {
    return static_cast<int>(std::min<int64_t>(kTileM, d.M - mt * kTileM));
}

// Count the tiles of row stripe mt into counts.nnz; returns the stripe's total.
uint64_t count_stripe(const DenseView& d, const Geometry& g, int64_t mt, uint16_t* stripe_nnz) {
    const int rows = tile_rows(g, mt);
    const int64_t full_tiles = g.K / kTileK;
    const int tail = static_cast<int>(g.K % kTileK);
    std::vector<uint32_t> n(static_cast<size_t>(g.tiles_k), 0);
    for (int r = 0; r < rows; ++r) {
        const uint16_t* row = element(d, mt * kTileM + r, 0);
        for (int64_t kt = 0; kt < full_tiles; ++kt) n[kt] += count_full(row + kt * kTileK);
        if (tail) n[full_tiles] += count_partial(row + full_tiles * kTileK, tail);
    }
    uint64_t total = 0;
    for (int64_t kt = 0; kt < g.tiles_k; ++kt) {
        stripe_nnz[kt] = static_cast<uint16_t>(n[kt]);
        total += n[kt];
    }
    return total;
}

// Occupancy masks of the 64 rows of tile (mt, kt); rows outside the matrix get 0.
void tile_row_masks(const DenseView& d, const Geometry& g, int64_t mt, int64_t kt, uint64_t* masks) {
    const int rows = tile_rows(g, mt), cols = tile_cols(g, kt);
    for (int r = 0; r < kTileM; ++r) {
        if (r >= rows) {
            masks[r] = 0;
            continue;
        }
        const uint16_t* p = element(d, mt * kTileM + r, kt * kTileK);
        masks[r] = cols == kTileK ? row_mask_full(p) : row_mask_partial(p, cols);
    }
}

// swizzle(r, c) for every element of a tile, row-major (one load per entry in the write loop).
struct SwizzleTable {
    uint16_t pos[kTileElems];
    SwizzleTable() {
        for (uint32_t r = 0; r < static_cast<uint32_t>(kTileM); ++r)
            for (uint32_t c = 0; c < static_cast<uint32_t>(kTileK); ++c)
                pos[r * kTileK + c] = static_cast<uint16_t>(swizzle(r, c));
    }
};
const SwizzleTable kSwizzle;

// Write a Tiled-CSL tile at `out` from its row masks; returns the bytes written.
uint64_t write_csl_tile(const DenseView& d, int64_t mt, int64_t kt, const uint64_t* masks, uint8_t* out) {
    uint8_t* o = out;
    for (int r = 0; r < valid_rows(d, mt); ++r) {
        const uint16_t* p = element(d, mt * kTileM + r, kt * kTileK);
        const uint16_t* pos = kSwizzle.pos + r * kTileK;
        for (uint64_t m = masks[r]; m != 0; m &= m - 1) {
            const int c = __builtin_ctzll(m);
            store_u32(o, (static_cast<uint32_t>(p[c]) << 16) | pos[c]);
            o += 4;
        }
    }
    for (uint32_t k = 0; (o - out) % 16 != 0; ++k, o += 4) store_u32(o, kCslPadPosition + k);
    return static_cast<uint64_t>(o - out);
}

// Occupancy mask of bitmap block j, from the tile's row masks.
inline uint64_t block_mask(const uint64_t* masks, uint32_t j) {
    const uint32_t r0 = 8 * bitmap_block_row(j), shift = 8 * bitmap_block_col(j);
    uint64_t m = 0;
    for (uint32_t q = 0; q < 8; ++q) m |= ((masks[r0 + q] >> shift) & 0xFFu) << (8 * q);
    return m;
}

// Write a bitmap tile at `out` from its row masks; returns the bytes written.
uint64_t write_bitmap_tile(const DenseView& d, int64_t mt, int64_t kt, const uint64_t* masks, uint8_t* out) {
    const uint16_t* rows[kTileM] = {};  // tile row r starts at rows[r]; rows outside the matrix have no bits
    for (int r = 0; r < valid_rows(d, mt); ++r) rows[r] = element(d, mt * kTileM + r, kt * kTileK);
    uint8_t* v = out + kBitmapMaskBytes;
    for (uint32_t j = 0; j < static_cast<uint32_t>(kBlocksPerTile); ++j) {
        const uint64_t m = block_mask(masks, j);
        store_u64(out + 8 * j, m);
        const uint16_t* const* block_rows = rows + 8 * bitmap_block_row(j);
        const uint32_t c0 = 8 * bitmap_block_col(j);
        for (uint64_t bits = m; bits != 0; bits &= bits - 1) {
            const int i = __builtin_ctzll(bits);
            store_u16(v, block_rows[i >> 3][c0 + (i & 7)]);
            v += 2;
        }
    }
    while ((v - out) % 16 != 0) *v++ = 0;
    return static_cast<uint64_t>(v - out);
}

// Checksum terms of `bytes` bytes at `p`, the first word having index `first_index`.
uint64_t checksum_terms(const uint8_t* p, uint64_t bytes, uint64_t first_index) {
    uint64_t sum = 0;
    for (uint64_t i = 0; i < bytes / 8; ++i) sum += checksum_term(load_u64(p + 8 * i), first_index + i);
    return sum;
}

// Stored values marked in a tile's row masks.
uint32_t mask_count(const uint64_t* masks) {
    uint32_t n = 0;
    for (int r = 0; r < kTileM; ++r) n += static_cast<uint32_t>(popcount64(masks[r]));
    return n;
}

// Tile byte offsets (relative to the data section) for the counted tiles in `format`; size tiles + 1.
std::vector<uint64_t> tile_offsets(const TileCounts& counts, int format, uint32_t* max_tile) {
    std::vector<uint64_t> offsets(counts.nnz.size() + 1);
    uint64_t off = 0, largest = 0;
    for (size_t t = 0; t < counts.nnz.size(); ++t) {
        offsets[t] = off;
        const uint64_t size = tile_bytes(format, counts.nnz[t]);
        largest = std::max(largest, size);
        off += size;
    }
    offsets.back() = off;
    *max_tile = static_cast<uint32_t>(largest);
    return offsets;
}

// Write the data section (every tile, multi-threaded over stripes); returns its payload checksum terms.
// A tile is written only if it holds as many values as counted, so that a matrix modified by another
// thread between the two passes cannot make the encoder write past its slot.
uint64_t write_tiles(const DenseView& d, const TileCounts& counts, int format, const std::vector<uint64_t>& offsets,
                     uint8_t* data) {
    const Geometry& g = counts.geo;
    const uint64_t first_word = (g.data_offset - kHeaderBytes) / 8;
    std::atomic<uint64_t> sum{0};
    parallel_for(g.tiles_m, 1, [&](int64_t mt_begin, int64_t mt_end) {
        uint64_t masks[kTileM];
        uint64_t local = 0;
        for (int64_t mt = mt_begin; mt < mt_end; ++mt) {
            for (int64_t kt = 0; kt < g.tiles_k; ++kt) {
                const size_t t = static_cast<size_t>(mt * g.tiles_k + kt);
                const uint64_t off = offsets[t];
                tile_row_masks(d, g, mt, kt, masks);
                if (mask_count(masks) != counts.nnz[t])
                    raise(FSPMM_ERR_INTERNAL, "the dense matrix changed while it was being compressed");
                const uint64_t size = format == FSPMM_FORMAT_BITMAP ? write_bitmap_tile(d, mt, kt, masks, data + off)
                                                                    : write_csl_tile(d, mt, kt, masks, data + off);
                local += checksum_terms(data + off, size, first_word + off / 8);
            }
        }
        sum.fetch_add(local, std::memory_order_relaxed);
    });
    return sum.load();
}

}  // namespace

TileCounts count_tiles(const DenseView& dense) {
    TileCounts counts;
    counts.geo = make_geometry(dense.M, dense.K);
    const Geometry& g = counts.geo;
    counts.nnz.assign(static_cast<size_t>(g.tiles), 0);
    std::atomic<uint64_t> total{0};
    parallel_for(g.tiles_m, 1, [&](int64_t mt_begin, int64_t mt_end) {
        uint64_t local = 0;
        for (int64_t mt = mt_begin; mt < mt_end; ++mt)
            local += count_stripe(dense, g, mt, counts.nnz.data() + mt * g.tiles_k);
        total.fetch_add(local, std::memory_order_relaxed);
    });
    counts.total_nnz = total.load();
    return counts;
}

uint64_t blob_bytes(const TileCounts& counts, int format) {
    uint64_t data = 0;
    for (uint16_t n : counts.nnz) data += tile_bytes(format, n);
    return counts.geo.data_offset + data;
}

int choose_format(const TileCounts& counts, int format) {
    if (format == FSPMM_FORMAT_TILED_CSL || format == FSPMM_FORMAT_BITMAP) return format;  // (no sizes needed)
    const uint64_t head = counts.geo.data_offset;
    return compress_format(format, counts.geo.M, counts.geo.K, counts.total_nnz,
                           blob_bytes(counts, FSPMM_FORMAT_TILED_CSL) - head,
                           blob_bytes(counts, FSPMM_FORMAT_BITMAP) - head);
}

void encode_blob(const DenseView& dense, const TileCounts& counts, int format, int dtype, void* out) {
    const Geometry& g = counts.geo;
    uint8_t* blob = static_cast<uint8_t*>(out);
    uint32_t max_tile = 0;
    const std::vector<uint64_t> offsets = tile_offsets(counts, format, &max_tile);
    // Offset table, then zeros up to the data section.
    memcpy(blob + kHeaderBytes, offsets.data(), g.offsets_bytes);
    memset(blob + kHeaderBytes + g.offsets_bytes, 0, g.data_offset - kHeaderBytes - g.offsets_bytes);
    uint64_t payload = write_tiles(dense, counts, format, offsets, blob + g.data_offset);
    payload += checksum_from(blob + kHeaderBytes, g.data_offset - kHeaderBytes, 0);

    fspmm_header_t h;
    memset(&h, 0, sizeof h);
    h.magic = kMagic;
    h.version = kVersion;
    h.format = static_cast<uint8_t>(format);
    h.dtype = static_cast<uint8_t>(dtype);
    h.M = g.M;
    h.K = g.K;
    h.nnz = static_cast<int64_t>(counts.total_nnz);
    h.tile_m = kTileM;
    h.tile_k = kTileK;
    h.tiles_m = g.tiles_m;
    h.tiles_k = g.tiles_k;
    h.offsets_offset = kHeaderBytes;
    h.offsets_bytes = g.offsets_bytes;
    h.data_offset = g.data_offset;
    h.data_bytes = offsets.back();
    h.total_bytes = g.data_offset + h.data_bytes;
    h.payload_checksum = payload;
    h.max_tile_bytes = max_tile;
    h.header_checksum = checksum(&h, kHeaderChecksummed);
    memcpy(blob, &h, kHeaderBytes);
}

}  // namespace fspmm
