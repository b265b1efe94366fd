// Magnitude pruning on the GPU, with exactly the selection of prune_host. The threshold magnitude T comes
// from a two-level radix select on the 15-bit magnitude (bits & 0x7FFF): a 256-bin histogram of m >> 7, then
// a 128-bin histogram of m & 127 among the entries of the selected bin. Every entry below T is zeroed, and
// the first (k - below) entries equal to T in position order (column order for row scope, row-major order
// for tensor scope). All counts are integers, so the result does not depend on the thread schedule.
#include "convert/prune_device.h"

#include "common/error.h"
#include "common/scan.cuh"
#include "flashspmm.h"
#include "spmm/launch.h"

namespace fspmm {
namespace {

constexpr int kThreads = 256;                          // threads per CTA of every kernel
constexpr int kWarps = kThreads / 32;
constexpr int kMagnitudeBits = 15;                     // bits & 0x7FFF
constexpr int kFineBits = 7;                           // low magnitude bits resolved by the second pass
constexpr int kCoarseBins = 1 << (kMagnitudeBits - kFineBits);
constexpr int kFineBins = 1 << kFineBits;
constexpr uint32_t kFineMask = kFineBins - 1;
constexpr int64_t kTileCols = 8 * kThreads;            // columns of one tensor-scope work item
constexpr int kScanItems = 8;                          // work-item counts summed per thread by the cut search
constexpr uint32_t kFlushAt = 1u << 31;                // a CTA flushes its 32-bit histogram before it can wrap
constexpr int kBlocksPerSm = 8;                        // CTAs per SM of the grid-stride kernels
constexpr uint32_t kFullMask = 0xFFFFFFFFu;
constexpr uint32_t kPastEnd = 0xFFFFFFFFu;             // "magnitude" of a column past the end of a row
constexpr size_t kAlign = 16;                          // workspace sections start 16-byte aligned

static_assert(kCoarseBins % 32 == 0 && kFineBins % 32 == 0, "select_bin gives every lane whole bins");
static_assert(kCoarseBins >= kFineBins, "the shared histogram holds both passes");

// Tensor-scope state at the start of the workspace (zeroed at the start of each call).
struct PruneState {
    unsigned long long coarse[kCoarseBins];  // counts of m >> 7 over the matrix
    unsigned long long fine[kFineBins];      // counts of m & 127 among the entries of coarse_bin
    unsigned long long below;                // entries with magnitude < threshold
    unsigned long long ties;                 // entries equal to the threshold that are zeroed (the first ones)
    unsigned long long cut;                  // row-major position of the first threshold entry kept
    unsigned int coarse_bin;                 // threshold >> 7
    unsigned int threshold;                  // T
};

// `bytes` rounded up to a multiple of kAlign.
constexpr size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Offset of the per-work-item tie counts (uint32) in the tensor-scope workspace.
constexpr size_t kCountsOffset = align_up(sizeof(PruneState));

// A histogram bin and the number of entries in the bins before it.
struct Selection {
    unsigned int bin;
    unsigned long long below;
};

// Columns [c0, c1) of one row: a tensor-scope work item.
struct Tile {
    int64_t row, c0, c1;
};

// Work items (tiles of kTileCols columns) per row.
__host__ __device__ inline int64_t tiles_per_row(int64_t K) { return (K + kTileCols - 1) / kTileCols; }

// Work item `item`, numbered in row-major order of the tiles.
__device__ __forceinline__ Tile tile_of(int64_t item, int64_t K) {
    const int64_t tiles = tiles_per_row(K);
    const int64_t row = item / tiles;
    const int64_t c0 = (item - row * tiles) * kTileCols;
    return Tile{row, c0, c0 + kTileCols < K ? c0 + kTileCols : K};
}

// The 15-bit magnitude of an fp16 or bf16 bit pattern (zeros first, NaN after +Inf).
__device__ __forceinline__ uint32_t magnitude(uint16_t bits) { return bits & 0x7FFFu; }

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
    for (int i = threadIdx.x; i < bins; i += kThreads) hist[i] = 0;
}

// Count row[c0, c1) into a shared histogram: the coarse pass bins m >> 7 of every entry, the fine pass
// bins m & 127 of the entries whose m >> 7 is `coarse`.
template <bool kFine>
__device__ __forceinline__ void count_range(const uint16_t* row, int64_t c0, int64_t c1, uint32_t coarse,
                                            uint32_t* hist) {
    for (int64_t c = c0 + threadIdx.x; c < c1; c += kThreads) {
        const uint32_t m = magnitude(row[c]);
        if (!kFine)
            atomicAdd(&hist[m >> kFineBits], 1u);
        else if ((m >> kFineBits) == coarse)
            atomicAdd(&hist[m & kFineMask], 1u);
    }
}

// Add a shared histogram into a global one and clear it. Every thread calls it.
__device__ void flush_bins(uint32_t* hist, int bins, unsigned long long* global) {
    __syncthreads();
    for (int i = threadIdx.x; i < bins; i += kThreads) {
        if (hist[i] != 0) atomicAdd(&global[i], static_cast<unsigned long long>(hist[i]));
        hist[i] = 0;
    }
    __syncthreads();
}

// Zero the entries of a row below `threshold`, and its first `ties` entries equal to it (column order).
__device__ void zero_row(uint16_t* row, int64_t K, uint32_t threshold, unsigned long long ties, uint32_t* warp_counts) {
    unsigned long long seen = 0;  // threshold entries in the chunks before this one
    for (int64_t base = 0; base < K; base += kThreads) {
        const int64_t c = base + threadIdx.x;
        const uint32_t m = c < K ? magnitude(row[c]) : kPastEnd;
        bool zero = m < threshold;
        if (seen < ties) {  // the same in every thread
            uint32_t total;
            const uint32_t rank = block_rank(m == threshold, warp_counts, &total);
            zero = zero || (m == threshold && seen + rank < ties);
            seen += total;
        }
        if (zero) row[c] = 0;
    }
}

// Row scope: one CTA per row (grid-stride) selects the row's threshold and zeroes. Needs 0 < k < K.
__global__ void
__launch_bounds__(kThreads) prune_rows_kernel(uint16_t* w, int64_t M, int64_t K, int64_t ld,
                                                              int64_t k) {
    __shared__ uint32_t hist[kCoarseBins];
    __shared__ uint32_t warp_counts[kWarps];
    __shared__ Selection sel;
    const bool selector = threadIdx.x < 32;  // warp 0 reads the histograms
    for (int64_t r = blockIdx.x; r < M; r += gridDim.x) {
        uint16_t* row = w + r * ld;
        clear_bins(hist, kCoarseBins);
        __syncthreads();
        count_range<false>(row, 0, K, 0, hist);
        __syncthreads();
        if (selector) select_bin(hist, kCoarseBins, static_cast<unsigned long long>(k), &sel);
        __syncthreads();
        const uint32_t coarse = sel.bin;
        unsigned long long below = sel.below;
        clear_bins(hist, kFineBins);
        __syncthreads();
        count_range<true>(row, 0, K, coarse, hist);
        __syncthreads();
        if (selector) select_bin(hist, kFineBins, static_cast<unsigned long long>(k) - below, &sel);
        __syncthreads();
        const uint32_t threshold = (coarse << kFineBits) | sel.bin;
        below += sel.below;
        zero_row(row, K, threshold, static_cast<unsigned long long>(k) - below, warp_counts);
    }
}

// Tensor scope, coarse (kFine false) or fine pass: each CTA counts its work items into a shared histogram
// and adds it to the workspace's.
template <bool kFine>
__global__ void __launch_bounds__(kThreads) tensor_histogram_kernel(const uint16_t* w, int64_t K, int64_t ld,
                                                                    int64_t items, PruneState* state) {
    __shared__ uint32_t hist[kCoarseBins];
    const int bins = kFine ? kFineBins : kCoarseBins;
    unsigned long long* global = kFine ? state->fine : state->coarse;
    const uint32_t coarse = kFine ? state->coarse_bin : 0;
    clear_bins(hist, bins);
    __syncthreads();
    uint32_t pending = 0;  // entries counted since the last flush (the same in every thread)
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        if (pending >= kFlushAt) {
            flush_bins(hist, bins, global);
            pending = 0;
        }
        const Tile t = tile_of(item, K);
        count_range<kFine>(w + t.row * ld, t.c0, t.c1, coarse, hist);
        pending += static_cast<uint32_t>(t.c1 - t.c0);
    }
    flush_bins(hist, bins, global);
}

