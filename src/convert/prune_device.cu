// Magnitude pruning on the GPU, with exactly the selection of prune_host: the threshold magnitude T (the
// 15-bit magnitude bits & 0x7FFF of the entry of rank k) comes from a radix select, then every entry below T
// is zeroed, and the first (k - below) entries equal to T in position order (column order for row scope,
// row-major order for tensor scope). All counts are integers, so the result does not depend on the thread
// schedule.
//
// Row scope: one CTA per row (grid-stride). A row that fits the CTA's shared-memory stage (K <= 23552 at up
// to eight CTAs per SM, up to about 114000 on sm_90 with fewer CTAs) is read from memory once, selected and
// zeroed there, and written back once (1.3x the in-place kernel on the H200, docs/PERFORMANCE.md); a longer
// one is worked on in place. Its select has two levels (a 256-bin histogram of m >> 7, then a 128-bin one of
// m & 127 among the entries of the selected bin).
// Tensor scope, two passes over the matrix instead of four or five: one histogram of all 32768 magnitudes (a
// CTA per SM, each with the whole histogram in shared memory and its next loads in flight beside it; two
// levels of 256 and 128 bins, one pass each, where the device has less shared memory or the matrix fewer
// entries), a select, and the zeroing pass, in any order, of the entries below the threshold. The threshold
// entries to zero (the first ones in row-major order) are left to a tie pass: the zeroing pass notes which
// 16-byte accesses hold threshold entries and counts them per work item and per group of 256 items, one CTA
// scans the group counts, and the tie pass reads only the noted accesses of the items before the one where
// the count reaches `ties`.
#include "convert/prune_device.h"

#include "common/error.h"
#include "common/scan.cuh"
#include "convert/convert_device.h"
#include "flashspmm.h"
#include "ptx/ptx.cuh"
#include "spmm/launch.h"

