// Device helpers shared by the GPU encoder and decoder: 8-element row chunks of a dense matrix, stored-value
// masks, block-wide scans and reductions.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/scan.cuh"
#include "format/layout.h"

namespace fspmm {
namespace convert {

constexpr int kChunkElems = 8;                          // elements per chunk (16 bytes)
constexpr int kChunksPerTile = kTileElems / kChunkElems;  // 512
constexpr int kLaneChunks = kChunksPerTile / 32;          // a warp handles a tile: 16 chunks per lane
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// Eight consecutive 16-bit elements of one matrix row; element e is half e % 2 of word e / 2.
struct Chunk {
    uint32_t w[4];
};

// A dense row-major matrix of 16-bit elements in device memory.
struct DenseArgs {
    uint16_t* data;
    int64_t M, K, ld;
    bool vec;  // data 16-byte aligned and ld a multiple of 8: whole chunks move as one 16-byte access
};

// Element e (0..7) of a chunk.
__device__ __forceinline__ uint32_t chunk_elem(const Chunk& c, int e) {
    return (c.w[e >> 1] >> (16 * (e & 1))) & 0xFFFFu;
}

// Elements [col, col + kElems) of `row` (zeros outside the matrix) into w, element e being half e % 2 of word
// e / 2, read with streaming loads (one 16- or 8-byte access when the matrix allows it).
template <int kElems>
__device__ __forceinline__ void load_elems(const DenseArgs& d, int64_t row, int64_t col, uint32_t (&w)[kElems / 2]) {
    static_assert(kElems == 4 || kElems == 8, "whole or half chunks");
#pragma unroll
    for (int i = 0; i < kElems / 2; ++i) w[i] = 0u;
    if (row >= d.M || col >= d.K) return;
    const uint16_t* p = d.data + row * d.ld + col;
    if (d.vec && col + kElems <= d.K) {  // vec: col is a multiple of kElems, so the access is aligned
        if constexpr (kElems == 8) {
            const uint4 v = __ldcs(reinterpret_cast<const uint4*>(p));
            w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
        } else {
            const uint2 v = __ldcs(reinterpret_cast<const uint2*>(p));
            w[0] = v.x, w[1] = v.y;
        }
        return;
    }
#pragma unroll
    for (int e = 0; e < kElems; ++e)
        if (col + e < d.K) w[e >> 1] |= static_cast<uint32_t>(__ldcs(p + e)) << (16 * (e & 1));
}

// Elements [col, col + 8) of `row` (zeros outside the matrix).
__device__ __forceinline__ Chunk load_chunk(const DenseArgs& d, int64_t row, int64_t col) {
    Chunk c;
    load_elems<kChunkElems>(d, row, col, c.w);
    return c;
}

// Write a chunk to elements [col, col + 8) of `row`, dropping what lies outside the matrix.
__device__ __forceinline__ void store_chunk(const DenseArgs& d, int64_t row, int64_t col, const Chunk& c) {
    if (row >= d.M || col >= d.K) return;
    uint16_t* p = d.data + row * d.ld + col;
    if (d.vec && col + kChunkElems <= d.K) {
        __stcs(reinterpret_cast<uint4*>(p), make_uint4(c.w[0], c.w[1], c.w[2], c.w[3]));
        return;
    }
#pragma unroll
    for (int e = 0; e < kChunkElems; ++e)
        if (col + e < d.K) p[e] = static_cast<uint16_t>(chunk_elem(c, e));
}

// Tile row and column of chunk i of a tile (i = lane + 32 * k when a warp handles the tile). Tiled-CSL
// entries follow row-major order; bitmap chunk i is row i % 8 of block i / 8 in mma order, so its mask is
// byte i of the tile's mask section and its values follow those of chunks 0..i-1.
template <int kFormat>
__device__ __forceinline__ void chunk_origin(int i, int* r, int* c) {
    if (kFormat == FSPMM_FORMAT_BITMAP) {
        *r = 8 * static_cast<int>(bitmap_block_row(i >> 3)) + (i & 7);
        *c = 8 * static_cast<int>(bitmap_block_col(i >> 3));
    } else {
        *r = i >> 3;
        *c = (i & 7) * kChunkElems;
    }
}

// True when the whole 64x64 tile at (row0, col0) lies inside the matrix and chunks move as 16-byte accesses.
__device__ __forceinline__ bool tile_is_full(const DenseArgs& d, int64_t row0, int64_t col0) {
    return d.vec && row0 + kTileM <= d.M && col0 + kTileK <= d.K;
}

// kCount of the lane's 16 chunks of the tile at (row0, col0) from its chunk k0 on, ch[k] being tile chunk
// lane + 32 * (k0 + k): all loads are issued before any is used.
template <int kFormat, int kCount>
__device__ __forceinline__ void load_lane_chunks(const DenseArgs& d, int64_t row0, int64_t col0, int lane,
                                                 Chunk (&ch)[kCount], int k0 = 0) {
    if (tile_is_full(d, row0, col0)) {
#pragma unroll
        for (int k = 0; k < kCount; ++k) {
            int r, c;
            chunk_origin<kFormat>(lane + 32 * (k0 + k), &r, &c);
            const uint4 v = __ldcs(reinterpret_cast<const uint4*>(d.data + (row0 + r) * d.ld + col0 + c));
            ch[k] = Chunk{{v.x, v.y, v.z, v.w}};
        }
    } else {
#pragma unroll
        for (int k = 0; k < kCount; ++k) {
            int r, c;
            chunk_origin<kFormat>(lane + 32 * (k0 + k), &r, &c);
            ch[k] = load_chunk(d, row0 + r, col0 + c);
        }
    }
}

// Store the lane's 16 chunks of the tile at (row0, col0) (the inverse of load_lane_chunks).
template <int kFormat>
__device__ __forceinline__ void store_lane_chunk(const DenseArgs& d, int64_t row0, int64_t col0, int lane, int k,
                                                 bool full, const Chunk& ch) {
    int r, c;
    chunk_origin<kFormat>(lane + 32 * k, &r, &c);
    if (full)
        __stcs(reinterpret_cast<uint4*>(d.data + (row0 + r) * d.ld + col0 + c),
               make_uint4(ch.w[0], ch.w[1], ch.w[2], ch.w[3]));
    else
        store_chunk(d, row0 + r, col0 + c, ch);
}

// Exclusive prefix sums from `base` on, in tile chunk order (chunk lane + 32 * k), of the lane's kCount chunk
// counts (each <= 8); returns base plus their total over the warp. Two chunk rows share one warp scan in
// 16-bit fields.
template <int kCount>
__device__ __forceinline__ uint32_t warp_chunk_scan(const uint32_t (&count)[kCount], uint32_t (&first)[kCount],
                                                    uint32_t base = 0) {
    static_assert(kCount % 2 == 0, "chunk rows are scanned in pairs");
#pragma unroll
    for (int k = 0; k < kCount; k += 2) {
        const uint32_t v = count[k] | count[k + 1] << 16;
        const uint32_t x = warp_inclusive_sum(v);
        const uint32_t total = __shfl_sync(kFullMask, x, 31);
        const uint32_t excl = x - v;
        first[k] = base + (excl & 0xFFFFu);
        base += total & 0xFFFFu;
        first[k + 1] = base + (excl >> 16);
        base += total >> 16;
    }
    return base;
}

// Bit e set iff element e of the words w is stored (not +-0.0): (h & 0x7FFF) + 0x7FFF carries into bit 15 iff
// nonzero.
template <int kWords>
__device__ __forceinline__ uint32_t stored_mask(const uint32_t (&w)[kWords]) {
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < kWords; ++i) {
        const uint32_t s = ((w[i] & 0x7FFF7FFFu) + 0x7FFF7FFFu) & 0x80008000u;
        m |= ((s >> 15) & 1u) << (2 * i) | ((s >> 31) & 1u) << (2 * i + 1);
    }
    return m;
}
__device__ __forceinline__ uint32_t stored_mask(const Chunk& c) { return stored_mask(c.w); }

// Sum of `v` over the warp, valid in every lane.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
    return v;
}

// Add `v` of every thread to *target (one atomic per warp; integer sums, so any order gives one result).
__device__ __forceinline__ void atomic_add_block(unsigned long long* target, unsigned long long v) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) atomicAdd(target, v);
}

}  // namespace convert
}  // namespace fspmm
