// The SpMM kernels' epilogues. Split-K arrival, shared by all of them: every CTA of an output tile writes its
// fp32 partial sums, then the last one to arrive adds all slices in slice order (so the result does not depend
// on scheduling); and the pipelined kernel's whole epilogue (tile_epilogue).
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

#include <type_traits>

#include "format/layout.h"
#include "spmm/params.h"

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

// The epilogue of one CTA, once its fp32 tile [kNTile][128 rows] is staged in shared memory at cs (row stride
// kCStride): without split-K, y = alpha * sum + bias + beta * y directly; with split-K, the CTA publishes its
// partial sums and the last CTA of the output tile to arrive adds every split's, in split order.
template <class Dtype, int kNTile, int kThreads, int kGroups>
__device__ __forceinline__ void tile_epilogue(const LinearParams& p, const float* cs, int64_t m0, int64_t n0, int split,
                                              int* s_is_last) {
    const int tid = threadIdx.x;
    auto lesser = [](int64_t a, int64_t b) { return a < b ? a : b; };
    const int64_t rows = lesser(kCtaRows, p.M - m0);
    const int64_t cols = lesser(kNTile, p.N - n0);
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
        if (!split_k_arrive_last(p.counters + blockIdx.z * gridDim.x + blockIdx.x, p.epoch, p.splits, s_is_last))
            return;
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
    // path, one per kDepth splits and chunk. More runs at once for the wider N tiles of the 160-thread CTAs,
    // whose register budget allows it (measured 1-3 % faster at N = 64; more: spills at N = 32, and in the
    // 288-thread CTAs).
    auto reduce = [&](auto vec) {
        constexpr int kVec = decltype(vec)::value, kDepth = 4;
        constexpr int kChunk = kVec != 4 ? 2 : kGroups == 1 ? 1 : kNTile >= 64 ? 4 : kNTile >= 16 ? 2 : 1;
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
