// C entry points that need a CUDA device: fspmm_linear (with a plan) and the device memory helpers.
#include <cuda_runtime.h>

#include <cstring>
#include <string>

#include "api/checks.h"
#include "api/export.h"
#include "api/handles.h"
#include "common/error.h"
#include "format/header.h"
#include "spmm/launch.h"

using fspmm::check_cuda;

namespace {

// Overflow-safe check that rows x ld elements (of 2 bytes) are addressable.
bool fits(int64_t rows, int64_t ld) { return rows <= 0 || ld <= (INT64_MAX / 2) / rows; }

}  // namespace

extern "C" FSPMM_API fspmm_status_t fspmm_linear(fspmm_plan_t plan, const void* x, int64_t N, int64_t K, int64_t ldx,
                                                 const void* bias, void* y, int64_t M, int64_t ldy, float alpha,
                                                 float beta, void* workspace, size_t workspace_bytes, void* stream) {
    return fspmm::guard("fspmm_linear", [&] {
        FSPMM_REQUIRE(plan != nullptr, "plan is NULL: create one with fspmm_plan_create");
        const fspmm_header_t& h = plan->header;
        FSPMM_REQUIRE(x != nullptr && y != nullptr, "x and y must be device pointers, not NULL");
        FSPMM_REQUIRE(reinterpret_cast<uintptr_t>(x) % 2 == 0 && reinterpret_cast<uintptr_t>(y) % 2 == 0 &&
                          reinterpret_cast<uintptr_t>(bias) % 2 == 0,
                      "x, y and bias must be 2-byte aligned");
        FSPMM_REQUIRE(N >= 1 && N <= plan->max_n, "N = " + std::to_string(N) +
                                                      " is outside [1, max_n = " + std::to_string(plan->max_n) +
                                                      "] of this plan: create a plan with a larger max_n");
        FSPMM_REQUIRE(K == h.K, "K = " + std::to_string(K) +
                                    " does not match the matrix, which is [M = " + std::to_string(h.M) +
                                    ", K = " + std::to_string(h.K) + "]: x must be [N, " + std::to_string(h.K) + "]");
        FSPMM_REQUIRE(M == h.M, "M = " + std::to_string(M) +
                                    " does not match the matrix, which is [M = " + std::to_string(h.M) +
                                    ", K = " + std::to_string(h.K) + "]: y must be [N, " + std::to_string(h.M) + "]");
        FSPMM_REQUIRE(ldx >= h.K, "ldx (" + std::to_string(ldx) + ") must be >= K (" + std::to_string(h.K) + ")");
        FSPMM_REQUIRE(ldy >= h.M, "ldy (" + std::to_string(ldy) + ") must be >= M (" + std::to_string(h.M) + ")");
        FSPMM_REQUIRE(fits(N, ldx) && fits(N, ldy), "N * ldx or N * ldy overflows 64-bit addressing");
        const fspmm::LinearPlan& lp = plan->plans[fspmm_plan_s::index(N)];
        const size_t needed = fspmm::linear_workspace_bytes(h, lp, N);
        FSPMM_REQUIRE(workspace_bytes >= needed, "workspace too small: need " + std::to_string(needed) +
                                                     " bytes, got " + std::to_string(workspace_bytes) +
                                                     " (ask fspmm_plan_workspace_size)");
        FSPMM_REQUIRE(needed == 0 || workspace != nullptr, "workspace is NULL but this call needs one");
        if (needed != 0) fspmm::require_aligned16(workspace, "workspace");
        fspmm::DeviceScope scope(plan->device);
        fspmm::run_linear(h, lp, plan->blob, x, ldx, N, bias, y, ldy, alpha, beta, workspace,
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

extern "C" FSPMM_API fspmm_status_t fspmm_pointer_device(const void* ptr, int* device) {
    return fspmm::guard("fspmm_pointer_device", [&] {
        FSPMM_REQUIRE(device != nullptr, "device is NULL");
        fspmm::current_device();
        cudaPointerAttributes attr{};
        const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
        if (err == cudaErrorInvalidValue) {
            (void)cudaGetLastError();
            *device = -1;
            return FSPMM_OK;
        }
        check_cuda(err, "cudaPointerGetAttributes");
        *device = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged ? attr.device : -1;
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
        if (bytes == 0) {
            *ptr = nullptr;
            return FSPMM_OK;
        }
        fspmm::current_device();
        void* p = nullptr;
        check_cuda(cudaMalloc(&p, bytes), ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
        *ptr = p;  // written on success only
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
