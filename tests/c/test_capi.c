/* test_capi: exercises the public C API of flashspmm from plain C99, using only flashspmm.h and the
 * installed library. Prints "test_capi: P passed, F failed" and returns nonzero if anything failed. */
#include <flashspmm.h>

#include "fspmm_bits.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_passed = 0;
static int g_failed = 0;

/* Record one check; on failure print what failed and the library's last error message. */
static void check(int ok, const char* what) {
    if (ok) {
        ++g_passed;
    } else {
        ++g_failed;
        printf("FAIL: %s (last error: \"%s\")\n", what, fspmm_last_error());
    }
}

/* Deterministic xorshift64 random numbers. */
static uint64_t g_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_random(void) {
    g_state ^= g_state << 13;
    g_state ^= g_state >> 7;
    g_state ^= g_state << 17;
    return g_state;
}
/* Uniform double in [0, 1). */
static double uniform(void) { return (double)(next_random() >> 11) * (1.0 / 9007199254740992.0); }

static uint16_t float_to_half(float f) { return fspmm_float_to_bits(f, FSPMM_DTYPE_FLOAT16); }
static float half_to_float(uint16_t h) { return (float)fspmm_bits_to_double(h, FSPMM_DTYPE_FLOAT16); }

/* True iff fp16 bits are stored by flashspmm (not +0.0 / -0.0). */
static int is_stored(uint16_t h) { return (h & 0x7FFFu) != 0; }

enum {
    M = 130,
    K = 200,
    LD = 203,
    N = 5
};

/* A pruned random fp16 matrix: about 70 % zeros (some of them -0.0), values in (-1, 1). */
static void make_matrix(uint16_t* w) {
    int64_t i;
    for (i = 0; i < (int64_t)M * LD; ++i) {
        const double u = uniform();
        if (u < 0.65)
            w[i] = 0x0000;
        else if (u < 0.70)
            w[i] = 0x8000; /* -0.0 */
        else
            w[i] = float_to_half((float)(2.0 * uniform() - 1.0));
    }
}

/* Compress w in `format`, check size / written / validation; returns a malloc'ed blob (or NULL). */
static void* compress(const uint16_t* w, fspmm_format_t format, size_t* bytes, fspmm_format_t* chosen) {
    size_t written = 0;
    void* blob;
    fspmm_header_t h;
    check(fspmm_compress_size_host(w, M, K, LD, FSPMM_DTYPE_FLOAT16, format, bytes, chosen) == FSPMM_OK,
          "fspmm_compress_size_host");
    blob = malloc(*bytes);
    if (!blob) return NULL;
    check(fspmm_compress_host(w, M, K, LD, FSPMM_DTYPE_FLOAT16, format, blob, *bytes, &written) == FSPMM_OK &&
              written == *bytes,
          "fspmm_compress_host writes exactly the reported size");
    check(fspmm_validate_host(blob, *bytes, &h) == FSPMM_OK && h.M == M && h.K == K && h.format == (uint8_t)*chosen &&
              h.dtype == FSPMM_DTYPE_FLOAT16 && h.total_bytes == *bytes,
          "fspmm_validate_host accepts the blob and reports its header");
    return blob;
}

/* Decompress and compare bit for bit with w (-0.0 comes back as +0.0). */
static void check_roundtrip(const void* blob, size_t bytes, const uint16_t* w) {
    uint16_t* d = (uint16_t*)malloc(sizeof(uint16_t) * M * K);
    int64_t r, c;
    int same = 1;
    fspmm_matrix_t W = NULL;
    if (!d) return;
    check(fspmm_matrix_create_host(blob, bytes, &W) == FSPMM_OK && W != NULL, "fspmm_matrix_create_host");
    check(fspmm_decompress_host(W, d, M, K, K) == FSPMM_OK, "fspmm_decompress_host");
    check(fspmm_decompress_host(W, d, M - 1, K, K) == FSPMM_ERR_INVALID_ARGUMENT,
          "fspmm_decompress_host refuses an output of the wrong shape");
    fspmm_matrix_destroy(W);
    for (r = 0; r < M; ++r)
        for (c = 0; c < K; ++c) {
            const uint16_t expect = is_stored(w[r * LD + c]) ? w[r * LD + c] : 0;
            if (d[r * K + c] != expect) same = 0;
        }
    check(same, "decompressed matrix is bit-identical to the input");
    free(d);
}

