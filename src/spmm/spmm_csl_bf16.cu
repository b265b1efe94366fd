// Kernel instantiations: csl format, bf16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(FSPMM_FORMAT_TILED_CSL, FSPMM_DTYPE_BFLOAT16, CslDecoder, Bf16)
