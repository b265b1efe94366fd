// Kernel instantiations: bitmap format expanded row by row into the dense tile, f16, every N tile.
#include "spmm/kernel.cuh"
#include "spmm/variants.h"

FSPMM_VARIANT(FSPMM_INSTANTIATE, bitmaprows_f16)
