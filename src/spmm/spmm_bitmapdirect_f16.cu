// Kernel instantiations: bitmap format decoded straight into mma fragments, f16, every N tile.
#include "spmm/kernel.cuh"
#include "spmm/variants.h"

FSPMM_VARIANT(FSPMM_INSTANTIATE, bitmapdirect_f16)
