// Matrix handles and linear plans: validated once, then used by every call without re-planning.
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "api/checks.h"
#include "api/export.h"
#include "api/handles.h"
#include "common/error.h"
#include "format/header.h"
#include "format/layout.h"
#include "spmm/launch.h"

using namespace fspmm;

namespace {

// The device holding `ptr`, or INVALID_ARGUMENT if it is not device memory.
int device_of(const void* ptr) {
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
    if (err == cudaErrorInvalidValue)
        (void)cudaGetLastError();
    else
        check_cuda(err, "cudaPointerGetAttributes");
    FSPMM_REQUIRE(err == cudaSuccess && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
                  "blob is not device memory: pass a device copy of the blob, or use fspmm_matrix_create_host for "
                  "host memory");
    return attr.device;
}

// Checked copy of the caller's options (NULL: all automatic).
LinearOptions options_arg(const fspmm_linear_options_t* o) {
    LinearOptions out;
    if (o == nullptr) return out;
    FSPMM_REQUIRE(o->struct_bytes >= sizeof(fspmm_linear_options_t),
                  "options->struct_bytes = " + std::to_string(o->struct_bytes) +
                      " is too small: initialise the options with fspmm_linear_options_init");
    const int kernel = enum_value(o->kernel), decoder = enum_value(o->decoder);
    FSPMM_REQUIRE(o->split_k >= 0, "options->split_k = " + std::to_string(o->split_k) +
                                       " is invalid: pass 0 (automatic) or a positive number of K slices");
    FSPMM_REQUIRE(kernel >= FSPMM_KERNEL_AUTO && kernel <= FSPMM_KERNEL_STREAMING,
                  "options->kernel = " + std::to_string(kernel) + " is invalid: pass one of FSPMM_KERNEL_*");
    FSPMM_REQUIRE(decoder >= FSPMM_DECODER_AUTO && decoder <= FSPMM_DECODER_ROWS,
                  "options->decoder = " + std::to_string(decoder) + " is invalid: pass one of FSPMM_DECODER_*");
    FSPMM_REQUIRE((o->flags & ~uint32_t{FSPMM_LINEAR_ZEROED_WORKSPACE}) == 0,
                  "options->flags = " + std::to_string(o->flags) + " holds unknown bits: pass FSPMM_LINEAR_* flags");
    out.split_k = o->split_k;
    out.kernel = kernel;
    out.decoder = decoder;
    out.flags = o->flags;
    return out;
}

fspmm_matrix_t new_matrix(const fspmm_header_t& h, const void* blob, size_t bytes, int device) {
    return new fspmm_matrix_s{h, blob, bytes, device};
}

}  // namespace

