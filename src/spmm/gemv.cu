// The N = 1 kernel (matrix-vector product, the decode step of a language model): no Tensor Cores, work per
// stored value only. The MMA kernels expand every tile into dense fragments, which costs instructions per
// element; for one token and few stored values, a product per nonzero is cheaper. Used by default for
// Tiled-CSL at <= 30 % density (launch.cu); slower than the MMA kernels for denser matrices and for the
// bitmap format, where it runs only when asked for (FSPMM_KERNEL_CUDA_CORE).
//
// A CTA owns one 64-row stripe, a slice of the K tiles (split-K) and a block of tokens (up to the kernel's
// token tile: more tokens run as more blocks, grid.z, each reading the whole slice); each of its warps takes every
// kGemvWarps-th K tile of the slice (copied, with its 64 x values, into one of the warp's two shared-memory
// buffers, by bulk copies on sm_90 and cp.async on sm_80, while the previous tile is multiplied) and sums its
// 64 rows in fp32 in a fixed order, so the result does not depend on scheduling. The warps' sums are added in
// warp order, the slices (if any) by the last CTA to arrive, in slice order, as in the MMA kernels.
//   bitmap:    lane L accumulates rows L and L + 32 in increasing column order: it reads the masks of its rows
//              in the 8 blocks of each row (64-bit masks, mma block order), finds each block's first value
//              with one shuffle (a warp scan of block popcounts) and walks the set bits of its row byte.
//   Tiled-CSL: each lane takes an equal share of the tile's entries (sorted by row) and sums the rows' runs
//              in it; runs that cross shares are joined by a segmented warp scan (csl_tile).
#include "common/scan.cuh"
#include "format/layout.h"
#include "ptx/ptx.cuh"
#include "spmm/dtype.cuh"
#include "spmm/epilogue.cuh"
#include "spmm/gemv.h"

