// Split-K arrival, shared by the SpMM kernels: every CTA of an output tile writes its fp32 partial sums, then
// the last one to arrive adds all slices in slice order (so the result does not depend on scheduling).
//
// An output tile's arrival counter is 64 bits: the launch's tag (split_k_tag of LinearParams::epoch) in the high
// half and the arrivals in the low half. A counter whose high half is another tag counts as zero, and the first
// CTA to find it so installs this launch's tag with its arrival (one compare-and-swap); every other CTA adds its
// arrival with one atomic add. So a workspace needs no clearing before a launch, whatever it held (no memset in
// the stream: consecutive kernels stay adjacent for programmatic dependent launch), and arrivals do not
// contend: only the CTAs that read the counter before the tag was installed retry, once. The last CTA sets the
// count back to zero under the same tag, ready for a replay of the launch in a CUDA graph.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "format/layout.h"

namespace fspmm {

// The 32-bit tag of launch `epoch`: a mix of it (the splitmix64 finalizer of layout.h), so that counters left
// in a workspace by other data (small integers, floats) do not look like a launch's.
__device__ __forceinline__ uint32_t split_k_tag(uint32_t epoch) {
    return uint32_t(checksum_term(epoch, 0x53504C49544Bull) >> 32) | 1u;
}

// Called by every thread of the CTA once it has written its partial sums. Returns true in the last CTA of the
// output tile to arrive (it may then read every slice's sums). `s_flag` is a shared int of the CTA. Fences by one
// thread suffice, being cumulative over the CTA barriers around them: this CTA's sums are visible GPU-wide
// before its arrival, those of the others after it.
__device__ __forceinline__ bool split_k_arrive_last(unsigned long long* counter, uint32_t epoch, int splits,
                                                    int* s_flag) {
    __syncthreads();  // every thread's partial sums are written
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned long long tag = static_cast<unsigned long long>(split_k_tag(epoch)) << 32;
        unsigned long long seen = *reinterpret_cast<volatile unsigned long long*>(counter);
        uint32_t arrived;
        for (;;) {
            if ((seen & ~0xFFFFFFFFull) == tag) {  // this launch's counter: add the arrival
                arrived = static_cast<uint32_t>(atomicAdd(counter, 1ull)) + 1u;
                break;
            }
            const unsigned long long old = atomicCAS(counter, seen, tag + 1);  // install the tag, arrival 1
            if (old == seen) {
                arrived = 1u;
                break;
            }
            seen = old;  // another CTA installed it first (or the stale value changed)
        }
        __threadfence();
        *s_flag = arrived == static_cast<uint32_t>(splits);
        if (*s_flag) *counter = tag;  // every slice has arrived: count 0 again
    }
    __syncthreads();
    return *s_flag != 0;
}

}  // namespace fspmm
