// The SpMM kernel: y[N, M] = alpha * x[N, K] * W^T + bias + beta * y, W compressed ("Load-as-Sparse,
// Compute-as-Dense").
//
// A CTA owns 128 rows of W (two 64-row tile stripes) and a slice of the K tiles (split-K), for one block of
// kNTile tokens; it has a producer warp and consumer warps that multiply one or two 16-row groups each (see
// params.h). Per K tile:
//   1. the compressed tiles (their exact bytes) and the x tile are copied into a ring of kStages
//      shared-memory stages: on sm_90 by the producer warp, completing on an mbarrier (bulk copies of the
//      tiles, one TMA tensor copy of the x tile, or cp.async where x does not allow TMA), on sm_80 by
//      cp.async from every thread;
//   2. the format's decoder expands the tile into a swizzled 64x64 dense tile per stripe (or, for the
//      direct bitmap decoder, straight into mma A fragments, through a per-tile table of mask words and
//      value addresses that the producer warp writes ahead on sm_90, each consumer warp on sm_80);
//   3. each warp reads its 16x64 A fragments with ldmatrix (or builds them), the x fragments with ldmatrix,
//      and runs mma.m16n8k16 (W rows as the 16-row operand, tokens as the n8 side), fp32 accumulate; on
//      sm_90a the four consumer warps (one warpgroup) use wgmma instead where it measured faster: the direct
//      decoder from 32 tokens on (A fragments from registers), Tiled-CSL always (A from the dense tiles);
//      x tiles are stored in the 128-byte swizzle that wgmma's shared-memory descriptors read;
//   4. decoders that scatter nonzeros re-zero the rows they read, ready for the next tile.
// With split-K, every CTA writes fp32 partial sums; the last CTA of an output tile to arrive (arrival
// counter) adds them in split order, so the result is deterministic, and applies the epilogue.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "common/scan.cuh"
#include "format/layout.h"
#include "ptx/ptx.cuh"
#include "spmm/dtype.cuh"
#include "spmm/params.h"

namespace fspmm {

template <typename T>
__device__ __forceinline__ T imin(T a, T b) {
    return a < b ? a : b;
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
            const uint32_t row0 = dense + (bitmap_block_row(j) * 8 + half * 4) * 128;
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
                ptx::st_shared_v4(row0 + rr * 128 + ((bc ^ uint32_t(4 * half + rr)) << 4), out);
            }
        } else {
            // Walk the set bits from the top; the value of bit b is at first + (set bits below b).
            int v = int(first + count) - 1;
            const uint32_t row_base = bitmap_block_row(j) * 8 * 64;
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
    static constexpr int kTableWords = 2 * 2 * 64;
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
        const uint4 p = *reinterpret_cast<const uint4*>(t + 64);   // addresses of their first values
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

// ---- the kernel ----------------------------------------------------------------------------------------
// Shared-memory address of 16-byte chunk ck (K elements 8 ck..8 ck + 7) of token row n of the x tile at xs:
// rows of 128 bytes, chunk ck stored at ck ^ (n % 8) (the sm_90 128-byte swizzle, wgmma_desc_sw128), so
// that ldmatrix's eight row addresses of one chunk column fall in eight different bank groups.
__device__ __forceinline__ uint32_t x_chunk(uint32_t xs, int n, int ck) {
    return xs + uint32_t(n) * kXRowBytes + (uint32_t(ck ^ (n & 7)) << 4);
}

// Whether the direct decoder's multiply runs on the sm_90a warpgroup MMA (wgmma) for this N tile: its
// A fragments stay in registers and x is read from shared memory by the Tensor Cores, asynchronously, so the
// next fragments are decoded while the MMA runs. Elsewhere, and for smaller N tiles, mma.sync.
#ifndef FSPMM_WGMMA_MIN_TILE
#define FSPMM_WGMMA_MIN_TILE 32
#endif
static_assert(FSPMM_WGMMA_MIN_TILE >= 16, "wgmma is wrapped for N tiles of 16, 32 and 64");
// The same for the Tiled-CSL kernel (A from the dense tiles in shared memory).
#ifndef FSPMM_WGMMA_DENSE_MIN_TILE
#define FSPMM_WGMMA_DENSE_MIN_TILE 8
#endif
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
constexpr int kWgmmaMinTile = FSPMM_WGMMA_MIN_TILE, kWgmmaDenseMinTile = FSPMM_WGMMA_DENSE_MIN_TILE;
#else
constexpr int kWgmmaMinTile = 1 << 30, kWgmmaDenseMinTile = 1 << 30;  // mma.sync only
#endif

// Whether this compilation runs the sm_90 pipeline (shared-memory sizes depend on it: params.h), and with
// it the bulk copies on mbarriers (unless disabled for racecheck).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr bool kSm90Pipeline = true;
#else
constexpr bool kSm90Pipeline = false;
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && !defined(FSPMM_NO_BULK_PIPELINE)
constexpr bool kBulkPipeline = true;
#else
constexpr bool kBulkPipeline = false;
#endif
// Direct decoder on the bulk pipeline: tile tables in flight (the consumers' tile i and up to two ahead).
constexpr int kTableBuffers = 3;

// CTAs per SM the register allocation must allow (launch bounds): 160-thread CTAs (two groups per warp) fit
// six per SM up to 16 tokens on sm_90 (five on sm_80, whose pipeline needs more registers).
constexpr int min_ctas(int groups, int n_tile) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    constexpr int kDirectSmall = 5;
#else
    constexpr int kDirectSmall = 6;
#endif
    return groups == 2 && n_tile <= 16 ? kDirectSmall : n_tile <= 32 ? 4 : 3;
}