namespace fspmm {
namespace {

constexpr int kThreads = 256;                          // threads per CTA of the row and zeroing kernels
constexpr int kWarps = kThreads / 32;
constexpr int kHistThreads = 1024;                     // tensor-scope histogram and select kernels
constexpr int64_t kHistEntries = 1 << 16;             // entries per CTA of the tensor histogram, at least
constexpr int kMagnitudeBits = 15;                     // bits & 0x7FFF
constexpr int kAllBins = 1 << kMagnitudeBits;          // the one-level tensor histogram
constexpr int kFineBits = 7;                           // low magnitude bits resolved by a second level
constexpr int kCoarseBins = 1 << (kMagnitudeBits - kFineBits);
constexpr int kFineBins = 1 << kFineBits;
constexpr int kVec = 8;                                // elements per 16-byte access
constexpr int kUnroll = 4;                             // accesses in flight per thread (tensor scope)
constexpr int64_t kSpanCols = kVec * kThreads;         // columns of one span (tensor scope)
constexpr uint32_t kFlushAt = 1u << 30;                // a CTA flushes its 32-bit histogram before it can wrap
constexpr int kBlocksPerSm = 8;                        // CTAs per SM of the row and zeroing kernels
// Largest row staged in shared memory (K <= 23552): with the static shared memory, within the 48 KB a launch
// may use without opting in (a larger stage, at fewer CTAs per SM, was slower: EXPERIMENTS.md).
constexpr int kRowStageBytes = 46 * 1024;
constexpr uint32_t kFullMask = 0xFFFFFFFFu;
constexpr size_t kAlign = 16;  // workspace sections start 16-byte aligned

static_assert(kCoarseBins % 32 == 0 && kFineBins % 32 == 0, "select_bin gives every lane whole bins");
static_assert(kCoarseBins >= kFineBins, "the row histogram holds both levels");
static_assert(kAllBins % kHistThreads == 0, "the tensor select gives every thread whole bins");

// Tensor-scope state at the start of the workspace (zeroed at the start of each call), then the tie counts and
// words (TieLayout).
struct PruneState {
    unsigned long long hist[kAllBins];  // counts of the current level's bins over the matrix
    unsigned long long below;  // entries with magnitude below the bins selected so far
    unsigned long long ties;  // entries equal to the threshold that are zeroed (the first ones)
    unsigned int prefix;  // magnitude bits selected by the levels so far (the threshold at the end)
};

// `bytes` rounded up to a multiple of kAlign.
constexpr size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

constexpr int kTieWords = 32;     // tie words per work item (bits of its 16-byte accesses: tensor_zero_kernel)
constexpr int64_t kTieGroup = 256;  // work items per group count of threshold entries

// The tensor-scope workspace after PruneState, in bytes from its start: per group of kTieGroup work items and
// per item its count of threshold entries (zeroed at the start of each call with the state), then per item
// its kTieWords tie words (written by the zeroing pass before they are read).
struct TieLayout {
    size_t groups, counts, words, zeroed, total;
};
TieLayout tie_layout(int64_t items) {
    const size_t n = static_cast<size_t>(items);  // < 2^51
    const size_t groups_bytes = (n + kTieGroup - 1) / kTieGroup * sizeof(unsigned long long);
    TieLayout t{};
    t.groups = align_up(sizeof(PruneState));
    t.counts = t.groups + align_up(groups_bytes);
    t.zeroed = t.counts + n * sizeof(unsigned long long);
    t.words = t.counts + align_up(n * sizeof(unsigned long long));
    t.total = t.words + align_up(n * kTieWords * sizeof(uint32_t));
    return t;
}

// One level of the radix select: bin (m >> shift) & (2^bits - 1) of the entries with m >> (shift + bits)
// equal to the prefix selected by the levels before.
struct Level {
    int shift, bits;
};

// A histogram bin and the number of entries in the bins before it.
struct Selection {
    unsigned int bin;
    unsigned long long below;
};

// Tensor scope: the matrix is cut into spans of kSpanCols columns of one row (the last span of a row may be
// shorter), numbered in row-major order; work item i is spans kUnroll i .. kUnroll i + kUnroll - 1, so
// items are the same size whatever K is, and the items in order cover the matrix in row-major order.
struct Span {
    int64_t row;
    int c0, c1;  // columns [c0, c1) of the row (K < 2^31); empty past the last span
};

__host__ __device__ inline int64_t spans_per_row(int64_t K) { return (K + kSpanCols - 1) / kSpanCols; }

// Work items of an M x K matrix.
__host__ __device__ inline int64_t work_items(int64_t M, int64_t K) {
    return (M * spans_per_row(K) + kUnroll - 1) / kUnroll;
}

// The 15-bit magnitude of an fp16 or bf16 bit pattern (zeros first, NaN after +Inf).
__device__ __forceinline__ uint32_t magnitude(uint16_t bits) { return bits & 0x7FFFu; }

// Eight consecutive entries of a row, columns [c, c + 8), as bit patterns; columns at or past `end` are
// neither read nor written.
struct Vec8 {
    uint16_t e[kVec];
};

__device__ __forceinline__ Vec8 load8(const uint16_t* row, int c, int end, bool vec) {
    Vec8 v;
    if (vec && c + kVec <= end) {
        const uint4 q = *reinterpret_cast<const uint4*>(row + c);
        memcpy(&v, &q, sizeof q);
        return v;
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) v.e[i] = c + i < end ? row[c + i] : 0;
    return v;
}

__device__ __forceinline__ void store8(uint16_t* row, int c, int end, bool vec, const Vec8& v) {
    if (vec && c + kVec <= end) {
        uint4 q;
        memcpy(&q, &v, sizeof q);
        *reinterpret_cast<uint4*>(row + c) = q;
        return;
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i)
        if (c + i < end) row[c + i] = v.e[i];
}

// Where a work item's first span lies: its row and its span j in the row. A kernel that visits every n-th item
// steps its cursor by the SpanStep of n (no division per item).
struct SpanCursor {
    int64_t row, j;
};
struct SpanStep {
    int64_t rows, j;
};
__device__ __forceinline__ SpanCursor cursor_of(int64_t K, int64_t item) {
    const int64_t per_row = spans_per_row(K), q0 = item * kUnroll, row = q0 / per_row;
    return {row, q0 - row * per_row};
}
__device__ __forceinline__ SpanStep span_step(int64_t K, int64_t n) {
    const int64_t per_row = spans_per_row(K), q = n * kUnroll;
    return {q / per_row, q % per_row};
}
__device__ __forceinline__ SpanCursor advance(SpanCursor c, SpanStep s, int64_t K) {
    c.row += s.rows;
    c.j += s.j;
    if (c.j >= spans_per_row(K)) c.j -= spans_per_row(K), ++c.row;
    return c;
}

// Thread `tid`'s access in each span of the work item at cursor c (columns c0 + 8 tid .., so that every load
// instruction of a warp reads 512 contiguous bytes): col[u] is its first column in span sp[u] (empty past the
// last row); with kLoad also its entries v[u], all loads issued before any is used.
template <bool kLoad>
__device__ __forceinline__ void item_access(const uint16_t* w, int64_t M, int64_t K, int64_t ld, SpanCursor c, int tid,
                                            bool vec, Span (&sp)[kUnroll], int (&col)[kUnroll], Vec8* v) {
    const int64_t per_row = spans_per_row(K);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
        const int64_t c0 = c.j * kSpanCols;
        sp[u] = c.row < M ? Span{c.row, static_cast<int>(c0), static_cast<int>(min(c0 + kSpanCols, K))} : Span{0, 0, 0};
        if (++c.j == per_row) c.j = 0, ++c.row;
        col[u] = sp[u].c0 + tid * kVec;
        if (kLoad) v[u] = load8(w + sp[u].row * ld, col[u], sp[u].c1, vec);
    }
}

__device__ __forceinline__ void item_spans(int64_t M, int64_t K, SpanCursor c, int tid, Span (&sp)[kUnroll],
                                           int (&col)[kUnroll]) {
    item_access<false>(nullptr, M, K, 0, c, tid, false, sp, col, nullptr);
}
__device__ __forceinline__ void item_spans(int64_t M, int64_t K, int64_t item, int tid, Span (&sp)[kUnroll],
                                           int (&col)[kUnroll]) {
    item_spans(M, K, cursor_of(K, item), tid, sp, col);
}

// The same accesses, copied into this thread's slots of a shared-memory item buffer (slot u: access u, entries
// past the span zero) with cp.async where whole and 16-byte aligned; closes a cp.async group. The thread alone
// reads its slots, after waiting for the group.
__device__ __forceinline__ void stage_item(const uint16_t* w, int64_t ld, const Span (&sp)[kUnroll],
                                           const int (&col)[kUnroll], bool vec, uint4 (*slots)[kThreads], int tid) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
        const uint16_t* src = w + sp[u].row * ld + col[u];
        if (vec && col[u] + kVec <= sp[u].c1) {
            ptx::cp_async_16(ptx::smem_addr(&slots[u][tid]), src, 16);
        } else {
            const Vec8 v = load8(w + sp[u].row * ld, col[u], sp[u].c1, false);
            memcpy(&slots[u][tid], &v, sizeof v);
        }
    }
    ptx::cp_async_commit();
}

// Rank of this thread's flag among the set flags of the CTA (thread order); *total gets their number.
// Every thread calls it; warp_counts is kWarps words of shared memory.
__device__ uint32_t block_rank(bool flag, uint32_t* warp_counts, uint32_t* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t ballot = __ballot_sync(kFullMask, flag);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    uint32_t before = 0, all = 0;
    for (int i = 0; i < kWarps; ++i) {
        const uint32_t c = warp_counts[i];
        before += i < warp ? c : 0;
        all += c;
    }
    __syncthreads();  // warp_counts is reused by the next call
    *total = all;
    return before + __popc(ballot & ((1u << lane) - 1u));
}

