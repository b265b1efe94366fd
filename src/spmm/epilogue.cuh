// The end of the SpMM kernels: the split-K arrival, shared by the three kernels (every CTA of an output tile
// writes its fp32 partial sums, then the last one to arrive adds all slices in slice order, so the result
// does not depend on scheduling), and the pipelined kernel's output step (store_tile: the reduction and y).
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

#include <type_traits>

#include "format/layout.h"
#include "spmm/dtype.cuh"
#include "spmm/params.h"

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

// The output step of the pipelined kernel, once the CTA's fp32 tile [kNTile][kCtaRows] is staged in shared
// memory at cs (row stride kCStride; rows mt0 * kTileM.., tokens n0..): without split-K, y = alpha * sum +
// bias + beta * y; with split-K, the CTA publishes its partial sums and the last CTA of the output tile to
// arrive adds all slices in slice order before the same epilogue. `s_is_last` is a shared int of the CTA.
template <class Dtype, int kNTile, int kGroups, int kThreads>
__device__ __forceinline__ void store_tile(const LinearParams& p, const float* cs, int64_t mt0, int64_t n0, int split,
                                           int tid, int* s_is_last) {
    const int64_t m0 = mt0 * kTileM;
    const int64_t rows = imin<int64_t>(kCtaRows, p.M - m0);  // of this tile inside y
    const int64_t cols = imin<int64_t>(kNTile, p.N - n0);
    // Split-K partial sums are [split][N][M] fp32; with M a multiple of 4 their rows are 16-byte aligned and
    // they are written and read four rows at a time.
    const bool vec4 = p.M % 4 == 0;
    if (p.splits > 1) {
        // Publish this split's partial sums, then let the last CTA to arrive reduce in split order.
        float* mine = p.partial + (int64_t(split) * p.N + n0) * p.M + m0;
        if (vec4) {
            for (int v = tid; v < kNTile * kCtaRows / 4; v += kThreads) {
                const int n = v / (kCtaRows / 4), r = v % (kCtaRows / 4) * 4;
                if (n < cols && r < rows)
                    *reinterpret_cast<float4*>(mine + int64_t(n) * p.M + r) =
                        *reinterpret_cast<const float4*>(cs + n * kCStride + r);
            }
        } else {
            for (int idx = tid; idx < kNTile * kCtaRows; idx += kThreads) {
                const int n = idx / kCtaRows, r = idx % kCtaRows;
                if (n < cols && r < rows) mine[int64_t(n) * p.M + r] = cs[n * kCStride + r];
            }
        }
        if (!split_k_arrive_last(p.counters + blockIdx.z * gridDim.x + blockIdx.x, p.splits, s_is_last)) return;
    }
    // y element (n, r) of this tile from its sum over K: alpha, bias, beta * y.
    auto output = [&](int64_t m, const uint16_t* yp, float sum) {
        float out = p.alpha * sum;
        if (p.bias) out += Dtype::to_float(p.bias[m]);
        if (p.beta != 0.f) out += p.beta * Dtype::to_float(*yp);
        return uint32_t(Dtype::from_float(out));
    };
    auto store = [&](int n, int r, float sum) {
        uint16_t* yp = p.y + (n0 + n) * p.ldy + m0 + r;
        *yp = uint16_t(output(m0 + r, yp, sum));
    };
    // y elements (n, r..r + 3) with one 8-byte store (m0 is a multiple of 4; needs y_vec4).
    const bool y_vec4 = p.ldy % 4 == 0 && (reinterpret_cast<uintptr_t>(p.y) & 7) == 0;
    auto store4 = [&](int n, int r, const float (&sum)[4]) {
        uint16_t* yp = p.y + (n0 + n) * p.ldy + m0 + r;
        const int64_t m = m0 + r;
        *reinterpret_cast<uint2*>(yp) = make_uint2(output(m, yp, sum[0]) | output(m + 1, yp + 1, sum[1]) << 16,
                                                   output(m + 2, yp + 2, sum[2]) | output(m + 3, yp + 3, sum[3]) << 16);
    };
    // The last CTA sums the splits in order. A thread takes kChunk runs of kVec rows at a time and loads
    // them from kDepth splits at once: the reduction is a chain of L2 round trips on the kernel's critical
    // path, one per kDepth splits and chunk (params.h, reduce_chunk; the split count's model counts them).
    auto reduce = [&](auto vec) {
        constexpr int kVec = decltype(vec)::value, kDepth = kReduceDepth;
        constexpr int kChunk = kVec != 4 ? 2 : reduce_chunk(kGroups, kNTile);
        constexpr int kRuns = kNTile * kCtaRows / kVec;
        const float* tile = p.partial + n0 * p.M + m0;  // this output tile in split 0
        const int64_t split_stride = p.N * p.M;
        for (int base = tid; base < kRuns; base += kThreads * kChunk) {
            float sum[kChunk][kVec] = {};
            bool ok[kChunk];
            int64_t at[kChunk];  // offset of the run in a split's partial sums
#pragma unroll
            for (int c = 0; c < kChunk; ++c) {
                const int v = base + c * kThreads, n = v / (kCtaRows / kVec), r = v % (kCtaRows / kVec) * kVec;
                ok[c] = v < kRuns && n < cols && r < rows;
                at[c] = int64_t(n) * p.M + r;
            }
            for (int s0 = 0; s0 < p.splits; s0 += kDepth) {
                float part[kDepth][kChunk][kVec];
#pragma unroll
                for (int d = 0; d < kDepth; ++d)
#pragma unroll
                    for (int c = 0; c < kChunk; ++c) {
                        const float* src = tile + (s0 + d) * split_stride + at[c];
                        const bool load = ok[c] && s0 + d < p.splits;
                        if constexpr (kVec == 4) {
                            const float4 x = load ? __ldcg(reinterpret_cast<const float4*>(src)) : float4{};
                            part[d][c][0] = x.x, part[d][c][1] = x.y, part[d][c][2] = x.z, part[d][c][3] = x.w;
                        } else {
                            part[d][c][0] = load ? __ldcg(src) : 0.f;
                        }
                    }
#pragma unroll
                for (int d = 0; d < kDepth; ++d)
                    if (s0 + d < p.splits)
#pragma unroll
                        for (int c = 0; c < kChunk; ++c)
#pragma unroll
                            for (int e = 0; e < kVec; ++e) sum[c][e] += part[d][c][e];
            }
#pragma unroll
            for (int c = 0; c < kChunk; ++c) {
                const int v = base + c * kThreads, n = v / (kCtaRows / kVec), r = v % (kCtaRows / kVec) * kVec;
                if constexpr (kVec == 4) {  // 8-byte stores of y where possible (measured 1-4 % faster at N = 64)
                    if (ok[c] && y_vec4 && r + 4 <= rows) {
                        store4(n, r, sum[c]);
                        continue;
                    }
                }
#pragma unroll
                for (int e = 0; e < kVec; ++e)
                    if (ok[c] && r + e < rows) store(n, r + e, sum[c][e]);
            }
        }
    };
    if (p.splits > 1 && vec4) {
        reduce(std::integral_constant<int, 4>{});
    } else if (p.splits > 1) {
        reduce(std::integral_constant<int, 1>{});
    } else {
        for (int idx = tid; idx < kNTile * kCtaRows; idx += kThreads) {
            const int n = idx / kCtaRows, r = idx % kCtaRows;
            if (n < cols && r < rows) store(n, r, cs[n * kCStride + r]);
        }
    }
}

}  // namespace fspmm
