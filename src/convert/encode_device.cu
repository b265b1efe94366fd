// GPU encoder: dense device matrix -> blob in device memory, byte-identical to the CPU encoder.
//
// Count phase: one kernel counts the stored values of every 64x64 tile (a warp per tile) (tile_nnz in the workspace)
// and the data-section sizes of both formats. Write phase, all on the stream with no host synchronisation:
//   resolve      checks the call against the counts, picks the format (AUTO), refuses a too small `out`;
//   scan_reduce  per block of tiles: sum and maximum of the tile sizes;
//   scan_blocks  one CTA: exclusive scan of the block sums, the table's last entry and padding;
//   scan_write   the tile offset table (exclusive scan of tile sizes);
//   write_tiles  one warp per tile at a time, in two halves: each lane loads its share of 8 chunks of 8
//                elements (all loads in flight at once; bitmap: two lanes per chunk), warp scans place the
//                values, then the next half; the tile is assembled in the warp's shared stage and stored with
//                16-byte stores;
//   finalize     the header (written last, so a refused or failed write never leaves a valid blob).
// Checksums are sums of independent per-word terms (layout.h), accumulated with 64-bit atomics.
#include <cuda_runtime.h>

#include "convert/chunk.cuh"
#include "convert/convert_device.h"
#include "format/choose.h"
#include "format/layout.h"
#include "spmm/launch.h"

