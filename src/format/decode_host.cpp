// CPU decoder: validated blob -> dense matrix.
#include <string.h>

#include "common/parallel.h"
#include "format/host_formats.h"
#include "format/layout.h"

namespace fspmm {
namespace {

// Scatter the entries of a Tiled-CSL tile into a zeroed 64x64 tile (padding entries are skipped).
void decode_csl_tile(const uint8_t* tile, uint64_t bytes, uint16_t* dense_tile) {
    for (uint64_t i = 0; i < bytes / 4; ++i) {
        const uint32_t e = load_u32(tile + 4 * i);
        const uint32_t pos = e & 0xFFFFu;
        if (pos >= static_cast<uint32_t>(kTileElems)) break;  // padding is always last
        uint32_t r, c;
        unswizzle(pos, &r, &c);
        dense_tile[r * kTileK + c] = static_cast<uint16_t>(e >> 16);
    }
}

// Scatter the values of a bitmap tile into a zeroed 64x64 tile, block by block in mma order.
void decode_bitmap_tile(const uint8_t* tile, uint16_t* dense_tile) {
    const uint8_t* v = tile + kBitmapMaskBytes;
    for (uint32_t j = 0; j < static_cast<uint32_t>(kBlocksPerTile); ++j) {
        const uint32_t r0 = 8 * bitmap_block_row(j), c0 = 8 * bitmap_block_col(j);
        for (uint64_t bits = load_u64(tile + 8 * j); bits != 0; bits &= bits - 1) {
            const uint32_t i = static_cast<uint32_t>(__builtin_ctzll(bits));
            dense_tile[(r0 + i / 8) * kTileK + c0 + i % 8] = load_u16(v);
            v += 2;
        }
    }
}

// Decode row stripe mt of the blob into rows [64 mt, 64 mt + rows) of `dense`.
void decode_stripe(const uint8_t* blob, const fspmm_header_t& h, const Geometry& g, int64_t mt, uint16_t* dense,
                   int64_t ld) {
    uint16_t tile[kTileElems];
    const uint8_t* table = blob + h.offsets_offset;
    const uint8_t* data = blob + h.data_offset;
    const int rows = tile_rows(g, mt);
    for (int64_t kt = 0; kt < g.tiles_k; ++kt) {
        const uint64_t t = static_cast<uint64_t>(mt * g.tiles_k + kt);
        const uint64_t begin = load_u64(table + 8 * t), end = load_u64(table + 8 * t + 8);
        decode_tile(data + begin, end - begin, h.format, tile);
        const int cols = tile_cols(g, kt);
        for (int r = 0; r < rows; ++r)
            memcpy(dense + (mt * kTileM + r) * ld + kt * kTileK, tile + r * kTileK, static_cast<size_t>(cols) * 2);
    }
}

}  // namespace

void decode_tile(const uint8_t* tile, uint64_t bytes, int format, uint16_t* dense_tile) {
    memset(dense_tile, 0, sizeof(uint16_t) * kTileElems);
    if (format == FSPMM_FORMAT_BITMAP)
        decode_bitmap_tile(tile, dense_tile);
    else
        decode_csl_tile(tile, bytes, dense_tile);
}

void decode_blob(const uint8_t* blob, const fspmm_header_t& h, uint16_t* dense, int64_t ld) {
    const Geometry g = make_geometry(h.M, h.K);
    parallel_for(g.tiles_m, 1, [&](int64_t mt_begin, int64_t mt_end) {
        for (int64_t mt = mt_begin; mt < mt_end; ++mt) decode_stripe(blob, h, g, mt, dense, ld);
    });
}

}  // namespace fspmm