// Run by one whole warp: the bin b of hist[0, bins) with below(b) <= target < below(b) + hist[b], where
// below(b) counts the entries of the bins before b. target must be below the histogram's total.
template <typename Count>
__device__ void select_bin(const Count* hist, int bins, unsigned long long target, Selection* out) {
    const int lane = threadIdx.x & 31;
    if (lane == 0) *out = Selection{0, 0};  // stays only if the matrix changed during the call
    __syncwarp();
    const int per_lane = bins / 32;
    const int first = lane * per_lane;
    unsigned long long sum = 0;
    for (int j = 0; j < per_lane; ++j) sum += hist[first + j];
    const unsigned long long end = warp_inclusive_sum(sum);
    unsigned long long below = end - sum;
    if (below <= target && target < end) {  // one lane: its bins hold the target
        int b = first;
        while (below + hist[b] <= target) below += hist[b++];
        *out = Selection{static_cast<unsigned int>(b), below};
    }
    __syncwarp();
}

// Set hist[0, bins) to zero (the caller synchronises before using it).
__device__ __forceinline__ void clear_bins(uint32_t* hist, int bins) {
    for (int i = threadIdx.x; i < bins; i += blockDim.x) hist[i] = 0;
}

// Count one entry into a shared histogram of level (kShift, kBits). Zeros (the most frequent magnitude of a matrix
// pruned before) are only counted in *zeros, so that they do not serialise on one shared-memory word.
template <int kShift, int kBits>
__device__ __forceinline__ void count_entry(uint32_t m, uint32_t prefix, uint32_t* hist, uint32_t* zeros) {
    if ((m >> (kShift + kBits)) != prefix) return;
    if (m == 0)
        ++*zeros;
    else
        atomicAdd(&hist[(m >> kShift) & ((1u << kBits) - 1u)], 1u);
}

// Count row[0, K) into a shared histogram of level (kShift, kBits) (zeros into bin 0 after a CTA reduction).
template <int kShift, int kBits>
__device__ void count_row(const uint16_t* row, int K, uint32_t prefix, uint32_t* hist) {
    uint32_t zeros = 0;
    for (int c = threadIdx.x; c < K; c += kThreads) count_entry<kShift, kBits>(magnitude(row[c]), prefix, hist, &zeros);
    zeros = __reduce_add_sync(kFullMask, zeros);
    if ((threadIdx.x & 31) == 0 && zeros != 0) atomicAdd(&hist[0], zeros);
}

// Zero the entries of a row below `threshold`, and its first `ties` entries equal to it (column order).
// A staged row: each thread takes a run of consecutive columns, so that one CTA scan ranks the threshold
// entries. A row in global memory: the threads take consecutive columns (coalesced), one CTA scan per 256
// columns until the ties are placed.
template <bool kStaged>
__device__ void zero_row(uint16_t* row, int K, uint32_t threshold, unsigned long long ties, uint32_t* warp_sums) {
    if (kStaged) {
        // A run of 2 (mod 4) entries: an odd word stride between the threads' runs, so that a warp's
        // accesses fall in 32 different shared-memory banks.
        const int64_t run = ((int64_t{K} + kThreads - 1) / kThreads + 1) / 4 * 4 + 2;
        const int c0 = static_cast<int>(min(int64_t{K}, threadIdx.x * run));
        const int c1 = static_cast<int>(min(int64_t{K}, c0 + run));
        uint32_t mine = 0;
        if (ties != 0)  // the same in every thread
            for (int c = c0; c < c1; ++c) mine += magnitude(row[c]) == threshold;
        uint32_t total;
        unsigned long long seen = ties != 0 ? block_exclusive_sum<uint32_t, kThreads>(mine, warp_sums, &total) : 0;
        for (int c = c0; c < c1; ++c) {
            const uint32_t m = magnitude(row[c]);
            if (m < threshold || (m == threshold && seen++ < ties)) row[c] = 0;
        }
        return;
    }
    unsigned long long seen = 0;  // threshold entries in the steps before this one
    for (int64_t base = 0; base < K; base += kThreads) {
        const int64_t c = base + threadIdx.x;
        const uint32_t m = c < K ? magnitude(row[c]) : 0xFFFFFFFFu;
        bool zero = m < threshold;
        if (seen < ties) {  // the same in every thread
            uint32_t total;
            const uint32_t rank = block_rank(m == threshold, warp_sums, &total);
            zero = zero || (m == threshold && seen + rank < ties);
            seen += total;
        }
        if (zero) row[c] = 0;
    }
}

// Copy n entries between a matrix row and the shared-memory stage (both 16-byte aligned when vec), with
// kCopyInFlight loads of each thread issued before their stores (the compiler cannot move a load past a
// store through a pointer that may alias it), so that a CTA has enough bytes in flight for a long row.
constexpr int kCopyInFlight = 2;
__device__ __forceinline__ void copy_row(uint16_t* dst, const uint16_t* src, int n, bool vec) {
    if (vec) {
        const int n16 = n / kVec;
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < n16; i += kCopyInFlight * kThreads) {
            uint4 q[kCopyInFlight];
#pragma unroll
            for (int u = 0; u < kCopyInFlight; ++u)
                if (i + u * kThreads < n16) q[u] = s[i + u * kThreads];
#pragma unroll
            for (int u = 0; u < kCopyInFlight; ++u)
                if (i + u * kThreads < n16) d[i + u * kThreads] = q[u];
        }
        for (int c = n16 * kVec + threadIdx.x; c < n; c += kThreads) dst[c] = src[c];
    } else {
        for (int c = threadIdx.x; c < n; c += kThreads) dst[c] = src[c];
    }
}