namespace fspmm {
namespace convert {
namespace {

constexpr int kCountThreads = 256;
constexpr int kScanThreads = 256;
constexpr int kScanItems = 8;                                // tiles per thread in the offset scan
constexpr int kScanTiles = kScanThreads * kScanItems;        // tiles per scan block
constexpr int kBlocksThreads = 1024;                         // scan_blocks

// Workspace sections: [EncodeState | tile_nnz (u16 per tile) | block sums (u64) | block maxima (u64)].
struct WorkspaceLayout {
    uint64_t tiles, scan_blocks;
    size_t nnz_offset, sums_offset, max_offset, bytes;
};

WorkspaceLayout workspace_layout(int64_t M, int64_t K) {
    WorkspaceLayout w;
    w.tiles = ceil_div(static_cast<uint64_t>(M), kTileM) * ceil_div(static_cast<uint64_t>(K), kTileK);
    w.scan_blocks = ceil_div(w.tiles, kScanTiles);
    w.nnz_offset = sizeof(EncodeState);
    w.sums_offset = w.nnz_offset + round_up(w.tiles * 2, 16);
    w.max_offset = w.sums_offset + w.scan_blocks * 8;
    w.bytes = w.max_offset + w.scan_blocks * 8;
    return w;
}

// Data bytes of a tile holding `nnz` values (layout.h sizes).
__device__ __forceinline__ uint64_t tile_size(int format, uint32_t nnz) {
    return format == FSPMM_FORMAT_BITMAP ? kBitmapMaskBytes + round_up(2ull * nnz, 16) : round_up(4ull * nnz, 16);
}

// Shape of the matrix in tiles, shared by the kernels.
struct Tiles {
    int64_t tiles_k;
    uint64_t count;
    uint64_t data_offset;  // of the blob
};

// One warp counts one tile at a time. Few registers per thread, so that many warps (each with a few loads
// in flight) keep the memory system busy.
__global__ void
__launch_bounds__(kCountThreads, 4)
count_kernel(DenseArgs d, Tiles g, uint16_t* tile_nnz, EncodeState* st, int dtype) {
    const int lane = threadIdx.x & 31;
    constexpr int kWarps = kCountThreads / 32;
    unsigned long long nnz = 0, csl = 0, bitmap = 0;  // lane 0's sums over the warp's tiles
    const uint64_t stride = uint64_t{gridDim.x} * kWarps;
    for (uint64_t t = uint64_t{blockIdx.x} * kWarps + (threadIdx.x >> 5); t < g.count; t += stride) {
        const int64_t row0 = static_cast<int64_t>(t / g.tiles_k) * kTileM;
        const int64_t col0 = static_cast<int64_t>(t % g.tiles_k) * kTileK;
        uint32_t n = 0;
        if (tile_is_full(d, row0, col0)) {  // row-major chunk order: a warp reads 4 rows x 128 bytes per step
#pragma unroll 8
            for (int k = 0; k < kLaneChunks; ++k) {
                const int i = lane + 32 * k;
                const uint4 v = __ldcs(reinterpret_cast<const uint4*>(d.data + (row0 + (i >> 3)) * d.ld + col0 +
                                                                      (i & 7) * kChunkElems));
                n += __popc(stored_mask(Chunk{{v.x, v.y, v.z, v.w}}));
            }
        } else {
            for (int k = 0; k < kLaneChunks; ++k) {
                const int i = lane + 32 * k;
                n += __popc(stored_mask(load_chunk(d, row0 + (i >> 3), col0 + (i & 7) * kChunkElems)));
            }
        }
        n = __reduce_add_sync(kFullMask, n);
        if (lane == 0) {
            tile_nnz[t] = static_cast<uint16_t>(n);
            nnz += n;
            csl += tile_size(FSPMM_FORMAT_TILED_CSL, n);
            bitmap += tile_size(FSPMM_FORMAT_BITMAP, n);
        }
    }
    if (lane == 0) {
        atomicAdd(&st->nnz, nnz);
        atomicAdd(&st->data_bytes[kFormatIndexCsl], csl);
        atomicAdd(&st->data_bytes[kFormatIndexBitmap], bitmap);
        if (blockIdx.x == 0 && threadIdx.x == 0) {
            st->M = static_cast<unsigned long long>(d.M);
            st->K = static_cast<unsigned long long>(d.K);
            st->dtype = static_cast<unsigned long long>(dtype);
            st->magic = kEncodeCounted;
        }
    }
}

// One thread: check the call against the count phase, resolve AUTO, check the output size.
__global__ void resolve_kernel(EncodeState* st, int64_t M, int64_t K, int dtype, int format, Tiles g,
                               unsigned long long out_bytes) {
    st->checksum = 0;
    st->max_tile = 0;
    st->written = 0;
    if (st->magic != kEncodeCounted || st->M != static_cast<unsigned long long>(M) ||
        st->K != static_cast<unsigned long long>(K) || st->dtype != static_cast<unsigned long long>(dtype)) {
        st->refused = kRefuseShape;
        return;
    }
    format = compress_format(format, M, K, st->nnz, st->data_bytes[kFormatIndexCsl], st->data_bytes[kFormatIndexBitmap]);
    st->format = static_cast<unsigned long long>(format);
    const unsigned long long data = st->data_bytes[format == FSPMM_FORMAT_BITMAP ? kFormatIndexBitmap : kFormatIndexCsl];
    st->refused = g.data_offset + data > out_bytes ? kRefuseTooSmall : kRefuseNone;
}

// Sizes of this thread's kScanItems tiles (0 past the end), starting at tile `first`.
__device__ __forceinline__ void scan_items(const uint16_t* tile_nnz, uint64_t count, uint64_t first, int format,
                                           uint64_t* sizes) {
#pragma unroll
    for (int i = 0; i < kScanItems; ++i)
        sizes[i] = first + i < count ? tile_size(format, tile_nnz[first + i]) : 0;
}

__global__ void __launch_bounds__(kScanThreads)
scan_reduce_kernel(const uint16_t* tile_nnz, Tiles g, const EncodeState* st, unsigned long long* sums,
                   unsigned long long* maxima) {
    __shared__ unsigned long long warp_sums[kScanThreads / 32];
    __shared__ unsigned int block_max;
    if (st->refused != kRefuseNone) return;
    if (threadIdx.x == 0) block_max = 0;
    uint64_t sizes[kScanItems];
    scan_items(tile_nnz, g.count, (blockIdx.x * uint64_t{kScanThreads} + threadIdx.x) * kScanItems,
               static_cast<int>(st->format), sizes);
    unsigned long long sum = 0;
    unsigned int largest = 0;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
        sum += sizes[i];
        largest = max(largest, static_cast<unsigned int>(sizes[i]));
    }
    unsigned long long total = 0;
    block_exclusive_sum<unsigned long long, kScanThreads>(sum, warp_sums, &total);  // syncs: block_max is set
    atomicMax(&block_max, largest);
    __syncthreads();
    if (threadIdx.x == 0) {
        sums[blockIdx.x] = total;
        maxima[blockIdx.x] = block_max;
    }
}

// One CTA: exclusive scan of the block sums in place; the offset table's last entry and padding word.
__global__ void __launch_bounds__(kBlocksThreads)
scan_blocks_kernel(unsigned long long* sums, const unsigned long long* maxima, uint64_t blocks, Tiles g,
                   EncodeState* st, uint8_t* out) {
    __shared__ unsigned long long warp_sums[kBlocksThreads / 32];
    __shared__ unsigned long long block_max;
    if (st->refused != kRefuseNone) return;
    if (threadIdx.x == 0) block_max = 0;
    unsigned long long carry = 0, largest = 0;
    for (uint64_t base = 0; base < blocks; base += kBlocksThreads) {
        const uint64_t b = base + threadIdx.x;
        const unsigned long long v = b < blocks ? sums[b] : 0;
        if (b < blocks) largest = max(largest, maxima[b]);
        unsigned long long total = 0;
        const unsigned long long prefix = block_exclusive_sum<unsigned long long, kBlocksThreads>(v, warp_sums, &total);
        if (b < blocks) sums[b] = carry + prefix;
        carry += total;
    }
    atomicMax(&block_max, largest);
    __syncthreads();
    if (threadIdx.x == 0) {
        // table entry `count` is the data size; a zero word pads the table to data_offset when needed
        unsigned long long* table = reinterpret_cast<unsigned long long*>(out + kHeaderBytes);
        table[g.count] = carry;
        unsigned long long terms = checksum_term(carry, g.count);
        const uint64_t table_words = (g.data_offset - kHeaderBytes) / 8;
        for (uint64_t w = g.count + 1; w < table_words; ++w) {
            table[w] = 0;
            terms += checksum_term(0, w);
        }
        atomicAdd(&st->checksum, terms);
        st->max_tile = block_max;
    }
}

__global__ void __launch_bounds__(kScanThreads)
scan_write_kernel(const uint16_t* tile_nnz, Tiles g, const unsigned long long* block_offsets, EncodeState* st,
                  uint8_t* out) {
    __shared__ unsigned long long warp_sums[kScanThreads / 32];
    if (st->refused != kRefuseNone) return;
    const uint64_t first = (blockIdx.x * uint64_t{kScanThreads} + threadIdx.x) * kScanItems;
    uint64_t sizes[kScanItems];
    scan_items(tile_nnz, g.count, first, static_cast<int>(st->format), sizes);
    unsigned long long sum = 0;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) sum += sizes[i];
    unsigned long long total = 0;
    unsigned long long off = block_offsets[blockIdx.x] +
                             block_exclusive_sum<unsigned long long, kScanThreads>(sum, warp_sums, &total);
    unsigned long long* table = reinterpret_cast<unsigned long long*>(out + kHeaderBytes);
    unsigned long long terms = 0;
#pragma unroll
    for (int i = 0; i < kScanItems; ++i) {
        if (first + i < g.count) {
            table[first + i] = off;
            terms += checksum_term(off, first + i);
        }
        off += sizes[i];
    }
    atomic_add_block(&st->checksum, terms);
}

// Chunks a lane of write_tiles holds at a time, of its 16 per tile: half a tile's (measured on the H200 against
// all 16, 4 and 2: Tiled-CSL 1.25x / 1.10x / 1.45x faster, bitmap 1.04x / about equal / 1.3x).
constexpr int kHeldChunks = kLaneChunks / 2;

// Warps per CTA of write_tiles: each warp assembles one tile at a time in its own shared stage.
template <int kFormat>
constexpr int write_warps() { return kFormat == FSPMM_FORMAT_BITMAP ? 4 : 3; }
// CTAs per SM write_tiles is compiled for (0: no bound): bitmap within 128 registers, so that four CTAs (16
// warps) fit.
template <int kFormat>
constexpr int write_min_blocks() { return kFormat == FSPMM_FORMAT_BITMAP ? 4 : 0; }

// Steps of place_bitmap_half: two per chunk row of the warp (32 chunks), each of 16 chunks.
constexpr int kPairSteps = 2 * kHeldChunks;

// Bitmap: the masks and values of the lane's chunks k0 .. k0 + kHeldChunks - 1 into the stage, the values from
// `base` on; returns base plus their number. Two lanes share a chunk: in step s lane l holds elements
// [4 * (l % 2), 4 * (l % 2) + 4) of tile chunk 32 * (k0 + s / 2) + 16 * (s % 2) + l / 2, so the lanes' order is the
// values' order and one 16-bit store instruction covers 16 chunks' values (about 128 bytes, one bank row, at 50 %
// density; with a lane per chunk it covered 32, two bank rows, with 1.8-way conflicts: 4 % slower on the H200).
// The counts (<= 4) of four steps share one warp scan in 8-bit fields (a field's sum over the warp is <= 128).
__device__ __forceinline__ uint32_t place_bitmap_half(const DenseArgs& d, int64_t row0, int64_t col0, int lane,
                                                      int k0, uint8_t* stage, uint32_t base) {
    const int half = lane & 1;
    // Step s's chunk is row (lane / 2) % 8 of block 4 * (k0 + s / 2) + 2 * (s % 2) + lane / 16 (chunk_origin): with
    // k0 a multiple of 8, tile row 4 * k0 + 16 * (s / 8) + 8 * ((lane / 16) % 2) + (lane / 2) % 8 and tile column
    // 8 * (2 * ((s / 2) % 4) + s % 2) + 4 * (lane % 2).
    static_assert(kHeldChunks % 8 == 0, "the step offsets below assume halves of whole 8-chunk-row groups");
    const int lane_row = 4 * k0 + 8 * ((lane >> 4) & 1) + ((lane >> 1) & 7);
    const int lane_col = 4 * half;
    const bool full = tile_is_full(d, row0, col0);
    // 8-byte loads, all issued before any is used (whole chunks per lane pair, the halves swapped by shuffles,
    // were 12 % slower on the H200).
    uint32_t w[kPairSteps][2];
    if (full) {
        const uint16_t* p = d.data + (row0 + lane_row) * d.ld + col0 + lane_col;
#pragma unroll
        for (int s = 0; s < kPairSteps; ++s) {
            const uint2 v = __ldcs(reinterpret_cast<const uint2*>(p + 16 * (s / 8) * d.ld + 8 * (2 * ((s / 2) % 4) + s % 2)));
            w[s][0] = v.x, w[s][1] = v.y;
        }
    } else {
#pragma unroll
        for (int s = 0; s < kPairSteps; ++s)
            load_elems<4>(d, row0 + lane_row + 16 * (s / 8), col0 + lane_col + 8 * (2 * ((s / 2) % 4) + s % 2), w[s]);
    }
    uint32_t first[kPairSteps];
#pragma unroll
    for (int s = 0; s < kPairSteps; s += 4) {
        const uint32_t v = __popc(stored_mask(w[s])) | __popc(stored_mask(w[s + 1])) << 8 |
                           __popc(stored_mask(w[s + 2])) << 16 | __popc(stored_mask(w[s + 3])) << 24;
        const uint32_t x = warp_inclusive_sum(v);
        const uint32_t total = __shfl_sync(kFullMask, x, 31);
        const uint32_t excl = x - v;  // no field borrows: each field of x is at least v's
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            first[s + j] = base + (excl >> (8 * j) & 0xFFu);
            base += total >> (8 * j) & 0xFFu;
        }
    }
    uint16_t* values = reinterpret_cast<uint16_t*>(stage + kBitmapMaskBytes);
#pragma unroll
    for (int s = 0; s < kPairSteps; ++s) {
        const uint32_t mask = stored_mask(w[s]);  // recomputed: 16 registers fewer than keeping it
        const uint32_t upper = __shfl_xor_sync(kFullMask, mask, 1);  // the other half's mask
        if (half == 0) stage[32 * (k0 + s / 2) + 16 * (s % 2) + lane / 2] = static_cast<uint8_t>(mask | upper << 4);
        uint32_t pos = first[s];
#pragma unroll
        for (int e = 0; e < 4; ++e)
            if (mask >> e & 1u) values[pos++] = static_cast<uint16_t>(w[s][e >> 1] >> (16 * (e & 1)));
    }
    return base;
}

