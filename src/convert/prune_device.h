// Magnitude pruning on the GPU (the kernels behind fspmm_prune): the same selection as prune_host.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace fspmm {

// Workspace bytes for pruning an M x K matrix with `scope` (FSPMM_PRUNE_*); 0 for row scope.
size_t prune_workspace_bytes(int64_t M, int64_t K, int scope);

// Zero the `k` smallest keys (magnitude, position) of every row (row scope, 0 <= k <= K) or of the whole
// matrix (tensor scope, 0 <= k <= M * K) of the device matrix `dense`, ordered on `stream` on `device`.
// Arguments are already validated; `workspace` holds prune_workspace_bytes(M, K, scope) bytes, 16-byte
// aligned. Raises FSPMM_ERR_CUDA if a launch fails.
void launch_prune(uint16_t* dense, int64_t M, int64_t K, int64_t ld, int scope, int64_t k, void* workspace,
                  cudaStream_t stream, int device);

}  // namespace fspmm
