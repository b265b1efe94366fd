// Kernel instantiations: bitmap format decoded straight into mma fragments, bf16, every N tile.
#include "spmm/kernel.cuh"

FSPMM_INSTANTIATE(kBitmapDirect, FSPMM_DTYPE_BFLOAT16, BitmapDirectDecoder, Bf16)
