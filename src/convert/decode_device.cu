// GPU decoder: blob in device memory -> dense device matrix (the CPU decoder's result, bit for bit).
// Each warp decodes one 64x64 tile at a time; each lane produces 16 chunks of 8 elements and stores each
// with one 16-byte store. Tile offsets, sizes and Tiled-CSL
// positions are bounds-checked, so a corrupted blob cannot cause an out-of-bounds access.
#include <cuda_runtime.h>

#include "convert/chunk.cuh"
#include "convert/convert_device.h"
#include "format/layout.h"
#include "ptx/ptx.cuh"
#include "spmm/launch.h"

namespace fspmm {
namespace convert {
namespace {

constexpr int kWarps = 4;  // warps per CTA; each decodes one tile at a time
constexpr int kThreads = 32 * kWarps;

struct BlobArgs {
    const uint8_t* blob;
    uint64_t data_offset, data_bytes;
    int64_t tiles_k;
    uint64_t tiles;
};

// Data byte range of tile t; empty when its table entries are out of range or the tile is too large.
__device__ __forceinline__ void tile_range(const BlobArgs& b, uint64_t t, uint32_t max_bytes, uint64_t* begin,
                                           uint32_t* bytes) {
    const unsigned long long* table = reinterpret_cast<const unsigned long long*>(b.blob + kHeaderBytes);
    const uint64_t lo = table[t], hi = table[t + 1];
    const bool ok = lo <= hi && hi <= b.data_bytes && hi - lo <= max_bytes && (lo | hi) % 16 == 0;
    *begin = ok ? lo : 0;
    *bytes = ok ? static_cast<uint32_t>(hi - lo) : 0u;
}

// Bitmap: the warp copies the tile into its stage (cp.async, all in flight at once), then each lane expands
// its 16 chunks from the masks and values and stores them.
__global__ void
__launch_bounds__(kThreads) decode_bitmap_kernel(BlobArgs b, DenseArgs d) {
    __shared__ __align__(16) uint8_t stages[kWarps][kBitmapMaxTileBytes];
    const int lane = threadIdx.x & 31;
    uint8_t* stage = stages[threadIdx.x >> 5];
    const uint32_t stage_addr = ptx::smem_addr(stage);
    const uint64_t stride = uint64_t{gridDim.x} * kWarps;
    for (uint64_t t = uint64_t{blockIdx.x} * kWarps + (threadIdx.x >> 5); t < b.tiles; t += stride) {
        uint64_t begin;
        uint32_t bytes;
        tile_range(b, t, kBitmapMaxTileBytes, &begin, &bytes);
        const uint8_t* src = b.blob + b.data_offset + begin;
        for (uint32_t k = lane; k < bytes / 16; k += 32) ptx::cp_async_16(stage_addr + 16 * k, src + 16 * k, 16);
        ptx::cp_async_commit();
        ptx::cp_async_wait<0>();
        __syncwarp();
        uint32_t mask[kLaneChunks], count[kLaneChunks], first[kLaneChunks];
#pragma unroll
        for (int k = 0; k < kLaneChunks; ++k) {
            mask[k] = bytes >= kBitmapMaskBytes ? stage[lane + 32 * k] : 0u;
            count[k] = __popc(mask[k]);
        }
        const uint32_t nnz = warp_chunk_scan(count, first);
        const bool corrupt = kBitmapMaskBytes + 2 * nnz > bytes;  // more bits than values: write zeros
        const uint16_t* values = reinterpret_cast<const uint16_t*>(stage + kBitmapMaskBytes);
        const int64_t row0 = static_cast<int64_t>(t / b.tiles_k) * kTileM;
        const int64_t col0 = static_cast<int64_t>(t % b.tiles_k) * kTileK;
        const bool full = tile_is_full(d, row0, col0);
#pragma unroll
        for (int k = 0; k < kLaneChunks; ++k) {
            Chunk out = {{0u, 0u, 0u, 0u}};
            uint32_t pos = first[k];
            const uint32_t m = corrupt ? 0u : mask[k];
#pragma unroll
            for (int e = 0; e < kChunkElems; ++e)
                if (m >> e & 1u) out.w[e >> 1] |= static_cast<uint32_t>(values[pos++]) << (16 * (e & 1));
            store_lane_chunk<FSPMM_FORMAT_BITMAP>(d, row0, col0, lane, k, full, out);
        }
        __syncwarp();  // the stage is rewritten for the warp's next tile
    }
}

// Tiled-CSL: the warp zeroes a 64x64 tile in shared memory (swizzled, like the stored positions), scatters
// the entries into it straight from global memory, then stores it row chunk by row chunk.
__global__ void __launch_bounds__(kThreads) decode_csl_kernel(BlobArgs b, DenseArgs d) {
    constexpr int kUnroll = 8;  // entry loads in flight per lane
    __shared__ __align__(16) uint16_t tiles[kWarps][kTileElems];
    const int lane = threadIdx.x & 31;
    uint16_t* tile = tiles[threadIdx.x >> 5];
    const uint64_t stride = uint64_t{gridDim.x} * kWarps;
    for (uint64_t t = uint64_t{blockIdx.x} * kWarps + (threadIdx.x >> 5); t < b.tiles; t += stride) {
        uint64_t begin;
        uint32_t bytes;
        tile_range(b, t, kCslMaxTileBytes, &begin, &bytes);
        const uint4* src = reinterpret_cast<const uint4*>(b.blob + b.data_offset + begin);
#pragma unroll
        for (int k = 0; k < kLaneChunks; ++k) reinterpret_cast<uint4*>(tile)[lane + 32 * k] = make_uint4(0u, 0u, 0u, 0u);
        __syncwarp();
        const uint32_t n16 = bytes / 16;
        for (uint32_t k0 = 0; k0 < n16; k0 += 32 * kUnroll) {
            uint4 e[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const uint32_t k = k0 + 32 * u + lane;
                e[u] = k < n16 ? __ldcs(src + k) : make_uint4(kTileElems, kTileElems, kTileElems, kTileElems);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
                const uint32_t w[4] = {e[u].x, e[u].y, e[u].z, e[u].w};
#pragma unroll
                for (int q = 0; q < 4; ++q)  // padding entries (position >= 4096) are skipped
                    if ((w[q] & 0xFFFFu) < static_cast<uint32_t>(kTileElems)) tile[w[q] & 0xFFFFu] = static_cast<uint16_t>(w[q] >> 16);
            }
        }
        __syncwarp();
        const int64_t row0 = static_cast<int64_t>(t / b.tiles_k) * kTileM;
        const int64_t col0 = static_cast<int64_t>(t % b.tiles_k) * kTileK;
        const bool full = tile_is_full(d, row0, col0);
#pragma unroll
        for (int k = 0; k < kLaneChunks; ++k) {
            const int i = lane + 32 * k, r = i >> 3, cc = i & 7;
            const uint4 v = reinterpret_cast<const uint4*>(tile)[r * 8 + (cc ^ (r & 7))];
            store_lane_chunk<FSPMM_FORMAT_TILED_CSL>(d, row0, col0, lane, k, full, Chunk{{v.x, v.y, v.z, v.w}});
        }
        __syncwarp();  // the tile is zeroed again for the warp's next tile
    }
}

}  // namespace
}  // namespace convert

void launch_decode(const fspmm_header_t& h, const void* blob, void* dense, int64_t ld, cudaStream_t stream) {
    using namespace convert;
    const BlobArgs b{static_cast<const uint8_t*>(blob), h.data_offset, h.data_bytes, h.tiles_k,
                     static_cast<uint64_t>(h.tiles_m) * static_cast<uint64_t>(h.tiles_k)};
    const bool vec = reinterpret_cast<uintptr_t>(dense) % 16 == 0 && ld % kChunkElems == 0;
    const DenseArgs d{static_cast<uint16_t*>(dense), h.M, h.K, ld, vec};
    const auto kernel = h.format == FSPMM_FORMAT_BITMAP ? decode_bitmap_kernel : decode_csl_kernel;
    const unsigned int grid = persistent_grid(reinterpret_cast<const void*>(kernel), kThreads, ceil_div(b.tiles, kWarps));
    kernel<<<grid, kThreads, 0, stream>>>(b, d);
    check_cuda(cudaGetLastError(), "launch of the decoder kernel");
}

}  // namespace fspmm
