/* GPU check through the public C API alone: fspmm_linear (matrix handle, plan, workspace) against a float64
 * reference computed from the dense matrix, on a few shapes, both formats and dtypes, AUTO, alpha/beta, blobs
 * from the CPU and the GPU encoder, with and without split-K; the GPU encoder, decoder and pruning vs their CPU
 * counterparts. Small on purpose: tools/device-check runs it under
 * compute-sanitizer (memcheck, racecheck, synccheck). Exit status 0 when every case passes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flashspmm.h"
#include "fspmm_bits.h" /* tests/c */

#define CHECK(call)                                                                                     \
    do {                                                                                                \
        fspmm_status_t s_ = (call);                                                                     \
        if (s_ != FSPMM_OK) {                                                                           \
            fprintf(stderr, "%s:%d %s -> %s: %s\n", __FILE__, __LINE__, #call, fspmm_status_string(s_), \
                    fspmm_last_error());                                                                \
            return 1;                                                                                   \
        }                                                                                               \
    } while (0)

static uint64_t rng_state = 0x1234567887654321ull;
static double uniform(void) { /* xorshift64*, in [0, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
}

static uint16_t to_bits(float f, fspmm_dtype_t dtype) { return fspmm_float_to_bits(f, dtype); }
static double from_bits(uint16_t h, fspmm_dtype_t dtype) { return fspmm_bits_to_double(h, dtype); }

/* The blob of w, written by the CPU encoder or by the GPU encoder into d_blob (device memory, returned). */
static int make_blob(const uint16_t* w, int64_t M, int64_t K, fspmm_dtype_t dtype, fspmm_format_t format,
                     int gpu_encode, void** d_blob, size_t* bytes) {
    if (!gpu_encode) {
        CHECK(fspmm_compress_size_host(w, M, K, K, dtype, format, bytes, NULL));
        void* blob = malloc(*bytes);
        CHECK(fspmm_compress_host(w, M, K, K, dtype, format, blob, *bytes, NULL));
        CHECK(fspmm_device_malloc(d_blob, *bytes));
        CHECK(fspmm_memcpy(*d_blob, blob, *bytes, FSPMM_COPY_HOST_TO_DEVICE, NULL));
        free(blob);
        return 0;
    }
    void *d_w, *d_ws;
    size_t ws = 0;
    CHECK(fspmm_compress_workspace_size(M, K, &ws));
    CHECK(fspmm_device_malloc(&d_w, sizeof(uint16_t) * M * K));
    CHECK(fspmm_device_malloc(&d_ws, ws));
    CHECK(fspmm_memcpy(d_w, w, sizeof(uint16_t) * M * K, FSPMM_COPY_HOST_TO_DEVICE, NULL));
    CHECK(fspmm_compress_count(d_w, M, K, K, dtype, d_ws, ws, NULL));
    CHECK(fspmm_compress_size(d_ws, ws, format, bytes, &format, NULL));
    CHECK(fspmm_device_malloc(d_blob, *bytes));
    CHECK(fspmm_compress(d_w, M, K, K, dtype, format, d_ws, ws, *d_blob, *bytes, NULL));
    CHECK(fspmm_compress_size(d_ws, ws, format, bytes, NULL, NULL));
    CHECK(fspmm_device_free(d_w));
    CHECK(fspmm_device_free(d_ws));
    return 0;
}

/* fspmm_linear (plan, workspace, execute) against a float64 reference computed from the dense matrix. */
static int run_case(int64_t M, int64_t K, int64_t N, double sparsity, fspmm_format_t format, fspmm_dtype_t dtype,
                    int split_k, float alpha, float beta, int gpu_encode) {
    uint16_t* w = malloc(sizeof(uint16_t) * M * K);
    uint16_t* x = malloc(sizeof(uint16_t) * N * K);
    uint16_t* bias = malloc(sizeof(uint16_t) * M);
    uint16_t* y0 = malloc(sizeof(uint16_t) * N * M);
    uint16_t* y_gpu = malloc(sizeof(uint16_t) * N * M);
    for (int64_t i = 0; i < M * K; ++i) w[i] = uniform() < sparsity ? 0 : to_bits((float)(uniform() * 2 - 1), dtype);
    for (int64_t i = 0; i < N * K; ++i) x[i] = to_bits((float)(uniform() * 2 - 1), dtype);
    for (int64_t i = 0; i < M; ++i) bias[i] = to_bits((float)(uniform() - 0.5), dtype);
    for (int64_t i = 0; i < N * M; ++i) y0[i] = beta != 0.0f ? to_bits((float)(uniform() - 0.5), dtype) : 0x7E00;

    void *d_blob = NULL, *d_x, *d_bias, *d_y, *d_ws = NULL;
    size_t bytes = 0, ws = 0;
    if (make_blob(w, M, K, dtype, format, gpu_encode, &d_blob, &bytes)) return 1;
    fspmm_matrix_t W = NULL;
    fspmm_plan_t plan = NULL;
    fspmm_linear_options_t options;
    fspmm_plan_info_t info;
    CHECK(fspmm_matrix_create_device(d_blob, bytes, NULL, &W));
    CHECK(fspmm_linear_options_init(&options));
    options.split_k = split_k;
    CHECK(fspmm_plan_create(W, N, &options, &plan));
    CHECK(fspmm_matrix_destroy(W)); /* the plan keeps what it needs */
    CHECK(fspmm_plan_workspace_size(plan, &ws));
    CHECK(fspmm_plan_info(plan, N, &info));
    CHECK(fspmm_device_malloc(&d_x, sizeof(uint16_t) * N * K));
    CHECK(fspmm_device_malloc(&d_bias, sizeof(uint16_t) * M));
    CHECK(fspmm_device_malloc(&d_y, sizeof(uint16_t) * N * M));
    CHECK(fspmm_device_malloc(&d_ws, ws));
    if (ws != 0) { /* whatever a workspace holds will do (split-K counters check themselves): fill it */
        uint8_t* junk = malloc(ws);
        for (size_t i = 0; i < ws; ++i) junk[i] = (uint8_t)(0xA5 ^ (i * 131));
        CHECK(fspmm_memcpy(d_ws, junk, ws, FSPMM_COPY_HOST_TO_DEVICE, NULL));
        free(junk);
    }
    CHECK(fspmm_memcpy(d_x, x, sizeof(uint16_t) * N * K, FSPMM_COPY_HOST_TO_DEVICE, NULL));
    CHECK(fspmm_memcpy(d_bias, bias, sizeof(uint16_t) * M, FSPMM_COPY_HOST_TO_DEVICE, NULL));
    CHECK(fspmm_memcpy(d_y, y0, sizeof(uint16_t) * N * M, FSPMM_COPY_HOST_TO_DEVICE, NULL));
    CHECK(fspmm_linear(plan, d_x, N, K, K, d_bias, d_y, M, M, alpha, beta, d_ws, ws, NULL));
    CHECK(fspmm_memcpy(y_gpu, d_y, sizeof(uint16_t) * N * M, FSPMM_COPY_DEVICE_TO_HOST, NULL));
    int same_zeroed = 1;
    if (ws != 0 && beta == 0.0f) {
        /* the workspace of the launch above, reused without clearing: three more launches give the same bits */
        uint16_t* y2 = malloc(sizeof(uint16_t) * N * M);
        CHECK(fspmm_memcpy(d_y, y0, sizeof(uint16_t) * N * M, FSPMM_COPY_HOST_TO_DEVICE, NULL)); /* NaN again */
        for (int rep = 0; rep < 3; ++rep)
            CHECK(fspmm_linear(plan, d_x, N, K, K, d_bias, d_y, M, M, alpha, beta, d_ws, ws, NULL));
        CHECK(fspmm_memcpy(y2, d_y, sizeof(uint16_t) * N * M, FSPMM_COPY_DEVICE_TO_HOST, NULL));
        same_zeroed = memcmp(y2, y_gpu, sizeof(uint16_t) * N * M) == 0;
        /* and once more after a 4-byte value (31.015625f) over the low half of every 8-byte word */
        uint32_t* half = malloc(ws);
        CHECK(fspmm_memcpy(half, d_ws, ws, FSPMM_COPY_DEVICE_TO_HOST, NULL));
        for (size_t i = 0; i + 1 < ws / 4; i += 2) half[i] = 0x41F82000u;
        CHECK(fspmm_memcpy(d_ws, half, ws, FSPMM_COPY_HOST_TO_DEVICE, NULL));
        free(half);
        CHECK(fspmm_memcpy(d_y, y0, sizeof(uint16_t) * N * M, FSPMM_COPY_HOST_TO_DEVICE, NULL));
        CHECK(fspmm_linear(plan, d_x, N, K, K, d_bias, d_y, M, M, alpha, beta, d_ws, ws, NULL));
        CHECK(fspmm_memcpy(y2, d_y, sizeof(uint16_t) * N * M, FSPMM_COPY_DEVICE_TO_HOST, NULL));
        same_zeroed = same_zeroed && memcmp(y2, y_gpu, sizeof(uint16_t) * N * M) == 0;
        free(y2);
    }

    /* element-wise: |gpu - ref| <= eps * |ref| (the one rounding to the dtype) + 1e-4 * sum |terms| (fp32 sums) */
    const double eps = dtype == FSPMM_DTYPE_BFLOAT16 ? 1.0 / 256 : 1.0 / 2048;
    int64_t bad = 0, first = -1;
    double worst = 0;
    for (int64_t n = 0; n < N; ++n)
        for (int64_t m = 0; m < M; ++m) {
            double ref = from_bits(bias[m], dtype), scale = fabs(ref);
            for (int64_t k = 0; k < K; ++k) {
                const double t = from_bits(x[n * K + k], dtype) * from_bits(w[m * K + k], dtype);
                ref += alpha * t;
                scale += fabs(alpha * t);
            }
            if (beta != 0.0f) {
                ref += beta * from_bits(y0[n * M + m], dtype);
                scale += fabs(beta * from_bits(y0[n * M + m], dtype));
            }
            const double err = fabs(from_bits(y_gpu[n * M + m], dtype) - ref);
            const double tol = eps * fabs(ref) + 1e-4 * scale + 1e-30;
            if (!(err <= tol)) {
                if (first < 0) first = n * M + m;
                ++bad;
            }
            if (err / tol > worst) worst = err / tol;
        }
    int ok = bad == 0 && same_zeroed;
    printf(
        "%-9s %-4s M=%-5lld K=%-5lld N=%-3lld sparsity=%.2f split_k=%d (ran %d, n_tile %d, %s) alpha=%.1f "
        "beta=%.1f %s-encoded err/tol=%.2f %s",
        format == FSPMM_FORMAT_BITMAP      ? "bitmap"
        : format == FSPMM_FORMAT_TILED_CSL ? "tiled_csl"
                                           : "auto",
        dtype == FSPMM_DTYPE_BFLOAT16 ? "bf16" : "fp16", (long long)M, (long long)K, (long long)N, sparsity, split_k,
        info.split_k, info.n_tile,
        info.kernel == FSPMM_KERNEL_CUDA_CORE   ? "cuda core"
        : info.kernel == FSPMM_KERNEL_STREAMING ? "streaming"
                                                : "tensor core",
        alpha, beta, gpu_encode ? "GPU" : "CPU", worst, ok ? "ok\n" : "FAIL");
    if (!ok)
        printf(" (%lld elements out of tolerance, first at %lld; reused workspace %s)\n", (long long)bad,
               (long long)first, same_zeroed ? "same" : "DIFFERS");  /* the reused workspace */
    CHECK(fspmm_plan_destroy(plan));
    CHECK(fspmm_device_free(d_blob));
    CHECK(fspmm_device_free(d_x));
    CHECK(fspmm_device_free(d_bias));
    CHECK(fspmm_device_free(d_y));
    CHECK(fspmm_device_free(d_ws));
    free(w), free(x), free(bias), free(y0), free(y_gpu);
    return ok ? 0 : 1;
}

/* GPU compress (bytes == CPU blob), GPU decompress (== input), GPU prune (== CPU prune) of one matrix. */
static int convert_case(int64_t M, int64_t K, double sparsity, fspmm_format_t format) {
    const size_t dense_bytes = sizeof(uint16_t) * M * K;
    uint16_t* w = malloc(dense_bytes);
    uint16_t* back = malloc(dense_bytes);
    uint16_t* pruned = malloc(dense_bytes);
    for (int64_t i = 0; i < M * K; ++i)
        w[i] = uniform() < sparsity ? 0 : to_bits((float)(uniform() * 2 - 1), FSPMM_DTYPE_FLOAT16);
    size_t bytes = 0, ws = 0, gpu_bytes = 0;
    CHECK(fspmm_compress_size_host(w, M, K, K, FSPMM_DTYPE_FLOAT16, format, &bytes, NULL));
    uint8_t* blob = malloc(bytes);
    uint8_t* gpu_blob = malloc(bytes);
    CHECK(fspmm_compress_host(w, M, K, K, FSPMM_DTYPE_FLOAT16, format, blob, bytes, NULL));
    void *d_w, *d_ws, *d_blob, *d_back;
    CHECK(fspmm_compress_workspace_size(M, K, &ws));
    CHECK(fspmm_device_malloc(&d_w, dense_bytes));
    CHECK(fspmm_device_malloc(&d_back, dense_bytes));
    CHECK(fspmm_device_malloc(&d_ws, ws));
    CHECK(fspmm_memcpy(d_w, w, dense_bytes, FSPMM_COPY_HOST_TO_DEVICE, NULL));
    CHECK(fspmm_compress_count(d_w, M, K, K, FSPMM_DTYPE_FLOAT16, d_ws, ws, NULL));
    CHECK(fspmm_compress_size(d_ws, ws, format, &gpu_bytes, NULL, NULL));
    int ok = gpu_bytes == bytes;
    CHECK(fspmm_device_malloc(&d_blob, gpu_bytes));
    CHECK(fspmm_compress(d_w, M, K, K, FSPMM_DTYPE_FLOAT16, format, d_ws, ws, d_blob, gpu_bytes, NULL));
    CHECK(fspmm_compress_size(d_ws, ws, format, &gpu_bytes, NULL, NULL));
    if (ok) {
        CHECK(fspmm_memcpy(gpu_blob, d_blob, bytes, FSPMM_COPY_DEVICE_TO_HOST, NULL));
        ok = memcmp(gpu_blob, blob, bytes) == 0;
    }
    fspmm_matrix_t W = NULL;
    CHECK(fspmm_matrix_create_device(d_blob, gpu_bytes, NULL, &W));
    CHECK(fspmm_decompress(W, d_back, M, K, K, NULL));
    CHECK(fspmm_matrix_destroy(W));
    CHECK(fspmm_memcpy(back, d_back, dense_bytes, FSPMM_COPY_DEVICE_TO_HOST, NULL));
    for (int64_t i = 0; i < M * K; ++i) ok &= back[i] == (w[i] == 0x8000u ? 0u : w[i]);
    /* prune on the GPU, both scopes, against the CPU */
    for (int scope = 0; scope < 2; ++scope) {
        size_t pws = 0;
        void* d_pws = NULL;
        CHECK(fspmm_prune_workspace_size(M, K, (fspmm_prune_scope_t)scope, &pws));
        CHECK(fspmm_device_malloc(&d_pws, pws));
        CHECK(fspmm_memcpy(d_back, w, dense_bytes, FSPMM_COPY_HOST_TO_DEVICE, NULL));
        CHECK(fspmm_prune(d_back, M, K, K, FSPMM_DTYPE_FLOAT16, 0.8, (fspmm_prune_scope_t)scope, d_pws, pws, NULL));
        memcpy(back, w, dense_bytes);
        CHECK(fspmm_prune_host(back, M, K, K, FSPMM_DTYPE_FLOAT16, 0.8, (fspmm_prune_scope_t)scope));
        CHECK(fspmm_memcpy(pruned, d_back, dense_bytes, FSPMM_COPY_DEVICE_TO_HOST, NULL));
        ok &= memcmp(pruned, back, dense_bytes) == 0;
        CHECK(fspmm_device_free(d_pws));
    }
    printf("convert   M=%-5lld K=%-5lld sparsity=%.2f %-9s blob=%zu bytes %s\n", (long long)M, (long long)K, sparsity,
           format == FSPMM_FORMAT_BITMAP ? "bitmap" : "tiled_csl", bytes, ok ? "ok" : "FAIL");
    CHECK(fspmm_device_free(d_w));
    CHECK(fspmm_device_free(d_back));
    CHECK(fspmm_device_free(d_ws));
    CHECK(fspmm_device_free(d_blob));
    free(w), free(back), free(pruned), free(blob), free(gpu_blob);
    return ok ? 0 : 1;
}

int main(void) {
    int count = 0;
    CHECK(fspmm_device_count(&count));
    if (count == 0) {
        printf("gpu_check: no CUDA device\n");
        return 1;
    }
    const fspmm_format_t formats[2] = {FSPMM_FORMAT_BITMAP, FSPMM_FORMAT_TILED_CSL};
    int failed = 0, passed = 0;
    const fspmm_dtype_t dtypes[2] = {FSPMM_DTYPE_FLOAT16, FSPMM_DTYPE_BFLOAT16};
    for (int f = 0; f < 2; ++f) {
        for (int d = 0; d < 2; ++d) {
            const fspmm_dtype_t dt = dtypes[d];
            int r[10];
            r[0] = run_case(300, 700, 9, 0.7, formats[f], dt, 1, 1.0f, 0.0f, 0);
            r[1] = run_case(300, 700, 33, 0.5, formats[f], dt, 3, 0.5f, 1.0f, 1);
            r[2] = run_case(129, 1000, 1, 0.9, formats[f], dt, 0, 1.0f, 0.0f, 1);
            r[3] = run_case(70, 65, 70, 0.0, formats[f], dt, 2, 2.0f, -0.5f, 0);
            r[4] = run_case(64, 4096, 16, 0.99, formats[f], dt, 0, 1.0f, 0.0f, 1);
            r[5] = run_case(200, 500, 20, 0.6, formats[f], dt, 0, 1.0f, 0.0f, 0); /* 32-token tile */
            r[6] = run_case(1000, 300, 100, 0.8, formats[f], dt, 0, 1.0f, 0.0f, 1); /* two 64-token blocks */
            r[7] = run_case(257, 320, 5, 0.75, FSPMM_FORMAT_AUTO, dt, 0, 1.0f, 0.5f, d);
            /* a small matrix of a real model at two tokens: the streaming kernel (bitmap) with automatic split-K */
            r[8] = run_case(1024, 4096, 2, 0.5, formats[f], dt, 0, 1.0f, 0.0f, 1);
            /* two tokens at 85 %: Tiled-CSL on the CUDA-core kernel's two-token tile */
            r[9] = run_case(300, 1000, 2, 0.85, formats[f], dt, 0, 1.0f, 0.0f, 1);
            for (int i = 0; i < 10; ++i) r[i] ? ++failed : ++passed;
        }
        convert_case(200, 333, 0.6, formats[f]) ? ++failed : ++passed;
        convert_case(64, 64, 0.0, formats[f]) ? ++failed : ++passed;
        /* rows longer than pruning's default stage: the opt-in stage */
        convert_case(3, 30000, 0.5, formats[f]) ? ++failed : ++passed;
    }
    printf("gpu_check: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
