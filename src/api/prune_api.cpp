// C entry points of magnitude pruning on the GPU (fspmm_prune_workspace_size, fspmm_prune). Every argument
// is checked before any CUDA call, so bad arguments are reported the same way with or without a device.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "api/checks.h"
#include "api/export.h"
#include "common/error.h"
#include "convert/prune_device.h"
#include "spmm/launch.h"

namespace fspmm {
namespace {

// Entries to zero out of n for this sparsity (round half to even), as fspmm_prune_host counts them.
int64_t prune_count(double sparsity, int64_t n) {
    return static_cast<int64_t>(std::nearbyint(sparsity * static_cast<double>(n)));
}

// Checks of the workspace for an M x K matrix pruned with `scope`.
void require_prune_workspace(const void* workspace, size_t workspace_bytes, int64_t M, int64_t K, int scope) {
    const size_t need = prune_workspace_bytes(M, K, scope);
    if (need == 0) return;
    require_pointer(workspace, "workspace",
                    "device memory of fspmm_prune_workspace_size bytes (tensor scope needs a workspace)");
    require_aligned16(workspace, "workspace");
    FSPMM_REQUIRE(workspace_bytes >= need, "workspace too small: need " + std::to_string(need) + " bytes, got " +
                                               std::to_string(workspace_bytes) + " (ask fspmm_prune_workspace_size)");
}

}  // namespace
}  // namespace fspmm

using namespace fspmm;

extern "C" FSPMM_API fspmm_status_t fspmm_prune_workspace_size(int64_t M, int64_t K, fspmm_prune_scope_t scope,
                                                               size_t* bytes) {
    return guard("fspmm_prune_workspace_size", [&] {
        const int sc = enum_value(scope);
        require_dimension(M, "M", "rows of W, out features");
        require_dimension(K, "K", "columns of W, in features");
        require_scope(sc);
        require_pointer(bytes, "bytes", "a pointer to a size_t to receive the workspace size");
        *bytes = prune_workspace_bytes(M, K, sc);
        return FSPMM_OK;
    });
}

extern "C" FSPMM_API fspmm_status_t fspmm_prune(void* dense, int64_t M, int64_t K, int64_t ld, fspmm_dtype_t dtype,
                                                double sparsity, fspmm_prune_scope_t scope, void* workspace,
                                                size_t workspace_bytes, void* stream) {
    return guard("fspmm_prune", [&] {
        const int dt = enum_value(dtype), sc = enum_value(scope);
        require_matrix(dense, M, K, ld, dt);
        require_sparsity(sparsity);
        require_scope(sc);
        require_prune_workspace(workspace, workspace_bytes, M, K, sc);
        const int device = current_device();
        const int64_t k = prune_count(sparsity, sc == FSPMM_PRUNE_ROW ? K : M * K);
        launch_prune(static_cast<uint16_t*>(dense), M, K, ld, sc, k, workspace, static_cast<cudaStream_t>(stream),
                     device);
        return FSPMM_OK;
    });
}
