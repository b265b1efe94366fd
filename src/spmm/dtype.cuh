// The two element types: conversions to and from fp32 and the matching Tensor Core mma.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#include "ptx/ptx.cuh"

namespace fspmm {

struct Fp16 {
    static __device__ __forceinline__ void mma(ptx::FragC& c, const ptx::FragA& a, const ptx::FragB& b) {
        ptx::mma_f16(c, a, b);
    }
    static __device__ __forceinline__ float to_float(uint16_t v) { return __half2float(__ushort_as_half(v)); }
    static __device__ __forceinline__ uint16_t from_float(float v) { return __half_as_ushort(__float2half_rn(v)); }
};
struct Bf16 {
    static __device__ __forceinline__ void mma(ptx::FragC& c, const ptx::FragA& a, const ptx::FragB& b) {
        ptx::mma_bf16(c, a, b);
    }
    static __device__ __forceinline__ float to_float(uint16_t v) { return __bfloat162float(__ushort_as_bfloat16(v)); }
    static __device__ __forceinline__ uint16_t from_float(float v) {
        return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    }
};

// sm_90a warpgroup MMA in a dtype, N = 8 kFrags tokens: A from registers (wgmma) or shared memory (wgmma_ss).
template <class Dtype, int kFrags>
__device__ __forceinline__ void wgmma(ptx::FragC (&d)[kFrags], const ptx::FragA& a, uint64_t desc_b) {
    if constexpr (std::is_same<Dtype, Bf16>::value)
        ptx::wgmma_bf16(d, a, desc_b);
    else
        ptx::wgmma_f16(d, a, desc_b);
}
template <class Dtype, int kFrags>
__device__ __forceinline__ void wgmma_ss(ptx::FragC (&d)[kFrags], uint64_t desc_a, uint64_t desc_b) {
    if constexpr (std::is_same<Dtype, Bf16>::value)
        ptx::wgmma_ss_bf16(d, desc_a, desc_b);
    else
        ptx::wgmma_ss_f16(d, desc_a, desc_b);
}

}  // namespace fspmm
