// Kernel instantiations: bitmap format expanded row by row into the dense tile, f16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(kBitmapRows, FSPMM_DTYPE_FLOAT16, BitmapRowsDecoder, Fp16)
