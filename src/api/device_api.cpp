// C entry points that need a CUDA device: fspmm_linear and the device memory helpers.
#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "api/checks.h"
#include "api/export.h"
#include "common/error.h"
#include "format/header.h"
#include "spmm/launch.h"

using fspmm::check_cuda;

namespace {

// Overflow-safe check that rows x ld elements (of 2 bytes) are addressable.
bool fits(int64_t rows, int64_t ld) { return rows <= 0 || ld <= (INT64_MAX / 2) / rows; }

// Checks shared by fspmm_linear and fspmm_linear_workspace_size.
void check_header_arg(const fspmm_header_t* header) {
    FSPMM_REQUIRE(header != nullptr, "header is NULL; read it with fspmm_header_read");
    fspmm::check_header(*header);
}

}  // namespace

extern "C" FSPMM_API fspmm_status_t fspmm_linear_workspace_size(const fspmm_header_t* header, int64_t N,
                                                                int split_k, size_t* bytes) {
    return fspmm::guard("fspmm_linear_workspace_size", [&] {
        check_header_arg(header);
        FSPMM_REQUIRE(bytes != nullptr, "bytes is NULL");
        const int device = fspmm::current_device();
        *bytes = fspmm::plan_linear(*header, N, split_k, device).workspace;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_linear(const fspmm_header_t* header, const void* blob, const void* x,
                                                 int64_t N, int64_t ldx, const void* bias, void* y, int64_t ldy,
                                                 float alpha, float beta, int split_k, void* workspace,
                                                 size_t workspace_bytes, void* stream) {
    return fspmm::guard("fspmm_linear", [&] {
        check_header_arg(header);
        const fspmm_header_t& h = *header;
        FSPMM_REQUIRE(blob != nullptr, "blob is NULL");
        fspmm::require_aligned16(blob, "blob");
        FSPMM_REQUIRE(x != nullptr && y != nullptr, "x and y must be device pointers, not NULL");
        FSPMM_REQUIRE(reinterpret_cast<uintptr_t>(x) % 2 == 0 && reinterpret_cast<uintptr_t>(y) % 2 == 0 &&
                          reinterpret_cast<uintptr_t>(bias) % 2 == 0,
                      "x, y and bias must be 2-byte aligned");
        FSPMM_REQUIRE(N >= 1, "N must be >= 1, got " + std::to_string(N));
        FSPMM_REQUIRE(ldx >= h.K, "ldx (" + std::to_string(ldx) + ") must be >= K (" + std::to_string(h.K) + ")");
        FSPMM_REQUIRE(ldy >= h.M, "ldy (" + std::to_string(ldy) + ") must be >= M (" + std::to_string(h.M) + ")");
        FSPMM_REQUIRE(fits(N, ldx) && fits(N, ldy), "N * ldx or N * ldy overflows 64-bit addressing");
        const int device = fspmm::current_device();
        const fspmm::LinearPlan plan = fspmm::plan_linear(h, N, split_k, device);
        FSPMM_REQUIRE(workspace_bytes >= plan.workspace,
                      "workspace too small: need " + std::to_string(plan.workspace) + " bytes, got " +
                          std::to_string(workspace_bytes) + " (ask fspmm_linear_workspace_size)");
        FSPMM_REQUIRE(plan.workspace == 0 || workspace != nullptr, "workspace is NULL but this call needs one");
        if (plan.workspace != 0) fspmm::require_aligned16(workspace, "workspace");
        fspmm::run_linear(h, plan, blob, x, ldx, N, bias, y, ldy, alpha, beta, workspace,
                          static_cast<cudaStream_t>(stream));
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_get_device(int* device) {
    return fspmm::guard("fspmm_get_device", [&] {
        FSPMM_REQUIRE(device != nullptr, "device is NULL");
        *device = fspmm::current_device();
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_set_device(int device) {
    return fspmm::guard("fspmm_set_device", [&] {
        int count = 0;
        check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
        FSPMM_REQUIRE(device >= 0 && device < count,
                      "device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " visible)");
        check_cuda(cudaSetDevice(device), "cudaSetDevice");
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_device_malloc(void** ptr, size_t bytes) {
    return fspmm::guard("fspmm_device_malloc", [&] {
        FSPMM_REQUIRE(ptr != nullptr, "ptr is NULL");
        *ptr = nullptr;
        if (bytes == 0) return FSPMM_OK;
        fspmm::current_device();
        void* p = nullptr;
        check_cuda(cudaMalloc(&p, bytes), ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
        *ptr = p;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_device_free(void* ptr) {
    return fspmm::guard("fspmm_device_free", [&] {
        if (ptr != nullptr) check_cuda(cudaFree(ptr), "cudaFree");
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_memcpy(void* dst, const void* src, size_t bytes, fspmm_copy_kind_t kind,
                                                 void* stream) {
    return fspmm::guard("fspmm_memcpy", [&] {
        FSPMM_REQUIRE(bytes == 0 || (dst != nullptr && src != nullptr), "dst and src must not be NULL");
        int kind_value;  // switch on the raw value: a caller may pass a number outside the enum
        std::memcpy(&kind_value, &kind, sizeof kind_value);
        cudaMemcpyKind k;
        switch (kind_value) {
            case FSPMM_COPY_HOST_TO_DEVICE: k = cudaMemcpyHostToDevice; break;
            case FSPMM_COPY_DEVICE_TO_HOST: k = cudaMemcpyDeviceToHost; break;
            case FSPMM_COPY_DEVICE_TO_DEVICE: k = cudaMemcpyDeviceToDevice; break;
            default: fspmm::raise(FSPMM_ERR_INVALID_ARGUMENT, "kind must be one of FSPMM_COPY_*");
        }
        if (bytes == 0) return FSPMM_OK;
        fspmm::current_device();
        const cudaStream_t s = static_cast<cudaStream_t>(stream);
        check_cuda(cudaMemcpyAsync(dst, src, bytes, k, s), "cudaMemcpyAsync");
        check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_stream_synchronize(void* stream) {
    return fspmm::guard("fspmm_stream_synchronize", [&] {
        fspmm::current_device();
        check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
        return FSPMM_OK;
    });
}