// Tensor scope, after the coarse pass: the bin of m >> 7 that holds the key of rank k. One warp.
__global__ void tensor_select_coarse_kernel(PruneState* state, int64_t k) {
    __shared__ Selection sel;
    select_bin(state->coarse, kCoarseBins, static_cast<unsigned long long>(k), &sel);
    if (threadIdx.x == 0) {
        state->coarse_bin = sel.bin;
        state->below = sel.below;
    }
}

// Tensor scope, after the fine pass: the threshold T, the entries below it and the ties to zero. One warp.
__global__ void tensor_select_fine_kernel(PruneState* state, int64_t k) {
    __shared__ Selection sel;
    const unsigned long long below = state->below;
    select_bin(state->fine, kFineBins, static_cast<unsigned long long>(k) - below, &sel);
    if (threadIdx.x == 0) {
        state->threshold = (state->coarse_bin << kFineBits) | sel.bin;
        state->below = below + sel.below;
        state->ties = static_cast<unsigned long long>(k) - (below + sel.below);
        state->cut = 0;
    }
}

// Tensor scope, only when there are ties to zero: the threshold entries of every work item.
__global__ void __launch_bounds__(kThreads) tensor_count_ties_kernel(const uint16_t* w, int64_t K, int64_t ld,
                                                                     int64_t items, const PruneState* state,
                                                                     uint32_t* counts) {
    __shared__ uint32_t warp_sums[kWarps];
    if (state->ties == 0) return;
    const uint32_t threshold = state->threshold;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        const Tile t = tile_of(item, K);
        const uint16_t* row = w + t.row * ld;
        uint32_t mine = 0;
        for (int64_t c = t.c0 + threadIdx.x; c < t.c1; c += kThreads) mine += magnitude(row[c]) == threshold;
        uint32_t total;
        block_exclusive_sum<uint32_t, kThreads>(mine, warp_sums, &total);
        if (threadIdx.x == 0) counts[item] = total;
    }
}

