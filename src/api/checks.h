// Argument checks shared by the C entry points (each raises FSPMM_ERR_INVALID_ARGUMENT with a message that
// says what to pass instead).
#pragma once
#include <stdint.h>
#include <string.h>

#include <string>
#include <type_traits>

#include "common/error.h"
#include "flashspmm.h"
#include "format/host_formats.h"

namespace fspmm {

// The integer a C caller passed for an enum parameter. Read through memcpy: in C++ an out-of-range value
// must not be loaded as the enum type itself (undefined behaviour), and C callers can pass any int.
template <typename E>
inline int enum_value(const E& e) {
    std::underlying_type_t<E> v;
    memcpy(&v, &e, sizeof v);
    return static_cast<int>(v);
}

// Raise INVALID_ARGUMENT unless `p` is non-NULL; `what` says what it must point to.
inline void require_pointer(const void* p, const char* name, const char* what) {
    FSPMM_REQUIRE(p != nullptr, std::string(name) + " is NULL: pass " + what);
}

// Raise INVALID_ARGUMENT unless a 16-bit element array is 2-byte aligned.
inline void require_aligned(const void* p, const char* name) {
    FSPMM_REQUIRE(reinterpret_cast<uintptr_t>(p) % 2 == 0,
                  std::string(name) + " is not 2-byte aligned: pass an array of 16-bit elements");
}

// Raise INVALID_ARGUMENT unless a dimension is within [1, 2^31 - 1].
inline void require_dimension(int64_t v, const char* name, const char* meaning) {
    FSPMM_REQUIRE(v >= 1 && v <= kMaxDim, std::string(name) + " = " + std::to_string(v) + " is invalid: " + name +
                                              " (" + meaning + ") must be in [1, 2^31-1]");
}

// Raise INVALID_ARGUMENT unless `ld` >= `cols` and a rows x ld array of 2-byte elements is addressable.
inline void require_leading_dim(int64_t rows, int64_t cols, int64_t ld, const char* ld_name, const char* cols_name) {
    FSPMM_REQUIRE(ld >= cols, std::string(ld_name) + " = " + std::to_string(ld) + " is smaller than " + cols_name +
                                  " = " + std::to_string(cols) + ": pass " + ld_name + " >= " + cols_name +
                                  " (elements between the starts of consecutive rows)");
    int64_t elements = 0, bytes = 0;
    const bool overflow =
        __builtin_mul_overflow(rows - 1, ld, &elements) || __builtin_add_overflow(elements, cols, &elements) ||
        __builtin_mul_overflow(elements, int64_t{kElemBytes}, &bytes) || static_cast<uint64_t>(bytes) > SIZE_MAX;
    FSPMM_REQUIRE(!overflow, std::string(ld_name) + " = " + std::to_string(ld) + " with " + std::to_string(rows) +
                                 " rows overflows the address space: pass a smaller " + ld_name);
}

// Raise INVALID_ARGUMENT unless `p` (a device buffer: blob, workspace, output) is 16-byte aligned.
inline void require_aligned16(const void* p, const char* name) {
    FSPMM_REQUIRE(reinterpret_cast<uintptr_t>(p) % 16 == 0,
                  std::string(name) + " must be 16-byte aligned (cudaMalloc and framework allocations are)");
}

// Raise INVALID_ARGUMENT unless dtype is FLOAT16 or BFLOAT16.
inline void require_dtype(int dtype) {
    FSPMM_REQUIRE(
        dtype == FSPMM_DTYPE_FLOAT16 || dtype == FSPMM_DTYPE_BFLOAT16,
        "dtype = " + std::to_string(dtype) + " is invalid: pass FSPMM_DTYPE_FLOAT16 (1) or FSPMM_DTYPE_BFLOAT16 (2)");
}

// Raise INVALID_ARGUMENT unless format is a concrete format or one of the automatic choices.
inline void require_format(int format) {
    FSPMM_REQUIRE(format >= FSPMM_FORMAT_AUTO && format <= FSPMM_FORMAT_AUTO_N1,
                  "format = " + std::to_string(format) +
                      " is invalid: pass FSPMM_FORMAT_AUTO (0), FSPMM_FORMAT_TILED_CSL (1), FSPMM_FORMAT_BITMAP (2), "
                      "FSPMM_FORMAT_SMALLEST (3), FSPMM_FORMAT_AUTO_N8 (4) or FSPMM_FORMAT_AUTO_N1 (5)");
}

// Raise INVALID_ARGUMENT unless sparsity is a fraction in [0, 1] (NaN is not).
inline void require_sparsity(double sparsity) {
    FSPMM_REQUIRE(sparsity >= 0.0 && sparsity <= 1.0,
                  "sparsity must be a fraction in [0, 1] (e.g. 0.7 for 70 % zeros), got " + std::to_string(sparsity));
}

// Raise INVALID_ARGUMENT unless scope is FSPMM_PRUNE_ROW or FSPMM_PRUNE_TENSOR.
inline void require_scope(int scope) {
    FSPMM_REQUIRE(scope == FSPMM_PRUNE_ROW || scope == FSPMM_PRUNE_TENSOR,
                  "scope must be FSPMM_PRUNE_ROW or FSPMM_PRUNE_TENSOR, got " + std::to_string(scope));
}

// Checks of a caller's dense M x K matrix.
inline void require_matrix(const void* dense, int64_t M, int64_t K, int64_t ld, int dtype) {
    require_pointer(dense, "dense", "a pointer to the M x K matrix");
    require_aligned(dense, "dense");
    require_dimension(M, "M", "rows of W, out features");
    require_dimension(K, "K", "columns of W, in features");
    require_leading_dim(M, K, ld, "ld", "K");
    require_dtype(dtype);
}

// Raise INVALID_ARGUMENT unless a dense output described as [rows, cols] is the matrix's [M, K].
inline void require_output_shape(const fspmm_header_t& h, int64_t rows, int64_t cols) {
    FSPMM_REQUIRE(rows == h.M && cols == h.K, "the output is [" + std::to_string(rows) + ", " + std::to_string(cols) +
                                                  "] but the matrix is [M = " + std::to_string(h.M) +
                                                  ", K = " + std::to_string(h.K) + "]: pass an M x K output");
}

}  // namespace fspmm
