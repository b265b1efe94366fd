// The tile decoders of the SpMM kernels: how a compressed tile in shared memory becomes Tensor Core operands
// (a dense swizzled 64x64 tile for ldmatrix/wgmma, or mma A fragments built in registers). Used by the
// pipelined kernel (kernel.cuh) and the warp-streaming kernel (stream.cu).
#pragma once
#include <stdint.h>

#include "common/scan.cuh"
#include "format/layout.h"
#include "ptx/ptx.cuh"
#include "spmm/params.h"

namespace fspmm {

// Shared-memory address of 16-byte chunk ck (K elements 8 ck..8 ck + 7) of token row n of the x tile at xs:
// rows of 128 bytes, chunk ck stored at ck ^ (n % 8) (the sm_90 128-byte swizzle, wgmma_desc_sw128), so
// that ldmatrix's eight row addresses of one chunk column fall in eight different bank groups.
__device__ __forceinline__ uint32_t x_chunk(uint32_t xs, int n, int ck) {
    return xs + uint32_t(n) * kXRowBytes + (uint32_t(ck ^ (n & 7)) << 4);
}

// ---- decoders: compressed tile in shared memory -> dense swizzled tile ---------------------------------
// Tiled-CSL: each 32-bit entry is (value << 16) | swizzled position; padding entries point past the tile.
struct CslDecoder {
    static constexpr int kGroups = 2;  // 16-row groups per consumer warp (params.h)
    static constexpr bool kDirect = false;
    static constexpr bool kNeedsZero = true;
    static constexpr bool kWarpLocal = false;  // entries are not grouped by warp: a CTA barrier follows
    static constexpr int kTableWords = 0;      // per-warp shared-memory table (the direct decoder's)
    // Tiles of at least this many bytes (about 12 % density and up) are scattered with 4-byte loads in
    // thread order, sparser ones with 16-byte loads (measured on H100: 3-5 % faster at 80 % sparsity, 1-2 %
    // slower at 90 %).
    static constexpr uint32_t kStridedBytes = 2048;
    static __device__ __forceinline__ void scatter(const uint8_t* tile, uint32_t bytes, uint32_t dense,
                                                   int tid_in_stripe, int stripe_threads) {
        if (bytes >= kStridedBytes) {
            // Consecutive threads take consecutive entries (sorted by position: few rows apart), so that one
            // store instruction mostly hits distinct banks; four entries in flight per thread.
            const uint32_t* entries = reinterpret_cast<const uint32_t*>(tile);
            const int n = bytes / 4;
            for (int i = tid_in_stripe; i < n; i += 4 * stripe_threads) {
                uint32_t e[4];
#pragma unroll
                for (int u = 0; u < 4; ++u) e[u] = i + u * stripe_threads < n ? entries[i + u * stripe_threads] : 0u;
#pragma unroll
                for (int u = 0; u < 4; ++u)
                    if (i + u * stripe_threads < n) ptx::st_shared_u16(dense + (e[u] & 0xFFFFu) * 2, e[u] >> 16);
            }
        } else {
            // Sparse tiles (entries many rows apart either way): four entries per 16-byte load.
            const uint4* entries = reinterpret_cast<const uint4*>(tile);
            const int n16 = bytes / 16;
            for (int i = tid_in_stripe; i < n16; i += stripe_threads) {
                const uint4 e = entries[i];
                ptx::st_shared_u16(dense + (e.x & 0xFFFFu) * 2, e.x >> 16);
                ptx::st_shared_u16(dense + (e.y & 0xFFFFu) * 2, e.y >> 16);
                ptx::st_shared_u16(dense + (e.z & 0xFFFFu) * 2, e.z >> 16);
                ptx::st_shared_u16(dense + (e.w & 0xFFFFu) * 2, e.w >> 16);
            }
        }
    }
};

// Bitmap into the dense tile: 64 masks (one per 8x8 block, mma block order), then packed values. Two threads
// per block, one per 32-bit half (rows 0-3 / 4-7 of the block); a warp covers 16 consecutive blocks, so a
// warp scan of the per-thread popcounts gives each thread its first value.
//   kRows = false: walk the set bits and store each nonzero (work per nonzero; needs a zeroed tile);
//   kRows = true:  build every 8-element row in registers and store it whole (work per element, no zeroing).
template <bool kRows>
struct BitmapTileDecoder {
    static constexpr int kGroups = 1;  // two groups per warp measured slower for these decoders (except at 95 %)
    static constexpr bool kDirect = false;
    static constexpr bool kNeedsZero = !kRows;
    static constexpr bool kWarpLocal = true;  // a warp's 32 threads decode exactly the 16 rows it multiplies
    static constexpr int kTableWords = 0;
    static __device__ __forceinline__ void scatter(const uint8_t* tile, uint32_t /*bytes*/, uint32_t dense,
                                                   int tid_in_stripe, int /*stripe_threads*/) {
        const uint64_t* masks = reinterpret_cast<const uint64_t*>(tile);
        const uint16_t* values = reinterpret_cast<const uint16_t*>(tile + kBitmapMaskBytes);
        const int lane = tid_in_stripe & 31;
        const int j = tid_in_stripe >> 1;  // block of this thread
        const int half = tid_in_stripe & 1;
        const int j0 = j & ~15;            // first block of this warp
        const uint64_t m = masks[j];
        uint32_t bits = half ? uint32_t(m >> 32) : uint32_t(m);
        const uint32_t count = __popc(bits);
        // Values before this warp's blocks: popcounts of blocks [0, j0), summed over the warp.
        uint32_t before = 0;
        if (lane < j0) before += __popcll(masks[lane]);
        if (lane + 32 < j0) before += __popcll(masks[lane + 32]);
        // Inclusive scan of the per-thread counts inside the warp.
        uint32_t incl = count;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const uint32_t v = __shfl_up_sync(0xFFFFFFFFu, incl, d);
            if (lane >= d) incl += v;
            before += __shfl_xor_sync(0xFFFFFFFFu, before, d);
        }
        const uint32_t first = before + incl - count;  // value index of this thread's first nonzero
        const uint32_t bc = bitmap_block_col(j);
        if constexpr (kRows) {
            // Row rr of this half is tile row 8*br + 4*half + rr, whose swizzle key is 4*half + rr.
            const uint16_t* v = values + first;
            const uint32_t row0 = dense + (bitmap_block_row(j) * 8 + half * 4) * kDenseRowBytes;
#pragma unroll
            for (int rr = 0; rr < 4; ++rr) {
                uint32_t out[4];
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const uint32_t bit = (bits >> (8 * rr + k)) & 1u;
                    const uint32_t x = bit ? uint32_t(*v) : 0u;
                    v += bit;
                    out[k >> 1] = (k & 1) ? out[k >> 1] | (x << 16) : x;
                }
                ptx::st_shared_v4(row0 + rr * kDenseRowBytes + ((bc ^ uint32_t(4 * half + rr)) << 4), out);
            }
        } else {
            // Walk the set bits from the top; the value of bit b is at first + (set bits below b).
            int v = int(first + count) - 1;
            const uint32_t row_base = bitmap_block_row(j) * 8 * kTileK;
            const uint32_t bc8 = bc << 3;
            const uint32_t e_hi = uint32_t(half) << 5;
            while (bits) {
                const uint32_t b = 31 - __clz(bits);
                bits ^= 1u << b;
                const uint32_t e = b | e_hi;  // element in the block: row e / 8, column e % 8
                const uint32_t pos = row_base + ((e & 0x38u) << 3) + ((e ^ bc8) & 0x3Fu);
                ptx::st_shared_u16(dense + pos * 2, values[v--]);
            }
        }
    }
};
using BitmapScatterDecoder = BitmapTileDecoder<false>;
using BitmapRowsDecoder = BitmapTileDecoder<true>;

