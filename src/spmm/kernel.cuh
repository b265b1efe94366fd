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
#include "spmm/consumer.cuh"
#include "spmm/decoders.cuh"
#include "spmm/dtype.cuh"
#include "spmm/epilogue.cuh"
#include "spmm/params.h"

namespace fspmm {

// ---- the kernel ----------------------------------------------------------------------------------------

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
        const int64_t k0 = (kt_begin + i) * kTileK;
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
        const int64_t k0 = (kt_begin + i) * kTileK;
        const bool x_bulk = !p.x_tma && p.x_vec && k0 + kTileK <= p.K;  // x by cp.async
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
                if (x_row + 4 * j < x_rows) ptx::cp_async_16(xs + 4 * kXRowBytes * j + (x_dst ^ (64 * (j & 1))), src, 16);
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
            const int64_t k0 = (kt_begin + i) * kTileK;
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
    const ConsumerSteps<Decoder, Dtype, kNTile, kStages, kWgmma, kWgmmaDense> steps{
        p, acc, s_tile_bytes, w0, x0, dense0, my_dense, x_lane, tid, lane, warp, stripe, wr};

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
                if (my_stripe || kWgmma) steps.multiply_direct(i, table_of(i, stripe));  // (wgmma: every warp)
            } else {
                if (my_stripe) steps.scatter_tile(i);
                __syncwarp();       // each warp decoded exactly the rows it multiplies
                steps.multiply_dense(i);  // (a stripe past M multiplies its zero dense tile)
            }
            release(i);
        }
    } else {
        // CTA-wide scatter (Tiled-CSL): barriers after the scatter and after the re-zeroing.
        for (int i = 0; i < nk; ++i) {
            if (i > 0) ptx::consumer_sync<32 * kWarps>();  // every warp re-zeroed its rows of the dense tiles
            wait_full(i);
            if (my_stripe) steps.scatter_tile(i);
            if constexpr (kWgmmaDense) ptx::fence_proxy_async_shared();  // scatter and zeroing -> Tensor Cores
            ptx::consumer_sync<32 * kWarps>();  // dense tiles complete
            if (my_stripe || kWgmmaDense) steps.multiply_dense(i);  // (the warpgroup MMA needs every warp)
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
                steps.multiply_direct(i, table);
            }
        } else {
            if (consumer && my_stripe) steps.scatter_tile(i);
            if constexpr (kWgmmaDense) ptx::fence_proxy_async_shared();  // scatter and zeroing -> Tensor Cores
            if constexpr (Decoder::kWarpLocal)
                __syncwarp();  // each warp decoded exactly the rows it multiplies
            else
                __syncthreads();  // dense tiles complete
            if (consumer && (my_stripe || kWgmmaDense)) steps.multiply_dense(i);
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
            const int r0 = (kWgmmaDense ? q * kTileM + warp * 16 : stripe * kTileM + (wr + q) * 16) + g;
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

    store_tile<Dtype, kNTile, kGroups, kThreads>(p, cs, mt0, n0, split, tid, &s_is_last);  // epilogue.cuh
}

// Launch helper used by the explicit instantiations.
template <class Decoder, class Dtype, int kNTile>
cudaError_t launch_spmm(const LinearParams& p, dim3 grid, size_t smem, cudaStream_t stream) {
    spmm_kernel<Decoder, Dtype, kNTile><<<grid, cta_threads(Decoder::kGroups), smem, stream>>>(p);
    return cudaGetLastError();
}

}  // namespace fspmm

// Explicit instantiations of one row of variants.h (kernel id, dtype, decoder, dtype type) for every N tile;
// used once per spmm_<row>.cu, as FSPMM_VARIANT(FSPMM_INSTANTIATE, <row>), so the rows compile in parallel.
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
