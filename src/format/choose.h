// The format FSPMM_FORMAT_AUTO resolves to: the one predicted to multiply faster at decode sizes (N <= 16), from
// the blob sizes of both formats, which the count phase of either encoder knows exactly. Shared by the host
// and GPU encoders so both resolve alike.
//
// The model (calibrated on an NVIDIA H200, 2026-12-02; docs/PERFORMANCE.md, "How auto chooses"): a kernel's
// time is its blob's bytes over an effective bandwidth, a fraction of copy bandwidth that depends on the format
// and the density (interpolated linearly between the measured densities; the geometric mean over N = 1, 8, 16
// of the four target shapes, each format with the kernels `auto` runs). The bitmap format moves fewer bytes
// down to 6 % density, but Tiled-CSL reaches a larger fraction of copy bandwidth at every density (1.1x at
// 50 %, 1.6x at 10 %; at one token its CUDA-core kernel), so for uniform pruning the prediction crosses at
// about 22 % density (78 % sparsity). Matrices of at most 2048 rows stay bitmaps (the warp-streaming kernel,
// bitmap only, is 1.0-2.0x Tiled-CSL there at every measured sparsity), and so does anything denser than
// 50 % (which also keeps every AUTO blob within the bitmap bound of fspmm_blob_bytes_bound).
#pragma once
#include <stdint.h>

#include "flashspmm.h"
#include "format/layout.h"

namespace fspmm {

// Fraction of copy bandwidth reached at this density (0..1): the H200 measurements of one format.
FSPMM_HD double predicted_efficiency(int format, double density) {
    constexpr int kPoints = 7;
    const double at[kPoints] = {0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.50};
    const double bitmap[kPoints] = {0.147, 0.209, 0.269, 0.332, 0.381, 0.429, 0.648};
    const double csl[kPoints] = {0.208, 0.337, 0.440, 0.518, 0.591, 0.634, 0.727};
    const double* e = format == FSPMM_FORMAT_BITMAP ? bitmap : csl;
    if (density <= at[0]) return e[0];
    for (int i = 0; i + 1 < kPoints; ++i)
        if (density <= at[i + 1]) return e[i] + (e[i + 1] - e[i]) * (density - at[i]) / (at[i + 1] - at[i]);
    return e[kPoints - 1];
}

// The format AUTO resolves to for an M x K matrix with nnz stored values whose data sections would be
// csl_bytes (Tiled-CSL) and bitmap_bytes (bitmap) long.
FSPMM_HD int fastest_format(int64_t M, int64_t K, uint64_t nnz, uint64_t csl_bytes, uint64_t bitmap_bytes) {
    const double density = double(nnz) / (double(M) * double(K));
    if (M <= 2048 || density > 0.5) return FSPMM_FORMAT_BITMAP;
    const double csl = double(csl_bytes) / predicted_efficiency(FSPMM_FORMAT_TILED_CSL, density);
    const double bitmap = double(bitmap_bytes) / predicted_efficiency(FSPMM_FORMAT_BITMAP, density);
    return csl < bitmap ? FSPMM_FORMAT_TILED_CSL : FSPMM_FORMAT_BITMAP;
}

// The format SMALLEST resolves to: the smaller blob (ties: bitmap).
FSPMM_HD int smallest_format(uint64_t csl_bytes, uint64_t bitmap_bytes) {
    return csl_bytes < bitmap_bytes ? FSPMM_FORMAT_TILED_CSL : FSPMM_FORMAT_BITMAP;
}

// Concrete format of a compression request: format itself, or AUTO / SMALLEST resolved.
FSPMM_HD int compress_format(int format, int64_t M, int64_t K, uint64_t nnz, uint64_t csl_bytes,
                             uint64_t bitmap_bytes) {
    if (format == FSPMM_FORMAT_AUTO) return fastest_format(M, K, nnz, csl_bytes, bitmap_bytes);
    if (format == FSPMM_FORMAT_SMALLEST) return smallest_format(csl_bytes, bitmap_bytes);
    return format;
}

}  // namespace fspmm
