// The opaque handles of the C API: a validated matrix and a linear plan.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "common/error.h"
#include "flashspmm.h"
#include "spmm/launch.h"

// A blob validated once; the header is the library's own copy, never the caller's.
struct fspmm_matrix_s {
    fspmm_header_t header;
    const void* blob;  // host or device memory, the caller's
    size_t bytes;      // the buffer size given at creation (>= header.total_bytes)
    int device;        // -1: host memory, else the CUDA device holding the blob
};

// Every launch decision of one (matrix, max N, options), made at creation; immutable afterwards.
struct fspmm_plan_s {
    fspmm_header_t header;
    const void* blob;  // device memory
    int device;
    int64_t max_n;
    fspmm::LinearOptions options;
    // plans[index(N)]: one per N up to 64 tokens, then one per 64-token block count (the tiling, the grid and
    // the split depend on N only through those), the widest N of each entry's range used for its workspace.
    std::vector<fspmm::LinearPlan> plans;
    size_t workspace;  // the largest of the entries' workspaces

    static size_t index(int64_t N) { return N <= 64 ? size_t(N - 1) : size_t(64 + (N + 63) / 64 - 2); }
};

namespace fspmm {

// The handle behind `m`, checked: not NULL and (when `where` is given) in host memory (-1) or on a device.
inline const fspmm_matrix_s& matrix_arg(fspmm_matrix_t m, bool host) {
    FSPMM_REQUIRE(m != nullptr, "matrix is NULL: create one with fspmm_matrix_create_host / _device");
    if (host)
        FSPMM_REQUIRE(m->device < 0,
                      "this matrix is in device memory: use the device function (or a handle over "
                      "a host copy of the blob)");
    else
        FSPMM_REQUIRE(m->device >= 0,
                      "this matrix is in host memory: create the handle over a device copy of the "
                      "blob (fspmm_matrix_create_device) for GPU functions");
    return *m;
}

}  // namespace fspmm
