// Kernel instantiations: csl format, f16, every N tile.
#include "spmm/kernel.cuh"
#include "spmm/variants.h"

FSPMM_VARIANT(FSPMM_INSTANTIATE, csl_f16)
