// Kernel instantiations: bitmap format scattered nonzero by nonzero, f16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(FSPMM_FORMAT_BITMAP, FSPMM_DTYPE_FLOAT16, BitmapScatterDecoder, Fp16)
