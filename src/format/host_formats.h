// Internal interface of the host (CPU) encoder, decoder and reference linear, plus the fp16/bf16 <-> float
// conversions and blob geometry helpers they share.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <vector>

#include "flashspmm.h"
#include "format/layout.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "flashspmm's host code assumes a little-endian CPU (blobs are little-endian)"
#endif

namespace fspmm {

// ---- scalar helpers -------------------------------------------------------------------------------

// True iff a 16-bit value is stored in a blob (anything but +0.0 and -0.0).
inline bool is_stored(uint16_t bits) { return (bits & 0x7FFFu) != 0; }

// Bits set in a 64-bit word. Baseline x86-64 has no POPCNT instruction, where __builtin_popcountll becomes
// a library call; this bit-parallel count is inlined everywhere.
inline int popcount64(uint64_t x) {
#if defined(__POPCNT__) || defined(__aarch64__)
    return __builtin_popcountll(x);
#else
    x = x - ((x >> 1) & 0x5555555555555555ull);
    x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return static_cast<int>((x * 0x0101010101010101ull) >> 56);
#endif
}

// Unaligned little-endian loads and stores (blobs and user buffers may have any alignment).
inline uint16_t load_u16(const void* p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
inline uint32_t load_u32(const void* p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
inline uint64_t load_u64(const void* p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
inline void store_u16(void* p, uint16_t v) { memcpy(p, &v, 2); }
inline void store_u32(void* p, uint32_t v) { memcpy(p, &v, 4); }
inline void store_u64(void* p, uint64_t v) { memcpy(p, &v, 8); }

// Bit pattern of a float and back.
inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
inline float bits_float(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// IEEE binary16 -> float (exact; NaN payloads kept).
inline float half_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    const uint32_t mant = h & 0x3FFu;
    if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (mant << 13));           // Inf / NaN
    if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));     // normal
    const float sub = static_cast<float>(mant) * 5.9604644775390625e-08f;            // mant * 2^-24
    return bits_float(sign | float_bits(sub));                                       // zero / subnormal
}

// float -> IEEE binary16, round to nearest even; overflow gives Inf, NaN stays a (quiet) NaN.
inline uint16_t float_to_half(float f) {
    const uint32_t x = float_bits(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));  // NaN
    if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to Inf
    if (ax >= 0x38800000u) {                                              // normal half (>= 2^-14)
        const uint32_t rounded = ax + 0xFFFu + ((ax >> 13) & 1u) - (112u << 23);
        return static_cast<uint16_t>(sign | (rounded >> 13));
    }
    if (ax <= 0x33000000u) return sign;  // <= 2^-25 rounds to (signed) zero
    // Subnormal half: value * 2^24 rounded to nearest even, from the float's 24-bit significand.
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - (ax >> 23);  // 14..24
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    uint32_t r = m >> shift;
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
}

// bfloat16 -> float (exact).
inline float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// float -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t float_to_bf16(float f) {
    const uint32_t x = float_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
    return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

// Conversions selected by dtype.
inline float to_float(uint16_t bits, int dtype) {
    return dtype == FSPMM_DTYPE_BFLOAT16 ? bf16_to_float(bits) : half_to_float(bits);
}
inline uint16_t from_float(float f, int dtype) {
    return dtype == FSPMM_DTYPE_BFLOAT16 ? float_to_bf16(f) : float_to_half(f);
}

// ---- blob geometry --------------------------------------------------------------------------------

// Largest M or K.
constexpr int64_t kMaxDim = 0x7FFFFFFF;

// Sizes of a blob that depend only on the matrix shape.
struct Geometry {
    int64_t M = 0, K = 0;
    int64_t tiles_m = 0, tiles_k = 0;
    uint64_t tiles = 0;          // tiles_m * tiles_k
    uint64_t offsets_bytes = 0;  // (tiles + 1) * 8
    uint64_t data_offset = 0;    // round_up(128 + offsets_bytes, 16)
};
// Geometry of an M x K matrix (1 <= M, K <= kMaxDim, not checked here).
Geometry make_geometry(int64_t M, int64_t K);