template <class Decoder, class Dtype, int kNTile>
__global__ void
__launch_bounds__(cta_threads(Decoder::kGroups), min_ctas(Decoder::kGroups, kNTile))
    spmm_kernel(const __grid_constant__ LinearParams p) {  // (TMA reads p.x_map in place)
    constexpr int kGroups = Decoder::kGroups;               // 16-row groups per consumer warp
    constexpr int kWarps = consumer_warps(kGroups);          // consumer warps; warp kWarps is the producer
    constexpr int kThreads = cta_threads(kGroups);
    constexpr int kStages = stages_for(kNTile, !Decoder::kDirect, kSm90Pipeline);
    constexpr bool kWgmma = Decoder::kDirect && kNTile >= kWgmmaMinTile;  // warpgroup MMA (sm_90a)
    // Tiled-CSL on the warpgroup MMA: A read from the dense tiles by the Tensor Cores; the warp then holds
    // rows 16 warp.. of both stripes (its "groups" are the stripes).
    constexpr bool kWgmmaDense = !Decoder::kDirect && !Decoder::kWarpLocal && kNTile >= kWgmmaDenseMinTile;
    static_assert(!kWgmmaDense || (kGroups == kStripes && consumer_warps(kGroups) == 4), "one warpgroup");
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ uint32_t s_tile_bytes[kStages][kStripes];
    // The direct decoder's tile tables (prepare): on sm_90 kTableBuffers buffers (tiles i .. i + 2) of one
    // table per stripe, written by the producer warp; on sm_80 one per consumer warp, for its own stripe.
    constexpr int kTables = kBulkPipeline ? kTableBuffers * kStripes : kWarps;
    __shared__ __align__(16) uint32_t s_table[Decoder::kTableWords ? kTables * Decoder::kTableWords : 1];
    __shared__ int s_is_last;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int stripe = (warp / (4 / kGroups)) % kStripes;  // which 64-row tile this (consumer) warp multiplies
    const int wr = (warp % (4 / kGroups)) * kGroups;        // its first 16-row group in that tile
    const int64_t mt0 = int64_t(blockIdx.x) * kStripes;
    const int split = blockIdx.y;
    const int64_t n0 = int64_t(blockIdx.z) * kNTile;
    const int64_t kt_begin = int64_t(split) * p.k_tiles_per_split;
    const int64_t kt_end = imin(p.tiles_k, kt_begin + p.k_tiles_per_split);
    const int nk = int(kt_end - kt_begin);

    // Shared memory (params.h, smem_bytes): the x tiles of every stage (aligned for wgmma where it may read
    // them), then the compressed-tile slots of every stage, then the dense tiles.
    constexpr uint32_t kXTileBytes = kNTile * kXRowBytes;
    const uint32_t smem0 = ptx::smem_addr(smem);
    constexpr uint32_t kXAlign = x_align(kNTile, !Decoder::kDirect, kBulkPipeline);
    const uint32_t x0 = (smem0 + kXAlign - 1) & ~(kXAlign - 1);
    uint8_t* const w0 = smem + (x0 - smem0) + kStages * kXTileBytes;
    const uint32_t dense0 = (ptx::smem_addr(w0 + size_t(kStages) * kStripes * p.slot_bytes) + 1023u) & ~1023u;
    auto w_slot = [&](int stage, int s) { return w0 + size_t(stage * kStripes + s) * p.slot_bytes; };
    auto x_slot = [&](int stage) { return x0 + uint32_t(stage) * kXTileBytes; };

    // Byte offsets of this CTA's tiles (entries 0..nk per stripe; zeros for a stripe past M), read once: the
    // first as is, the others relative to it (a CTA's tiles of one stripe span less than 4 GiB).
    __shared__ uint64_t s_first[kStripes];
    __shared__ uint32_t s_off[kStripes][kMaxKTilesPerSplit + 1];
    for (int e = tid; e < kStripes * (nk + 1); e += kThreads) {
        const int s = e / (nk + 1), k = e % (nk + 1);
        const uint64_t* row = p.offsets + (mt0 + s) * p.tiles_k + kt_begin;
        const bool inside = mt0 + s < p.tiles_m;
        s_off[s][k] = inside ? uint32_t(__ldg(row + k) - __ldg(row)) : 0u;
        if (k == 0) s_first[s] = inside ? __ldg(row) : 0;
    }
    // Bytes to copy for a tile (clamped to the slot: a corrupted offset table cannot overflow it).
    auto tile_bytes = [&](uint64_t bytes) { return uint32_t(imin<uint64_t>(bytes, p.slot_bytes)); };

    // x tile of K tile i written by plain loads and stores (unaligned x, or the last, partial K tile):
    // kNTile rows of 64 values, zeros past N and K.
    auto store_x_tile = [&](int i, int first, int stride) {
        const int64_t k0 = (kt_begin + i) * 64;
        const uint32_t xs = x_slot(i % kStages);
        for (int c = first; c < kNTile * 8; c += stride) {
            const int n = c >> 3, ck = c & 7;
            const int64_t row = n0 + n, k = k0 + ck * 8;
            uint32_t w[4] = {0, 0, 0, 0};
            if (row < p.N) {
                const uint16_t* src = p.x + row * p.ldx;
#pragma unroll
                for (int e = 0; e < 8; ++e)
                    if (k + e < p.K) w[e / 2] |= uint32_t(src[k + e]) << (16 * (e & 1));
            }
            ptx::st_shared_v4(x_chunk(xs, n, ck), w);
        }
    };

#if __CUDA_ARCH__ >= 900 && !defined(FSPMM_NO_BULK_PIPELINE)
    // sm_90: a producer warp (the last warp) issues one bulk copy per compressed tile (lanes 0..kStripes-1)
    // and 16-byte cp.async for the x rows, all completing on the stage's "full" mbarrier; consumer warps
    // release a stage through its "empty" mbarrier. No CTA-wide barrier in the main loop.
    __shared__ __align__(8) uint64_t s_full[kStages];   // tile landed (one arrival + transaction bytes)
    __shared__ __align__(8) uint64_t s_empty[kStages];  // every consumer warp is done with the stage
    __shared__ __align__(8) uint64_t s_ready[kTableBuffers];  // direct decoder: a tile's table is written
    // x rows: 16-byte cp.async from every lane (one bulk copy per 128-byte row would queue up to 64 small
    // requests on the copy engine); lane L copies chunk L % 8 of token rows L / 8 + 4 j, j = 0, 1, ..., at
    // x_chunk(xs, n, ck) = xs + 512 j + (x_dst ^ 64 (j % 2)) (n % 8 = L / 8 + 4 (j % 2)). Source and
    // destination are computed once; per tile only the K offset changes.
    const int x_row = lane >> 3, x_ck = lane & 7;
    const uint16_t* const x_src = p.x + (n0 + x_row) * p.ldx + x_ck * 8;
    const int64_t x_step = 4 * p.ldx;
    const uint32_t x_dst = uint32_t(x_row) * kXRowBytes + (uint32_t(x_ck ^ x_row) << 4);
    const int x_rows = int(imin<int64_t>(kNTile, p.N - n0));
    auto issue = [&](int i) {  // by the producer warp: K tile i < nk into stage i % kStages
        const int stage = i % kStages;
        const int64_t k0 = (kt_begin + i) * 64;
        const bool x_bulk = !p.x_tma && p.x_vec && k0 + 64 <= p.K;  // x by cp.async
        if (!p.x_tma && !x_bulk) store_x_tile(i, lane, 32);  // published by lane 0's arrive below (release)
        const uint32_t full = ptx::smem_addr(&s_full[stage]);
        const uint32_t off = lane < kStripes ? s_off[lane][i] : 0u;
        const uint32_t bytes = lane < kStripes ? tile_bytes(s_off[lane][i + 1] - off) : 0u;
        uint32_t total = bytes;
#pragma unroll
        for (int d = 1; d < kStripes; d <<= 1) total += __shfl_xor_sync(0xFFFFFFFFu, total, d);
        if (p.x_tma) total += kXTileBytes;  // the whole box, rows past N and columns past K as zeros
        if (lane < kStripes) s_tile_bytes[stage][lane] = bytes;
        __syncwarp();  // the warp's plain stores above happen before lane 0's release
        if (lane == 0) ptx::mbarrier_arrive_expect_tx(full, total);
        __syncwarp();  // copies are issued after the expected byte count is set
        if (lane < kStripes && bytes)
            ptx::bulk_copy_g2s(ptx::smem_addr(w_slot(stage, lane)), p.data + s_first[lane] + off, bytes, full);
        if (p.x_tma && lane == 0) ptx::tma_load_2d(x_slot(stage), &p.x_map, int(k0), int(n0), full);
        if (x_bulk) {
            const uint32_t xs = x_slot(stage);
            const uint16_t* src = x_src + k0;
#pragma unroll 4
            for (int j = 0; j < kNTile / 4; ++j, src += x_step)
                if (x_row + 4 * j < x_rows) ptx::cp_async_16(xs + 512 * j + (x_dst ^ (64 * (j & 1))), src, 16);
        }
        ptx::cp_async_mbarrier_arrive_noinc(full);  // each lane's copies arrive on the barrier when complete
    };
    if (tid == 0)
        for (int st = 0; st < kStages; ++st) {
            ptx::mbarrier_init(ptx::smem_addr(&s_full[st]), 1 + 32);  // expect_tx arrive + 32 cp.async arrivals
            ptx::mbarrier_init(ptx::smem_addr(&s_empty[st]), kWarps);
            if (st < kTableBuffers) ptx::mbarrier_init(ptx::smem_addr(&s_ready[st]), 1);
        }
#else
    // sm_80: every thread issues 16-byte cp.async for a share of each tile; completion by cp.async groups.
    auto issue = [&](int i) {  // K tile i < nk into stage i % kStages
        const int stage = i % kStages;
#pragma unroll
        for (int s = 0; s < kStripes; ++s) {
            const uint32_t bytes = tile_bytes(s_off[s][i + 1] - s_off[s][i]);
            if (tid == 0) s_tile_bytes[stage][s] = bytes;
            const uint8_t* src = p.data + s_first[s] + s_off[s][i];
            const uint32_t dst = ptx::smem_addr(w_slot(stage, s));
            for (uint32_t c = tid * 16; c < bytes; c += kThreads * 16) ptx::cp_async_16(dst + c, src + c, 16);
        }
        if (p.x_vec) {
            const int64_t k0 = (kt_begin + i) * 64;
            const uint32_t xs = x_slot(stage);
            for (int c = tid; c < kNTile * 8; c += kThreads) {
                const int n = c >> 3, ck = c & 7;
                const int64_t row = n0 + n, k = k0 + ck * 8;
                const bool ok = row < p.N && k < p.K;
                ptx::cp_async_16(x_chunk(xs, n, ck), ok ? p.x + row * p.ldx + k : p.x, ok ? 16 : 0);
            }
        } else {
            store_x_tile(i, tid, kThreads);
        }
    };
#endif

    // Zero the x tiles (rows past N stay zero) and, for decoders that scatter, the dense tiles (each warp
    // re-zeroes what it read afterwards).
    for (uint32_t c = tid; c < kStages * kXTileBytes / 16; c += kThreads) ptx::st_shared_zero16(x0 + c * 16);
    if constexpr (Decoder::kNeedsZero)
        for (int c = tid; c < kStripes * kDenseBytes / 16; c += kThreads) ptx::st_shared_zero16(dense0 + c * 16);
    if constexpr (kWgmmaDense) ptx::fence_proxy_async_shared();  // the zero tiles are read by the Tensor Cores
    __syncthreads();

    ptx::FragC acc[kGroups][kNTile / 8];
    const bool my_stripe = mt0 + stripe < p.tiles_m;
    const uint32_t my_dense = dense0 + stripe * kDenseBytes;  // this stripe's dense tile

    // This lane's ldmatrix row address in an x tile, chunk 2 kc + (lane / 8) % 2 of token row (lane % 8) +
    // 8 (lane / 16) + 8 j: x_chunk(xs, row, chunk) = ((xs + x_lane) ^ (kc << 5)) + 1024 j (xs is 128-aligned).
    const uint32_t x_lane = ((lane & 7) + (kNTile == 8 ? 0 : (lane >> 4) << 3)) * kXRowBytes +
                            ((((lane >> 3) & 1) ^ (lane & 7)) << 4);
    // x fragments of chunk kc of the x tile at xs, multiplied into every accumulator with the W fragments a
    // (one per group).
    auto mma_chunk = [&](const ptx::FragA (&a)[kGroups], int kc, uint32_t xs) {
        const uint32_t xk = (xs + x_lane) ^ (kc << 5);
        if constexpr (kNTile == 8) {
            ptx::FragB b;
            ptx::ldmatrix_x2(b.x, xk);
#pragma unroll
            for (int g = 0; g < kGroups; ++g) Dtype::mma(acc[g][0], a[g], b);
        } else {
#pragma unroll
            for (int j = 0; j < kNTile / 8; j += 2) {
                uint32_t r[4];
                ptx::ldmatrix_x4(r, xk + j * 8 * kXRowBytes);
                const ptx::FragB b0{{r[0], r[1]}}, b1{{r[2], r[3]}};
#pragma unroll
                for (int g = 0; g < kGroups; ++g) {
                    Dtype::mma(acc[g][j], a[g], b0);
                    Dtype::mma(acc[g][j + 1], a[g], b1);
                }
            }
        }
    };
    // The same on the warpgroup MMA (x read from shared memory by the Tensor Cores): issued, not waited for.
    auto wgmma_chunk = [&](const ptx::FragA (&a)[kGroups], int kc, uint32_t xs) {
        if constexpr (kWgmma) {
            ptx::wgmma_fence();  // the A fragments (and the accumulators) were written by ordinary instructions
#pragma unroll
            for (int g = 0; g < kGroups; ++g) wgmma<Dtype>(acc[g], a[g], ptx::wgmma_desc_sw128(xs + kc * 32));
            ptx::wgmma_commit();
        }
    };
    // Direct decoder: each warp builds its A fragments of tile i straight from the compressed tile, through
    // the tile's table (called for warps whose stripe lies within M, and for every warp on the warpgroup MMA,
    // where a warp whose stripe lies past M decodes the all-zero table prepared for it).
    auto multiply_direct = [&](int i, const uint32_t* table) {
        if constexpr (Decoder::kDirect) {
            const uint32_t xs = x_slot(i % kStages);
            if constexpr (kWgmma) ptx::fence_proxy_async_shared();  // x came through the generic proxy
            const typename Decoder::Lane ln = Decoder::lane_constants(lane);
            auto decode = [&](ptx::FragA (&a)[kGroups], int kc) {
#pragma unroll
                for (int g = 0; g < kGroups; ++g) a[g] = Decoder::fragment(table, ln, wr + g, kc);
            };
            if constexpr (kWgmma) {
                // Fragments of chunk kc + 1 are decoded while the MMA of chunk kc runs (two register sets).
                ptx::FragA a[2][kGroups];
                decode(a[0], 0);
#pragma unroll
                for (int kc = 0; kc < 4; ++kc) {
                    wgmma_chunk(a[kc & 1], kc, xs);
                    if (kc < 3) decode(a[(kc + 1) & 1], kc + 1);
                    ptx::wgmma_wait<0>();  // chunk kc done: its registers and (after kc = 3) the stage are free
                }
            } else {
#pragma unroll
                for (int kc = 0; kc < 4; ++kc) {
                    ptx::FragA a[kGroups];
                    decode(a, kc);
                    mma_chunk(a, kc, xs);  // one set of x fragments for all the warp's rows
                }
            }
        }
    };
    // Shared-tile decoders, step 1 (consumer threads): scatter this stripe's tile i into its dense tile.
    auto scatter_tile = [&](int i) {
        if constexpr (!Decoder::kDirect) {
            const int stage = i % kStages;
            constexpr int kStripeThreads = 32 * kWarps / kStripes;
            if constexpr (Decoder::kWarpLocal) {
#pragma unroll
                for (int g = 0; g < kGroups; ++g)  // a warp's 32 threads decode one 16-row group
                    Decoder::scatter(w_slot(stage, stripe), s_tile_bytes[stage][stripe], my_dense,
                                     (wr + g) * 32 + lane, 32);
            } else {
                Decoder::scatter(w_slot(stage, stripe), s_tile_bytes[stage][stripe], my_dense,
                                 tid % kStripeThreads, kStripeThreads);
            }
        }
    };
    // Step 2 (consumer warps, once the dense tile is complete): multiply the warp's rows of it, then re-zero
    // them for a later scatter into the same dense tile.
    auto multiply_dense = [&](int i) {
        const uint32_t xs = x_slot(i % kStages);
        if constexpr (kWgmmaDense) {
            // The warpgroup multiplies both 64-row dense tiles (the whole CTA), then each warp re-zeroes its
            // 16 rows of each once the MMAs are complete.
            ptx::wgmma_fence();
#pragma unroll
            for (int kc = 0; kc < 4; ++kc)
#pragma unroll
                for (int s = 0; s < kStripes; ++s)
                    wgmma_ss<Dtype>(acc[s], ptx::wgmma_desc_sw128(dense0 + s * kDenseBytes + kc * 32),
                                    ptx::wgmma_desc_sw128(xs + kc * 32));
            ptx::wgmma_commit();
            ptx::wgmma_wait<0>();
#pragma unroll
            for (int c = 0; c < 4 * kStripes; ++c)
                ptx::st_shared_zero16(dense0 + (c / 4) * kDenseBytes + warp * 2048 + (lane + 32 * (c % 4)) * 16);
        } else {
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                ptx::FragA a[kGroups];
#pragma unroll
                for (int g = 0; g < kGroups; ++g) {
                    const int row = (wr + g) * 16 + (lane & 15), chunk = 2 * kc + (lane >> 4);
                    ptx::ldmatrix_x4(a[g].x, my_dense + (row * 64 + ((chunk ^ (row & 7)) << 3)) * 2);
                }
                mma_chunk(a, kc, xs);
            }
            if constexpr (Decoder::kNeedsZero) {
                __syncwarp();
#pragma unroll
                for (int c = 0; c < 4 * kGroups; ++c)
                    ptx::st_shared_zero16(my_dense + wr * 2048 + (lane + 32 * c) * 16);
            }
        }
    };