// Tiled-CSL: the entries of the lane's chunks k0 .. k0 + kHeldChunks - 1 into the stage from entry `base` on;
// returns base plus their number.
__device__ __forceinline__ uint32_t place_csl_half(const DenseArgs& d, int64_t row0, int64_t col0, int lane, int k0,
                                                   uint8_t* stage, uint32_t base) {
    Chunk ch[kHeldChunks];
    load_lane_chunks<FSPMM_FORMAT_TILED_CSL>(d, row0, col0, lane, ch, k0);
    uint32_t mask[kHeldChunks], count[kHeldChunks], first[kHeldChunks];
#pragma unroll
    for (int k = 0; k < kHeldChunks; ++k) {
        mask[k] = stored_mask(ch[k]);
        count[k] = __popc(mask[k]);
    }
    base = warp_chunk_scan(count, first, base);
    uint32_t* entries = reinterpret_cast<uint32_t*>(stage);
#pragma unroll
    for (int k = 0; k < kHeldChunks; ++k) {
        int r, c;
        chunk_origin<FSPMM_FORMAT_TILED_CSL>(lane + 32 * (k0 + k), &r, &c);
        uint32_t pos = first[k];
#pragma unroll
        for (int e = 0; e < kChunkElems; ++e)
            if (mask[k] >> e & 1u)
                entries[pos++] = chunk_elem(ch[k], e) << 16 |
                                 swizzle(static_cast<uint32_t>(r), static_cast<uint32_t>(c + e));
    }
    return base;
}

