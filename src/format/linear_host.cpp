// CPU reference linear: y = alpha * x * W^T (+ bias) + beta * y with W from a validated blob.
// Each output accumulates x[n,k] * W[m,k] in fp32 over the stored values of row m in increasing k.
#include <algorithm>
#include <utility>

#include "common/parallel.h"
#include "format/host_formats.h"
#include "format/layout.h"

namespace fspmm {
namespace {

// Floats of x converted per batch of rows (bounds the temporary to 64 MiB).
constexpr int64_t kBatchFloats = int64_t{1} << 24;
// Rows of x per parallel work item.
constexpr int64_t kRowsPerItem = 16;

// The stored values of one row stripe of W as compressed rows (columns increasing within a row).
struct StripeRows {
    uint64_t start[kTileM + 1] = {};  // row r holds entries [start[r], start[r+1])
    std::vector<int32_t> col;
    std::vector<float> val;
};

// Build the compressed rows of stripe mt from the blob's tiles, one tile at a time.
StripeRows build_stripe(const uint8_t* blob, const fspmm_header_t& h, const Geometry& g, int64_t mt) {
    std::vector<std::pair<int32_t, float>> rows[kTileM];
    uint16_t tile[kTileElems];
    const uint8_t* table = blob + h.offsets_offset;
    for (int64_t kt = 0; kt < g.tiles_k; ++kt) {
        const uint64_t t = static_cast<uint64_t>(mt * g.tiles_k + kt);
        const uint64_t begin = load_u64(table + 8 * t), end = load_u64(table + 8 * t + 8);
        if (end == begin) continue;  // empty Tiled-CSL tile
        decode_tile(blob + h.data_offset + begin, end - begin, h.format, tile);
        for (int r = 0; r < tile_rows(g, mt); ++r)
            for (int c = 0; c < tile_cols(g, kt); ++c)
                if (is_stored(tile[r * kTileK + c]))
                    rows[r].emplace_back(static_cast<int32_t>(kt * kTileK + c),
                                         to_float(tile[r * kTileK + c], h.dtype));
    }
    StripeRows s;
    for (int r = 0; r < kTileM; ++r) {
        for (const auto& e : rows[r]) {
            s.col.push_back(e.first);
            s.val.push_back(e.second);
        }
        s.start[r + 1] = s.col.size();
    }
    return s;
}

// Convert rows [n0, n0 + rows) of x to float (row-major, K per row) into xf.
void convert_x(const LinearArgs& a, int64_t K, int dtype, int64_t n0, int64_t rows, float* xf) {
    parallel_for(rows, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n)
            for (int64_t k = 0; k < K; ++k) xf[n * K + k] = to_float(a.x[(n0 + n) * a.ldx + k], dtype);
    });
}

// y rows [n_begin, n_end) (relative to n0, x already converted) for the rows of stripe mt.
void compute_rows(const LinearArgs& a, const fspmm_header_t& h, const StripeRows& s, int64_t mt, int64_t n0,
                  int64_t n_begin, int64_t n_end, const float* xf) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileM, h.M - mt * kTileM));
    for (int64_t n = n_begin; n < n_end; ++n) {
        const float* xrow = xf + n * h.K;
        uint16_t* yrow = a.y + (n0 + n) * a.ldy;
        for (int r = 0; r < rows; ++r) {
            float acc = 0.0f;
            for (uint64_t e = s.start[r]; e < s.start[r + 1]; ++e) acc += xrow[s.col[e]] * s.val[e];
            const int64_t m = mt * kTileM + r;
            float out = a.alpha * acc;
            if (a.bias) out += to_float(a.bias[m], h.dtype);
            if (a.beta != 0.0f) out += a.beta * to_float(yrow[m], h.dtype);
            yrow[m] = from_float(out, h.dtype);
        }
    }
}

}  // namespace

void linear_blob(const uint8_t* blob, const fspmm_header_t& h, const LinearArgs& a) {
    const Geometry g = make_geometry(h.M, h.K);
    std::vector<StripeRows> stripes(static_cast<size_t>(g.tiles_m));
    parallel_for(g.tiles_m, 1, [&](int64_t begin, int64_t end) {
        for (int64_t mt = begin; mt < end; ++mt) stripes[mt] = build_stripe(blob, h, g, mt);
    });
    const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(a.N, kBatchFloats / h.K));
    std::vector<float> xf(static_cast<size_t>(batch * h.K));
    for (int64_t n0 = 0; n0 < a.N; n0 += batch) {
        const int64_t rows = std::min(batch, a.N - n0);
        convert_x(a, h.K, h.dtype, n0, rows, xf.data());
        // Work items: (stripe, group of kRowsPerItem rows of x).
        const int64_t groups = (rows + kRowsPerItem - 1) / kRowsPerItem;
        parallel_for(g.tiles_m * groups, 1, [&](int64_t begin, int64_t end) {
            for (int64_t item = begin; item < end; ++item) {
                const int64_t mt = item / groups, first = (item % groups) * kRowsPerItem;
                compute_rows(a, h, stripes[mt], mt, n0, first, std::min(rows, first + kRowsPerItem), xf.data());
            }
        });
    }
}

}  // namespace fspmm
