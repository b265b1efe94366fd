// Parameters of one fspmm_linear launch and the launch entry points (host side of the kernels).
#pragma once
#include <cuda.h>  // CUtensorMap
#include <cuda_runtime.h>
#include <stdint.h>

#include "format/layout.h"

namespace fspmm {

// Everything a kernel needs; filled by the launcher from the blob header and the call's arguments.
struct LinearParams {
    CUtensorMap x_map;         // x as a 2-D tensor (K, N) for whole-tile TMA copies (x_tma; sm_90 pipeline)
    const uint8_t* data;       // tile data section of the blob (device)
    const uint64_t* offsets;   // tile offset table (device), tiles_m * tiles_k + 1 entries
    int64_t M, K, N;
    int64_t tiles_m, tiles_k;
    uint32_t slot_bytes;       // shared-memory bytes reserved per compressed tile (>= max_tile_bytes)
    const uint16_t* x;         // [N, K], leading dimension ldx (fp16/bf16 bits)
    int64_t ldx;
    bool x_vec;                // x rows can be read with 16-byte copies (aligned, ldx % 8 == 0, K % 8 == 0)
    bool x_tma;                // x_map is set: the sm_90 pipeline copies x tiles with TMA
    const uint16_t* bias;      // [M] or nullptr
    uint16_t* y;               // [N, M], leading dimension ldy
    int64_t ldy;
    float alpha, beta;
    int splits;                // K slices (grid.y)
    int k_tiles_per_split;
    float* partial;            // [splits, N, M] fp32 partial sums (splits > 1)
    unsigned long long* counters;  // one arrival counter per output tile (splits > 1): epilogue.cuh
};

#ifdef __CUDACC__
// The smaller of two values, in device code.
template <typename T>
__device__ __forceinline__ T imin(T a, T b) {
    return a < b ? a : b;
}
#endif

// Launch configuration shared by every kernel instantiation. A CTA owns kStripes 64-row tiles (128 rows of W)
// and has one producer warp (it issues the copies on sm_90) plus consumer warps that each multiply `groups`
// 16-row groups of one stripe: 2 for the direct bitmap and the Tiled-CSL decoders (4 consumer warps; a warp's
// per-tile setup, barriers and x fragments serve 32 rows), 1 for the bitmap scatter/rows decoders (8 warps).
constexpr int kStripes = 2;
constexpr int kCtaRows = kTileM * kStripes;
constexpr int consumer_warps(int groups) { return 4 * kStripes / groups; }
constexpr int cta_threads(int groups) { return 32 * consumer_warps(groups) + 32; }
// Pipeline depth (stages of compressed tiles + x tile in the shared-memory ring): 4, or 3 where the fourth
// stage would cost a CTA per SM: the 64-token tile everywhere; on the sm_90 pipeline (kernels compiled for
// compute capability 9.0 or newer) also the 32-token tile and the decoders with dense tiles (measured on H100:
// 2-11 % faster with 3). The launcher takes sm90 from the kernel binary's PTX version.
constexpr int stages_for(int n_tile, bool dense, bool sm90) {
    return n_tile >= 64 || (sm90 && (dense || n_tile >= 32)) ? 3 : 4;
}
// The pipelined kernel's split-K reduction (epilogue.cuh, reduce): the last CTA's threads load runs of four
// rows of the partial sums from kReduceDepth slices at once, reduce_chunk runs at a time: more for the wider N
// tiles of the 160-thread CTAs, whose register budget allows it (measured 1-3 % faster at N = 64; more spills
// at N = 32, and in the 288-thread CTAs of one group per warp).
constexpr int kReduceDepth = 4;
constexpr int reduce_chunk(int groups, int n_tile) { return groups == 1 ? 1 : n_tile >= 64 ? 4 : n_tile >= 16 ? 2 : 1; }
constexpr int kMaxKTilesPerSplit = 128;     // a CTA's tile offsets are staged in shared memory
constexpr int kDenseBytes = kTileElems * kElemBytes + 1024;  // a dense tile, then the slots Tiled-CSL padding entries
                                                             // write to; 1024-aligned tiles (wgmma_desc_sw128)
constexpr int kDenseRowBytes = kTileK * kElemBytes;  // a row of a dense tile: 128 bytes
constexpr int kDenseGroupBytes = 16 * kDenseRowBytes;  // a 16-row group of a dense tile (one mma A operand's rows)
constexpr int kCStride = kCtaRows + 4;  // fp32 epilogue staging row stride (bank-conflict free)
constexpr int kXRowBytes = kTileK * kElemBytes;  // an x row of one K tile in shared memory: 128 bytes, its 16-byte
                                                 // chunks swizzled (kernel.cuh, x_chunk)
// Alignment of the x tiles: 1024 bytes where the kernel may read them with wgmma or write them with TMA (the
// 128-byte swizzle of both repeats every 1024 bytes: the sm_90 pipeline, and the direct decoder from 32
// tokens and the dense-tile decoders anywhere), else 128.
constexpr int x_align(int n_tile, bool dense, bool sm90) { return sm90 || dense || n_tile >= 32 ? 1024 : 128; }

// Shared-memory bytes of a launch with this slot size and N tile (dense: the decoder needs dense tiles).
// Layout: x tiles of every stage (aligned: x_align), compressed-tile slots of every stage (+ 16 bytes: the
// direct decoder may read one value past the last tile), dense tiles (1024-byte aligned).
inline size_t smem_bytes(uint32_t slot_bytes, int n_tile, bool dense, bool sm90) {
    size_t stage = size_t(kStripes) * slot_bytes + size_t(n_tile) * kXRowBytes;
    size_t main = x_align(n_tile, dense, sm90) + 16 + stages_for(n_tile, dense, sm90) * stage;
    if (dense) main += 1024 + size_t(kStripes) * kDenseBytes;
    size_t epilogue = size_t(n_tile) * kCStride * 4;
    return main > epilogue ? main : epilogue;
}

// Kernel variants beyond the blob formats: the bitmap format has two decoders.
constexpr int kBitmapDirect = 3;  // bitmap decoded straight into mma fragments (kernel id, not a blob format)
constexpr int kBitmapRows = 4;  // bitmap expanded row by row into the dense tile (kernel id)
constexpr int kGemv = 5;  // N = 1: the CUDA-core kernel of gemv.cu, either format (kernel id)
constexpr int kStream = 6;  // bitmap, N <= 16: the warp-streaming kernel of stream.cu (kernel id)

// One kernel instantiation per (kernel id = format or decoder id, dtype, N tile): the rows of variants.h, defined
// in spmm_<row>.cu.
// Returns the kernel function pointer (for attributes and occupancy) and launches it.
struct KernelHandle {
    const void* func;
    int threads;  // threads per CTA
    cudaError_t (*launch)(const LinearParams& p, dim3 grid, size_t smem, cudaStream_t stream);
};

template <int kFormat, int kDtype, int kNTile>
KernelHandle kernel_handle();

}  // namespace fspmm
