/*
 * flashspmm — unstructured-sparse weights on NVIDIA Tensor Cores.
 *
 * The whole public C API. C99 and C++ compatible; needs no CUDA header (CUDA streams are passed as
 * `void*`, i.e. a `cudaStream_t` cast to a pointer; NULL is the legacy default stream).
 *
 * Conventions
 *  - Every function returns an fspmm_status_t. On failure, fspmm_last_error() gives a message (thread-local)
 *    that says what went wrong and what to fix, and no output buffer has been written.
 *  - Sizes and leading dimensions are 64-bit and counted in elements unless the name says bytes.
 *  - W is a weight matrix [M, K] (row-major, PyTorch nn.Linear layout: M = out features, K = in features).
 *    x is [N, K] row-major with leading dimension ldx, y is [N, M] row-major with leading dimension ldy.
 *    linear computes  y = alpha * x * W^T + beta * y (+ bias[M]),  fp32 accumulation, x/y/bias in W's dtype.
 *    With beta == 0 the old contents of y are never read (they may be NaN).
 *  - A compressed matrix is one contiguous, self-describing buffer (a "blob"): a 128-byte header, a tile offset
 *    table and the tile data. docs/FORMATS.md specifies it byte for byte. Blobs are little-endian.
 *  - The library never prints, exits or aborts, and no C++ exception crosses this boundary.
 */
#ifndef FLASHSPMM_H
#define FLASHSPMM_H

#include <stddef.h>
#include <stdint.h>

#define FSPMM_VERSION_MAJOR 0
#define FSPMM_VERSION_MINOR 2
#define FSPMM_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH; fspmm_version() returns the value the library was built with. */
#define FSPMM_VERSION (FSPMM_VERSION_MAJOR * 10000 + FSPMM_VERSION_MINOR * 100 + FSPMM_VERSION_PATCH)