namespace fspmm {
namespace {

constexpr int kGemvWarps = kGemvThreads / 32;
constexpr unsigned kFull = 0xFFFFFFFFu;

// Bitmap tile in shared memory (bytes long): adds rows lane and lane + 32 of W times x (64 values, shared)
// to acc.
template <class Dtype>
__device__ __forceinline__ void bitmap_tile(const uint8_t* tile, uint32_t bytes, const uint16_t* x, int lane,
                                            float (&acc)[2][1]) {
    if (bytes < kBitmapMaskBytes) return;
    const uint32_t values_end = (bytes - kBitmapMaskBytes) / 2;  // guards reads against a corrupted tile
    const uint16_t* values = reinterpret_cast<const uint16_t*>(tile + kBitmapMaskBytes);
    // first value of blocks 2L and 2L+1 (mma block order), packed (even | odd << 16)
    const uint4 m = reinterpret_cast<const uint4*>(tile)[lane];
    const uint32_t c0 = __popc(m.x) + __popc(m.y), c1 = __popc(m.z) + __popc(m.w);
    const uint32_t first0 = warp_inclusive_sum(c0 + c1) - (c0 + c1);
    const uint32_t firsts = first0 | (first0 + c0) << 16;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = lane + 32 * h, br = r >> 3, q = r & 7;
#pragma unroll
        for (int bc = 0; bc < 8; ++bc) {
            // block (br, bc) in mma order: j = 16 (br / 2) + 4 (bc / 2) + 2 (bc % 2) + br % 2
            const int j = 16 * (br >> 1) + 4 * (bc >> 1) + 2 * (bc & 1) + (br & 1);
            const uint32_t f = __shfl_sync(kFull, firsts, j >> 1);
            const uint2 mask = reinterpret_cast<const uint2*>(tile)[j];
            const uint32_t word = q < 4 ? mask.x : mask.y, shift = 8 * (q & 3);
            uint32_t v =
                ((j & 1) ? f >> 16 : f & 0xFFFFu) + (q < 4 ? 0u : __popc(mask.x)) + __popc(word & ((1u << shift) - 1u));
            for (uint32_t b = (word >> shift) & 0xFFu; b != 0; b &= b - 1, ++v) {
                const int col = 8 * bc + (__ffs(b) - 1);
                if (v < values_end) acc[h][0] = fmaf(Dtype::to_float(values[v]), Dtype::to_float(x[col]), acc[h][0]);
            }
        }
    }
}

// Tiled-CSL tile in shared memory (bytes long): adds W's rows times x (kN rows of 64 values, shared) to acc
// (rows lane and lane + 32, one sum per token). The entries are sorted by row, so lane L takes the c
// consecutive entries from L c (c odd: the lanes' loads fall in distinct banks), every lane as busy as the next
// whatever the row lengths, and sums each row's run of them in entry order. A run inside the share is its
// row's whole part of this tile: it goes to the warp's row totals `rows` ([kN][64] floats, zero between tiles)
// at once. The share's first and last runs may continue in the neighbouring shares: a segmented scan over the
// lanes (shuffles, in a fixed order) joins them, and the lane holding a row's last piece writes its total.
// Each row total is written once, and acc adds them in tile order: the result does not depend on scheduling.
template <class Dtype, int kN>
__device__ __forceinline__ void csl_tile(const uint8_t* tile, uint32_t bytes, const uint16_t* x, int lane, float* rows,
                                         float (&acc)[2][kN]) {
    const uint32_t* entries = reinterpret_cast<const uint32_t*>(tile);
    uint32_t n = bytes / 4;
    // Up to three padding entries close the tile (position 4096 + k): leave them out.
    const bool pad = uint32_t(lane) < 3u && uint32_t(lane) < n && (entries[n - 1 - lane] & 0xFFFFu) >= kTileElems;
    n -= __popc(__ballot_sync(kFull, pad));
    const uint32_t c = ((n + 31) / 32) | 1u;
    const uint32_t end = min(uint32_t(lane) * c + c, n);
    uint32_t i = min(uint32_t(lane) * c, n);
    // One pass over the share; a run is stored as its row's total when the next one starts (only this lane
    // writes those rows in this pass: a boundary row is stored by no lane, or by the one whose share it
    // starts, and is overwritten below). Loads run two entries ahead, so they are issued before the stores
    // of the entries before them; the at most two entries read past the share's end (unused) lie inside the
    // warp's buffer (tile, then the x rows).
    auto load_x = [&](uint32_t e, float (&xv)[kN]) {
#pragma unroll
        for (int t = 0; t < kN; ++t) xv[t] = Dtype::to_float(x[t * kTileK + unswizzle_col(e)]);
    };
    uint32_t e0 = entries[i], e1 = entries[i + 1];
    const int first_row = i < end ? int(unswizzle_row(e0)) : -1;
    int row = first_row;
    float sum[kN], x0[kN];
#pragma unroll
    for (int t = 0; t < kN; ++t) sum[t] = 0.f;
    load_x(e0, x0);
    for (; i < end; ++i) {
        const uint32_t e2 = entries[i + 2];
        float x1[kN];
        load_x(e1, x1);
        const int r = int(unswizzle_row(e0));
        const float v = Dtype::to_float(uint16_t(e0 >> 16));
#pragma unroll
        for (int t = 0; t < kN; ++t) {
            if (r != row) rows[t * kTileM + row] = sum[t];
            sum[t] = fmaf(v, x0[t], r != row ? 0.f : sum[t]);
            x0[t] = x1[t];
        }
        row = r;
        e0 = e1;
        e1 = e2;
    }
    // Rows only increase: the share has more than one run iff it ends in another row than it began; its
    // first run (head) is then in rows[first_row], its last (tail) in (row, sum). A share of one run is both.
    // Rows that cross shares are joined by a segmented scan over the lanes (shuffles in a fixed order): `out`
    // is what a share passes on to the next, its tail plus, if the share is a single run continuing the tail
    // before it, the previous share's out. A head that continues the tail before adds that share's out, and
    // the lane holding a row's last piece writes the row's total.
    const int tail_row = first_row >= 0 ? row : -1;
    const int prev_tail = __shfl_up_sync(kFull, tail_row, 1);
    const bool joins = lane > 0 && first_row >= 0 && prev_tail == first_row;  // head continues the tail before
    const bool single = first_row >= 0 && row == first_row;
    const bool continued = ((__ballot_sync(kFull, joins) >> 1) >> lane) & 1u;  // the next share continues the tail
    float out[kN];
#pragma unroll
    for (int t = 0; t < kN; ++t) out[t] = sum[t];
    bool open = single && joins;  // out still takes in the share before
    // (Rare unless rows are longer than a share: skipped where no share is a single run that continues.)
    if (__any_sync(kFull, open)) {
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const bool open_up = __shfl_up_sync(kFull, open, d);
#pragma unroll
            for (int t = 0; t < kN; ++t) {
                const float up = __shfl_up_sync(kFull, out[t], d);
                if (open && lane >= d) out[t] += up;
            }
            if (open && lane >= d) open = open_up;
        }
    }
    float in[kN];  // what the share before passes on
#pragma unroll
    for (int t = 0; t < kN; ++t) in[t] = __shfl_up_sync(kFull, out[t], 1);
    if (single) {
        if (!continued) {
#pragma unroll
            for (int t = 0; t < kN; ++t) rows[t * kTileM + first_row] = out[t];
        }
    } else if (first_row >= 0) {
        if (joins) {
#pragma unroll
            for (int t = 0; t < kN; ++t) rows[t * kTileM + first_row] += in[t];
        }
        if (!continued) {
#pragma unroll
            for (int t = 0; t < kN; ++t) rows[t * kTileM + row] = sum[t];
        }
    }
    __syncwarp();
#pragma unroll
    for (int t = 0; t < kN; ++t) {
        acc[0][t] += rows[t * kTileM + lane];
        acc[1][t] += rows[t * kTileM + lane + 32];
        rows[t * kTileM + lane] = 0.f;
        rows[t * kTileM + lane + 32] = 0.f;  // (rows are written again after the caller's __syncwarp)
    }
}