template <int kFormat>
__global__ void __launch_bounds__(32 * write_warps<kFormat>(), write_min_blocks<kFormat>())
write_tiles_kernel(DenseArgs d, Tiles g, const uint16_t* tile_nnz, EncodeState* st, uint8_t* out) {
    constexpr int kWarps = write_warps<kFormat>();
    constexpr int kStageBytes = kFormat == FSPMM_FORMAT_BITMAP ? kBitmapMaxTileBytes : kCslMaxTileBytes;
    __shared__ __align__(16) uint8_t stages[kWarps][kStageBytes];
    if (st->refused != kRefuseNone || st->format != static_cast<unsigned long long>(kFormat)) return;
    const int lane = threadIdx.x & 31;
    uint8_t* stage = stages[threadIdx.x >> 5];
    const unsigned long long* table = reinterpret_cast<const unsigned long long*>(out + kHeaderBytes);
    const uint64_t first_word = (g.data_offset - kHeaderBytes) / 8;
    unsigned long long terms = 0;
    const uint64_t stride = uint64_t{gridDim.x} * kWarps;
    for (uint64_t t = uint64_t{blockIdx.x} * kWarps + (threadIdx.x >> 5); t < g.count; t += stride) {
        // The tile's offset and count first, so that their loads overlap the chunks' instead of following them.
        const uint64_t off = table[t];
        const uint32_t expected = tile_nnz[t];
        const int64_t row0 = static_cast<int64_t>(t / g.tiles_k) * kTileM;
        const int64_t col0 = static_cast<int64_t>(t % g.tiles_k) * kTileK;
        // The tile in two halves, one after the other (each lane's chunks 0-7, then 8-15: consecutive in value
        // order in both formats).
        uint32_t nnz = 0;
#pragma unroll 1
        for (int k0 = 0; k0 < kLaneChunks; k0 += kHeldChunks) {
            if constexpr (kFormat == FSPMM_FORMAT_BITMAP)
                nnz = place_bitmap_half(d, row0, col0, lane, k0, stage, nnz);
            else
                nnz = place_csl_half(d, row0, col0, lane, k0, stage, nnz);
        }
        if (nnz != expected) {  // the matrix changed since the count phase: leave the slot alone
            if (lane == 0) st->refused = kRefuseChanged;
            continue;
        }
        uint32_t bytes;
        if (kFormat == FSPMM_FORMAT_BITMAP) {
            uint16_t* values = reinterpret_cast<uint16_t*>(stage + kBitmapMaskBytes);
            bytes = kBitmapMaskBytes + static_cast<uint32_t>(round_up(2ull * nnz, 16));
            if (kBitmapMaskBytes + 2 * (nnz + lane) < bytes) values[nnz + lane] = 0;  // zero padding
        } else {
            uint32_t* entries = reinterpret_cast<uint32_t*>(stage);
            bytes = static_cast<uint32_t>(round_up(4ull * nnz, 16));
            if (4 * (nnz + lane) < bytes) entries[nnz + lane] = kCslPadPosition + lane;  // padding entries
        }
        __syncwarp();
        uint4* dst = reinterpret_cast<uint4*>(out + g.data_offset + off);
        for (uint32_t k = lane; k < bytes / 16; k += 32) {
            const uint4 v = reinterpret_cast<const uint4*>(stage)[k];
            __stcs(dst + k, v);
            const uint64_t word = first_word + off / 8 + 2 * k;
            terms += checksum_term(static_cast<uint64_t>(v.y) << 32 | v.x, word) +
                     checksum_term(static_cast<uint64_t>(v.w) << 32 | v.z, word + 1);
        }
        __syncwarp();  // the stage is rewritten for the warp's next tile
    }
    atomic_add_block(&st->checksum, terms);
}

