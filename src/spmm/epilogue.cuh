// Split-K arrival, shared by the SpMM kernels: every CTA of an output tile writes its fp32 partial sums, then
// the last one to arrive adds all slices in slice order (so the result does not depend on scheduling).
//
// An output tile's arrival counter is one 64-bit word holding the arrivals c twice: (kSplitKMark + c) in the
// high half, c in the low half. Each arrival adds (1 << 32) + 1, which keeps the difference of the halves at
// the mark, and the last CTA writes c = 0 back, so the next launch on the workspace finds every counter ready
// and each of its CTAs arrives with one atomic add (no memset in the stream: consecutive kernels stay adjacent
// for programmatic dependent launch). A word whose halves differ by anything else, or that counts `splits` or
// more, is not a counter: whatever a workspace held before (other data, a 4-byte scalar over one half, a
// launch of another plan), a CTA whose add finds such a word installs c = 1 with a compare-and-swap instead,
// and the others add to that. The check lives in the word itself, not in a tag of the launch, so it also holds
// for a launch replayed by a CUDA graph while the workspace's memory serves other buffers between replays.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace fspmm {

constexpr uint32_t kSplitKMark = 0x53504C49u;  // "SPLI"
constexpr unsigned long long kSplitKArrival = (1ull << 32) | 1ull;

// Whether `word` is a counter (halves mark + c and c) of fewer than `splits` arrivals.
__device__ __forceinline__ bool split_k_counts(unsigned long long word, int splits) {
    const uint32_t c = static_cast<uint32_t>(word);
    return static_cast<uint32_t>(word >> 32) - c == kSplitKMark && c < static_cast<uint32_t>(splits);
}

// Called by every thread of the CTA once it has written its partial sums. Returns true in the last CTA of the
// output tile to arrive (it may then read every slice's sums). `s_flag` is a shared int of the CTA. Thread 0's
// release add publishes the sums the CTA barrier ordered before it; the last CTA's acquire fence makes the
// other CTAs' sums visible to it after the barrier that follows.
__device__ __forceinline__ bool split_k_arrive_last(unsigned long long* counter, int splits, int* s_flag) {
    __syncthreads();  // every thread's partial sums are written
    if (threadIdx.x == 0) {
        unsigned long long seen;
        asm volatile("atom.add.release.gpu.u64 %0, [%1], %2;"
                     : "=l"(seen)
                     : "l"(counter), "l"(kSplitKArrival)
                     : "memory");
        uint32_t arrived = static_cast<uint32_t>(seen) + 1u;
        if (!split_k_counts(seen, splits)) {  // the add went to a word that is not a counter (yet)
            __threadfence();
            seen += kSplitKArrival;
            for (;;) {
                if (split_k_counts(seen, splits)) {  // another CTA installed it: add the arrival
                    arrived = static_cast<uint32_t>(atomicAdd(counter, kSplitKArrival)) + 1u;
                    break;
                }
                const unsigned long long old =
                    atomicCAS(counter, seen, (static_cast<unsigned long long>(kSplitKMark) << 32) + kSplitKArrival);
                if (old == seen) {
                    arrived = 1u;
                    break;
                }
                seen = old;  // another CTA added or installed first
            }
        }
        const bool last = arrived == static_cast<uint32_t>(splits);
        if (last) {
            asm volatile("fence.acq_rel.gpu;" ::: "memory");
            *counter = static_cast<unsigned long long>(kSplitKMark) << 32;  // every slice has arrived: c = 0
        }
        *s_flag = last;
    }
    __syncthreads();
    return *s_flag != 0;
}

}  // namespace fspmm