// Row scope: one CTA per row (grid-stride) selects the row's threshold and zeroes. Needs 0 < k < K. With
// kStaged the row is copied into the dynamic shared memory (K entries) and back, so that its three passes
// read shared memory instead of the matrix.
template <bool kStaged>
__global__ void
__launch_bounds__(kThreads, kStaged ? kBlocksPerSm : 1) prune_rows_kernel(uint16_t* w, int64_t M, int64_t K, int64_t ld,
                                                              int64_t k, bool vec) {
    extern __shared__ uint4 stage[];
    __shared__ uint32_t hist[kCoarseBins];
    __shared__ uint32_t warp_sums[kWarps];
    __shared__ Selection sel;
    const bool selector = threadIdx.x < 32;  // warp 0 reads the histograms
    const int n = static_cast<int>(K);  // K < 2^31
    for (int64_t r = blockIdx.x; r < M; r += gridDim.x) {
        uint16_t* row = kStaged ? reinterpret_cast<uint16_t*>(stage) : w + r * ld;
        if (kStaged) copy_row(row, w + r * ld, n, vec);
        clear_bins(hist, kCoarseBins);
        __syncthreads();
        count_row<kFineBits, kMagnitudeBits - kFineBits>(row, n, 0, hist);
        __syncthreads();
        if (selector) select_bin(hist, kCoarseBins, static_cast<unsigned long long>(k), &sel);
        __syncthreads();
        const uint32_t coarse = sel.bin;
        unsigned long long below = sel.below;
        clear_bins(hist, kFineBins);
        __syncthreads();
        count_row<0, kFineBits>(row, n, coarse, hist);
        __syncthreads();
        if (selector) select_bin(hist, kFineBins, static_cast<unsigned long long>(k) - below, &sel);
        __syncthreads();
        const uint32_t threshold = (coarse << kFineBits) | sel.bin;
        below += sel.below;
        zero_row<kStaged>(row, n, threshold, static_cast<unsigned long long>(k) - below, warp_sums);
        if (kStaged) {
            __syncthreads();
            copy_row(w + r * ld, row, n, vec);
            __syncthreads();  // the stage is refilled for the next row
        }
    }
}

// Tensor scope, one pass per level: each CTA counts its work items into a shared histogram of the level's
// 2^bits bins (dynamic shared memory) and adds it to the workspace's. Zeros are counted per thread. With
// kStaged each thread's accesses of the next step are copied (cp.async) into its slots of a shared-memory
// item buffer after the bins while it counts the current ones, so that the loads overlap the counting.
constexpr int kItemsPerStep = kHistThreads / kThreads;  // work items a histogram CTA takes at a time
constexpr size_t kHistStage = size_t{kItemsPerStep} * kUnroll * kThreads * sizeof(uint4);
template <int kShift, int kBits, bool kStaged>
__global__ void __launch_bounds__(kHistThreads) tensor_histogram_kernel(const uint16_t* w, int64_t M, int64_t K,
                                                                        int64_t ld, int64_t items, bool vec,
                                                                        PruneState* state) {
    extern __shared__ __align__(16) uint32_t bins[];  // n_bins counts, then (kStaged) the item buffer
    constexpr int n_bins = 1 << kBits;
    const uint32_t prefix = state->prefix;
    clear_bins(bins, n_bins);
    __syncthreads();
    uint32_t zeros = 0;
    uint32_t pending = 0;  // entries counted since the last flush (the same in every thread)
    auto flush = [&] {
        __syncthreads();
        for (int i = threadIdx.x; i < n_bins; i += kHistThreads) {
            if (bins[i] != 0) atomicAdd(&state->hist[i], static_cast<unsigned long long>(bins[i]));
            bins[i] = 0;
        }
        const uint32_t z = __reduce_add_sync(kFullMask, zeros);
        if ((threadIdx.x & 31) == 0 && z != 0) atomicAdd(&state->hist[0], static_cast<unsigned long long>(z));
        zeros = 0;
        __syncthreads();
    };
    // A CTA of kHistThreads threads takes kItemsPerStep work items at a time, kThreads threads each.
    const int part = threadIdx.x / kThreads, tid = threadIdx.x % kThreads;
    const int64_t stride = int64_t{gridDim.x} * kItemsPerStep;
    uint4(*slots)[kThreads] = reinterpret_cast<uint4(*)[kThreads]>(bins + n_bins) + part * kUnroll;
    Span sp[kUnroll];
    int col[kUnroll];
    int64_t base = int64_t{blockIdx.x} * kItemsPerStep;
    const SpanStep step = span_step(K, stride);
    SpanCursor cursor = cursor_of(K, base + part);  // of the item whose accesses come next
    if (kStaged) {
        item_spans(M, K, cursor, tid, sp, col);
        cursor = advance(cursor, step, K);
        if (base + part < items) stage_item(w, ld, sp, col, vec, slots, tid);
    }
    for (; base < items; base += stride) {
        if (pending >= kFlushAt) {
            flush();
            pending = 0;
        }
        const int64_t item = base + part;
        Vec8 v[kUnroll];
        int valid[kUnroll];  // entries of access u inside its span
        if (kStaged) {
            ptx::cp_async_wait<0>();
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                memcpy(&v[u], &slots[u][tid], sizeof v[u]);
                valid[u] = max(0, min(kVec, sp[u].c1 - col[u]));
            }
            if (item + stride < items) {  // the next step's copy, into the slots just read
                item_spans(M, K, cursor, tid, sp, col);
                stage_item(w, ld, sp, col, vec, slots, tid);
            }
            cursor = advance(cursor, step, K);
        } else if (item < items) {
            item_access<true>(w, M, K, ld, cursor, tid, vec, sp, col, v);
            cursor = advance(cursor, step, K);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) valid[u] = max(0, min(kVec, sp[u].c1 - col[u]));
        }
        if (item < items) {
#pragma unroll
            for (int u = 0; u < kUnroll; ++u)
#pragma unroll
                for (int i = 0; i < kVec; ++i)
                    if (i < valid[u]) count_entry<kShift, kBits>(magnitude(v[u].e[i]), prefix, bins, &zeros);
        }
        pending += static_cast<uint32_t>(kItemsPerStep * kUnroll * kSpanCols);
    }
    flush();
}

