// Kernel instantiations: csl format, bf16, every N tile.
#include "spmm/kernel.cuh"
#include "spmm/variants.h"

FSPMM_VARIANT(FSPMM_INSTANTIATE, csl_bf16)