// Bitmap, decoded straight into mma A fragments (no dense tile). Lane L of a warp owns bits 2L and 2L+1 of
// each 8x8 block's mask (row L / 4, columns 2 (L % 4) and 2 (L % 4) + 1), so its two values sit at (block's
// first value) + (set bits of the mask below bit 2L), consecutively if both bits are set. Per tile, one
// half-warp writes a table (the blocks' mask words and first-value addresses per half-warp that reads them):
// on sm_90 the producer warp, one half per stripe, while the consumers multiply the previous tile; on sm_80
// each consumer warp for its own stripe. Per block and lane: one popcount, two 16-bit loads of the values at
// that index (zero-extended, so their upper halves are the zeros a missing element needs) and one byte
// permute that places them in the fragment register, plus a quarter of the table loads and of the selector
// arithmetic shared by a fragment's four blocks.
struct BitmapDirectDecoder {
    static constexpr int kGroups = 2;  // 16-row groups per consumer warp (params.h)
    static constexpr bool kDirect = true;
    static constexpr bool kNeedsZero = false;
    static constexpr bool kWarpLocal = true;
    // Byte-permute selectors, indexed by the lane's two mask bits, for the registers (value, 0) and
    // (next value, 0): 00 -> zeros, 01 -> (value, 0), 10 -> (0, value), 11 -> (value, next value).
    // Selector i is bytes 2i, 2i+1 of the pair (kSelectLo, kSelectHi), so it is fetched with one more permute.
    static constexpr uint32_t kSelectLo = 0x32102222u;
    static constexpr uint32_t kSelectHi = 0x54101032u;
    // Lane constants: where the lane's two bits are, as byte-permute selectors and shifts.
    struct Lane {
        uint32_t below;     // bits of the lane's 32-bit mask word below its pair (bits 2 (L % 16), +1)
        uint32_t gather;    // picks the byte holding the pair from two words (see fragment)
        uint32_t bit;       // the pair's position in that byte
    };
    static __device__ __forceinline__ Lane lane_constants(int lane) {
        const uint32_t shift = 2u * uint32_t(lane & 15), byte = shift >> 3;
        return {(1u << shift) - 1u, byte | (4u + byte) << 4, shift & 7u};
    }
    // The table of one tile in shared memory (kTableWords words): for each of its 64 blocks and each half of
    // a warp, the block's mask word that the half needs, and the shared-memory address of the half's first
    // value (lanes 0..15: the block's first value; lanes 16..31: the value after the block's low mask word).
    // Layout: [half][mask words | addresses][block].
    static constexpr int kTableWords = 2 * 2 * kBlocksPerTile;
    // Written by the 16 lanes of a half-warp (q = lane % 16; both halves run the shuffles, only those with
    // write set store): lane q reads the masks of blocks 4q..4q+3 and finds their first values by a 16-lane
    // scan. For a tile that is not there (valid = false: a stripe past M) the table describes an all-zero
    // tile.
    static __device__ __forceinline__ void prepare(const uint8_t* tile, bool valid, int q, uint32_t* table,
                                                   bool write) {
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        const uint4 m01 = valid ? reinterpret_cast<const uint4*>(tile)[2 * q] : zero;
        const uint4 m23 = valid ? reinterpret_cast<const uint4*>(tile)[2 * q + 1] : zero;
        const uint32_t l0 = __popc(m01.x), c0 = l0 + __popc(m01.y);
        const uint32_t l1 = __popc(m01.z), c1 = l1 + __popc(m01.w);
        const uint32_t l2 = __popc(m23.x), c2 = l2 + __popc(m23.y);
        const uint32_t l3 = __popc(m23.z), c3 = l3 + __popc(m23.w);
        const uint32_t s = c0 + c1 + c2 + c3;
        uint32_t incl = s;
#pragma unroll
        for (int d = 1; d < 16; d <<= 1) {
            const uint32_t up = __shfl_up_sync(0xFFFFFFFFu, incl, d, 16);
            if (q >= d) incl += up;
        }
        const uint32_t a0 = ptx::smem_addr(tile + kBitmapMaskBytes) + 2 * (incl - s);  // block 4q's first value
        const uint32_t a1 = a0 + 2 * c0, a2 = a1 + 2 * c1, a3 = a2 + 2 * c2;
        if (write) {
            uint4* t = reinterpret_cast<uint4*>(table) + q;  // 16 words per quarter of the table
            t[0] = make_uint4(m01.x, m01.z, m23.x, m23.z);
            t[16] = make_uint4(a0, a1, a2, a3);
            t[32] = make_uint4(m01.y, m01.w, m23.y, m23.w);
            t[48] = make_uint4(a0 + 2 * l0, a1 + 2 * l1, a2 + 2 * l2, a3 + 2 * l3);
        }
    }
    // The lane's fragment register for one block: its mask word, the address p of its first value
    // (prepare) and the block's byte-permute selector (fragment).
    static __device__ __forceinline__ uint32_t pair(uint32_t word, uint32_t p, uint32_t sel, const Lane& ln) {
        const uint32_t at = p + 2 * __popc(word & ln.below);  // shared-memory address of the lane's value
        // At most one value past the tile's last is read (inside the allocation: params.h reserves 16 bytes
        // after the last slot); the selector ignores it.
        return ptx::prmt(ptx::ld_shared_u16(at), ptx::ld_shared_u16(at + 2), sel);
    }
    // The A fragment of 16-row group r (rows 16 r..), columns 16 kc.. of the tile: blocks 16 r + 4 kc + q,
    // q = 0..3, from the tile's table (prepare).
    static __device__ __forceinline__ ptx::FragA fragment(const uint32_t* table, const Lane& ln, int r, int kc) {
        const uint32_t* t = table + (threadIdx.x & 16) * 8 + 16 * r + 4 * kc;  // this half's entries
        const uint4 w = *reinterpret_cast<const uint4*>(t);        // mask words of the four blocks
        const uint4 p = *reinterpret_cast<const uint4*>(t + kBlocksPerTile);  // addresses of their first values
        // The four blocks' two-bit fields side by side (one per byte), turned into four selector indices at
        // once: byte k of idx holds (2 t_k, 2 t_k + 1) for block k's bits t_k.
        const uint32_t bytes = ptx::prmt(ptx::prmt(w.x, w.y, ln.gather), ptx::prmt(w.z, w.w, ln.gather), 0x5410u);
        const uint32_t idx = ((bytes >> ln.bit) & 0x03030303u) * 0x22u + 0x10101010u;
        const uint32_t s01 = ptx::prmt(kSelectLo, kSelectHi, idx);        // selectors of blocks 0 and 1
        const uint32_t s23 = ptx::prmt(kSelectLo, kSelectHi, idx >> 16);  // blocks 2 and 3
        ptx::FragA a;
        a.x[0] = pair(w.x, p.x, s01, ln);
        a.x[1] = pair(w.y, p.y, s01 >> 16, ln);
        a.x[2] = pair(w.z, p.z, s23, ln);
        a.x[3] = pair(w.w, p.w, s23 >> 16, ln);
        return a;
    }
};

}  // namespace fspmm