#if __CUDA_ARCH__ >= 900 && !defined(FSPMM_NO_BULK_PIPELINE)
    auto wait_full = [&](int i) { ptx::mbarrier_wait_parity(ptx::smem_addr(&s_full[i % kStages]), (i / kStages) & 1); };
    auto release = [&](int i) {  // this warp is done with stage i % kStages
        __syncwarp();
        if (lane == 0) ptx::mbarrier_arrive(ptx::smem_addr(&s_empty[i % kStages]));
    };
    auto wait_empty = [&](int i) {  // every consumer warp released K tile i
        ptx::mbarrier_wait_parity(ptx::smem_addr(&s_empty[i % kStages]), (i / kStages) & 1);
    };
    // The direct decoder's table of K tile i for stripe s (buffer i % kTableBuffers, s_ready[buffer] when
    // written).
    auto table_of = [&](int i, int s) {
        return s_table + ((i % kTableBuffers) * kStripes + s) * Decoder::kTableWords;
    };
    if (warp == kWarps) {
        if constexpr (Decoder::kDirect) {
            // Producer warp of the direct decoder: it also writes the tables, one stripe per half-warp, kAhead
            // tiles ahead of the consumer warps' tile i: right after refilling the stage of tile i - 1 (that
            // buffer, (i + kAhead) % 3, last held tile i + kAhead - 3 <= i - 1, released by then). Two ahead
            // with four stages (that tile was copied a stage earlier), one with three (it was just issued).
            constexpr int kAhead = kStages >= 4 ? 2 : 1;
            static_assert(kAhead < kTableBuffers, "a buffer per table in flight");
            auto prepare = [&](int i) {
                wait_full(i);
                const int s = lane >> 4;
                Decoder::prepare(w_slot(i % kStages, s), mt0 + s < p.tiles_m, lane & 15, table_of(i, s), true);
                __syncwarp();  // the warp's table stores happen before lane 0's release
                if (lane == 0) ptx::mbarrier_arrive(ptx::smem_addr(&s_ready[i % kTableBuffers]));
            };
            for (int i = 0; i < imin(nk, kStages); ++i) issue(i);
            for (int i = 0; i < imin(nk, kAhead); ++i) prepare(i);
            for (int i = 0; i < nk; ++i) {
                if (i > 0) {
                    wait_empty(i - 1);
                    if (i - 1 + kStages < nk) issue(i - 1 + kStages);
                }
                if (i + kAhead < nk) prepare(i + kAhead);
            }
        } else {
            // Producer warp: refill a stage as soon as every consumer warp has released it.
            for (int i = 0; i < nk; ++i) {
                if (i >= kStages) wait_empty(i - kStages);
                issue(i);
            }
        }
    } else if constexpr (Decoder::kDirect || Decoder::kWarpLocal) {
        // Consumer warps that decode only their own rows: no barrier between warps.
        for (int i = 0; i < nk; ++i) {
            wait_full(i);
            if constexpr (Decoder::kDirect) {
                const int b = i % kTableBuffers;  // tile i's table is written:
                ptx::mbarrier_wait_parity(ptx::smem_addr(&s_ready[b]), (i / kTableBuffers) & 1);
                if (my_stripe || kWgmma) multiply_direct(i, table_of(i, stripe));  // (wgmma: every warp)
            } else {
                if (my_stripe) scatter_tile(i);
                __syncwarp();       // each warp decoded exactly the rows it multiplies
                multiply_dense(i);  // (a stripe past M multiplies its zero dense tile)
            }
            release(i);
        }
    } else {
        // CTA-wide scatter (Tiled-CSL): barriers after the scatter and after the re-zeroing.
        for (int i = 0; i < nk; ++i) {
            if (i > 0) ptx::consumer_sync<32 * kWarps>();  // every warp re-zeroed its rows of the dense tiles
            wait_full(i);
            if (my_stripe) scatter_tile(i);
            if constexpr (kWgmmaDense) ptx::fence_proxy_async_shared();  // scatter and zeroing -> Tensor Cores
            ptx::consumer_sync<32 * kWarps>();  // dense tiles complete
            if (my_stripe || kWgmmaDense) multiply_dense(i);  // (the warpgroup MMA needs every warp)
            release(i);
        }
    }
