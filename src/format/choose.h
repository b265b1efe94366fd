// The formats FSPMM_FORMAT_AUTO, AUTO_N8 and AUTO_N1 resolve to: the one predicted to multiply faster over
// their decode range (N <= 16, N <= 8, one token), from the blob sizes of both formats, which the count phase
// of either encoder knows exactly. Shared by the host and GPU encoders so both resolve alike.
//
// The model (calibrated on an NVIDIA H200, 2026-12-02; docs/PERFORMANCE.md, "How auto chooses"): a kernel's
// time is its blob's bytes over an effective bandwidth, a fraction of copy bandwidth that depends on the format
// and the density (interpolated linearly between the measured densities; the geometric mean over the range's
// token counts, N = 1, 8, 16 / N = 1, 8 / N = 1, of the four target shapes, each format with the kernels `auto`
// runs). The bitmap format moves fewer bytes down to 6 % density, but Tiled-CSL reaches a larger fraction of
// copy bandwidth at every density (1.1x at 50 %, 1.6x at 10 %; at one token its CUDA-core kernel, 2.1x), so for
// uniform pruning the prediction crosses at about 22 % density (78 % sparsity) for N <= 16 and N <= 8, and at
// about 27 % (73 %) for one token. Matrices of at most 2048 rows stay bitmaps (the warp-streaming kernel,
// bitmap only, is 1.0-2.0x Tiled-CSL there at every measured sparsity), and so does anything denser than
// 50 % (which also keeps every AUTO blob within the bitmap bound of fspmm_blob_bytes_bound).
#pragma once
#include <stdint.h>

#include "flashspmm.h"
#include "format/layout.h"

namespace fspmm {

// Whether format is one of the AUTO choices, and the largest N of its decode range.
FSPMM_HD bool is_auto_format(int format) {
    return format == FSPMM_FORMAT_AUTO || format == FSPMM_FORMAT_AUTO_N8 || format == FSPMM_FORMAT_AUTO_N1;
}
FSPMM_HD int auto_max_tokens(int format) {
    return format == FSPMM_FORMAT_AUTO_N1 ? 1 : format == FSPMM_FORMAT_AUTO_N8 ? 8 : 16;
}

// Fraction of copy bandwidth reached at this density (0..1) for decode sizes up to max_tokens (1, 8 or 16):
// the H200 measurements of one format.
FSPMM_HD double predicted_efficiency(int format, double density, int max_tokens) {
    constexpr int kPoints = 7;
    const double at[kPoints] = {0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.50};
    // [format: bitmap, Tiled-CSL][range: N <= 16, N <= 8, N = 1][density]
    const double table[2][3][kPoints] = {
        {{0.147, 0.209, 0.269, 0.332, 0.381, 0.429, 0.648},
         {0.151, 0.215, 0.277, 0.342, 0.397, 0.443, 0.666},
         {0.152, 0.216, 0.280, 0.344, 0.400, 0.448, 0.671}},
        {{0.208, 0.337, 0.440, 0.518, 0.591, 0.634, 0.727},
         {0.236, 0.372, 0.475, 0.556, 0.619, 0.646, 0.738},
         {0.325, 0.466, 0.566, 0.657, 0.675, 0.656, 0.744}},
    };
    const double* e = table[format == FSPMM_FORMAT_BITMAP ? 0 : 1][max_tokens <= 1 ? 2 : max_tokens <= 8 ? 1 : 0];
    if (density <= at[0]) return e[0];
    for (int i = 0; i + 1 < kPoints; ++i)
        if (density <= at[i + 1]) return e[i] + (e[i + 1] - e[i]) * (density - at[i]) / (at[i + 1] - at[i]);
    return e[kPoints - 1];
}

// The format an AUTO choice for decode sizes up to max_tokens resolves to, for an M x K matrix with nnz stored
// values whose data sections would be csl_bytes (Tiled-CSL) and bitmap_bytes (bitmap) long.
FSPMM_HD int fastest_format(int64_t M, int64_t K, uint64_t nnz, uint64_t csl_bytes, uint64_t bitmap_bytes,
                            int max_tokens) {
    const double density = double(nnz) / (double(M) * double(K));
    if (M <= 2048 || density > 0.5) return FSPMM_FORMAT_BITMAP;
    const double csl = double(csl_bytes) / predicted_efficiency(FSPMM_FORMAT_TILED_CSL, density, max_tokens);
    const double bitmap = double(bitmap_bytes) / predicted_efficiency(FSPMM_FORMAT_BITMAP, density, max_tokens);
    return csl < bitmap ? FSPMM_FORMAT_TILED_CSL : FSPMM_FORMAT_BITMAP;
}

// The format SMALLEST resolves to: the smaller blob (ties: bitmap).
FSPMM_HD int smallest_format(uint64_t csl_bytes, uint64_t bitmap_bytes) {
    return csl_bytes < bitmap_bytes ? FSPMM_FORMAT_TILED_CSL : FSPMM_FORMAT_BITMAP;
}

// Concrete format of a compression request: format itself, or AUTO (any range) / SMALLEST resolved.
FSPMM_HD int compress_format(int format, int64_t M, int64_t K, uint64_t nnz, uint64_t csl_bytes,
                             uint64_t bitmap_bytes) {
    if (is_auto_format(format)) return fastest_format(M, K, nnz, csl_bytes, bitmap_bytes, auto_max_tokens(format));
    if (format == FSPMM_FORMAT_SMALLEST) return smallest_format(csl_bytes, bitmap_bytes);
    return format;
}

}  // namespace fspmm