// One butterfly step of transpose_sum over the lanes `kWidth` apart: each lane keeps the half of v[0, 2 kWidth)
// whose index has its lane bit, plus its partner's copy of that half, in v[0, kWidth).
template <int kWidth, typename T>
__device__ __forceinline__ void transpose_step(T (&v)[32]) {
    const bool upper = (threadIdx.x & kWidth) != 0;
#pragma unroll
    for (int j = 0; j < kWidth; ++j) {
        const T send = upper ? v[j] : v[j + kWidth];
        const T keep = upper ? v[j + kWidth] : v[j];
        v[j] = keep + __shfl_xor_sync(kFullMask, send, kWidth);
    }
}

// Sum over the warp's lanes of v[lane's index]: on return lane l holds the sum of every lane's v[l] (v is
// consumed). Five butterfly steps, 31 shuffles instead of 32 warp reductions.
template <typename T>
__device__ __forceinline__ T transpose_sum(T (&v)[32]) {
    transpose_step<16>(v);
    transpose_step<8>(v);
    transpose_step<4>(v);
    transpose_step<2>(v);
    transpose_step<1>(v);
    return v[0];
}

// Tensor scope, after each level's histogram (one CTA of kHistThreads): the bin that holds the entry of
// rank k, appended to the prefix; the entries below it; after the last level the number of threshold
// entries to zero, else the histogram cleared for the next level. The bins are read in groups (thread t:
// group t, its kAllBins / kHistThreads bins for the one-level histogram, one bin otherwise), coalesced: lane
// l of warp w reads bin l of each of its warp's 32 groups, and transpose_sum gives each lane its group's
// count. One CTA scan finds the group, one warp scan the bin in it.
__global__ void __launch_bounds__(kHistThreads) tensor_select_kernel(PruneState* state, Level lv, int64_t k,
                                                                     bool last) {
    constexpr int kGroupBins = kAllBins / kHistThreads;
    static_assert(kGroupBins == 32, "a warp's groups are transposed across its 32 lanes");
    __shared__ unsigned long long warp_sums[kHistThreads / 32];
    __shared__ int found_group;
    __shared__ unsigned long long found_below;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n_bins = 1 << lv.bits;
    const int group_bins = n_bins == kAllBins ? kGroupBins : 1;  // the two-level bins fit one per thread
    const unsigned long long target = static_cast<unsigned long long>(k) - state->below;
    unsigned long long* hist = state->hist;
    if (tid == 0) found_group = -1;  // stays only if the matrix changed during the call
    unsigned long long count;  // of group tid
    if (group_bins == kGroupBins) {
        unsigned long long v[kGroupBins];  // bin 32 i + lane of the warp's bins, for each of its groups i
#pragma unroll
        for (int i = 0; i < kGroupBins; ++i) v[i] = hist[warp * 32 * kGroupBins + i * kGroupBins + lane];
        count = transpose_sum(v);
    } else {
        count = tid < n_bins ? hist[tid] : 0;
    }
    unsigned long long total;
    const unsigned long long below = block_exclusive_sum<unsigned long long, kHistThreads>(count, warp_sums, &total);
    if (below <= target && target < below + count) {  // one thread: its group holds the target
        found_group = tid;
        found_below = below;
    }
    __syncthreads();
    const int group = found_group;
    if (warp == 0 && group >= 0) {  // the bin inside the group
        const unsigned long long c = lane < group_bins ? hist[group * group_bins + lane] : 0;
        const unsigned long long end = found_below + warp_inclusive_sum(c);
        const unsigned int past = __ballot_sync(kFullMask, end > target);
        if (lane == __ffs(past) - 1) {
            const unsigned long long all_below = state->below + end - c;
            state->prefix = (state->prefix << lv.bits) | static_cast<unsigned int>(group * group_bins + lane);
            state->below = all_below;
            if (last) state->ties = static_cast<unsigned long long>(k) - all_below;
        }
    }
    if (last) return;  // the call's memset zeroes the histogram for the next call
    __syncthreads();   // warp 0 has read its bins
    if (group_bins == kGroupBins) {
#pragma unroll
        for (int i = 0; i < kGroupBins; ++i) hist[warp * 32 * kGroupBins + i * kGroupBins + lane] = 0;
    } else if (tid < n_bins) {
        hist[tid] = 0;
    }
}

// Two entries of a 32-bit word at once against the threshold magnitude T (t2 = T | T << 16, T < 2^15):
// bits 15 and 31 mark the entries whose magnitude is below T (below_bits) or equal to it (equal_bits). Each
// half computes (m | 0x8000) - T >= 1, or (x | 0x8000) - 1 >= 0x7FFF, so no borrow crosses the halves.
__device__ __forceinline__ uint32_t below_bits(uint32_t w, uint32_t t2) {
    return ~(((w & 0x7FFF7FFFu) | 0x80008000u) - t2) & 0x80008000u;
}
__device__ __forceinline__ uint32_t equal_bits(uint32_t w, uint32_t t2) {
    return ~((((w & 0x7FFF7FFFu) ^ t2) | 0x80008000u) - 0x00010001u) & 0x80008000u;
}