#else
    // Prologue: kStages - 1 tiles in flight, then one tile per iteration; every thread issues copies and
    // takes part in the CTA barriers, the consumer warps decode and multiply.
#pragma unroll
    for (int i = 0; i < kStages - 1; ++i) {
        if (i < nk) issue(i);
        ptx::cp_async_commit();  // one group per tile, empty or not, so group counting stays aligned
    }
    const bool consumer = warp < kWarps;
    for (int i = 0; i < nk; ++i) {
        ptx::cp_async_wait<kStages - 2>();
        __syncthreads();  // tile i landed for every thread; stage (i - 1) % kStages is free again
        if (i + kStages - 1 < nk) issue(i + kStages - 1);
        ptx::cp_async_commit();
        if constexpr (Decoder::kDirect) {
            if (consumer && (my_stripe || kWgmma)) {
                uint32_t* const table = s_table + warp * Decoder::kTableWords;  // the warp's own
                Decoder::prepare(w_slot(i % kStages, stripe), my_stripe, lane & 15, table, lane < 16);
                __syncwarp();
                multiply_direct(i, table);
            }
        } else {
            if (consumer && my_stripe) scatter_tile(i);
            if constexpr (kWgmmaDense) ptx::fence_proxy_async_shared();  // scatter and zeroing -> Tensor Cores
            if constexpr (Decoder::kWarpLocal)
                __syncwarp();  // each warp decoded exactly the rows it multiplies
            else
                __syncthreads();  // dense tiles complete
            if (consumer && (my_stripe || kWgmmaDense)) multiply_dense(i);
        }
    }
    ptx::cp_async_wait<0>();