extern "C" FSPMM_API fspmm_status_t fspmm_matrix_create_host(const void* blob, size_t bytes, fspmm_matrix_t* matrix) {
    return guard("fspmm_matrix_create_host", [&] {
        require_pointer(matrix, "matrix", "a pointer to an fspmm_matrix_t to receive the handle");
        require_pointer(blob, "blob", "a pointer to a blob in host memory");
        const fspmm_header_t h = validate_blob(blob, bytes);
        *matrix = new_matrix(h, blob, bytes, -1);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_matrix_create_device(const void* blob, size_t bytes, void* stream,
                                                               fspmm_matrix_t* matrix) {
    return guard("fspmm_matrix_create_device", [&] {
        require_pointer(matrix, "matrix", "a pointer to an fspmm_matrix_t to receive the handle");
        require_pointer(blob, "blob", "a pointer to a blob in device memory");
        require_aligned16(blob, "blob");
        current_device();
        const int device = device_of(blob);
        if (bytes < static_cast<size_t>(kHeaderBytes))
            raise(FSPMM_ERR_CORRUPT_BUFFER, "buffer holds " + std::to_string(bytes) +
                                                " bytes, fewer than the 128-byte header: the blob is truncated");
        DeviceScope scope(device);
        const cudaStream_t s = static_cast<cudaStream_t>(stream);
        fspmm_header_t h;
        check_cuda(cudaMemcpyAsync(&h, blob, sizeof h, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync(header)");
        check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        check_header(h);  // before data_offset sizes the next copy
        if (h.total_bytes > bytes)
            raise(FSPMM_ERR_CORRUPT_BUFFER, "blob is truncated: header says " + std::to_string(h.total_bytes) +
                                                " bytes but the buffer holds " + std::to_string(bytes));
        std::vector<uint8_t> prefix(h.data_offset);
        check_cuda(cudaMemcpyAsync(prefix.data(), blob, prefix.size(), cudaMemcpyDeviceToHost, s),
                   "cudaMemcpyAsync(tile offset table)");
        check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        const fspmm_header_t checked = validate_prefix(prefix.data(), prefix.size(), bytes);
        *matrix = new_matrix(checked, blob, bytes, device);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_matrix_destroy(fspmm_matrix_t matrix) {
    return guard("fspmm_matrix_destroy", [&] {
        delete matrix;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_matrix_header(fspmm_matrix_t matrix, fspmm_header_t* out) {
    return guard("fspmm_matrix_header", [&] {
        FSPMM_REQUIRE(matrix != nullptr, "matrix is NULL");
        require_pointer(out, "out", "a pointer to an fspmm_header_t to fill");
        *out = matrix->header;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_matrix_device(fspmm_matrix_t matrix, int* device) {
    return guard("fspmm_matrix_device", [&] {
        FSPMM_REQUIRE(matrix != nullptr, "matrix is NULL");
        require_pointer(device, "device", "a pointer to an int");
        *device = matrix->device;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_linear_options_init(fspmm_linear_options_t* options) {
    return guard("fspmm_linear_options_init", [&] {
        require_pointer(options, "options", "a pointer to an fspmm_linear_options_t");
        *options = fspmm_linear_options_t{};
        options->struct_bytes = sizeof(fspmm_linear_options_t);
        options->kernel = FSPMM_KERNEL_AUTO;
        options->decoder = FSPMM_DECODER_AUTO;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_plan_create(fspmm_matrix_t matrix, int64_t max_n,
                                                      const fspmm_linear_options_t* options, fspmm_plan_t* plan) {
    return guard("fspmm_plan_create", [&] {
        require_pointer(plan, "plan", "a pointer to an fspmm_plan_t to receive the plan");
        const fspmm_matrix_s& m = matrix_arg(matrix, false);
        FSPMM_REQUIRE(max_n >= 1 && max_n <= int64_t{65535} * 64,
                      "max_n = " + std::to_string(max_n) +
                          " is invalid: pass the largest N (tokens) the plan "
                          "serves, 1 .. 65535 * 64");
        const LinearOptions o = options_arg(options);
        DeviceScope scope(m.device);
        auto p = std::make_unique<fspmm_plan_s>();
        p->header = m.header;
        p->blob = m.blob;
        p->device = m.device;
        p->max_n = max_n;
        p->options = o;
        p->workspace = 0;
        const size_t entries = fspmm_plan_s::index(max_n) + 1;
        p->plans.reserve(entries);
        std::vector<int64_t> widest(entries);
        size_t counters = 0;
        for (size_t i = 0; i < entries; ++i) {
            widest[i] = i < 64 ? int64_t(i) + 1 : std::min<int64_t>(int64_t(i - 62) * 64, max_n);
            p->plans.push_back(plan_linear(m.header, widest[i], o, m.device));
            counters = std::max(counters, p->plans.back().counters_bytes);
        }
        // One counter area for every N, at the start of the workspace (the partial sums of any N follow it).
        for (size_t i = 0; i < entries; ++i) {
            LinearPlan& lp = p->plans[i];
            if (lp.splits > 1) lp.counters_bytes = counters;
            lp.workspace = linear_workspace_bytes(m.header, lp, widest[i]);
            p->workspace = std::max(p->workspace, lp.workspace);
        }
        *plan = p.release();
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_plan_destroy(fspmm_plan_t plan) {
    return guard("fspmm_plan_destroy", [&] {
        delete plan;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_plan_workspace_size(fspmm_plan_t plan, size_t* bytes) {
    return guard("fspmm_plan_workspace_size", [&] {
        FSPMM_REQUIRE(plan != nullptr, "plan is NULL: create one with fspmm_plan_create");
        require_pointer(bytes, "bytes", "a pointer to a size_t");
        *bytes = plan->workspace;
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_plan_info(fspmm_plan_t plan, int64_t N, fspmm_plan_info_t* info) {
    return guard("fspmm_plan_info", [&] {
        FSPMM_REQUIRE(plan != nullptr, "plan is NULL: create one with fspmm_plan_create");
        require_pointer(info, "info", "a pointer to an fspmm_plan_info_t");
        FSPMM_REQUIRE(N >= 1 && N <= plan->max_n, "N = " + std::to_string(N) + " is outside [1, max_n = " +
                                                      std::to_string(plan->max_n) + "] of this plan");
        const LinearPlan& lp = plan->plans[fspmm_plan_s::index(N)];
        *info = fspmm_plan_info_t{};
        info->kernel = static_cast<fspmm_kernel_t>(kernel_kind(lp));
        info->decoder = static_cast<fspmm_decoder_t>(decoder_kind(lp));
        info->n_tile = lp.n_tile;
        info->split_k = lp.splits;
        info->grid_x = lp.m_blocks;
        info->grid_y = lp.splits;
        info->grid_z = lp.n_blocks;
        info->shared_memory_bytes = lp.smem;
        info->workspace_bytes = linear_workspace_bytes(plan->header, lp, N);
        return FSPMM_OK;
    });
}