// Bytes of a warp's buffer: one compressed tile (slot_bytes) followed by kN rows of 64 x values (one per token).
__host__ __device__ __forceinline__ uint32_t buffer_bytes(uint32_t slot_bytes, int kN) {
    return slot_bytes + uint32_t(kN) * kTileK * 2;
}

template <int kFormat, class Dtype, int kN>
__global__ void
__launch_bounds__(kGemvThreads) gemv_kernel(const LinearParams p) {
    static_assert(kN == 1 || kFormat == FSPMM_FORMAT_TILED_CSL, "the bitmap tile is summed for one token");
    extern __shared__ __align__(16) uint8_t smem[];    // per warp: two buffers (buffer_bytes each)
    __shared__ uint64_t s_off[kGemvMaxKTiles + 1];     // this CTA's tile offsets
    __shared__ float s_sum[kGemvWarps][kN * kTileM];  // the warps' row sums (Tiled-CSL: until then, a tile's row totals)
    __shared__ int s_is_last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t mt = blockIdx.x;
    const int split = blockIdx.y;
    const int64_t kt_begin = int64_t(split) * p.k_tiles_per_split;
    const int nk = int((kt_begin + p.k_tiles_per_split < p.tiles_k ? kt_begin + p.k_tiles_per_split : p.tiles_k) -
                       kt_begin);
    // Tokens n0 .. n0 + N - 1 (a block of at most kN: grid.z blocks cover p.N); x rows past N stay zero.
    const int64_t n0 = int64_t(blockIdx.z) * kN;
    const int N = int(p.N - n0 < kN ? p.N - n0 : kN);
    const uint16_t* const x = p.x + n0 * p.ldx;
    for (int e = threadIdx.x; e <= nk; e += kGemvThreads) s_off[e] = __ldg(p.offsets + mt * p.tiles_k + kt_begin + e);

    const uint32_t buf_bytes = buffer_bytes(p.slot_bytes, kN);
    uint8_t* bufs = smem + size_t(warp) * 2 * buf_bytes;
    if (kN > N)
        for (int c = lane; c < 2 * kN * kTileK; c += 32)
            if ((c / kTileK) % kN >= N)
                reinterpret_cast<uint16_t*>(bufs + (c / (kN * kTileK)) * buf_bytes + p.slot_bytes)[c % (kN * kTileK)] = 0;
#if __CUDA_ARCH__ >= 900 && !defined(FSPMM_NO_BULK_PIPELINE)
    // sm_90: lane 0 copies tile i (and its x rows) into buffer b with bulk copies completing on the buffer's
    // mbarrier (a few instructions per tile instead of a 16-byte cp.async per lane and 512 bytes).
    constexpr bool kBulk = true;
    __shared__ __align__(8) uint64_t s_full[kGemvWarps][2];
    if (threadIdx.x == 0)  // (one thread, unrolled: compute-sanitizer's synccheck counts the init instructions)
#pragma unroll
        for (int w = 0; w < kGemvWarps; ++w) {
            ptx::mbarrier_init(ptx::smem_addr(&s_full[w][0]), 1);
            ptx::mbarrier_init(ptx::smem_addr(&s_full[w][1]), 1);
        }
#else
    constexpr bool kBulk = false;  // sm_80 (and the barrier build for racecheck): cp.async groups
#endif
    __syncthreads();
    // Copy tile i of the slice (and its x values) into buffer b; with cp.async, always closes a group.
    auto issue = [&](int i, int b) {
        if (i < nk) {
            const uint64_t off = s_off[i];
            const uint32_t bytes = uint32_t(s_off[i + 1] - off < p.slot_bytes ? s_off[i + 1] - off : p.slot_bytes);
            const uint32_t dst = ptx::smem_addr(bufs + b * buf_bytes);
            const int64_t k0 = (kt_begin + i) * kTileK;
            uint16_t* xs = reinterpret_cast<uint16_t*>(bufs + b * buf_bytes + p.slot_bytes);
            const bool x_vec = p.x_vec && k0 + kTileK <= p.K;  // whole 16-byte chunks of x
            if constexpr (kBulk) {
#if __CUDA_ARCH__ >= 900 && !defined(FSPMM_NO_BULK_PIPELINE)
                if (lane == 0) {
                    const uint32_t full = ptx::smem_addr(&s_full[warp][b]);
                    ptx::mbarrier_arrive_expect_tx(full, bytes + (x_vec ? uint32_t(N) * kTileK * 2 : 0u));
                    if (bytes) ptx::bulk_copy_g2s(dst, p.data + off, bytes, full);
                    if (x_vec)
                        for (int t = 0; t < N; ++t)
                            ptx::bulk_copy_g2s(ptx::smem_addr(xs + t * kTileK), x + t * p.ldx + k0, kTileK * 2, full);
                }
#endif
            } else {
                for (uint32_t c = 16 * lane; c < bytes; c += 16 * 32) ptx::cp_async_16(dst + c, p.data + off + c, 16);
                if (x_vec) {  // token t = lane / 8, 16-byte chunk lane % 8 of its row
                    const int t = lane / 8, ck = lane % 8;
                    if (t < N) ptx::cp_async_16(ptx::smem_addr(xs + t * kTileK + 8 * ck), x + t * p.ldx + k0 + 8 * ck, 16);
                }
            }
            if (!x_vec) {  // unaligned x or the last, partial K tile: plain loads, zeros past K
                for (int c = lane; c < N * kTileK; c += 32) {
                    const int t = c / kTileK, col = c % kTileK;
                    xs[c] = k0 + col < p.K ? x[t * p.ldx + k0 + col] : uint16_t(0);
                }
            }
        }
        if constexpr (!kBulk) ptx::cp_async_commit();
    };
    // Wait for the warp's j-th tile (in buffer j % 2).
    auto wait_tile = [&](int j) {
        if constexpr (kBulk) {
#if __CUDA_ARCH__ >= 900 && !defined(FSPMM_NO_BULK_PIPELINE)
            ptx::mbarrier_wait_parity(ptx::smem_addr(&s_full[warp][j & 1]), (j >> 1) & 1);
#endif
        } else {
            ptx::cp_async_wait<1>();
        }
        __syncwarp();  // (cp.async: every lane's copies, and the plain x stores, before the reads)
    };
    float acc[2][kN];  // rows lane and lane + 32, per token
#pragma unroll
    for (int t = 0; t < kN; ++t) {
        acc[0][t] = acc[1][t] = 0.f;
        s_sum[warp][t * kTileM + lane] = 0.f;
        s_sum[warp][t * kTileM + lane + 32] = 0.f;
    }
    issue(warp, 0);
    int b = 0, j = 0;
    for (int i = warp; i < nk; i += kGemvWarps, b ^= 1, ++j) {
        issue(i + kGemvWarps, b ^ 1);  // the warp's next tile is in flight while this one is multiplied
        wait_tile(j);
        const uint8_t* tile = bufs + b * buf_bytes;
        const uint32_t bytes = uint32_t(s_off[i + 1] - s_off[i] < p.slot_bytes ? s_off[i + 1] - s_off[i] : p.slot_bytes);
        const uint16_t* xs = reinterpret_cast<const uint16_t*>(tile + p.slot_bytes);
        if constexpr (kFormat == FSPMM_FORMAT_BITMAP)
            bitmap_tile<Dtype>(tile, bytes, xs, lane, acc);
        else
            csl_tile<Dtype, kN>(tile, bytes, xs, lane, s_sum[warp], acc);
        __syncwarp();  // the buffer is refilled two tiles later
    }
    if constexpr (!kBulk) ptx::cp_async_wait<0>();
#pragma unroll
    for (int t = 0; t < kN; ++t) {
        s_sum[warp][t * kTileM + lane] = acc[0][t];
        s_sum[warp][t * kTileM + lane + 32] = acc[1][t];
    }
    __syncthreads();
    // Thread j finishes row j % 64 for tokens j / 64, j / 64 + 2, ... (kGemvThreads = 2 rows of 64 threads).
    const int64_t m0 = mt * kTileM;
    const int r = threadIdx.x % kTileM, t0 = threadIdx.x / kTileM;
    constexpr int kPerThread = (kN * kTileM + kGemvThreads - 1) / kGemvThreads;
    static_assert(kGemvThreads % kTileM == 0, "whole rows of threads");
    const bool row_ok = m0 + r < p.M;
    float sum[kPerThread];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
        const int t = t0 + u * (kGemvThreads / kTileM);
        sum[u] = 0.f;
        if (t < N)
            for (int w = 0; w < kGemvWarps; ++w) sum[u] += s_sum[w][t * kTileM + r];
    }
    if (p.splits > 1) {
        // Publish this slice's sums ([split][p.N][M]); the last CTA of the stripe and token block to arrive adds
        // all slices in slice order.
#pragma unroll
        for (int u = 0; u < kPerThread; ++u) {
            const int t = t0 + u * (kGemvThreads / kTileM);
            if (row_ok && t < N) p.partial[(int64_t(split) * p.N + n0 + t) * p.M + m0 + r] = sum[u];
        }
        if (!split_k_arrive_last(p.counters + blockIdx.z * gridDim.x + mt, p.splits, &s_is_last)) return;
#pragma unroll
        for (int u = 0; u < kPerThread; ++u) {
            const int t = t0 + u * (kGemvThreads / kTileM);
            if (row_ok && t < N) {
                sum[u] = 0.f;
                for (int s = 0; s < p.splits; ++s)
                    sum[u] += __ldcg(p.partial + (int64_t(s) * p.N + n0 + t) * p.M + m0 + r);
            }
        }
    }
    if (!row_ok) return;
    const int64_t m = m0 + r;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
        const int t = t0 + u * (kGemvThreads / kTileM);
        if (t >= N) continue;
        uint16_t* y = p.y + (n0 + t) * p.ldy + m;
        float out = p.alpha * sum[u];
        if (p.bias) out += Dtype::to_float(p.bias[m]);
        if (p.beta != 0.f) out += p.beta * Dtype::to_float(*y);
        *y = Dtype::from_float(out);
    }
}

