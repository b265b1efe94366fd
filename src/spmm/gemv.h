// The N = 1 kernel (one token: a sparse matrix-vector product on CUDA cores); see gemv.cu.
#pragma once
#include <cuda_runtime.h>

#include "spmm/params.h"

namespace fspmm {

constexpr int kGemvThreads = 128;    // 4 warps per CTA
constexpr int kGemvMaxKTiles = 256;  // K tiles per CTA (its tile offsets are staged in shared memory)

// Dynamic shared memory of a launch: two buffers per warp of one compressed tile (slot_bytes) + 64 x values.
size_t gemv_smem_bytes(uint32_t slot_bytes);

// The kernel for a blob format and dtype (for occupancy queries).
const void* gemv_kernel_func(int format, int dtype);
// Launch it: grid (tiles_m, splits); uses LinearParams as the MMA kernels do (N = 1, slot_bytes clamps tiles).
cudaError_t launch_gemv(int format, int dtype, const LinearParams& p, dim3 grid, cudaStream_t stream);

}  // namespace fspmm
