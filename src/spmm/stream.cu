// The warp-streaming SpMM kernel: bitmap blobs, up to 16 tokens (the decode step of a language model).
//
// The pipelined kernel (kernel.cuh) gives a CTA 128 rows and one K slice, fed by a producer warp: on the small
// matrices of real models (1024-4096 rows) it has few CTAs, each walking a long run of K tiles one after the
// other, and the consumers wait on the producer's tables. Here the unit of work is one warp: a CTA owns one
// 64-row stripe and a K slice, and each of its warps takes a contiguous run of that slice's K tiles with its
// own two-stage cp.async ring, its own decoder table and no barrier shared with the other warps. Per K tile a
// warp
//   1. copies the next tile (its exact bytes) and its x tile into the free stage, and waits for this one;
//   2. writes the tile's table (the direct bitmap decoder's prepare: block masks and first-value addresses);
//   3. builds the A fragments of all four 16-row groups from it and multiplies them with the x fragments
//      (mma.m16n8k16, fp32 accumulate).
// The warps' sums are added in warp order in shared memory, the K slices (if any) by the last CTA of the
// stripe to arrive, in slice order, as in the other kernels: the result does not depend on scheduling.
#include "format/layout.h"
#include "ptx/ptx.cuh"
#include "spmm/decoders.cuh"
#include "spmm/dtype.cuh"
#include "spmm/epilogue.cuh"
#include "spmm/stream.h"

