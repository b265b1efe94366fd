// Kernel instantiations: csl format, f16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(FSPMM_FORMAT_TILED_CSL, FSPMM_DTYPE_FLOAT16, CslDecoder, Fp16)
