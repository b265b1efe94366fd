// The CUDA-core kernel for one token (a sparse matrix-vector product), and for Tiled-CSL up to kGemvMaxTokens
// tokens in blocks of up to kGemvMaxN; see gemv.cu.
#pragma once
#include <cuda_runtime.h>

#include "spmm/params.h"

namespace fspmm {

constexpr int kGemvThreads = 128;    // 4 warps per CTA
constexpr int kGemvMaxKTiles = 256;  // K tiles per CTA (its tile offsets are staged in shared memory)
constexpr int kGemvMaxN = 4;         // token tile of the Tiled-CSL kernel beyond one (the bitmap one serves N = 1)
constexpr int kGemvMaxTokens = 16;   // tokens the Tiled-CSL kernel serves, in token blocks (grid.z) of its tile

// Tokens the kernel for (format, N) is compiled for: 1; for Tiled-CSL, 2 for two tokens and kGemvMaxN for
// 3..kGemvMaxTokens (in blocks of kGemvMaxN).
int gemv_token_tile(int format, int64_t N);
// Dynamic shared memory of a launch: two buffers per warp of one compressed tile (slot_bytes) and n_tile rows
// of 64 x values.
size_t gemv_smem_bytes(uint32_t slot_bytes, int n_tile);

// The kernel for a blob format, dtype and token tile (gemv_token_tile), for occupancy queries and launches.
const void* gemv_kernel_func(int format, int dtype, int n_tile);
// Launch it: grid (tiles_m, splits, token blocks of n_tile); uses LinearParams as the MMA kernels do
// (slot_bytes clamps tiles).
cudaError_t launch_gemv(int format, int dtype, int n_tile, const LinearParams& p, dim3 grid, cudaStream_t stream);

}  // namespace fspmm