// The instantiation for (format, dtype, token tile).
template <int kFormat, int kN>
const void* gemv_func(bool bf16) {
    return bf16 ? reinterpret_cast<const void*>(&gemv_kernel<kFormat, Bf16, kN>)
                : reinterpret_cast<const void*>(&gemv_kernel<kFormat, Fp16, kN>);
}

}  // namespace

// The one list of compiled variants: bitmap for one token; Tiled-CSL for a tile of one, two or kGemvMaxN tokens.
int gemv_token_tile(int format, int64_t N) {
    return format == FSPMM_FORMAT_BITMAP || N == 1 ? 1 : N == 2 ? 2 : kGemvMaxN;
}

const void* gemv_kernel_func(int format, int dtype, int n_tile) {
    const bool bf16 = dtype == FSPMM_DTYPE_BFLOAT16;
    if (format == FSPMM_FORMAT_BITMAP) return gemv_func<FSPMM_FORMAT_BITMAP, 1>(bf16);
    return n_tile == 1   ? gemv_func<FSPMM_FORMAT_TILED_CSL, 1>(bf16)
           : n_tile == 2 ? gemv_func<FSPMM_FORMAT_TILED_CSL, 2>(bf16)
                         : gemv_func<FSPMM_FORMAT_TILED_CSL, kGemvMaxN>(bf16);
}

size_t gemv_smem_bytes(uint32_t slot_bytes, int n_tile) {
    return size_t(kGemvWarps) * 2 * buffer_bytes(slot_bytes, n_tile);
}

cudaError_t launch_gemv(int format, int dtype, int n_tile, const LinearParams& p, dim3 grid, cudaStream_t stream) {
    LinearParams args = p;
    void* argv[] = {&args};
    const cudaError_t err = cudaLaunchKernel(gemv_kernel_func(format, dtype, n_tile), grid, dim3(kGemvThreads), argv,
                                             gemv_smem_bytes(p.slot_bytes, n_tile), stream);
    return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace fspmm