// One thread: the header, unless the write was refused.
__global__ void finalize_kernel(EncodeState* st, Tiles g, int64_t tiles_m, int dtype, uint8_t* out) {
    if (st->refused != kRefuseNone) return;
    fspmm_header_t h;
    memset(&h, 0, sizeof h);
    h.magic = kMagic;
    h.version = kVersion;
    h.format = static_cast<uint8_t>(st->format);
    h.dtype = static_cast<uint8_t>(dtype);
    h.M = static_cast<int64_t>(st->M);
    h.K = static_cast<int64_t>(st->K);
    h.nnz = static_cast<int64_t>(st->nnz);
    h.tile_m = kTileM;
    h.tile_k = kTileK;
    h.tiles_m = tiles_m;
    h.tiles_k = g.tiles_k;
    h.offsets_offset = kHeaderBytes;
    h.offsets_bytes = (g.count + 1) * 8;
    h.data_offset = g.data_offset;
    h.data_bytes = st->data_bytes[st->format == FSPMM_FORMAT_BITMAP ? kFormatIndexBitmap : kFormatIndexCsl];
    h.total_bytes = g.data_offset + h.data_bytes;
    h.payload_checksum = st->checksum;
    h.max_tile_bytes = static_cast<uint32_t>(st->max_tile);
    uint64_t words[kHeaderBytes / 8];
    memcpy(words, &h, kHeaderBytes);
    uint64_t sum = 0;
    for (int w = 0; w < kHeaderChecksummed / 8; ++w) sum += checksum_term(words[w], w);
    words[kHeaderChecksummed / 8] = sum;
    uint64_t* dst = reinterpret_cast<uint64_t*>(out);
    for (int w = 0; w < kHeaderBytes / 8; ++w) dst[w] = words[w];
    st->written = h.total_bytes;
}