/* Run fspmm_linear_host (alpha = 1, beta = 0, with bias) and compare with a double-precision reference. */
static void check_linear(const void* blob, size_t bytes, const uint16_t* w) {
    uint16_t x[N * K], y[N * M], bias[M];
    double max_err = 0.0, max_ref = 0.0, err;
    int i, n, m, k;
    fspmm_matrix_t W = NULL;
    check(fspmm_matrix_create_host(blob, bytes, &W) == FSPMM_OK, "fspmm_matrix_create_host");
    for (i = 0; i < N * K; ++i) x[i] = float_to_half((float)(2.0 * uniform() - 1.0));
    for (i = 0; i < M; ++i) bias[i] = float_to_half((float)(uniform() - 0.5));
    for (i = 0; i < N * M; ++i) y[i] = 0x7E00; /* NaN: must never be read with beta == 0 */
    check(fspmm_linear_host(W, x, N, K, K, bias, y, M, M, 1.0f, 0.0f) == FSPMM_OK, "fspmm_linear_host");
    check(fspmm_linear_host(W, x, N, K + 1, K + 1, bias, y, M, M, 1.0f, 0.0f) == FSPMM_ERR_INVALID_ARGUMENT,
          "fspmm_linear_host refuses an x whose K is not the matrix's");
    fspmm_matrix_destroy(W);
    for (n = 0; n < N; ++n)
        for (m = 0; m < M; ++m) {
            double ref = half_to_float(bias[m]);
            for (k = 0; k < K; ++k) ref += (double)half_to_float(x[n * K + k]) * half_to_float(w[m * LD + k]);
            if (fabs(ref) > max_ref) max_ref = fabs(ref);
            err = fabs(half_to_float(y[n * M + m]) - ref);
            if (!(err <= max_err)) max_err = err; /* a NaN result makes max_err NaN: the check fails */
        }
    check(max_err <= 1e-3 * (max_ref > 1.0 ? max_ref : 1.0), "fspmm_linear_host matches the double reference");
}

/* A truncated blob must be reported as corrupt, with a message. */
static void check_truncated(const void* blob, size_t bytes) {
    fspmm_matrix_t W = NULL;
    check(fspmm_validate_host(blob, bytes - 16, NULL) == FSPMM_ERR_CORRUPT_BUFFER && fspmm_last_error()[0] != '\0',
          "truncated blob gives FSPMM_ERR_CORRUPT_BUFFER and a message");
    check(fspmm_matrix_create_host(blob, 100, &W) == FSPMM_ERR_CORRUPT_BUFFER && W == NULL,
          "a handle over a 100-byte prefix is refused");
}

int main(void) {
    static uint16_t w[M * LD];
    const fspmm_format_t formats[3] = {FSPMM_FORMAT_TILED_CSL, FSPMM_FORMAT_BITMAP, FSPMM_FORMAT_AUTO};
    size_t sizes[3] = {0, 0, 0};
    int f, count = -1;
    fspmm_header_t h;

    check(fspmm_version() == FSPMM_VERSION, "fspmm_version matches the header");
    check(strcmp(fspmm_status_string(FSPMM_OK), "FSPMM_OK") == 0, "fspmm_status_string");
    make_matrix(w);
    for (f = 0; f < 3; ++f) {
        fspmm_format_t chosen = FSPMM_FORMAT_AUTO;
        void* blob = compress(w, formats[f], &sizes[f], &chosen);
        if (!blob) {
            check(0, "out of memory");
            continue;
        }
        check_roundtrip(blob, sizes[f], w);
        if (f == 0) check_linear(blob, sizes[f], w);
        if (f == 1) check_truncated(blob, sizes[f]);
        if (f == 2) {
            check(fspmm_header_read(blob, 128, &h) == FSPMM_OK && h.total_bytes == sizes[2], "fspmm_header_read");
            check(sizes[2] == (sizes[0] < sizes[1] ? sizes[0] : sizes[1]) &&
                      chosen == (sizes[0] < sizes[1] ? FSPMM_FORMAT_TILED_CSL : FSPMM_FORMAT_BITMAP),
                  "AUTO picks the smaller format");
        }
        free(blob);
    }
    check(fspmm_compress_size_host(NULL, M, K, LD, FSPMM_DTYPE_FLOAT16, FSPMM_FORMAT_AUTO, &sizes[0], NULL) ==
                  FSPMM_ERR_INVALID_ARGUMENT &&
              fspmm_last_error()[0] != '\0',
          "NULL dense gives FSPMM_ERR_INVALID_ARGUMENT and a message");
    check(fspmm_device_count(&count) == FSPMM_OK && count >= 0, "fspmm_device_count returns FSPMM_OK");
    printf("test_capi: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed != 0;
}