#endif
    __syncthreads();  // shared memory is reused for the epilogue

    // Stage the fp32 tile [kNTile][128 rows] in shared memory so global accesses are coalesced along M.
    float* cs = reinterpret_cast<float*>(smem);
    if (warp < kWarps) {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int q = 0; q < kGroups; ++q) {
            const int r0 = (kWgmmaDense ? q * 64 + warp * 16 : stripe * 64 + (wr + q) * 16) + g;
#pragma unroll
            for (int j = 0; j < kNTile / 8; ++j) {
                const int n = 8 * j + 2 * t;
                cs[n * kCStride + r0] = acc[q][j].x[0];
                cs[(n + 1) * kCStride + r0] = acc[q][j].x[1];
                cs[n * kCStride + r0 + 8] = acc[q][j].x[2];
                cs[(n + 1) * kCStride + r0 + 8] = acc[q][j].x[3];
            }
        }
    }
    __syncthreads();

    const int64_t m0 = mt0 * 64;
    const int64_t rows = imin<int64_t>(kCtaRows, p.M - m0);
    const int64_t cols = imin<int64_t>(kNTile, p.N - n0);
    // Split-K partial sums are [split][N][M] fp32; with M a multiple of 4 their rows are 16-byte aligned and
    // they are written and read four rows at a time.
    const bool vec4 = p.M % 4 == 0;
    if (p.splits > 1) {
        // Publish this split's partial sums, then let the last CTA to arrive reduce in split order.
        float* mine = p.partial + (int64_t(split) * p.N + n0) * p.M + m0;
        if (vec4) {
            for (int v = tid; v < kNTile * kCtaRows / 4; v += kThreads) {
                const int n = v / (kCtaRows / 4), r = v % (kCtaRows / 4) * 4;
                if (n < cols && r < rows)
                    *reinterpret_cast<float4*>(mine + int64_t(n) * p.M + r) =
                        *reinterpret_cast<const float4*>(cs + n * kCStride + r);
            }
        } else {
            for (int idx = tid; idx < kNTile * kCtaRows; idx += kThreads) {
                const int n = idx / kCtaRows, r = idx % kCtaRows;
                if (n < cols && r < rows) mine[int64_t(n) * p.M + r] = cs[n * kCStride + r];
            }
        }
        __syncthreads();  // every thread's partial sums are written
        if (tid == 0) {
            // Fences by one thread suffice, being cumulative over the CTA barriers around them: the partial
            // sums of this CTA are visible GPU-wide before its arrival, those of the others after it.
            __threadfence();
            unsigned int* counter = p.counters + blockIdx.z * gridDim.x + blockIdx.x;
            const unsigned int prev = atomicAdd(counter, 1u);
            __threadfence();
            s_is_last = prev == unsigned(p.splits - 1);
            if (s_is_last) *counter = 0u;  // every split has arrived: zero again for the next launch
        }
        __syncthreads();
        if (!s_is_last) return;
    }
    // y element (n, r) of this tile from its sum over K: alpha, bias, beta * y.
    auto output = [&](int64_t m, const uint16_t* yp, float sum) {
        float out = p.alpha * sum;
        if (p.bias) out += Dtype::to_float(p.bias[m]);
        if (p.beta != 0.f) out += p.beta * Dtype::to_float(*yp);
        return uint32_t(Dtype::from_float(out));
    };
    auto store = [&](int n, int r, float sum) {
        uint16_t* yp = p.y + (n0 + n) * p.ldy + m0 + r;
        *yp = uint16_t(output(m0 + r, yp, sum));
    };
    // y elements (n, r..r + 3) with one 8-byte store (m0 is a multiple of 4; needs y_vec4).
    const bool y_vec4 = p.ldy % 4 == 0 && (reinterpret_cast<uintptr_t>(p.y) & 7) == 0;
    auto store4 = [&](int n, int r, const float (&sum)[4]) {
        uint16_t* yp = p.y + (n0 + n) * p.ldy + m0 + r;
        const int64_t m = m0 + r;
        *reinterpret_cast<uint2*>(yp) = make_uint2(output(m, yp, sum[0]) | output(m + 1, yp + 1, sum[1]) << 16,
                                                   output(m + 2, yp + 2, sum[2]) | output(m + 3, yp + 3, sum[3]) << 16);
    };
    // The last CTA sums the splits in order. A thread takes kChunk runs of kVec rows at a time and loads
    // them from kDepth splits at once: the reduction is a chain of L2 round trips on the kernel's critical
    // path, one per kDepth splits and chunk. More runs at once for the wider N tiles of the 160-thread CTAs,
    // whose register budget allows it (measured 1-3 % faster at N = 64; more: spills at N = 32, and in the
    // 288-thread CTAs).
    auto reduce = [&](auto vec) {
        constexpr int kVec = decltype(vec)::value, kDepth = 4;
        constexpr int kChunk = kVec != 4 ? 2 : kGroups == 1 ? 1 : kNTile >= 64 ? 4 : kNTile >= 16 ? 2 : 1;
        constexpr int kRuns = kNTile * kCtaRows / kVec;
        const float* tile = p.partial + n0 * p.M + m0;  // this output tile in split 0
        const int64_t split_stride = p.N * p.M;
        for (int base = tid; base < kRuns; base += kThreads * kChunk) {
            float sum[kChunk][kVec] = {};
            bool ok[kChunk];
            int64_t at[kChunk];  // offset of the run in a split's partial sums
#pragma unroll
            for (int c = 0; c < kChunk; ++c) {
                const int v = base + c * kThreads, n = v / (kCtaRows / kVec), r = v % (kCtaRows / kVec) * kVec;
                ok[c] = v < kRuns && n < cols && r < rows;
                at[c] = int64_t(n) * p.M + r;
            }
            for (int s0 = 0; s0 < p.splits; s0 += kDepth) {
                float part[kDepth][kChunk][kVec];
#pragma unroll
                for (int d = 0; d < kDepth; ++d)
#pragma unroll
                    for (int c = 0; c < kChunk; ++c) {
                        const float* src = tile + (s0 + d) * split_stride + at[c];
                        const bool load = ok[c] && s0 + d < p.splits;
                        if constexpr (kVec == 4) {
                            const float4 x = load ? __ldcg(reinterpret_cast<const float4*>(src)) : float4{};
                            part[d][c][0] = x.x, part[d][c][1] = x.y, part[d][c][2] = x.z, part[d][c][3] = x.w;
                        } else {
                            part[d][c][0] = load ? __ldcg(src) : 0.f;
                        }
                    }
#pragma unroll
                for (int d = 0; d < kDepth; ++d)
                    if (s0 + d < p.splits)
#pragma unroll
                        for (int c = 0; c < kChunk; ++c)
#pragma unroll
                            for (int e = 0; e < kVec; ++e) sum[c][e] += part[d][c][e];
            }
#pragma unroll
            for (int c = 0; c < kChunk; ++c) {
                const int v = base + c * kThreads, n = v / (kCtaRows / kVec), r = v % (kCtaRows / kVec) * kVec;
                if constexpr (kVec == 4) {  // 8-byte stores of y where possible (measured 1-4 % faster at N = 64)
                    if (ok[c] && y_vec4 && r + 4 <= rows) {
                        store4(n, r, sum[c]);
                        continue;
                    }
                }
#pragma unroll
                for (int e = 0; e < kVec; ++e)
                    if (ok[c] && r + e < rows) store(n, r + e, sum[c][e]);
            }
        }
    };
    if (p.splits > 1 && vec4) {
        reduce(std::integral_constant<int, 4>{});
    } else if (p.splits > 1) {
        reduce(std::integral_constant<int, 1>{});
    } else {
        for (int idx = tid; idx < kNTile * kCtaRows; idx += kThreads) {
            const int n = idx / kCtaRows, r = idx % kCtaRows;
            if (n < cols && r < rows) store(n, r, cs[n * kCStride + r]);
        }
    }
}

