// The host (CPU) C entry points: header reading, validation, compression, decompression, reference linear.
#include <stdint.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "api/checks.h"
#include "api/export.h"
#include "api/handles.h"
#include "common/error.h"
#include "common/parallel.h"
#include "flashspmm.h"
#include "format/header.h"
#include "format/host_formats.h"
#include "format/layout.h"

namespace fspmm {
namespace {

// Largest number of host threads fspmm_set_host_threads accepts.
constexpr int kMaxHostThreads = 1 << 16;

// Check the arguments shared by the compress functions and describe the dense input.
DenseView dense_input(const void* dense, int64_t M, int64_t K, int64_t ld, int dtype, int format) {
    require_matrix(dense, M, K, ld, dtype);
    require_format(format);
    return DenseView{static_cast<const uint16_t*>(dense), M, K, ld};
}

// Blob size as size_t, or INVALID_ARGUMENT if it cannot be addressed.
size_t to_size(uint64_t bytes) {
    FSPMM_REQUIRE(bytes <= SIZE_MAX,
                  "the blob would be " + std::to_string(bytes) + " bytes, more than this process can address");
    return static_cast<size_t>(bytes);
}

// a * b + c, or false on 64-bit overflow.
bool mul_add(uint64_t a, uint64_t b, uint64_t c, uint64_t* out) {
    uint64_t p = 0;
    return !__builtin_mul_overflow(a, b, &p) && !__builtin_add_overflow(p, c, out);
}

// Largest data section of a concrete format: every element of the matrix stored, false on overflow.
bool max_data_bytes(int64_t M, int64_t K, int format, uint64_t* out) {
    // Stripes (and column blocks) are either full (64) or the one partial tail.
    const uint64_t row_count[2] = {static_cast<uint64_t>(M / kTileM), M % kTileM ? 1u : 0u};
    const uint64_t row_size[2] = {kTileM, static_cast<uint64_t>(M % kTileM)};
    const uint64_t col_count[2] = {static_cast<uint64_t>(K / kTileK), K % kTileK ? 1u : 0u};
    const uint64_t col_size[2] = {kTileK, static_cast<uint64_t>(K % kTileK)};
    uint64_t total = 0;
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
            const uint64_t tiles = row_count[i] * col_count[j];  // <= 2^50
            if (!mul_add(tiles, tile_bytes(format, row_size[i] * col_size[j]), total, &total)) return false;
        }
    }
    *out = total;
    return true;
}

// Largest blob of `format` for an M x K matrix: SMALLEST, the smaller of the two bounds; AUTO (any decode range),
// the bitmap bound (AUTO picks Tiled-CSL only at <= 50 % density, where its blob is smaller than the bitmap bound).
uint64_t blob_bound(int64_t M, int64_t K, int format) {
    const Geometry g = make_geometry(M, K);
    uint64_t csl = 0, bitmap = 0;
    const bool csl_ok = max_data_bytes(M, K, FSPMM_FORMAT_TILED_CSL, &csl) && csl <= UINT64_MAX - g.data_offset;
    const bool bitmap_ok = max_data_bytes(M, K, FSPMM_FORMAT_BITMAP, &bitmap) && bitmap <= UINT64_MAX - g.data_offset;
    // SMALLEST can always fall back to bitmap, the smaller one for large matrices.
    const bool ok = format == FSPMM_FORMAT_TILED_CSL ? csl_ok : bitmap_ok;
    FSPMM_REQUIRE(ok, "a " + std::to_string(M) + " x " + std::to_string(K) +
                          " matrix is too large for a blob: its size would overflow 64 bits");
    if (format == FSPMM_FORMAT_TILED_CSL) return g.data_offset + csl;
    if (format != FSPMM_FORMAT_SMALLEST) return g.data_offset + bitmap;
    return g.data_offset + (csl_ok ? std::min(csl, bitmap) : bitmap);
}

}  // namespace
}  // namespace fspmm

using namespace fspmm;

