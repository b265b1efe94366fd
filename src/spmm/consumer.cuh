// The consumer warps' steps of the pipelined SpMM kernel (kernel.cuh): what a warp does with a K tile that has
// landed in shared memory (decode it, multiply it with the x tile into the accumulators). The kernel's
// pipelines (sm_90 and sm_80) decide when; these steps are the same for both.
#pragma once
#include <stdint.h>

#include "format/layout.h"
#include "ptx/ptx.cuh"
#include "spmm/decoders.cuh"
#include "spmm/dtype.cuh"
#include "spmm/params.h"

namespace fspmm {

// What a consumer warp does with K tile i of the kernel once it has landed: decode it (the direct decoder
// straight into A fragments, the others into this stripe's dense tile) and multiply it with the x tile into the
// accumulators. The fields are the kernel's: its parameters, its shared-memory layout and this thread's place.
template <class Decoder, class Dtype, int kNTile, int kStages, bool kWgmma, bool kWgmmaDense>
struct ConsumerSteps {
    static constexpr int kGroups = Decoder::kGroups;
    static constexpr int kWarps = consumer_warps(kGroups);
    static constexpr uint32_t kXTileBytes = kNTile * kXRowBytes;
    const LinearParams& p;
    ptx::FragC (&acc)[kGroups][kNTile / 8];
    const uint32_t (&s_tile_bytes)[kStages][kStripes];
    uint8_t* w0;      // the compressed-tile slots of every stage
    uint32_t x0;      // the x tiles of every stage
    uint32_t dense0;  // the dense tiles (decoders that scatter)
    uint32_t my_dense;  // this stripe's dense tile
    uint32_t x_lane;    // this lane's ldmatrix row address in an x tile (see the kernel)
    int tid, lane, warp, stripe, wr;

    __device__ __forceinline__ uint8_t* w_slot(int stage, int s) const {
        return w0 + size_t(stage * kStripes + s) * p.slot_bytes;
    }
    __device__ __forceinline__ uint32_t x_slot(int stage) const { return x0 + uint32_t(stage) * kXTileBytes; }

    // x fragments of chunk kc of the x tile at xs, multiplied into every accumulator with the W fragments a
    // (one per group).
    __device__ __forceinline__ void mma_chunk(const ptx::FragA (&a)[kGroups], int kc, uint32_t xs) const {
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
    }
    // The same on the warpgroup MMA (x read from shared memory by the Tensor Cores): issued, not waited for.
    __device__ __forceinline__ void wgmma_chunk(const ptx::FragA (&a)[kGroups], int kc, uint32_t xs) const {
        if constexpr (kWgmma) {
            ptx::wgmma_fence();  // the A fragments (and the accumulators) were written by ordinary instructions
#pragma unroll
            for (int g = 0; g < kGroups; ++g) wgmma<Dtype>(acc[g], a[g], ptx::wgmma_desc_sw128(xs + kc * 32));
            ptx::wgmma_commit();
        }
    }
    // Direct decoder: each warp builds its A fragments of tile i straight from the compressed tile, through
    // the tile's table (called for warps whose stripe lies within M, and for every warp on the warpgroup MMA,
    // where a warp whose stripe lies past M decodes the all-zero table prepared for it).
    __device__ __forceinline__ void multiply_direct(int i, const uint32_t* table) const {
        if constexpr (Decoder::kDirect) {
            const uint32_t xs = x_slot(i % kStages);
            if constexpr (kWgmma) ptx::fence_proxy_async_shared();  // x came through the generic proxy
            const typename Decoder::Lane ln = Decoder::lane_constants(lane);
            auto decode = [&](ptx::FragA(&a)[kGroups], int kc) {
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
    }
    // Shared-tile decoders, step 1 (consumer threads): scatter this stripe's tile i into its dense tile.
    __device__ __forceinline__ void scatter_tile(int i) const {
        if constexpr (!Decoder::kDirect) {
            const int stage = i % kStages;
            constexpr int kStripeThreads = 32 * kWarps / kStripes;
            if constexpr (Decoder::kWarpLocal) {
#pragma unroll
                for (int g = 0; g < kGroups; ++g)  // a warp's 32 threads decode one 16-row group
                    Decoder::scatter(w_slot(stage, stripe), s_tile_bytes[stage][stripe], my_dense, (wr + g) * 32 + lane,
                                     32);
            } else {
                Decoder::scatter(w_slot(stage, stripe), s_tile_bytes[stage][stripe], my_dense, tid % kStripeThreads,
                                 kStripeThreads);
            }
        }
    }
    // Step 2 (consumer warps, once the dense tile is complete): multiply the warp's rows of it, then re-zero
    // them for a later scatter into the same dense tile.
    __device__ __forceinline__ void multiply_dense(int i) const {
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
                ptx::st_shared_zero16(dense0 + (c / 4) * kDenseBytes + warp * kDenseGroupBytes +
                                      (lane + 32 * (c % 4)) * 16);
        } else {
#pragma unroll
            for (int kc = 0; kc < 4; ++kc) {
                ptx::FragA a[kGroups];
#pragma unroll
                for (int g = 0; g < kGroups; ++g) {
                    const int row = (wr + g) * 16 + (lane & 15), chunk = 2 * kc + (lane >> 4);
                    ptx::ldmatrix_x4(a[g].x, my_dense + (row * kTileK + ((chunk ^ (row & 7)) << 3)) * kElemBytes);
                }
                mma_chunk(a, kc, xs);
            }
            if constexpr (Decoder::kNeedsZero) {
                __syncwarp();
#pragma unroll
                for (int c = 0; c < 4 * kGroups; ++c)
                    ptx::st_shared_zero16(my_dense + wr * kDenseGroupBytes + (lane + 32 * c) * 16);
            }
        }
    }
};

}  // namespace fspmm
