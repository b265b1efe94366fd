// C entry points of the GPU encoder and decoder (fspmm_compress_*, fspmm_decompress).
#include <cuda_runtime.h>

#include <string>

#include "api/checks.h"
#include "api/export.h"
#include "api/handles.h"
#include "common/error.h"
#include "convert/convert_device.h"
#include "format/choose.h"
#include "format/header.h"
#include "spmm/launch.h"

namespace fspmm {
namespace {

// Checks of the encoder's workspace for an M x K matrix.
void require_encode_workspace(const void* workspace, size_t workspace_bytes, int64_t M, int64_t K) {
    const size_t need = encode_workspace_bytes(M, K);
    require_pointer(workspace, "workspace", "device memory of fspmm_compress_workspace_size bytes");
    require_aligned16(workspace, "workspace");
    FSPMM_REQUIRE(workspace_bytes >= need, "workspace too small: need " + std::to_string(need) + " bytes, got " +
                                               std::to_string(workspace_bytes) +
                                               " (ask fspmm_compress_workspace_size)");
}

// Checks shared by the count and write phases; the dense matrix as the kernels see it.
DeviceDense device_dense(const void* dense, int64_t M, int64_t K, int64_t ld, int dtype) {
    require_matrix(dense, M, K, ld, dtype);
    return DeviceDense{dense, M, K, ld, dtype};
}

// What a refused write phase means for the caller.
std::string refusal_message(unsigned long long reason) {
    switch (reason) {
        case kRefuseShape:
            return "the last fspmm_compress on this workspace wrote nothing: its M, K or dtype differ from "
                   "fspmm_compress_count's; count and write the same matrix with the same workspace";
        case kRefuseTooSmall:
            return "the last fspmm_compress on this workspace wrote nothing: out_bytes was smaller than the blob; "
                   "allocate the size fspmm_compress_size reports";
        case kRefuseChanged:
            return "the last fspmm_compress on this workspace left no valid blob: the dense matrix changed between "
                   "fspmm_compress_count and fspmm_compress; order both phases after every write to the matrix";
        default:
            return "the workspace holds an unknown state (" + std::to_string(reason) + "); run fspmm_compress_count";
    }
}

}  // namespace
}  // namespace fspmm

using namespace fspmm;

extern "C" FSPMM_API fspmm_status_t fspmm_compress_workspace_size(int64_t M, int64_t K, size_t* bytes) {
    return guard("fspmm_compress_workspace_size", [&] {
        require_dimension(M, "M", "rows of W, out features");
        require_dimension(K, "K", "columns of W, in features");
        require_pointer(bytes, "bytes", "a pointer to a size_t to receive the workspace size");
        *bytes = encode_workspace_bytes(M, K);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_compress_count(const void* dense, int64_t M, int64_t K, int64_t ld,
                                                         fspmm_dtype_t dtype, void* workspace, size_t workspace_bytes,
                                                         void* stream) {
    return guard("fspmm_compress_count", [&] {
        const DeviceDense d = device_dense(dense, M, K, ld, enum_value(dtype));
        require_encode_workspace(workspace, workspace_bytes, M, K);
        current_device();
        launch_encode_count(d, workspace, static_cast<cudaStream_t>(stream));
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_compress_size(const void* workspace, size_t workspace_bytes,
                                                        fspmm_format_t format, size_t* bytes, fspmm_format_t* chosen,
                                                        void* stream) {
    return guard("fspmm_compress_size", [&] {
        const int fmt = enum_value(format);
        require_format(fmt);
        require_pointer(bytes, "bytes", "a pointer to a size_t to receive the blob size");
        require_pointer(workspace, "workspace", "the workspace of fspmm_compress_count");
        require_aligned16(workspace, "workspace");
        FSPMM_REQUIRE(workspace_bytes >= sizeof(EncodeState),
                      "workspace too small to hold a count: pass the workspace of fspmm_compress_count");
        current_device();
        EncodeState st;
        const cudaStream_t s = static_cast<cudaStream_t>(stream);
        check_cuda(cudaMemcpyAsync(&st, workspace, sizeof st, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync");
        check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
        FSPMM_REQUIRE(st.magic == kEncodeCounted && st.M >= 1 && st.M <= kMaxDim && st.K >= 1 && st.K <= kMaxDim,
                      "the workspace holds no count: run fspmm_compress_count with it first (on the same stream)");
        FSPMM_REQUIRE(workspace_bytes >= encode_workspace_bytes(static_cast<int64_t>(st.M), static_cast<int64_t>(st.K)),
                      "workspace_bytes is smaller than the workspace fspmm_compress_count used");
        FSPMM_REQUIRE(st.refused == kRefuseNone, refusal_message(st.refused));
        const int resolved = compress_format(fmt, int64_t(st.M), int64_t(st.K), st.nnz, st.data_bytes[kFormatIndexCsl],
                                             st.data_bytes[kFormatIndexBitmap]);
        const Geometry g = make_geometry(static_cast<int64_t>(st.M), static_cast<int64_t>(st.K));
        const uint64_t total =
            g.data_offset + st.data_bytes[resolved == FSPMM_FORMAT_BITMAP ? kFormatIndexBitmap : kFormatIndexCsl];
        FSPMM_REQUIRE(total <= SIZE_MAX,
                      "the blob would be " + std::to_string(total) + " bytes, more than this process can address");
        *bytes = static_cast<size_t>(total);
        if (chosen) *chosen = static_cast<fspmm_format_t>(resolved);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_compress(const void* dense, int64_t M, int64_t K, int64_t ld,
                                                   fspmm_dtype_t dtype, fspmm_format_t format, void* workspace,
                                                   size_t workspace_bytes, void* out, size_t out_bytes, void* stream) {
    return guard("fspmm_compress", [&] {
        const DeviceDense d = device_dense(dense, M, K, ld, enum_value(dtype));
        const int fmt = enum_value(format);
        require_format(fmt);
        require_encode_workspace(workspace, workspace_bytes, M, K);
        require_pointer(out, "out", "device memory of the size fspmm_compress_size reports");
        require_aligned16(out, "out");
        const Geometry g = make_geometry(M, K);
        FSPMM_REQUIRE(out_bytes >= g.data_offset,
                      "out_bytes = " + std::to_string(out_bytes) + " cannot hold even the header and offset table (" +
                          std::to_string(g.data_offset) + " bytes): allocate the size fspmm_compress_size reports");
        current_device();
        launch_encode_write(d, fmt, workspace, out, out_bytes, static_cast<cudaStream_t>(stream));
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_decompress(fspmm_matrix_t matrix, void* dense, int64_t rows, int64_t cols,
                                                     int64_t ld, void* stream) {
    return guard("fspmm_decompress", [&] {
        const fspmm_matrix_s& m = matrix_arg(matrix, false);
        const fspmm_header_t& h = m.header;
        require_pointer(dense, "dense", "device memory for the M x K output");
        require_aligned(dense, "dense");
        require_output_shape(h, rows, cols);
        require_leading_dim(h.M, h.K, ld, "ld", "K");
        DeviceScope scope(m.device);
        launch_decode(h, m.blob, dense, ld, static_cast<cudaStream_t>(stream));
        return FSPMM_OK;
    });
}