extern "C" FSPMM_API fspmm_status_t fspmm_set_host_threads(int threads) {
    return guard("fspmm_set_host_threads", [&] {
        FSPMM_REQUIRE(threads >= 0 && threads <= kMaxHostThreads,
                      "threads = " + std::to_string(threads) + " is invalid: pass 0 (all hardware threads) or 1.." +
                          std::to_string(kMaxHostThreads));
        set_host_threads(threads);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_header_read(const void* prefix, size_t bytes, fspmm_header_t* out) {
    return guard("fspmm_header_read", [&] {
        require_pointer(prefix, "prefix", "a pointer to the first bytes of a blob");
        require_pointer(out, "out", "a pointer to an fspmm_header_t to fill");
        if (bytes < static_cast<size_t>(kHeaderBytes))
            raise(FSPMM_ERR_CORRUPT_BUFFER, "buffer holds " + std::to_string(bytes) +
                                                " bytes, fewer than the 128-byte header: the blob is truncated");
        fspmm_header_t h;
        memcpy(&h, prefix, sizeof h);
        check_header(h);
        *out = h;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_validate_host(const void* blob, size_t bytes, fspmm_header_t* out) {
    return guard("fspmm_validate_host", [&] {
        require_pointer(blob, "blob", "a pointer to a blob in host memory");
        const fspmm_header_t h = validate_blob(blob, bytes);
        if (out) *out = h;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_blob_bytes_bound(int64_t M, int64_t K, fspmm_format_t format, size_t* bytes) {
    return guard("fspmm_blob_bytes_bound", [&] {
        require_dimension(M, "M", "rows of W, out features");
        require_dimension(K, "K", "columns of W, in features");
        const int fmt = enum_value(format);
        require_format(fmt);
        require_pointer(bytes, "bytes", "a pointer to a size_t to receive the bound");
        *bytes = to_size(blob_bound(M, K, fmt));
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_compress_size_host(const void* dense, int64_t M, int64_t K, int64_t ld,
                                                             fspmm_dtype_t dtype, fspmm_format_t format, size_t* bytes,
                                                             fspmm_format_t* chosen) {
    return guard("fspmm_compress_size_host", [&] {
        const int dt = enum_value(dtype), fmt = enum_value(format);
        const DenseView view = dense_input(dense, M, K, ld, dt, fmt);
        require_pointer(bytes, "bytes", "a pointer to a size_t to receive the blob size");
        const TileCounts counts = count_tiles(view);
        const int resolved = choose_format(counts, fmt);
        const size_t size = to_size(blob_bytes(counts, resolved));
        *bytes = size;
        if (chosen) *chosen = static_cast<fspmm_format_t>(resolved);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_compress_host(const void* dense, int64_t M, int64_t K, int64_t ld,
                                                        fspmm_dtype_t dtype, fspmm_format_t format, void* out,
                                                        size_t out_bytes, size_t* written) {
    return guard("fspmm_compress_host", [&] {
        const int dt = enum_value(dtype), fmt = enum_value(format);
        const DenseView view = dense_input(dense, M, K, ld, dt, fmt);
        require_pointer(out, "out", "a buffer of fspmm_compress_size_host bytes for the blob");
        const TileCounts counts = count_tiles(view);
        const int resolved = choose_format(counts, fmt);
        const size_t size = to_size(blob_bytes(counts, resolved));
        FSPMM_REQUIRE(out_bytes >= size, "out_bytes = " + std::to_string(out_bytes) +
                                             " is too small: this blob needs " + std::to_string(size) +
                                             " bytes (ask fspmm_compress_size_host)");
        encode_blob(view, counts, resolved, dt, out);
        if (written) *written = size;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_decompress_host(fspmm_matrix_t matrix, void* dense, int64_t rows,
                                                          int64_t cols, int64_t ld) {
    return guard("fspmm_decompress_host", [&] {
        const fspmm_matrix_s& m = matrix_arg(matrix, true);
        const fspmm_header_t& h = m.header;
        require_pointer(dense, "dense", "a pointer to room for the M x K output matrix");
        require_aligned(dense, "dense");
        require_output_shape(h, rows, cols);
        require_leading_dim(h.M, h.K, ld, "ld", "K");
        decode_blob(static_cast<const uint8_t*>(m.blob), h, static_cast<uint16_t*>(dense), ld);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_linear_host(fspmm_matrix_t matrix, const void* x, int64_t N, int64_t K,
                                                      int64_t ldx, const void* bias, void* y, int64_t M, int64_t ldy,
                                                      float alpha, float beta) {
    return guard("fspmm_linear_host", [&] {
        const fspmm_matrix_s& m = matrix_arg(matrix, true);
        const fspmm_header_t& h = m.header;
        require_pointer(x, "x", "a pointer to the N x K input");
        require_pointer(y, "y", "a pointer to the N x M output");
        require_aligned(x, "x");
        require_aligned(y, "y");
        if (bias) require_aligned(bias, "bias");
        FSPMM_REQUIRE(N >= 1, "N = " + std::to_string(N) + " is invalid: N (rows of x and y) must be >= 1");
        FSPMM_REQUIRE(K == h.K && M == h.M, "x [N, K = " + std::to_string(K) + "] and y [N, M = " + std::to_string(M) +
                                                "] do not match the matrix, which is [M = " + std::to_string(h.M) +
                                                ", K = " + std::to_string(h.K) + "]");
        require_leading_dim(N, h.K, ldx, "ldx", "K");
        require_leading_dim(N, h.M, ldy, "ldy", "M");
        const LinearArgs args{static_cast<const uint16_t*>(x), N,   ldx,   static_cast<const uint16_t*>(bias),
                              static_cast<uint16_t*>(y),       ldy, alpha, beta};
        linear_blob(static_cast<const uint8_t*>(m.blob), h, args);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_prune_host(void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype,
                                                     double sparsity, fspmm_prune_scope_t scope) {
    return guard("fspmm_prune_host", [&] {
        const int dt = enum_value(dtype), sc = enum_value(scope);
        require_matrix(dense, M, K, ld, dt);
        require_sparsity(sparsity);
        require_scope(sc);
        prune_host(static_cast<uint16_t*>(dense), M, K, ld, sparsity, sc);
        return FSPMM_OK;
    });
}
