// Kernel instantiations: bitmap format expanded row by row into the dense tile, bf16, every N tile.
#include "spmm/kernel.cuh"
#include "spmm/variants.h"

FSPMM_VARIANT(FSPMM_INSTANTIATE, bitmaprows_bf16)
