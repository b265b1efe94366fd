// Kernel instantiations: bitmap format, f16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(FSPMM_FORMAT_BITMAP, FSPMM_DTYPE_FLOAT16, BitmapDecoder, Fp16)
