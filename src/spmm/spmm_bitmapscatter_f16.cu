// Kernel instantiations: bitmap format scattered nonzero by nonzero, f16, every N tile.
#include "spmm/kernel.cuh"
#include "spmm/variants.h"

FSPMM_VARIANT(FSPMM_INSTANTIATE, bitmapscatter_f16)
