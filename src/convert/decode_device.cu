// GPU decoder: blob in device memory -> dense device matrix (the CPU decoder's result, bit for bit).
// One CTA decodes one 64x64 tile at a time: the tile is copied to shared memory, then each of 512 threads
// produces one 8-element chunk and stores it with one 16-byte store. Tile offsets, sizes and Tiled-CSL
// positions are bounds-checked, so a corrupted blob cannot cause an out-of-bounds access.
#include <cuda_runtime.h>

#include "convert/chunk.cuh"
#include "convert/convert_device.h"
#include "format/layout.h"
#include "spmm/launch.h"

namespace fspmm {
namespace convert {
namespace {

constexpr int kThreads = kChunksPerTile;

struct BlobArgs {
    const uint8_t* blob;
    uint64_t data_offset, data_bytes;
    int64_t tiles_k;
    uint64_t tiles;
};

// Copy tile t's bytes into `stage`; returns its size, or 0 when its table entries are out of range.
template <int kMaxBytes>
__device__ __forceinline__ uint32_t stage_tile(const BlobArgs& b, uint64_t t, uint8_t* stage) {
    const unsigned long long* table = reinterpret_cast<const unsigned long long*>(b.blob + kHeaderBytes);
    const uint64_t begin = table[t], end = table[t + 1];
    const bool ok = begin <= end && end <= b.data_bytes && end - begin <= kMaxBytes && (begin | end) % 16 == 0;
    const uint32_t bytes = ok ? static_cast<uint32_t>(end - begin) : 0u;
    const uint4* src = reinterpret_cast<const uint4*>(b.blob + b.data_offset + begin);
    for (uint32_t k = threadIdx.x; k < bytes / 16; k += kThreads) reinterpret_cast<uint4*>(stage)[k] = __ldcs(src + k);
    return bytes;
}

__global__ void __launch_bounds__(kThreads, 3) decode_bitmap_kernel(BlobArgs b, DenseArgs d) {
    __shared__ __align__(16) uint8_t stage[kBitmapMaxTileBytes];
    __shared__ uint32_t warp_sums[kThreads / 32];
    const int i = threadIdx.x;
    // chunk i is row i % 8 of block i / 8 (mma order): its mask is byte i of the mask section
    const int r = 8 * static_cast<int>(bitmap_block_row(i >> 3)) + (i & 7);
    const int c = 8 * static_cast<int>(bitmap_block_col(i >> 3));
    for (uint64_t t = blockIdx.x; t < b.tiles; t += gridDim.x) {
        const uint32_t bytes = stage_tile<kBitmapMaxTileBytes>(b, t, stage);
        __syncthreads();
        uint32_t mask = bytes >= kBitmapMaskBytes ? stage[i] : 0u;
        uint32_t nnz = 0;
        uint32_t pos = block_exclusive_scan<uint32_t, kThreads>(__popc(mask), warp_sums, &nnz);
        if (kBitmapMaskBytes + 2 * nnz > bytes) mask = 0;  // more bits than values: corrupted, write zeros
        const uint16_t* values = reinterpret_cast<const uint16_t*>(stage + kBitmapMaskBytes);
        Chunk out = {{0u, 0u, 0u, 0u}};
#pragma unroll
        for (int e = 0; e < kChunkElems; ++e)
            if (mask >> e & 1u) out.w[e >> 1] |= static_cast<uint32_t>(values[pos++]) << (16 * (e & 1));
        store_chunk(d, static_cast<int64_t>(t / b.tiles_k) * kTileM + r, static_cast<int64_t>(t % b.tiles_k) * kTileK + c,
                    out);
        __syncthreads();  // the stage is rewritten for the next tile
    }
}

__global__ void __launch_bounds__(kThreads, 3) decode_csl_kernel(BlobArgs b, DenseArgs d) {
    __shared__ __align__(16) uint8_t stage[kCslMaxTileBytes];
    __shared__ __align__(16) uint16_t tile[kTileElems];  // swizzled, as the positions are stored
    const int i = threadIdx.x;
    const int r = i >> 3, cc = i & 7;
    for (uint64_t t = blockIdx.x; t < b.tiles; t += gridDim.x) {
        const uint32_t bytes = stage_tile<kCslMaxTileBytes>(b, t, stage);
        reinterpret_cast<uint4*>(tile)[i] = make_uint4(0u, 0u, 0u, 0u);
        __syncthreads();
        const uint32_t* entries = reinterpret_cast<const uint32_t*>(stage);
        for (uint32_t k = i; k < bytes / 4; k += kThreads) {
            const uint32_t e = entries[k];
            if ((e & 0xFFFFu) < static_cast<uint32_t>(kTileElems)) tile[e & 0xFFFFu] = static_cast<uint16_t>(e >> 16);
        }
        __syncthreads();
        const uint4 v = reinterpret_cast<const uint4*>(tile)[r * 8 + (cc ^ (r & 7))];
        store_chunk(d, static_cast<int64_t>(t / b.tiles_k) * kTileM + r,
                    static_cast<int64_t>(t % b.tiles_k) * kTileK + cc * kChunkElems, Chunk{{v.x, v.y, v.z, v.w}});
        __syncthreads();
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
    const unsigned int grid = persistent_grid(reinterpret_cast<const void*>(kernel), kThreads, b.tiles);
    kernel<<<grid, kThreads, 0, stream>>>(b, d);
    check_cuda(cudaGetLastError(), "launch of the decoder kernel");
}

}  // namespace fspmm
