// Split-K arrival, shared by the SpMM kernels: every CTA of an output tile writes its fp32 partial sums, then
// the last one to arrive adds all slices in slice order (so the result does not depend on scheduling).
//
// An output tile's arrival counter is 64 bits: a fixed marker (kSplitKIdle) in the high half and the arrivals in
// the low half. Every CTA adds its arrival with one atomic add (one memory round trip) and learns from the old
// value how many came before it; the last CTA sets the counter back to the marker with no arrivals, so the
// next launch using the workspace (or a CUDA-graph replay) finds it ready. A counter without the marker (memory
// that held other data) counts as zero: the CTAs that find it so install the marker with a compare-and-swap
// (whose retries end once one of them succeeds; the rest then add). So a workspace needs no clearing before a
// launch, whatever it held (no memset in the stream: consecutive kernels stay adjacent for programmatic
// dependent launch), and arrivals do not contend.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "format/layout.h"
#include "ptx/ptx.cuh"

namespace fspmm {

// The high half of an arrival counter (a value unlikely in other data: small integers and floats are not it).
constexpr unsigned long long kSplitKIdle = 0x5350'4C49ull << 32;
constexpr unsigned long long kSplitKMarkerMask = ~0xFFFFFFFFull;

// Called by every thread of the CTA once it has written its partial sums. Returns true in the last CTA of the
// output tile to arrive (it may then read every slice's sums). `s_flag` is a shared int of the CTA. Fences by one
// thread suffice, being cumulative over the CTA barriers around them: this CTA's sums are visible GPU-wide
// before its arrival (release), and the last CTA sees all the others' after it (acquire; the other CTAs read
// nothing and skip it).
__device__ __forceinline__ bool split_k_arrive_last(unsigned long long* counter, int splits, int* s_flag) {
    __syncthreads();  // every thread's partial sums are written
    if (threadIdx.x == 0) {
        unsigned long long seen = ptx::atomic_add_release_gpu(counter, 1ull);
        uint32_t arrived = static_cast<uint32_t>(seen) + 1u;
        if ((seen & kSplitKMarkerMask) != kSplitKIdle) {  // not a counter yet: install the marker (or find it)
            ptx::fence_acq_rel_gpu();  // (the release above went to the overwritten value)
            seen += 1ull;
            for (;;) {
                const unsigned long long old = atomicCAS(counter, seen, kSplitKIdle + 1ull);
                if (old == seen) {
                    arrived = 1u;
                    break;
                }
                if ((old & kSplitKMarkerMask) == kSplitKIdle) {
                    arrived = static_cast<uint32_t>(atomicAdd(counter, 1ull)) + 1u;
                    break;
                }
                seen = old;  // another CTA's add came in between
            }
        }
        const bool last = arrived == static_cast<uint32_t>(splits);
        if (last) {
            ptx::fence_acq_rel_gpu();  // acquire: the other slices' sums
            *counter = kSplitKIdle;    // every slice has arrived: no arrivals again
        }
        *s_flag = last;
    }
    __syncthreads();
    return *s_flag != 0;
}

}  // namespace fspmm