namespace fspmm {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr uint32_t kTableBytes = BitmapDirectDecoder::kTableWords * 4;
constexpr uint32_t kAlign = 128;  // x tiles are read with the XOR addressing of x_chunk (128-byte aligned rows)

// Bytes of one warp's region: its table, then kStreamStages x tiles, then kStreamStages tile slots.
__host__ __device__ __forceinline__ uint32_t warp_region(uint32_t slot_bytes, int n_tile) {
    return kTableBytes + kStreamStages * (uint32_t(n_tile) * kXRowBytes + uint32_t(round_up(slot_bytes, kAlign)));
}

// CTAs per SM the register allocation must allow: eight at 8 tokens (64 registers, no spills), six at 16 (80).
constexpr int stream_min_ctas(int n_tile) { return n_tile <= 8 ? 8 : 6; }

template <class Dtype, int kNTile>
__global__ void
__launch_bounds__(kStreamThreads, stream_min_ctas(kNTile))
    stream_kernel(const __grid_constant__ LinearParams p) {
    using Decoder = BitmapDirectDecoder;
    constexpr int kFragsN = kNTile / 8;
    constexpr uint32_t kXTileBytes = kNTile * kXRowBytes;
    extern __shared__ __align__(16) uint8_t smem[];
    __shared__ int s_is_last;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t mt = blockIdx.x;
    const int split = blockIdx.y;
    const int64_t n0 = int64_t(blockIdx.z) * kNTile;
    const int64_t kt_begin = int64_t(split) * p.k_tiles_per_split;
    const int64_t kt_end = imin(p.tiles_k, kt_begin + p.k_tiles_per_split);
    // This warp's run of K tiles: [k_first, k_first + nk).
    const int64_t per_warp = (kt_end - kt_begin + kStreamWarps - 1) / kStreamWarps;
    const int64_t k_first = kt_begin + warp * per_warp;
    const int nk = int(k_first < kt_end ? imin(per_warp, kt_end - k_first) : 0);

    // The warp's region of shared memory (warp_region).
    const uint32_t smem0 = ptx::smem_addr(smem);
    const uint32_t region = ((smem0 + kAlign - 1) & ~(kAlign - 1)) + uint32_t(warp) * warp_region(p.slot_bytes, kNTile);
    uint8_t* const region_ptr = smem + (region - smem0);
    uint32_t* const table = reinterpret_cast<uint32_t*>(region_ptr);
    const uint32_t slot_stride = uint32_t(round_up(p.slot_bytes, kAlign));
    auto x_slot = [&](int stage) { return region + kTableBytes + uint32_t(stage) * kXTileBytes; };
    auto w_slot = [&](int stage) {
        return region_ptr + kTableBytes + kStreamStages * kXTileBytes + size_t(stage) * slot_stride;
    };

    // Lane j holds tile j of the run: its offset relative to the run's first tile (a run of at most
    // kStreamMaxTilesPerWarp tiles spans less than 4 GiB) and its size, clamped to the slot (a corrupted offset
    // table cannot overflow it).
    const uint64_t* const offsets = p.offsets + mt * p.tiles_k + k_first;
    // (L2 loads, as the tile copies: with programmatic dependent launch the blob is read while the previous
    // grid of the stream may still run, and this SM's L1 may hold lines of an earlier kernel.)
    const uint64_t run_first = nk > 0 ? __ldcg(offsets) : 0;
    uint32_t my_off = 0, my_bytes = 0;
    if (lane < nk) {
        const uint64_t b = __ldcg(offsets + lane), e = __ldcg(offsets + lane + 1);
        my_off = uint32_t(b - run_first);
        my_bytes = uint32_t(imin<uint64_t>(e - b, p.slot_bytes));
    }
    const uint8_t* const run_data = p.data + run_first;

    // Copy tile i of the run into stage i % 2.
    auto issue_w = [&](int i) {
        const uint32_t off = __shfl_sync(kFull, my_off, i), bytes = __shfl_sync(kFull, my_bytes, i);
        const uint32_t dst = ptx::smem_addr(w_slot(i % kStreamStages));
        for (uint32_t c = 16 * lane; c < bytes; c += 16 * 32) ptx::cp_async_16(dst + c, run_data + off + c, 16);
    };
    // Copy the x tile of tile i (kNTile rows of 64 values, zeros past N and K) into stage i % 2.
    auto issue_x = [&](int i) {
        const int stage = i % kStreamStages;
        const int64_t k0 = (k_first + i) * kTileK;
        const uint32_t xs = x_slot(stage);
#pragma unroll
        for (int u = 0; u < kNTile * 8 / 32; ++u) {
            const int c = lane + 32 * u, n = c >> 3, ck = c & 7;
            const int64_t row = n0 + n, k = k0 + ck * 8;
            if (p.x_vec) {  // 16-byte rows: K % 8 == 0, so a chunk is inside K or past it
                const bool ok = row < p.N && k < p.K;
                ptx::cp_async_16(x_chunk(xs, n, ck), ok ? p.x + row * p.ldx + k : p.x, ok ? 16u : 0u);
            } else {  // plain loads and stores (visible to the warp after its __syncwarp)
                uint32_t w[4] = {0, 0, 0, 0};
                if (row < p.N) {
                    const uint16_t* src = p.x + row * p.ldx;
#pragma unroll
                    for (int e = 0; e < 8; ++e)
                        if (k + e < p.K) w[e / 2] |= uint32_t(src[k + e]) << (16 * (e & 1));
                }
                ptx::st_shared_v4(x_chunk(xs, n, ck), w);
            }
        }
    };

    ptx::FragC acc[4][kFragsN];
    // Lane's ldmatrix row address in an x tile (as in kernel.cuh): chunk 2 kc + (lane / 8) % 2 of token row
    // lane % 8 (+ 8 for lanes 16-31 of a 16-token tile): x_chunk(xs, row, chunk) = (xs + x_lane) ^ (kc << 5).
    const uint32_t x_lane = ((lane & 7) + (kNTile == 8 ? 0 : (lane >> 4) << 3)) * kXRowBytes +
                            ((((lane >> 3) & 1) ^ (lane & 7)) << 4);
    const Decoder::Lane ln = Decoder::lane_constants(lane);

    // Prologue. The blob is immutable while a plan uses it, so its first two tiles are requested before waiting
    // for the previous grid of the stream (programmatic dependent launch on sm_90: this grid may start while that
    // one drains); x, y and the workspace are touched only after.
    for (int i = 0; i < imin(nk, kStreamStages); ++i) issue_w(i);
    ptx::cp_async_commit();
    ptx::griddep_wait();
    ptx::griddep_launch_dependents();  // the next grid's prologue may overlap this grid's main loop
    if (nk > 0) issue_x(0);
    ptx::cp_async_commit();
    for (int i = 0; i < nk; ++i) {
        // Tile i + 1 into the stage released by the __syncwarp that ended tile i - 1 (its W tile came with the
        // prologue for i + 1 < kStreamStages).
        if (i + 1 < nk) {
            if (i + 1 >= kStreamStages) issue_w(i + 1);
            issue_x(i + 1);
        }
        ptx::cp_async_commit();
        ptx::cp_async_wait<1>();  // tile i landed (this lane's copies) ...
        __syncwarp();             // ... and every lane's
        const int stage = i % kStreamStages;
        const uint32_t bytes = __shfl_sync(kFull, my_bytes, i);
        // A tile too short to hold its masks (an empty or corrupted one) is multiplied as zeros.
        Decoder::prepare(w_slot(stage), bytes >= uint32_t(kBitmapMaskBytes), lane & 15, table, lane < 16);
        __syncwarp();  // the table is written
        const uint32_t xs = x_slot(stage);
#pragma unroll
        for (int kc = 0; kc < 4; ++kc) {
            const uint32_t xk = (xs + x_lane) ^ (uint32_t(kc) << 5);
            ptx::FragB b[kFragsN];
            if constexpr (kNTile == 8) {
                ptx::ldmatrix_x2(b[0].x, xk);
            } else {
                uint32_t r[4];
                ptx::ldmatrix_x4(r, xk);
                b[0] = {{r[0], r[1]}};
                b[1] = {{r[2], r[3]}};
            }
#pragma unroll
            for (int g = 0; g < 4; ++g) {
                const ptx::FragA a = Decoder::fragment(table, ln, g, kc);
#pragma unroll
                for (int j = 0; j < kFragsN; ++j) Dtype::mma(acc[g][j], a, b[j]);
            }
        }
        __syncwarp();  // stage i % 2 and the table are free again
    }
    ptx::cp_async_wait<0>();
    __syncthreads();  // shared memory is reused below

    // The warps' sums in shared memory, [warp][token][row] (row stride 68: conflict-free stores), then added
    // in warp order.
    constexpr int kRowStride = kTileM + 4;
    float* const cs = reinterpret_cast<float*>(smem + (((smem0 + 15u) & ~15u) - smem0));
    {
        const int g8 = lane >> 2, t = lane & 3;
        float* mine = cs + warp * kNTile * kRowStride;
#pragma unroll
        for (int g = 0; g < 4; ++g)
#pragma unroll
            for (int j = 0; j < kFragsN; ++j) {
                const int r = 16 * g + g8, n = 8 * j + 2 * t;
                mine[n * kRowStride + r] = acc[g][j].x[0];
                mine[(n + 1) * kRowStride + r] = acc[g][j].x[1];
                mine[n * kRowStride + r + 8] = acc[g][j].x[2];
                mine[(n + 1) * kRowStride + r + 8] = acc[g][j].x[3];
            }
    }
    __syncthreads();
    const int64_t m0 = mt * kTileM;
    constexpr int kPerThread = kTileM * kNTile / kStreamThreads;  // 4 or 8 outputs per thread
    // Output u of this thread: token n, row r of the tile, and whether it lies inside y.
    auto token = [&](int u) { return (int(threadIdx.x) + u * kStreamThreads) / kTileM; };
    auto row = [&](int u) { return (int(threadIdx.x) + u * kStreamThreads) % kTileM; };
    auto inside = [&](int u) { return n0 + token(u) < p.N && m0 + row(u) < p.M; };
    auto at = [&](int u) { return (n0 + token(u)) * p.M + m0 + row(u); };  // in a slice's partial sums [N][M]
    float sum[kPerThread];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < kStreamWarps; ++w) s += cs[(w * kNTile + token(u)) * kRowStride + row(u)];
        sum[u] = s;
    }
    if (p.splits > 1) {
        // Publish this slice's sums; the last CTA of the output tile to arrive adds all slices in slice order.
        float* const mine = p.partial + int64_t(split) * p.N * p.M;
#pragma unroll
        for (int u = 0; u < kPerThread; ++u)
            if (inside(u)) mine[at(u)] = sum[u];
        if (!split_k_arrive_last(p.counters + blockIdx.z * gridDim.x + blockIdx.x, p.splits, &s_is_last))
            return;
        const int64_t slice = p.N * p.M;
#pragma unroll
        for (int u = 0; u < kPerThread; ++u) {
            sum[u] = 0.f;
            if (!inside(u)) continue;
            const float* src = p.partial + at(u);
            for (int s = 0; s < p.splits; ++s) sum[u] += __ldcg(src + s * slice);
        }
    }
    // y = alpha * sum + bias + beta * y.
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
        if (!inside(u)) continue;
        const int64_t m = m0 + row(u);
        uint16_t* yp = p.y + (n0 + token(u)) * p.ldy + m;
        float out = p.alpha * sum[u];
        if (p.bias) out += Dtype::to_float(p.bias[m]);
        if (p.beta != 0.f) out += p.beta * Dtype::to_float(*yp);
        *yp = Dtype::from_float(out);
    }
}