Tiles tiles_of(int64_t M, int64_t K) {
    Tiles g;
    const uint64_t tiles_m = ceil_div(static_cast<uint64_t>(M), kTileM);
    g.tiles_k = static_cast<int64_t>(ceil_div(static_cast<uint64_t>(K), kTileK));
    g.count = tiles_m * static_cast<uint64_t>(g.tiles_k);
    g.data_offset = round_up(kHeaderBytes + (g.count + 1) * 8, 16);
    return g;
}

DenseArgs dense_args(const DeviceDense& d) {
    const bool vec = reinterpret_cast<uintptr_t>(d.data) % 16 == 0 && d.ld % kChunkElems == 0;
    return DenseArgs{static_cast<uint16_t*>(const_cast<void*>(d.data)), d.M, d.K, d.ld, vec};
}

}  // namespace
}  // namespace convert

size_t encode_workspace_bytes(int64_t M, int64_t K) { return convert::workspace_layout(M, K).bytes; }

unsigned int persistent_grid(const void* kernel, int threads, uint64_t work, size_t smem) {
    const uint64_t cap = static_cast<uint64_t>(resident_ctas(current_device(), kernel, threads, smem));
    return static_cast<unsigned int>(work < cap ? work : cap);
}

void launch_encode_count(const DeviceDense& dense, void* workspace, cudaStream_t stream) {
    using namespace convert;
    const WorkspaceLayout w = workspace_layout(dense.M, dense.K);
    uint8_t* ws = static_cast<uint8_t*>(workspace);
    EncodeState* st = reinterpret_cast<EncodeState*>(ws);
    check_cuda(cudaMemsetAsync(st, 0, sizeof(EncodeState), stream), "cudaMemsetAsync (encoder workspace)");
    const Tiles g = tiles_of(dense.M, dense.K);
    const unsigned int grid = persistent_grid(reinterpret_cast<const void*>(count_kernel), kCountThreads,
                                              ceil_div(g.count, kCountThreads / 32));
    count_kernel<<<grid, kCountThreads, 0, stream>>>(
        dense_args(dense), g, reinterpret_cast<uint16_t*>(ws + w.nnz_offset), st, dense.dtype);
    check_cuda(cudaGetLastError(), "launch of the encoder's count kernel");
}

