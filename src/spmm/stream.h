// The warp-streaming kernel (bitmap, up to 16 tokens): every warp runs its own copy pipeline; see stream.cu.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "spmm/params.h"

namespace fspmm {

constexpr int kStreamWarps = 4;  // warps per CTA, one K range each, all on the CTA's 64-row stripe
constexpr int kStreamThreads = 32 * kStreamWarps;
constexpr int kStreamStages = 2;              // tiles per warp in its ring (the next is copied while one is used)
constexpr int kStreamMaxTilesPerWarp = 32;    // a warp's tile offsets live in one register per lane
constexpr int kStreamMaxNTile = 16;           // N tiles 8 and 16 are compiled
constexpr int kStreamMaxKTilesPerSplit = kStreamWarps * kStreamMaxTilesPerWarp;

// Dynamic shared memory of a launch (per warp: its decoder table and kStreamStages x tiles and tile slots).
size_t stream_smem_bytes(uint32_t slot_bytes, int n_tile);

// The kernel for a dtype and N tile (8 or 16), for attributes and occupancy queries.
const void* stream_kernel_func(int dtype, int n_tile);
// Launch it: grid (tiles_m, splits, N blocks), threads kStreamThreads; pdl: with programmatic dependent launch
// (for kernels compiled for sm_90 or newer, whose prologue reads the blob before waiting for the previous grid).
cudaError_t launch_stream(int dtype, int n_tile, const LinearParams& p, dim3 grid, size_t smem, bool pdl,
                          cudaStream_t stream);

}  // namespace fspmm