// One list of the compiled variants: (dtype, N tile).
template <class Dtype>
const void* func_of(int n_tile) {
    return n_tile <= 8 ? reinterpret_cast<const void*>(&stream_kernel<Dtype, 8>)
                       : reinterpret_cast<const void*>(&stream_kernel<Dtype, 16>);
}

}  // namespace

size_t stream_smem_bytes(uint32_t slot_bytes, int n_tile) {
    const size_t main = kAlign + 16 + size_t(kStreamWarps) * warp_region(slot_bytes, n_tile);  // +16: the
    // direct decoder may read one value past a tile
    const size_t epilogue = 16 + size_t(kStreamWarps) * n_tile * (kTileM + 4) * 4;
    return main > epilogue ? main : epilogue;
}

const void* stream_kernel_func(int dtype, int n_tile) {
    return dtype == FSPMM_DTYPE_BFLOAT16 ? func_of<Bf16>(n_tile) : func_of<Fp16>(n_tile);
}

cudaError_t launch_stream(int dtype, int n_tile, const LinearParams& p, dim3 grid, size_t smem, bool pdl,
                          cudaStream_t stream) {
    // Programmatic dependent launch where the kernel has the sm_90 prologue: the grid may be scheduled while the
    // previous one of the stream drains (its griddep_wait orders everything but the blob reads).
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = dim3(kStreamThreads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = &attr;
    config.numAttrs = pdl ? 1 : 0;
    const bool bf16 = dtype == FSPMM_DTYPE_BFLOAT16;
    const cudaError_t err = n_tile <= 8 ? (bf16 ? cudaLaunchKernelEx(&config, stream_kernel<Bf16, 8>, p)
                                                : cudaLaunchKernelEx(&config, stream_kernel<Fp16, 8>, p))
                                        : (bf16 ? cudaLaunchKernelEx(&config, stream_kernel<Bf16, 16>, p)
                                                : cudaLaunchKernelEx(&config, stream_kernel<Fp16, 16>, p));
    return err != cudaSuccess ? err : cudaGetLastError();
}

}  // namespace fspmm
