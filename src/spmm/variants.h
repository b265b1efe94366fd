// The compiled variants of the pipelined SpMM kernel (kernel.cuh): one row per (kernel id, dtype), read by the
// dispatch (select_kernel in launch.cu) and by the instantiation files spmm_<row>.cu, each of which compiles
// its row for every N tile (8, 16, 32, 64), so the rows build in parallel. A row: kernel id (the blob format,
// or a decoder id of params.h), dtype, decoder type (decoders.cuh), dtype type (dtype.cuh).
#pragma once

#define FSPMM_VARIANT_bitmapscatter_f16 FSPMM_FORMAT_BITMAP, FSPMM_DTYPE_FLOAT16, BitmapScatterDecoder, Fp16
#define FSPMM_VARIANT_bitmapscatter_bf16 FSPMM_FORMAT_BITMAP, FSPMM_DTYPE_BFLOAT16, BitmapScatterDecoder, Bf16
#define FSPMM_VARIANT_bitmapdirect_f16 kBitmapDirect, FSPMM_DTYPE_FLOAT16, BitmapDirectDecoder, Fp16
#define FSPMM_VARIANT_bitmapdirect_bf16 kBitmapDirect, FSPMM_DTYPE_BFLOAT16, BitmapDirectDecoder, Bf16
#define FSPMM_VARIANT_bitmaprows_f16 kBitmapRows, FSPMM_DTYPE_FLOAT16, BitmapRowsDecoder, Fp16
#define FSPMM_VARIANT_bitmaprows_bf16 kBitmapRows, FSPMM_DTYPE_BFLOAT16, BitmapRowsDecoder, Bf16
#define FSPMM_VARIANT_csl_f16 FSPMM_FORMAT_TILED_CSL, FSPMM_DTYPE_FLOAT16, CslDecoder, Fp16
#define FSPMM_VARIANT_csl_bf16 FSPMM_FORMAT_TILED_CSL, FSPMM_DTYPE_BFLOAT16, CslDecoder, Bf16

// Every row, by name: X(name) for each (the instantiation file of a row is spmm_<name>.cu). The rows decoder
// is never chosen automatically; a build with -DFSPMM_ROWS_DECODER=OFF leaves its rows out.
#if defined(FSPMM_NO_ROWS_DECODER)
#define FSPMM_ROWS_VARIANTS(X)
#else
#define FSPMM_ROWS_VARIANTS(X) \
    X(bitmaprows_f16)          \
    X(bitmaprows_bf16)
#endif
#define FSPMM_SPMM_VARIANTS(X) \
    X(bitmapscatter_f16)       \
    X(bitmapscatter_bf16)      \
    X(bitmapdirect_f16)        \
    X(bitmapdirect_bf16)       \
    FSPMM_ROWS_VARIANTS(X)     \
    X(csl_f16)                 \
    X(csl_bf16)

// The row's fields as macro arguments (the extra level expands FSPMM_VARIANT_<name> first).
#define FSPMM_VARIANT_APPLY(MACRO, ...) MACRO(__VA_ARGS__)
#define FSPMM_VARIANT(MACRO, name) FSPMM_VARIANT_APPLY(MACRO, FSPMM_VARIANT_##name)