// Tensor scope, only when there are ties to zero; one CTA: the row-major position of the threshold entry
// of rank `ties` (the first one kept), first its work item from the counts, then its column.
__global__ void __launch_bounds__(kThreads) tensor_find_cut_kernel(const uint16_t* w, int64_t K, int64_t ld,
                                                                   int64_t items, const uint32_t* counts,
                                                                   PruneState* state) {
    __shared__ uint32_t warp_sums[kWarps];
    __shared__ long long found_item;
    __shared__ unsigned long long found_before;
    const unsigned long long want = state->ties;
    if (want == 0) return;
    const uint32_t threshold = state->threshold;
    if (threadIdx.x == 0) found_item = -1;
    unsigned long long seen = 0;  // threshold entries in the work items before this chunk
    for (int64_t base = 0; base < items; base += int64_t{kThreads} * kScanItems) {
        const int64_t first = base + int64_t{threadIdx.x} * kScanItems;
        uint32_t mine = 0;
        for (int j = 0; j < kScanItems; ++j)
            if (first + j < items) mine += counts[first + j];
        uint32_t total;
        unsigned long long before = seen + block_exclusive_sum<uint32_t, kThreads>(mine, warp_sums, &total);
        if (before <= want && want < before + mine) {  // one thread: its items hold the wanted entry
            int j = 0;
            while (before + counts[first + j] <= want) before += counts[first + j++];
            found_item = first + j;
            found_before = before;
        }
        seen += total;
        if (seen > want) break;  // the same in every thread
    }
    __syncthreads();
    if (found_item < 0) return;  // only if the matrix changed during the call
    const Tile t = tile_of(found_item, K);
    const uint16_t* row = w + t.row * ld;
    const unsigned long long rank_wanted = want - found_before;
    unsigned long long seen_here = 0;  // threshold entries of the item in the chunks before this one
    for (int64_t base = t.c0; base < t.c1; base += kThreads) {
        const int64_t c = base + threadIdx.x;
        const bool tie = c < t.c1 && magnitude(row[c]) == threshold;
        uint32_t total;
        const uint32_t rank = block_rank(tie, warp_sums, &total);
        if (tie && seen_here + rank == rank_wanted) state->cut = static_cast<unsigned long long>(t.row * K + c);
        seen_here += total;
        if (seen_here > rank_wanted) break;  // the same in every thread
    }
}

