// Host side of the GPU encoder and decoder: workspace layout, the state the GPU leaves in it, launchers.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "flashspmm.h"

namespace fspmm {

// Written by the encoder's kernels at the start of the workspace (all fields little-endian 64-bit).
struct EncodeState {
    unsigned long long magic;          // kEncodeCounted once the count phase ran
    unsigned long long M, K, dtype;    // of the count phase
    unsigned long long nnz;            // stored values counted
    unsigned long long data_bytes[2];  // data section size as Tiled-CSL and bitmap (kFormatIndex*)
    unsigned long long refused;        // why the write phase wrote nothing (EncodeRefusal), 0 if it did not
    unsigned long long format;         // write phase: the concrete format written
    unsigned long long checksum;       // write phase: payload checksum accumulator
    unsigned long long max_tile;       // write phase: largest tile in bytes
    unsigned long long written;        // write phase: total_bytes of the blob, once the header is written
    unsigned long long reserved[4];
};
static_assert(sizeof(EncodeState) == 128, "EncodeState is 128 bytes");
constexpr int kFormatIndexCsl = 0, kFormatIndexBitmap = 1;  // EncodeState::data_bytes index

constexpr unsigned long long kEncodeCounted = 0x544E554F43505346ull;  // "FSPCOUNT"

// Reasons the write phase refuses to write (EncodeState::refused).
enum EncodeRefusal : unsigned long long {
    kRefuseNone = 0,
    kRefuseShape = 1,     // M, K or dtype differ from the count phase
    kRefuseTooSmall = 2,  // out_bytes is smaller than the blob
    kRefuseChanged = 3,   // a tile held a different number of values than counted
};

// Workspace bytes of the encoder for an M x K matrix.
size_t encode_workspace_bytes(int64_t M, int64_t K);

// A dense device matrix as the conversion kernels see it.
struct DeviceDense {
    const void* data;
    int64_t M, K, ld;
    int dtype;
};

// Grid of a persistent (grid-stride) kernel on the current device: as many CTAs of `threads` threads (and
// `smem` bytes of dynamic shared memory) as fit at once, at most `work` (the occupancy cached: resident_ctas).
unsigned int persistent_grid(const void* kernel, int threads, uint64_t work, size_t smem = 0);

// Phase 1: count (checks done by the caller).
void launch_encode_count(const DeviceDense& d, void* workspace, cudaStream_t stream);
// Phase 3: write the blob (format may be AUTO; resolved on the GPU from the counts).
void launch_encode_write(const DeviceDense& d, int format, void* workspace, void* out, size_t out_bytes,
                         cudaStream_t stream);
// Blob -> dense (header already checked on the host).
void launch_decode(const fspmm_header_t& h, const void* blob, void* dense, int64_t ld, cudaStream_t stream);

}  // namespace fspmm
