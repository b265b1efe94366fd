// Blob layout constants and the small functions both the host encoder and the device kernels rely on.
// docs/FORMATS.md is the byte-for-byte description; this file is its executable form.
#pragma once
#include <stdint.h>

#include "flashspmm.h"

#if defined(__CUDACC__)
#define FSPMM_HD __host__ __device__ __forceinline__
#else
#define FSPMM_HD inline
#endif

namespace fspmm {

constexpr uint32_t kMagic = 0x4D505346u;  // "FSPM" little-endian
constexpr uint16_t kVersion = 1;
constexpr int kHeaderBytes = 128;
constexpr int kHeaderChecksummed = 120;  // header_checksum covers bytes [0, 120)
constexpr int kTileM = 64;               // tile rows
constexpr int kTileK = 64;               // tile columns
constexpr int kTileElems = kTileM * kTileK;
constexpr int kBlocksPerTile = 64;       // bitmap: 8x8 blocks per 64x64 tile
constexpr int kBitmapMaskBytes = kBlocksPerTile * 8;
constexpr int kCslPadPosition = kTileElems;  // first position used by Tiled-CSL padding entries

static_assert(sizeof(fspmm_header_t) == kHeaderBytes, "header must be 128 bytes");
static_assert(kTileM == 64 && kTileK == 64, "the swizzle arithmetic below assumes 64x64 tiles");

// Swizzled position of element (r, c) of a 64x64 tile: the 8-element (16-byte) chunk index is XORed with
// r % 8, so that 8 consecutive rows of one chunk column fall in 8 different shared-memory bank groups.
// Tiled-CSL stores this position; the kernels use the same map for their dense shared-memory tiles.
FSPMM_HD uint32_t swizzle(uint32_t r, uint32_t c) { return r * kTileK + ((((c >> 3) ^ (r & 7u)) << 3) | (c & 7u)); }
// Inverse of swizzle(), from the low 12 bits of p (so a corrupted entry still lands inside the tile): the row,
// and the column, whose chunk bits 3..5 are XORed back with the row's low bits 6..8.
FSPMM_HD uint32_t unswizzle_row(uint32_t p) { return (p >> 6) & 63u; }
FSPMM_HD uint32_t unswizzle_col(uint32_t p) { return (p ^ ((p >> 3) & 0x38u)) & 63u; }
FSPMM_HD void unswizzle(uint32_t p, uint32_t* r, uint32_t* c) {
    *r = unswizzle_row(p);
    *c = unswizzle_col(p);
}

// Bitmap block order inside a tile ("mma order"): block j covers rows 8*br.., cols 8*bc.. with
//   wr = j / 16 (16-row group), kc = (j / 4) % 4 (16-column chunk), q = j % 4,
//   br = 2*wr + (q % 2), bc = 2*kc + q / 2,
// so the four blocks of one m16n8k16 A fragment (a0..a3) are consecutive. Bit i of a block's mask is
// element (i / 8, i % 8) of the block (row-major), so lane L of a warp owns bits 2L and 2L+1.
FSPMM_HD uint32_t bitmap_block_row(uint32_t j) { return 2u * (j >> 4) + (j & 1u); }
FSPMM_HD uint32_t bitmap_block_col(uint32_t j) { return 2u * ((j >> 2) & 3u) + ((j >> 1) & 1u); }

// The checksum: sum over the 8-byte little-endian words w_i of the range (i counted from 0 at the
// range start) of mix(w_i + i * 0x9E3779B97F4A7C15), modulo 2^64, where mix is the splitmix64 finalizer.
// A sum of independent terms: any thread order gives the same value, so a GPU encoder can compute it.
FSPMM_HD uint64_t checksum_term(uint64_t word, uint64_t index) {
    uint64_t z = word + index * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

FSPMM_HD uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }
FSPMM_HD uint64_t round_up(uint64_t a, uint64_t b) { return ceil_div(a, b) * b; }

// Element size of both dtypes.
constexpr int kElemBytes = 2;

// Largest possible tile (all 4096 elements nonzero), per format.
constexpr uint32_t kBitmapMaxTileBytes = kBitmapMaskBytes + kTileElems * 2;  // 8704
constexpr uint32_t kCslMaxTileBytes = kTileElems * 4;                          // 16384

}  // namespace fspmm
