// Kernel instantiations: bitmap format decoded straight into mma fragments, f16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(kBitmapDirect, FSPMM_DTYPE_FLOAT16, BitmapDirectDecoder, Fp16)