// Launch helper used by the explicit instantiations.
template <class Decoder, class Dtype, int kNTile>
cudaError_t launch_spmm(const LinearParams& p, dim3 grid, size_t smem, cudaStream_t stream) {
    spmm_kernel<Decoder, Dtype, kNTile><<<grid, cta_threads(Decoder::kGroups), smem, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace fspmm

// Explicit instantiations of one (format, dtype) for every N tile; used once per spmm_<format>_<dtype>.cu
// so the four combinations compile in parallel.
#define FSPMM_INSTANTIATE_ONE(FMT, DT, DECODER, DTYPE, NT)                                            \
    template <>                                                                                      \
    KernelHandle kernel_handle<FMT, DT, NT>() {                                                      \
        return {reinterpret_cast<const void*>(&spmm_kernel<DECODER, DTYPE, NT>),                     \
                cta_threads(DECODER::kGroups), &launch_spmm<DECODER, DTYPE, NT>};                    \
    }
#define FSPMM_INSTANTIATE(FMT, DT, DECODER, DTYPE)                                                    \
    namespace fspmm {                                                                                \
    FSPMM_INSTANTIATE_ONE(FMT, DT, DECODER, DTYPE, 8)                                                \
    FSPMM_INSTANTIATE_ONE(FMT, DT, DECODER, DTYPE, 16)                                               \
    FSPMM_INSTANTIATE_ONE(FMT, DT, DECODER, DTYPE, 32)                                               \
    FSPMM_INSTANTIATE_ONE(FMT, DT, DECODER, DTYPE, 64)                                               \
    }