// Tensor scope: zero the entries below the threshold and the threshold entries before the cut.
__global__ void __launch_bounds__(kThreads) tensor_apply_kernel(uint16_t* w, int64_t K, int64_t ld, int64_t items,
                                                                const PruneState* state) {
    const uint32_t threshold = state->threshold;
    const int64_t cut = static_cast<int64_t>(state->cut);
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        const Tile t = tile_of(item, K);
        uint16_t* row = w + t.row * ld;
        const int64_t pos = t.row * K;  // row-major position of the row's first entry
        for (int64_t c = t.c0 + threadIdx.x; c < t.c1; c += kThreads) {
            const uint32_t m = magnitude(row[c]);
            if (m < threshold || (m == threshold && pos + c < cut)) row[c] = 0;
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

// The tensor-scope kernel sequence (0 < k < M * K).
void launch_tensor(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k, void* workspace, cudaStream_t stream,
                   int device) {
    auto* state = static_cast<PruneState*>(workspace);
    auto* counts = reinterpret_cast<uint32_t*>(static_cast<char*>(workspace) + kCountsOffset);
    const int64_t items = M * tiles_per_row(K);
    const unsigned int grid = grid_for(items, device);
    check_cuda(cudaMemsetAsync(state, 0, sizeof(PruneState), stream), "cudaMemsetAsync (prune workspace)");
    tensor_histogram_kernel<false><<<grid, kThreads, 0, stream>>>(w, K, ld, items, state);
    check_cuda(cudaGetLastError(), "launch of the pruning coarse histogram kernel");
    tensor_select_coarse_kernel<<<1, 32, 0, stream>>>(state, k);
    check_cuda(cudaGetLastError(), "launch of the pruning coarse select kernel");
    tensor_histogram_kernel<true><<<grid, kThreads, 0, stream>>>(w, K, ld, items, state);
    check_cuda(cudaGetLastError(), "launch of the pruning fine histogram kernel");
    tensor_select_fine_kernel<<<1, 32, 0, stream>>>(state, k);
    check_cuda(cudaGetLastError(), "launch of the pruning fine select kernel");
    tensor_count_ties_kernel<<<grid, kThreads, 0, stream>>>(w, K, ld, items, state, counts);
    check_cuda(cudaGetLastError(), "launch of the pruning tie count kernel");
    tensor_find_cut_kernel<<<1, kThreads, 0, stream>>>(w, K, ld, items, counts, state);
    check_cuda(cudaGetLastError(), "launch of the pruning cut search kernel");
    tensor_apply_kernel<<<grid, kThreads, 0, stream>>>(w, K, ld, items, state);
    check_cuda(cudaGetLastError(), "launch of the pruning apply kernel");
}

}  // namespace

size_t prune_workspace_bytes(int64_t M, int64_t K, int scope) {
    if (scope != FSPMM_PRUNE_TENSOR) return 0;
    const size_t items = static_cast<size_t>(M) * static_cast<size_t>(tiles_per_row(K));  // < 2^51
    return kCountsOffset + align_up(items * sizeof(uint32_t));
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
    if (scope == FSPMM_PRUNE_ROW) {
        prune_rows_kernel<<<grid_for(M, device), kThreads, 0, stream>>>(dense, M, K, ld, k);
        check_cuda(cudaGetLastError(), "launch of the row pruning kernel");
        return;
    }
    launch_tensor(dense, M, K, ld, k, workspace, stream, device);
}

}  // namespace fspmm