// Tensor scope, the zeroing pass (work items in any order, grid-stride): zero the entries below the threshold.
// Where threshold entries are to be zeroed too (ties != 0), note which accesses hold them for the tie pass:
// bit `lane` of tie word u * kWarps + warp of the item (kTieWords per item: in that order the accesses are in
// row-major order), and add the item's number of them to counts[item] and to its group's count. Each
// thread's accesses of its next kZeroAhead items are copied (cp.async) into its slots of a ring of
// shared-memory item buffers while it works on the current one.
static_assert(kTieWords == kUnroll * kWarps && kTieWords == 32, "the tie pass reads an item's words with one warp");
constexpr int kZeroAhead = 1;  // two: no faster, and slower on small matrices (EXPERIMENTS.md)
constexpr size_t kZeroStage = (kZeroAhead + 1) * size_t{kUnroll} * kThreads * sizeof(uint4);  // <= 48 KB
__global__ void __launch_bounds__(kThreads, 4)
    tensor_zero_kernel(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t items, bool vec, const PruneState* state,
                       unsigned long long* groups, unsigned long long* counts, uint32_t* tie_words) {
    extern __shared__ uint4 zero_stage[];
    uint4(*ring)[kUnroll][kThreads] = reinterpret_cast<uint4(*)[kUnroll][kThreads]>(zero_stage);
    const uint32_t threshold = state->prefix;
    const uint32_t t2 = threshold | threshold << 16;
    const bool note_ties = state->ties != 0;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    Span sp[kUnroll];
    int col[kUnroll];
    // The cursors of this CTA's current item and of the next one to copy, stepped by gridDim.x items.
    const SpanStep step = span_step(K, gridDim.x);
    SpanCursor current = cursor_of(K, blockIdx.x), ahead = current;
    // Copy the item at `ahead` (if it exists) into ring buffer b, then step `ahead`; closes a cp.async group.
    auto issue = [&](int64_t item, int b) {
        if (item < items) {
            item_spans(M, K, ahead, tid, sp, col);
            stage_item(w, ld, sp, col, vec, ring[b], tid);
        } else {
            ptx::cp_async_commit();
        }
        ahead = advance(ahead, step, K);
    };
#pragma unroll
    for (int d = 0; d < kZeroAhead; ++d) issue(blockIdx.x + int64_t{d} * gridDim.x, d);
    int b = 0;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x, b = b == kZeroAhead ? 0 : b + 1) {
        issue(item + int64_t{kZeroAhead} * gridDim.x, b == 0 ? kZeroAhead : b - 1);
        ptx::cp_async_wait<kZeroAhead>();
        item_spans(M, K, current, tid, sp, col);
        current = advance(current, step, K);
        uint32_t n_ties = 0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            uint32_t ties_here = 0;  // threshold entries of this access
            if (vec && col[u] + kVec <= sp[u].c1) {  // a whole access: two entries per 32-bit word
                uint4 q = ring[b][u][tid];
                uint32_t* words = &q.x;
                uint32_t diff = 0;
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const uint32_t out = words[k] & ~((below_bits(words[k], t2) >> 15) * 0xFFFFu);
                    ties_here += __popc(equal_bits(words[k], t2));
                    diff |= out ^ words[k];
                    words[k] = out;
                }
                if (diff != 0) *reinterpret_cast<uint4*>(w + sp[u].row * ld + col[u]) = q;
            } else {
                Vec8 v;
                memcpy(&v, &ring[b][u][tid], sizeof v);
                Vec8 out = v;
                bool changed = false;
#pragma unroll
                for (int i = 0; i < kVec; ++i) {
                    const bool in = col[u] + i < sp[u].c1;
                    const uint32_t m = magnitude(v.e[i]);
                    ties_here += in && m == threshold;
                    if (in && m < threshold && v.e[i] != 0) {
                        out.e[i] = 0;
                        changed = true;
                    }
                }
                if (changed) store8(w + sp[u].row * ld, col[u], sp[u].c1, vec, out);
            }
            if (note_ties) {  // the same in every thread
                const uint32_t word = __ballot_sync(kFullMask, ties_here != 0);
                if (lane == 0) tie_words[item * kTieWords + u * kWarps + warp] = word;
                n_ties += ties_here;
            }
        }
        if (note_ties) {
            n_ties = __reduce_add_sync(kFullMask, n_ties);
            if (lane == 0 && n_ties != 0) {
                atomicAdd(&counts[item], static_cast<unsigned long long>(n_ties));
                atomicAdd(&groups[item / kTieGroup], static_cast<unsigned long long>(n_ties));
            }
        }
    }
    ptx::cp_async_wait<0>();
}

// Tensor scope, after the zeroing pass (one CTA of kHistThreads): each group's count of threshold entries
// replaced by the number of them in the groups before it, saturated at ties. Thread t takes kScanGroups
// consecutive groups of each step.
constexpr int kScanGroups = 8;
__global__ void __launch_bounds__(kHistThreads)
    tensor_tie_scan_kernel(const PruneState* state, unsigned long long* counts, int64_t n) {
    __shared__ unsigned long long warp_sums[kHistThreads / 32];
    const unsigned long long ties = state->ties;
    if (ties == 0) return;
    unsigned long long before = 0;  // the same in every thread
    for (int64_t base = 0; base < n; base += int64_t{kHistThreads} * kScanGroups) {
        const int64_t first = base + int64_t{threadIdx.x} * kScanGroups;
        unsigned long long c[kScanGroups], sum = 0;
#pragma unroll
        for (int j = 0; j < kScanGroups; ++j) {
            c[j] = first + j < n ? counts[first + j] : 0;
            sum += c[j];
        }
        unsigned long long total;
        unsigned long long run = before + block_exclusive_sum<unsigned long long, kHistThreads>(sum, warp_sums, &total);
#pragma unroll
        for (int j = 0; j < kScanGroups; ++j) {
            if (first + j < n) counts[first + j] = min(run, ties);
            run += c[j];
        }
        before += total;
    }
}