#ifdef __cplusplus
extern "C" {
#endif

/* The part between the two markers below is read by the Python bindings (cffi): keep it free of
 * preprocessor directives and of expressions in enum values. */
/* FSPMM_CDEF_BEGIN */

typedef enum {
    FSPMM_OK = 0,
    FSPMM_ERR_INVALID_ARGUMENT = 1, /* a bad pointer, size, dtype, format, shape or leading dimension      */
    FSPMM_ERR_NOT_SUPPORTED = 2,    /* valid request this build or device cannot do                        */
    FSPMM_ERR_CORRUPT_BUFFER = 3,   /* a blob that is truncated, corrupted or not a flashspmm blob          */
    FSPMM_ERR_CUDA = 4,             /* a CUDA runtime call or kernel launch failed                         */
    FSPMM_ERR_NO_DEVICE = 5,        /* no CUDA device or driver is available                               */
    FSPMM_ERR_OUT_OF_MEMORY = 6,    /* host memory could not be allocated                                  */
    FSPMM_ERR_INTERNAL = 7          /* a bug in flashspmm: please report it with the message               */
} fspmm_status_t;

typedef enum {
    FSPMM_DTYPE_FLOAT16 = 1,
    FSPMM_DTYPE_BFLOAT16 = 2
} fspmm_dtype_t;

typedef enum {
    FSPMM_FORMAT_AUTO = 0,      /* compress only: the one predicted faster at N <= 16 (docs/FORMATS.md)      */
    FSPMM_FORMAT_TILED_CSL = 1, /* 64x64 tiles, 32-bit (value, position) entries                          */
    FSPMM_FORMAT_BITMAP = 2,    /* 8x8 blocks, a 64-bit occupancy mask each, packed values                */
    FSPMM_FORMAT_SMALLEST = 3,  /* compress only: whichever format gives the smaller blob (ties: bitmap) */
    FSPMM_FORMAT_AUTO_N8 = 4,   /* compress only: AUTO for decode sizes N <= 8                            */
    FSPMM_FORMAT_AUTO_N1 = 5    /* compress only: AUTO for one token (N = 1)                              */
} fspmm_format_t;

typedef enum {
    FSPMM_PRUNE_ROW = 0,    /* the same fraction of every row */
    FSPMM_PRUNE_TENSOR = 1  /* that fraction of the whole matrix */
} fspmm_prune_scope_t;

/* Which kernel a linear plan runs (fspmm_linear_options_t.kernel). */
typedef enum {
    FSPMM_KERNEL_AUTO = 0,        /* chosen from the format, density and N (the measured rule in launch.cu)   */
    FSPMM_KERNEL_TENSOR_CORE = 1, /* tiles expanded on chip and multiplied on Tensor Cores                    */
    FSPMM_KERNEL_CUDA_CORE = 2,   /* fp32 FMA per stored value: N = 1 (Tiled-CSL: N <= 16); larger N uses TC  */
    FSPMM_KERNEL_STREAMING = 3    /* bitmap, up to 16 tokens: Tensor Cores, one 64-row tile stream per warp;  */
                                  /* larger N uses the pipelined Tensor Core kernel                           */
} fspmm_kernel_t;

/* How the Tensor Core kernel expands bitmap tiles (fspmm_linear_options_t.decoder; Tiled-CSL has one). */
typedef enum {
    FSPMM_DECODER_AUTO = 0,    /* chosen from the density                                                   */
    FSPMM_DECODER_DIRECT = 1,  /* mma fragments built in registers from the masks                           */
    FSPMM_DECODER_SCATTER = 2, /* nonzeros stored into a zeroed shared tile                                 */
    FSPMM_DECODER_ROWS = 3     /* whole 8-element rows expanded in registers into a shared tile             */
} fspmm_decoder_t;

/* A validated compressed matrix (opaque). It keeps the blob's header privately and refers to the blob's
 * memory, which stays the caller's: keep it alive (and unchanged) while the handle or a plan made from it is
 * used. A handle is immutable, so it may be shared by threads. */
typedef struct fspmm_matrix_s* fspmm_matrix_t;

/* A linear plan (opaque): a device matrix, the largest N it serves and the options, with every launch
 * decision made once. Immutable once created: usable from many threads at once and under CUDA graph
 * capture. It holds a copy of what it needs from the matrix handle (which may be destroyed first), and refers
 * to the blob's device memory like the handle. */
typedef struct fspmm_plan_s* fspmm_plan_t;

/* Flags of a linear plan (fspmm_linear_options_t.flags). */
typedef enum {
    /* No effect: a launch needs no particular workspace contents (its split-K arrival counters check
     * themselves and are set back to zero by it), so no launch queues a memset. Accepted for compatibility. */
    FSPMM_LINEAR_ZEROED_WORKSPACE = 1
} fspmm_linear_flags_t;

/* Options of a linear plan. Initialise with fspmm_linear_options_init (every field AUTO / 0), then set what
 * you need; `struct_bytes` lets later versions add fields. */
typedef struct {
    uint32_t struct_bytes;   /* sizeof(fspmm_linear_options_t), set by fspmm_linear_options_init          */
    int32_t split_k;         /* 0 = automatic, else the number of K slices (1 = none)                      */
    fspmm_kernel_t kernel;   /* FSPMM_KERNEL_*                                                             */
    fspmm_decoder_t decoder; /* FSPMM_DECODER_* (bitmap matrices only)                                     */
    uint32_t flags;          /* FSPMM_LINEAR_* flags, 0 by default                                         */
} fspmm_linear_options_t;

/* What a plan runs for one N (fspmm_plan_info). */
typedef struct {
    fspmm_kernel_t kernel;     /* TENSOR_CORE, CUDA_CORE or STREAMING                                      */
    fspmm_decoder_t decoder;   /* bitmap + Tensor Core: DIRECT, SCATTER or ROWS; otherwise AUTO            */
    int32_t n_tile;            /* tokens per CTA (CUDA-core kernel: 1, 2, or 4 for 3-16 tokens)            */
    int32_t split_k;           /* K slices                                                                 */
    int64_t grid_x, grid_y, grid_z; /* row blocks, K slices, token blocks                                  */
    size_t shared_memory_bytes;/* dynamic shared memory per CTA                                            */
    size_t workspace_bytes;    /* workspace this N needs (<= fspmm_plan_workspace_size)                   */
} fspmm_plan_info_t;

/* The 128-byte blob header, exactly as stored at the start of every blob (see docs/FORMATS.md). */
typedef struct {
    uint32_t magic;           /* 0x4D505346, the bytes "FSPM"                                    */
    uint16_t version;         /* blob layout version, 1                                          */
    uint8_t format;           /* fspmm_format_t (never AUTO or SMALLEST)                         */
    uint8_t dtype;            /* fspmm_dtype_t                                                   */
    int64_t M;                /* rows of W (out features), >= 1                                  */
    int64_t K;                /* columns of W (in features), >= 1                                */
    int64_t nnz;              /* stored nonzeros                                                 */
    uint32_t tile_m;          /* tile rows, 64                                                   */
    uint32_t tile_k;          /* tile columns, 64                                                */
    int64_t tiles_m;          /* ceil(M / tile_m)                                                */
    int64_t tiles_k;          /* ceil(K / tile_k)                                                */
    uint64_t offsets_offset;  /* byte offset of the tile offset table (128)                      */
    uint64_t offsets_bytes;   /* (tiles_m * tiles_k + 1) * 8                                     */
    uint64_t data_offset;     /* byte offset of the tile data (16-byte aligned)                  */
    uint64_t data_bytes;      /* bytes of tile data (a multiple of 16)                           */
    uint64_t total_bytes;     /* data_offset + data_bytes: the size of the whole blob            */
    uint64_t payload_checksum;/* fspmm checksum of bytes [128, total_bytes)                      */
    uint32_t max_tile_bytes;  /* largest tile in the data section, bytes                         */
    uint8_t reserved[12];     /* zero                                                            */
    uint64_t header_checksum; /* fspmm checksum of bytes [0, 120) of the header                  */
} fspmm_header_t;

/* ---- status, version, build ---------------------------------------------------------------------- */
const char* fspmm_status_string(fspmm_status_t status);    /* "FSPMM_OK", ... never NULL            */
const char* fspmm_last_error(void);  /* detail of the last failure on this thread ("" if none)       */
int fspmm_version(void);             /* FSPMM_VERSION of the built library                            */
const char* fspmm_build_info(void);  /* version, CUDA version, compiled architectures                  */
/* Number of CUDA devices usable by this library (0 and FSPMM_OK when there is no driver or device). */
fspmm_status_t fspmm_device_count(int* count);
/* Threads used by the host (CPU) functions; 0 = all hardware threads (the default). */
fspmm_status_t fspmm_set_host_threads(int threads);

/* ---- header --------------------------------------------------------------------------------------- */
/* Decode and validate the header at the start of a blob. `bytes` is how many bytes of the blob
 * `prefix` holds (fewer than 128 gives FSPMM_ERR_CORRUPT_BUFFER); the header must be consistent with itself
 * (checksum, sizes, shapes). */
fspmm_status_t fspmm_header_read(const void* prefix, size_t bytes, fspmm_header_t* out);
/* Validate a whole blob in host memory: header, tile offset table, every tile's structure and the payload
 * checksum. `bytes` is the size of the buffer (it may be larger than the blob). out may be NULL. */
fspmm_status_t fspmm_validate_host(const void* blob, size_t bytes, fspmm_header_t* out);
/* Largest blob a matrix of this shape can need in this format (every element stored); for SMALLEST, the smaller
 * of the two formats' bounds. Use it to size a buffer before the exact size is known. */
fspmm_status_t fspmm_blob_bytes_bound(int64_t M, int64_t K, fspmm_format_t format, size_t* bytes);

/* ---- host (CPU) conversion --------------------------------------------------------------------------- */
/* Host element pointers (dense, x, bias, y) must be 2-byte aligned.
 * dense: M x K elements of dtype, row-major with leading dimension ld >= K (elements).
 * Exact size of the blob, and (if `chosen` is not NULL) the format AUTO or SMALLEST resolves to. */
fspmm_status_t fspmm_compress_size_host(const void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype,
                                        fspmm_format_t format, size_t* bytes, fspmm_format_t* chosen);
/* Write the blob into out[0, out_bytes); out_bytes must be at least the size reported above.
 * `written` (may be NULL) receives the blob size. */
fspmm_status_t fspmm_compress_host(const void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype,
                                   fspmm_format_t format, void* out, size_t out_bytes, size_t* written);
/* ---- matrix handles ------------------------------------------------------------------------------- */
/* A handle over a blob in host memory: the whole blob is validated (as fspmm_validate_host) once, here.
 * `bytes` is the size of the buffer (it may be larger than the blob). */
fspmm_status_t fspmm_matrix_create_host(const void* blob, size_t bytes, fspmm_matrix_t* matrix);
/* A handle over a blob in device memory (16-byte aligned, on the current device): the header and the tile
 * offset table are copied to the host on `stream` (the one host synchronisation) and validated, so no kernel
 * reads outside [blob, blob + bytes). The tiles' contents are not read here: upload only blobs validated on
 * the host (fspmm_matrix_create_host / fspmm_validate_host) or written by fspmm_compress. */
fspmm_status_t fspmm_matrix_create_device(const void* blob, size_t bytes, void* stream, fspmm_matrix_t* matrix);
/* Release a handle (NULL is a no-op). The blob memory is not touched. */
fspmm_status_t fspmm_matrix_destroy(fspmm_matrix_t matrix);
/* The blob's header as validated (a copy). */
fspmm_status_t fspmm_matrix_header(fspmm_matrix_t matrix, fspmm_header_t* out);
/* Where the blob lives: -1 for host memory, else the CUDA device index. */
fspmm_status_t fspmm_matrix_device(fspmm_matrix_t matrix, int* device);

/* Host matrix -> dense [rows, cols] with leading dimension ld >= cols; rows and cols must be the matrix's
 * M and K (the capacity of `dense`, checked). */
fspmm_status_t fspmm_decompress_host(fspmm_matrix_t matrix, void* dense, int64_t rows, int64_t cols, int64_t ld);
/* CPU reference linear of a host matrix; fp32 accumulation, products added one by one in k order (stored
 * values only: a pruned weight contributes nothing, even against Inf or NaN in x). x is [N, K] (ldx), y is
 * [N, M] (ldy); K and M must be the matrix's. bias ([M]) may be NULL. */
fspmm_status_t fspmm_linear_host(fspmm_matrix_t matrix, const void* x, int64_t N, int64_t K, int64_t ldx,
                                 const void* bias, void* y, int64_t M, int64_t ldy, float alpha, float beta);

/* Magnitude pruning in place on the host: in each row (FSPMM_PRUNE_ROW, n = K) or in the whole matrix
 * (FSPMM_PRUNE_TENSOR, n = M * K), zero exactly round(sparsity * n) entries (round half to even) of smallest
 * |value|. Entries that are already zero count; NaN ranks above every number; ties go to the lower position
 * (row-major), so the result is deterministic. sparsity is in [0, 1]. */
fspmm_status_t fspmm_prune_host(void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype, double sparsity,
                                fspmm_prune_scope_t scope);

/* ---- device (GPU) multiply: handle -> plan -> workspace -> execute ------------------------------------ */
/* Every field AUTO / 0 and struct_bytes set. */
fspmm_status_t fspmm_linear_options_init(fspmm_linear_options_t* options);
/* Plan y = alpha * x * W^T + beta * y (+ bias) for a device matrix and any N in [1, max_n], on the matrix's
 * device. options may be NULL (all automatic). A choice the matrix cannot run (a CUDA-core kernel for a format
 * without one, a bitmap decoder for a Tiled-CSL matrix) is FSPMM_ERR_INVALID_ARGUMENT. */
fspmm_status_t fspmm_plan_create(fspmm_matrix_t matrix, int64_t max_n, const fspmm_linear_options_t* options,
                                 fspmm_plan_t* plan);
/* Release a plan (NULL is a no-op). Work already queued with it is not affected. */
fspmm_status_t fspmm_plan_destroy(fspmm_plan_t plan);
/* Workspace bytes that fspmm_linear needs with this plan for any N <= max_n (0: none). */
fspmm_status_t fspmm_plan_workspace_size(fspmm_plan_t plan, size_t* bytes);
/* The kernel, decoder, tiling and split this plan launches for N (1 <= N <= max_n). */
fspmm_status_t fspmm_plan_info(fspmm_plan_t plan, int64_t N, fspmm_plan_info_t* info);
/* y = alpha * x * W^T + beta * y (+ bias), ordered on `stream`, on the plan's device (made current for the
 * call if it is not). x: [N, K] device array, leading dimension ldx; y: [N, M], ldy; bias: [M] or NULL; K and
 * M must be the matrix's and 1 <= N <= max_n. workspace: device memory of at least fspmm_plan_workspace_size
 * bytes, 16-byte aligned (NULL when that is 0); it must not be used by another call in flight. No allocation,
 * no host synchronisation, no re-planning: the call can be captured in a CUDA graph. Fastest with x 16-byte
 * aligned and ldx a multiple of 8 (whole x tiles are then copied by the Tensor Memory Accelerator on sm_90;
 * any other layout works, more slowly). */
fspmm_status_t fspmm_linear(fspmm_plan_t plan, const void* x, int64_t N, int64_t K, int64_t ldx, const void* bias,
                            void* y, int64_t M, int64_t ldy, float alpha, float beta, void* workspace,
                            size_t workspace_bytes, void* stream);

/* ---- device (GPU) conversion ------------------------------------------------------------------------ */
/* Dense device matrices (dense: M x K elements of dtype, row-major, leading dimension ld >= K, 2-byte
 * aligned) to blobs in device memory and back, and magnitude pruning, all ordered on `stream` with no
 * allocation. The GPU encoder writes the same bytes as fspmm_compress_host for the same matrix.
 *
 * Compression runs in two phases because the blob size depends on the data:
 *   1. fspmm_compress_count    counts the values of every tile into `workspace` (no host synchronisation);
 *   2. fspmm_compress_size     waits for `stream` and reports the exact blob size (the one host sync);
 *      the caller allocates `out` (16-byte aligned) of that size;
 *   3. fspmm_compress          writes the blob (no host synchronisation).
 * The write phase checks on the GPU that `out_bytes` holds the blob and that the matrix still has the
 * counted values; if not, it writes nothing to `out`. Calling fspmm_compress_size again afterwards reports
 * such a refusal as an error (and waits for the stream). */
/* Workspace bytes for compressing an M x K matrix on the GPU (the same for both formats and dtypes). */
fspmm_status_t fspmm_compress_workspace_size(int64_t M, int64_t K, size_t* bytes);
/* Phase 1: count. workspace: device memory of fspmm_compress_workspace_size bytes, 16-byte aligned. */
fspmm_status_t fspmm_compress_count(const void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype,
                                    void* workspace, size_t workspace_bytes, void* stream);
/* Phase 2: wait for `stream`, then report the exact blob size for `format` (AUTO and SMALLEST resolved as on
 * the host) and, if `chosen` is not NULL, the format they resolve to. Fails if the workspace was not counted, or if a
 * write phase that ran on it refused to write. */
fspmm_status_t fspmm_compress_size(const void* workspace, size_t workspace_bytes, fspmm_format_t format, size_t* bytes,
                                   fspmm_format_t* chosen, void* stream);
/* Phase 3: write the blob into out[0, out_bytes) (device memory, 16-byte aligned). Same dense, M, K, ld and
 * dtype as the count phase, the same workspace. */
fspmm_status_t fspmm_compress(const void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype,
                              fspmm_format_t format, void* workspace, size_t workspace_bytes, void* out,
                              size_t out_bytes, void* stream);
/* Device matrix -> dense [rows, cols] device matrix with leading dimension ld >= cols; rows and cols must be
 * the matrix's M and K. Tile offsets and positions are bounds-checked on the GPU, so a corrupted tile gives
 * wrong values, never out-of-bounds accesses. No allocation, no host synchronisation. */
fspmm_status_t fspmm_decompress(fspmm_matrix_t matrix, void* dense, int64_t rows, int64_t cols, int64_t ld,
                                void* stream);
/* Workspace bytes fspmm_prune needs (0 for FSPMM_PRUNE_ROW). */
fspmm_status_t fspmm_prune_workspace_size(int64_t M, int64_t K, fspmm_prune_scope_t scope, size_t* bytes);
/* Magnitude pruning in place on the GPU, with exactly the result of fspmm_prune_host (same count, same
 * ties). workspace: device memory of fspmm_prune_workspace_size bytes, 16-byte aligned (may be NULL when
 * that is 0). No host synchronisation. */
fspmm_status_t fspmm_prune(void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype, double sparsity,
                           fspmm_prune_scope_t scope, void* workspace, size_t workspace_bytes, void* stream);

/* ---- device memory helpers (for callers without an array library; all act on the current device) ---- */
typedef enum {
    FSPMM_COPY_HOST_TO_DEVICE = 1,
    FSPMM_COPY_DEVICE_TO_HOST = 2,
    FSPMM_COPY_DEVICE_TO_DEVICE = 3
} fspmm_copy_kind_t;
fspmm_status_t fspmm_get_device(int* device);
/* The device whose memory `ptr` points into (*device = -1 for host memory the runtime does not know). */
fspmm_status_t fspmm_pointer_device(const void* ptr, int* device);
fspmm_status_t fspmm_set_device(int device);
fspmm_status_t fspmm_device_malloc(void** ptr, size_t bytes);   /* cudaMalloc; *ptr = NULL if bytes == 0 */
fspmm_status_t fspmm_device_free(void* ptr);                    /* cudaFree; NULL is a no-op            */
/* Copy ordered on `stream`, then wait for the stream to finish it (the host buffer may be reused). */
fspmm_status_t fspmm_memcpy(void* dst, const void* src, size_t bytes, fspmm_copy_kind_t kind, void* stream);
fspmm_status_t fspmm_stream_synchronize(void* stream);

/* ---- XLA FFI handlers (JAX: python/flashspmm/jax registers them with jax.ffi.register_ffi_target) ---- */
/* The XLA_FFI_Handler* of a target ("linear_cuda", "linear_cpu", "decompress_cuda", "decompress_cpu"),
 * or NULL for another name. Their arguments and attributes are described in src/api/xla_ffi.cpp. */
void* fspmm_xla_handler(const char* name);
/* Workspace bytes and K slices (`splits`, to pass as split_k to the handler) of a linear_cuda call with N rows
 * of x, planned on the current device. header: the 128 bytes of the launch header. */
fspmm_status_t fspmm_xla_linear_workspace(const void* header, int64_t N, int split_k, size_t* bytes, int* splits);

/* FSPMM_CDEF_END */

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FLASHSPMM_H */
