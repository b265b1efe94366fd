// Prefix sums across a warp and across a CTA, shared by the kernels.
#pragma once
#include <cuda_runtime.h>

namespace fspmm {

// Sum of v over lanes 0..lane of the warp (every lane of the warp calls it).
template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const T up = __shfl_up_sync(0xFFFFFFFFu, v, d);
        if (lane >= d) v += up;
    }
    return v;
}

// Exclusive prefix sum of v over the kThreads threads of the CTA (thread order); *total gets the CTA's sum.
// Every thread calls it; warp_sums is kThreads / 32 values of shared memory, free again on return.
template <typename T, int kThreads>
__device__ __forceinline__ T block_exclusive_sum(T v, T* warp_sums, T* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const T inclusive = warp_inclusive_sum(v);
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    T before = 0, all = 0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) {
        const T s = warp_sums[w];
        before += w < warp ? s : T(0);
        all += s;
    }
    __syncthreads();
    *total = all;
    return before + inclusive - v;
}

}  // namespace fspmm