// Tensor scope, the tie pass: zero the first `ties` threshold entries in row-major order. A warp per item
// whose count of threshold entries before it (its group's, from the scan, plus the items' before it in the
// group) is below ties: lane i takes the accesses of the item's tie word i (the set bits, in order), counts
// their threshold entries, and after a warp scan zeroes those of rank below ties. Few accesses hold threshold
// entries (one magnitude of 32768), so this pass reads little of the matrix.
__global__ void __launch_bounds__(kThreads)
    tensor_ties_kernel(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t items, bool vec, const PruneState* state,
                       const unsigned long long* groups, const unsigned long long* counts, const uint32_t* tie_words) {
    const uint32_t threshold = state->prefix;
    const unsigned long long ties = state->ties;
    if (ties == 0) return;
    const int lane = threadIdx.x & 31;
    const int64_t warps = int64_t{gridDim.x} * kWarps;
    for (int64_t item = int64_t{blockIdx.x} * kWarps + (threadIdx.x >> 5); item < items; item += warps) {
        const uint32_t my_word = tie_words[item * kTieWords + lane];
        const int64_t group_first = item / kTieGroup * kTieGroup;
        unsigned long long in_group = 0;
        for (int64_t j = group_first + lane; j < item; j += 32) in_group += counts[j];
        for (int o = 16; o > 0; o >>= 1) in_group += __shfl_xor_sync(kFullMask, in_group, o);
        const unsigned long long before = groups[item / kTieGroup] + in_group;  // the same in every lane
        if (before >= ties) break;  // and for the warp's later items
        Span sp[kUnroll];
        int col[kUnroll];
        item_spans(M, K, item, 0, sp, col);
        const int u = lane / kWarps, first = (lane % kWarps) * 32;  // word `lane`: access u of threads first..
        uint16_t* row = w + sp[u].row * ld;
        // The threshold entries of access (u, thread t), as bits.
        auto tie_bits = [&](int t, Vec8* v) {
            const int c = col[u] + t * kVec;
            *v = load8(row, c, sp[u].c1, vec);
            uint32_t bits = 0;
#pragma unroll
            for (int e = 0; e < kVec; ++e) bits |= uint32_t(c + e < sp[u].c1 && magnitude(v->e[e]) == threshold) << e;
            return bits;
        };
        uint32_t mine = 0;
        for (uint32_t b = my_word; b != 0; b &= b - 1) {
            Vec8 v;
            mine += __popc(tie_bits(first + __ffs(b) - 1, &v));
        }
        unsigned long long rank = before + warp_inclusive_sum(mine) - mine;
        for (uint32_t b = my_word; b != 0 && rank < ties; b &= b - 1) {
            const int t = first + __ffs(b) - 1;
            Vec8 v;
            const uint32_t bits = tie_bits(t, &v);
            Vec8 out = v;
            bool changed = false;
#pragma unroll
            for (int e = 0; e < kVec; ++e) {
                if ((bits >> e & 1u) && rank++ < ties && v.e[e] != 0) {
                    out.e[e] = 0;
                    changed = true;
                }
            }
            if (changed) store8(row, col[u] + t * kVec, sp[u].c1, vec, out);
        }
    }
}

// Grid of a grid-stride kernel over `work` units: at most kBlocksPerSm CTAs per SM.
unsigned int grid_for(int64_t work, int device) {
    int sms = 0;
    check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
               "cudaDeviceGetAttribute (multiprocessor count)");
    const int64_t cap = int64_t{sms > 0 ? sms : 1} * kBlocksPerSm;
    return static_cast<unsigned int>(work < cap ? work : cap);
}

// Largest dynamic shared memory a CTA of this device may use.
int shared_optin(int device) {
    int bytes = 0;
    check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "cudaDeviceGetAttribute (shared memory per block)");
    return bytes;
}

// True when row starts and 8-column steps of the matrix are 16-byte aligned.
bool vector_rows(const uint16_t* w, int64_t ld) { return reinterpret_cast<uintptr_t>(w) % 16 == 0 && ld % kVec == 0; }

// The row-scope kernel (0 < k < K), staged when the row fits: within kRowStageBytes at up to kBlocksPerSm
// CTAs per SM; a longer row up to what a CTA may opt in to, at as many CTAs per SM as fit (one read and one
// write of the matrix instead of three reads and a write); longer still, in place.
void launch_rows(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k, cudaStream_t stream, int device) {
    const bool vec = vector_rows(w, ld);
    const size_t stage = align_up(static_cast<size_t>(K) * sizeof(uint16_t));
    const auto staged = prune_rows_kernel<true>;
    unsigned int grid = grid_for(M, device);
    bool stage_row = stage <= kRowStageBytes;
    if (!stage_row) {
        cudaFuncAttributes attr{};
        check_cuda(cudaFuncGetAttributes(&attr, staged), "cudaFuncGetAttributes (row pruning kernel)");
        const size_t most = static_cast<size_t>(shared_optin(device)) - attr.sharedSizeBytes;
        stage_row = stage <= most;
        if (stage_row) {
            // The same value on every call (not this call's stage), so that a concurrent call on another
            // thread cannot lower it under this launch.
            check_cuda(
                cudaFuncSetAttribute(staged, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most)),
                "cudaFuncSetAttribute (row pruning kernel)");
            grid = persistent_grid(reinterpret_cast<const void*>(staged), kThreads, static_cast<uint64_t>(M), stage);
        }
    }
    if (stage_row)
        staged<<<grid, kThreads, stage, stream>>>(w, M, K, ld, k, vec);
    else
        prune_rows_kernel<false><<<grid, kThreads, 0, stream>>>(w, M, K, ld, k, vec);
    check_cuda(cudaGetLastError(), "launch of the row pruning kernel");
}

