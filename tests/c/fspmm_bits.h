/* fp16 / bf16 bit conversions shared by the C test programs (tests/c/test_capi.c, tools/gpu_check): round to
 * nearest even, subnormals kept, overflow to Inf, NaN stays NaN. Header-only, C99. */
#ifndef FSPMM_TEST_BITS_H
#define FSPMM_TEST_BITS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "flashspmm.h"

/* float -> 16-bit pattern of `dtype`. */
static inline uint16_t fspmm_float_to_bits(float f, fspmm_dtype_t dtype) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if (dtype == FSPMM_DTYPE_BFLOAT16) {
        if ((x & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u); /* NaN: keep it quiet */
        return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
    }
    {
        const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
        const uint32_t ax = x & 0x7FFFFFFFu;
        uint32_t m, shift, rem, halfway, r;
        if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);                      /* NaN          */
        if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);                     /* rounds to Inf */
        if (ax >= 0x38800000u)                                                         /* normal fp16   */
            return (uint16_t)(sign | ((ax + 0xFFFu + ((ax >> 13) & 1u) - (112u << 23)) >> 13));
        if (ax <= 0x33000000u) return sign;                                            /* rounds to 0   */
        m = (ax & 0x7FFFFFu) | 0x800000u;                                              /* subnormal     */
        shift = 126u - (ax >> 23);
        rem = m & ((1u << shift) - 1u);
        halfway = 1u << (shift - 1u);
        r = m >> shift;
        if (rem > halfway || (rem == halfway && (r & 1u))) ++r;
        return (uint16_t)(sign | r);
    }
}

/* 16-bit pattern of `dtype` -> its exact value. */
static inline double fspmm_bits_to_double(uint16_t h, fspmm_dtype_t dtype) {
    if (dtype == FSPMM_DTYPE_BFLOAT16) {
        const uint32_t x = (uint32_t)h << 16;
        float f;
        memcpy(&f, &x, sizeof f);
        return f;
    }
    {
        const int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
        const double magnitude = exp == 0x1F ? (mant ? NAN : INFINITY)
                                 : exp == 0  ? ldexp((double)mant, -24)
                                             : ldexp((double)(mant | 0x400), exp - 25);
        return (h & 0x8000u) ? -magnitude : magnitude;
    }
}

#endif /* FSPMM_TEST_BITS_H */
