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
    size_t counters_bytes;  // the split-K arrival counters (8 bytes each) at the start of the workspace (partial
                            // sums follow)
    bool sm90;              // the kernel runs the sm_90 pipeline (TMA copies of x where x allows)
};

// The caller's choices for a plan (fspmm_linear_options_t, validated): split_k 0 = automatic, kernel and
// decoder FSPMM_KERNEL_* / FSPMM_DECODER_* (AUTO = the measured rules in launch.cu).
struct LinearOptions {
    int split_k = 0;
    int kernel = FSPMM_KERNEL_AUTO;
    int decoder = FSPMM_DECODER_AUTO;
    unsigned flags = 0;  // FSPMM_LINEAR_*
};

// Raise FSPMM_ERR_CUDA (or NO_DEVICE) with `what` and CUDA's message if err != cudaSuccess.
void check_cuda(cudaError_t err, const char* what);

// The current device, or FSPMM_ERR_NO_DEVICE with a message.
int current_device();

// CTAs of the kernel `func` (threads per CTA, smem bytes of dynamic shared memory) that run at once on all the
// SMs of `device`, queried once per (device, kernel, smem) and cached: the occupancy query costs several
// microseconds of host time. The first query also raises the kernel's dynamic shared-memory limit to what the
// device allows. Raises if the kernel does not fit.
int64_t resident_ctas(int device, const void* func, int threads, size_t smem);

// Makes `device` current for its lifetime (only if it is not already) and restores the previous one.
class DeviceScope {
public:
    explicit DeviceScope(int device);
    ~DeviceScope();
    DeviceScope(const DeviceScope&) = delete;
    DeviceScope& operator=(const DeviceScope&) = delete;

private:
    int previous_ = -1;
};

// Plan a call of N tokens on `device`. Raises on bad arguments or a choice this matrix cannot run.
LinearPlan plan_linear(const fspmm_header_t& h, int64_t N, const LinearOptions& options, int device);

// Workspace bytes of a plan for N tokens (split-K partial sums and arrival counters; 0 without split-K).
size_t linear_workspace_bytes(const fspmm_header_t& h, const LinearPlan& plan, int64_t N);

// The public names of a plan's kernel id: FSPMM_KERNEL_* and FSPMM_DECODER_*.
int kernel_kind(const LinearPlan& plan);
int decoder_kind(const LinearPlan& plan);

// Launch the planned call (arguments already validated by the C entry point).
void run_linear(const fspmm_header_t& h, const LinearPlan& plan, const void* blob, const void* x, int64_t ldx,
                int64_t N, const void* bias, void* y, int64_t ldy, float alpha, float beta, void* workspace,
                cudaStream_t stream);

}  // namespace fspmm
