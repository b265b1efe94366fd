// Kernel instantiations: bitmap format, bf16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(FSPMM_FORMAT_BITMAP, FSPMM_DTYPE_BFLOAT16, BitmapDecoder, Bf16)