void launch_encode_write(const DeviceDense& dense, int format, void* workspace, void* out, size_t out_bytes,
                         cudaStream_t stream) {
    using namespace convert;
    const WorkspaceLayout w = workspace_layout(dense.M, dense.K);
    uint8_t* ws = static_cast<uint8_t*>(workspace);
    EncodeState* st = reinterpret_cast<EncodeState*>(ws);
    const uint16_t* tile_nnz = reinterpret_cast<const uint16_t*>(ws + w.nnz_offset);
    unsigned long long* sums = reinterpret_cast<unsigned long long*>(ws + w.sums_offset);
    unsigned long long* maxima = reinterpret_cast<unsigned long long*>(ws + w.max_offset);
    uint8_t* blob = static_cast<uint8_t*>(out);
    const Tiles g = tiles_of(dense.M, dense.K);
    const int64_t tiles_m = static_cast<int64_t>(ceil_div(static_cast<uint64_t>(dense.M), kTileM));
    const DenseArgs d = dense_args(dense);

    resolve_kernel<<<1, 1, 0, stream>>>(st, dense.M, dense.K, dense.dtype, format, g, out_bytes);
    check_cuda(cudaGetLastError(), "launch of the encoder's resolve kernel");
    const unsigned int blocks = static_cast<unsigned int>(w.scan_blocks);
    scan_reduce_kernel<<<blocks, kScanThreads, 0, stream>>>(tile_nnz, g, st, sums, maxima);
    check_cuda(cudaGetLastError(), "launch of the encoder's scan_reduce kernel");
    scan_blocks_kernel<<<1, kBlocksThreads, 0, stream>>>(sums, maxima, w.scan_blocks, g, st, blob);
    check_cuda(cudaGetLastError(), "launch of the encoder's scan_blocks kernel");
    scan_write_kernel<<<blocks, kScanThreads, 0, stream>>>(tile_nnz, g, sums, st, blob);
    check_cuda(cudaGetLastError(), "launch of the encoder's scan_write kernel");
    // AUTO and SMALLEST are resolved on the GPU: both variants are launched and the one not chosen exits at once.
    if (format != FSPMM_FORMAT_TILED_CSL) {
        constexpr int kThreads = 32 * write_warps<FSPMM_FORMAT_BITMAP>();
        const auto kernel = write_tiles_kernel<FSPMM_FORMAT_BITMAP>;
        const unsigned int grid = persistent_grid(reinterpret_cast<const void*>(kernel), kThreads, ceil_div(g.count, kThreads / 32));
        kernel<<<grid, kThreads, 0, stream>>>(d, g, tile_nnz, st, blob);
        check_cuda(cudaGetLastError(), "launch of the encoder's bitmap tile kernel");
    }
    if (format != FSPMM_FORMAT_BITMAP) {
        constexpr int kThreads = 32 * write_warps<FSPMM_FORMAT_TILED_CSL>();
        const auto kernel = write_tiles_kernel<FSPMM_FORMAT_TILED_CSL>;
        const unsigned int grid = persistent_grid(reinterpret_cast<const void*>(kernel), kThreads, ceil_div(g.count, kThreads / 32));
        kernel<<<grid, kThreads, 0, stream>>>(d, g, tile_nnz, st, blob);
        check_cuda(cudaGetLastError(), "launch of the encoder's Tiled-CSL tile kernel");
    }
    finalize_kernel<<<1, 1, 0, stream>>>(st, g, tiles_m, dense.dtype, blob);
    check_cuda(cudaGetLastError(), "launch of the encoder's finalize kernel");
}

}  // namespace fspmm
