// Host side of fspmm_linear: tile configuration, split-K choice and the launch itself.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include <string>

#include "flashspmm.h"

namespace fspmm {

// How one fspmm_linear call is laid out on the GPU.
struct LinearPlan {
    int kernel;             // kernel id: the blob format, or kBitmapDirect
    int n_tile;             // tokens per CTA: 8, 16, 32 or 64
    int64_t m_blocks;       // grid.x: CTAs along M (128 rows each)
    int64_t n_blocks;       // grid.z: CTAs along N
    int splits;             // grid.y: K slices
    int k_tiles_per_split;
    uint32_t slot_bytes;    // shared memory per compressed tile
    size_t smem;            // dynamic shared memory per CTA
    size_t workspace;       // bytes of workspace needed (0 without split-K)
    bool sm90;              // the kernel runs the sm_90 pipeline (TMA copies of x where x allows)
};

// Raise FSPMM_ERR_CUDA (or NO_DEVICE) with `what` and CUDA's message if err != cudaSuccess.
void check_cuda(cudaError_t err, const char* what);

// The current device, or FSPMM_ERR_NO_DEVICE with a message.
int current_device();

// Plan a call on `device` (split_k = 0: automatic). Raises on bad arguments.
LinearPlan plan_linear(const fspmm_header_t& h, int64_t N, int split_k, int device);

// Launch the planned call (arguments already validated by the C entry point).
void run_linear(const fspmm_header_t& h, const LinearPlan& plan, const void* blob, const void* x, int64_t ldx,
                int64_t N, const void* bias, void* y, int64_t ldy, float alpha, float beta, void* workspace,
                cudaStream_t stream);

}  // namespace fspmm
