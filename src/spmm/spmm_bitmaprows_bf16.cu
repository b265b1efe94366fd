// Kernel instantiations: bitmap format expanded row by row into the dense tile, bf16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(kBitmapRows, FSPMM_DTYPE_BFLOAT16, BitmapRowsDecoder, Bf16)