// Bytes of one tile holding `nnz` values.
inline uint64_t csl_tile_bytes(uint64_t nnz) { return round_up(nnz * 4u, 16); }
inline uint64_t bitmap_tile_bytes(uint64_t nnz) { return kBitmapMaskBytes + round_up(nnz * 2u, 16); }
inline uint64_t tile_bytes(int format, uint64_t nnz) {
    return format == FSPMM_FORMAT_BITMAP ? bitmap_tile_bytes(nnz) : csl_tile_bytes(nnz);
}

// Rows / columns of tile (mt, kt) that lie inside the matrix (1..64).
inline int tile_rows(const Geometry& g, int64_t mt) {
    const int64_t left = g.M - mt * kTileM;
    return left < kTileM ? static_cast<int>(left) : kTileM;
}
inline int tile_cols(const Geometry& g, int64_t kt) {
    const int64_t left = g.K - kt * kTileK;
    return left < kTileK ? static_cast<int>(left) : kTileK;
}

// Checksum of `bytes` (multiple of 8) at `data` whose first word has index `first_index`; multi-threaded.
uint64_t checksum_from(const void* data, size_t bytes, uint64_t first_index);

// ---- encoder (encode_host.cpp) ----------------------------------------------------------------------

// A dense row-major matrix of 16-bit values.
struct DenseView {
    const uint16_t* data;  // may be unaligned for 8-byte loads; 2-byte aligned
    int64_t M, K, ld;
};

// Result of the counting pass: stored values per tile, enough to size a blob in either format.
struct TileCounts {
    Geometry geo;
    std::vector<uint16_t> nnz;  // per tile (0..4096), tile t = mt * tiles_k + kt
    uint64_t total_nnz = 0;
};

// Count the stored values of every tile (multi-threaded over row stripes).
TileCounts count_tiles(const DenseView& dense);
// Exact blob size of the counted matrix in a concrete format (TILED_CSL or BITMAP).
uint64_t blob_bytes(const TileCounts& counts, int format);
// Concrete format of a compression request (AUTO and SMALLEST resolved from the counts: format/choose.h).
int choose_format(const TileCounts& counts, int format);
// Write the blob (exactly blob_bytes(counts, format) bytes) to `out` (multi-threaded).
void encode_blob(const DenseView& dense, const TileCounts& counts, int format, int dtype, void* out);

// ---- decoder (decode_host.cpp) ----------------------------------------------------------------------

// Expand one tile of a validated blob into a zero-filled 64x64 row-major tile of bits.
void decode_tile(const uint8_t* tile, uint64_t bytes, int format, uint16_t* dense_tile);
// Write the M x K matrix of a validated blob into `dense` (leading dimension ld >= K); multi-threaded.
void decode_blob(const uint8_t* blob, const fspmm_header_t& h, uint16_t* dense, int64_t ld);

// ---- reference linear (linear_host.cpp) --------------------------------------------------------------

// Arguments of linear_blob: y[n, m] = alpha * sum_k x[n,k] W[m,k] + bias[m] + beta * y[n, m].
struct LinearArgs {
    const uint16_t* x;
    int64_t N, ldx;
    const uint16_t* bias;  // may be NULL
    uint16_t* y;
    int64_t ldy;
    float alpha, beta;
};
// Reference linear with the W of a validated blob; fp32 accumulation over stored values in k order.
void linear_blob(const uint8_t* blob, const fspmm_header_t& h, const LinearArgs& args);

// Magnitude pruning in place (prune_host.cpp); arguments already checked.
void prune_host(uint16_t* w, int64_t M, int64_t K, int64_t ld, double sparsity, int scope);

}  // namespace fspmm