// The histogram kernel of level (kShift, kBits), staged or not.
template <int kShift, int kBits>
auto histogram_kernel(bool staged) {
    return staged ? tensor_histogram_kernel<kShift, kBits, true> : tensor_histogram_kernel<kShift, kBits, false>;
}

// The tensor-scope kernel sequence (0 < k < M * K).
void launch_tensor(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k, void* workspace, cudaStream_t stream,
                   int device) {
    // A contiguous matrix is worked on as rows of one span (the same entries in the same row-major order), so
    // that no span is cut short at the end of a row (K = 9216: every fifth span half empty). It has at most as
    // many work items as the matrix's own shape, for which the workspace was sized.
    if (ld == K && M * K % kSpanCols == 0) {
        M = M * K / kSpanCols;
        K = ld = kSpanCols;
    }
    const int64_t items = work_items(M, K);
    const bool vec = vector_rows(w, ld);
    const TieLayout layout = tie_layout(items);
    char* base = static_cast<char*>(workspace);
    auto* state = reinterpret_cast<PruneState*>(base);
    auto* groups = reinterpret_cast<unsigned long long*>(base + layout.groups);
    auto* counts = reinterpret_cast<unsigned long long*>(base + layout.counts);
    auto* tie_words = reinterpret_cast<uint32_t*>(base + layout.words);
    check_cuda(cudaMemsetAsync(workspace, 0, layout.zeroed, stream), "cudaMemsetAsync (prune workspace)");
    // One level where the whole histogram fits a CTA's shared memory (sm_80, sm_90), else two; two also for
    // matrices of fewer entries than the one level has bins, whose two small histograms cost less.
    const size_t optin = static_cast<size_t>(shared_optin(device));
    const bool one_level = M * K >= kAllBins && static_cast<size_t>(kAllBins) * 4 <= optin;
    const Level one[] = {{0, kMagnitudeBits}};
    const Level two[] = {{kFineBits, kMagnitudeBits - kFineBits}, {0, kFineBits}};
    const Level* levels = one_level ? one : two;
    const int n_levels = one_level ? 1 : 2;
    for (int l = 0; l < n_levels; ++l) {
        // The item buffer where it fits beside the bins (sm_90: 192 of 227 KB for one level; sm_80's 163 KB
        // hold one level's bins only).
        const size_t bins = (size_t{1} << levels[l].bits) * 4;
        const bool staged = bins + kHistStage <= optin;
        const size_t smem = bins + (staged ? kHistStage : 0);
        const auto kernel = levels[l].bits == kMagnitudeBits ? histogram_kernel<0, kMagnitudeBits>(staged)
                            : levels[l].shift == 0          ? histogram_kernel<0, kFineBits>(staged)
                                                   : histogram_kernel<kFineBits, kMagnitudeBits - kFineBits>(staged);
        // At least kHistEntries entries per CTA: each CTA adds its whole histogram to the workspace's at the
        // end, and those atomics (up to one per bin and CTA) must not outweigh reading a small matrix.
        const uint64_t wanted = static_cast<uint64_t>((M * K + kHistEntries - 1) / kHistEntries);
        // (persistent_grid's first query raises the kernel's dynamic shared-memory limit to the device's)
        const unsigned int grid = persistent_grid(reinterpret_cast<const void*>(kernel), kHistThreads, wanted, smem);
        kernel<<<grid, kHistThreads, smem, stream>>>(w, M, K, ld, items, vec, state);
        check_cuda(cudaGetLastError(), "launch of the pruning histogram kernel");
        tensor_select_kernel<<<1, kHistThreads, 0, stream>>>(state, levels[l], k, l == n_levels - 1);
        check_cuda(cudaGetLastError(), "launch of the pruning select kernel");
    }
    const auto zero = tensor_zero_kernel;
    const unsigned int zero_grid = persistent_grid(reinterpret_cast<const void*>(zero), kThreads,
                                                   static_cast<uint64_t>(items), kZeroStage);
    zero<<<zero_grid, kThreads, kZeroStage, stream>>>(w, M, K, ld, items, vec, state, groups, counts, tie_words);
    check_cuda(cudaGetLastError(), "launch of the pruning zeroing kernel");
    tensor_tie_scan_kernel<<<1, kHistThreads, 0, stream>>>(state, groups, (items + kTieGroup - 1) / kTieGroup);
    check_cuda(cudaGetLastError(), "launch of the pruning tie scan kernel");
    tensor_ties_kernel<<<grid_for((items + kWarps - 1) / kWarps, device), kThreads, 0, stream>>>(
        w, M, K, ld, items, vec, state, groups, counts, tie_words);
    check_cuda(cudaGetLastError(), "launch of the pruning tie kernel");
}

}  // namespace

size_t prune_workspace_bytes(int64_t M, int64_t K, int scope) {
    if (scope != FSPMM_PRUNE_TENSOR) return 0;
    return tie_layout(work_items(M, K)).total;
}

void launch_prune(uint16_t* dense, int64_t M, int64_t K, int64_t ld, int scope, int64_t k, void* workspace,
                  cudaStream_t stream, int device) {
    const int64_t n = scope == FSPMM_PRUNE_ROW ? K : M * K;
    if (k <= 0) return;  // nothing to zero
    if (k >= n) {        // every entry goes, as +0.0
        check_cuda(cudaMemset2DAsync(dense, static_cast<size_t>(ld) * sizeof(uint16_t), 0,
                                     static_cast<size_t>(K) * sizeof(uint16_t), static_cast<size_t>(M), stream),
                   "cudaMemset2DAsync (pruning every entry)");
        return;
    }
    if (scope == FSPMM_PRUNE_ROW)
        launch_rows(dense, M, K, ld, k, stream, device);
    else
        launch_tensor(dense, M, K, ld, k, workspace, stream, device);
}

}  // namespace fspmm
