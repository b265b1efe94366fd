// Kernel instantiations: bitmap format scattered nonzero by nonzero, bf16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(FSPMM_FORMAT_BITMAP, FSPMM_DTYPE_BFLOAT16, BitmapScatterDecoder, Bf16)
