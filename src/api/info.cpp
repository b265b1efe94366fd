// Version, build information and device discovery.
#include <cuda_runtime.h>

#include <string>

#include "api/export.h"
#include "common/error.h"

#ifndef FSPMM_CUDA_ARCHS
#define FSPMM_CUDA_ARCHS "unknown"
#endif

namespace {
std::string build_info_text() {
    const int cuda = CUDART_VERSION;
    return "flashspmm " + std::to_string(FSPMM_VERSION_MAJOR) + "." + std::to_string(FSPMM_VERSION_MINOR) + "." +
           std::to_string(FSPMM_VERSION_PATCH) + "; CUDA runtime " + std::to_string(cuda / 1000) + "." +
           std::to_string((cuda % 1000) / 10) + " (static); " +
#if defined(FSPMM_NO_ROWS_DECODER)
           "without the rows decoder; " +
#endif
           "architectures " + FSPMM_CUDA_ARCHS;
}
}  // namespace

extern "C" FSPMM_API int fspmm_version(void) { return FSPMM_VERSION; }

extern "C" FSPMM_API const char* fspmm_build_info(void) {
    static const std::string text = build_info_text();
    return text.c_str();
}

extern "C" FSPMM_API fspmm_status_t fspmm_device_count(int* count) {
    return fspmm::guard("fspmm_device_count", [&] {
        FSPMM_REQUIRE(count != nullptr, "count is NULL");
        int n = 0;
        const cudaError_t err = cudaGetDeviceCount(&n);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();  // no driver or no device: not an error for a query
            n = 0;
        }
        *count = n;
        return FSPMM_OK;
    });
}
