// Split-K arrival, shared by the SpMM kernels: every CTA of an output tile writes its fp32 partial sums, then
// the last one to arrive adds all slices in slice order (so the result does not depend on scheduling).
//
// An output tile's arrival counter is 64 bits: the launch's tag (LinearParams::epoch, never 0) in the high half
// and the arrivals in the low half. A counter whose high half is not this launch's tag counts as zero, and the
// last CTA sets it back to 0; so a workspace needs no clearing before a launch (no memset in the stream, and
// consecutive kernels stay adjacent for programmatic dependent launch), whatever it held.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace fspmm {

// Called by every thread of the CTA once it has written its partial sums. Returns true in the last CTA of the
// output tile to arrive (it may then read every slice's sums). `s_flag` is a shared int of the CTA. Fences by one
// thread suffice, being cumulative over the CTA barriers around them: this CTA's sums are visible GPU-wide
// before its arrival, those of the others after it.
__device__ __forceinline__ bool split_k_arrive_last(unsigned long long* counter, uint32_t epoch, int splits,
                                                    int* s_flag) {
    __syncthreads();  // every thread's partial sums are written
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned long long tag = static_cast<unsigned long long>(epoch) << 32;
        unsigned long long old = *reinterpret_cast<volatile unsigned long long*>(counter), seen;
        do {  // add one arrival to this launch's count (a counter of another tag counts as zero)
            seen = old;
            old = atomicCAS(counter, seen, ((seen >> 32) == epoch ? seen : tag) + 1);
        } while (old != seen);
        const uint32_t arrived = ((seen >> 32) == epoch ? static_cast<uint32_t>(seen) : 0u) + 1u;
        __threadfence();
        *s_flag = arrived == static_cast<uint32_t>(splits);
        if (*s_flag) *counter = 0ull;  // every slice has arrived
    }
    __syncthreads();
    return *s_flag != 0;
}

}  // namespace fspmm
