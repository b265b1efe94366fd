// The two element types: conversions to and from fp32 and the matching Tensor Core mma.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "ptx/ptx.cuh"

namespace fspmm {

struct Fp16 {
    static __device__ __forceinline__ void mma(ptx::FragC& c, const ptx::FragA& a, const ptx::FragB& b) {
        ptx::mma_f16(c, a, b);
    }
    static __device__ __forceinline__ float to_float(uint16_t v) { return __half2float(__ushort_as_half(v)); }
    static __device__ __forceinline__ uint16_t from_float(float v) {
        return __half_as_ushort(__float2half_rn(v));
    }
};
struct Bf16 {
    static __device__ __forceinline__ void mma(ptx::FragC& c, const ptx::FragA& a, const ptx::FragB& b) {
        ptx::mma_bf16(c, a, b);
    }
    static __device__ __forceinline__ float to_float(uint16_t v) {
        return __bfloat162float(__ushort_as_bfloat16(v));
    }
    static __device__ __forceinline__ uint16_t from_float(float v) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
};

}  // namespace fspmm
