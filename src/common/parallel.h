// A small thread pool-free parallel loop for the host (CPU) functions.
#pragma once
#include <stdint.h>

#include <functional>

namespace fspmm {

// Threads the host functions may use (fspmm_set_host_threads; 0 = hardware concurrency).
int host_threads();
void set_host_threads(int threads);

// Call body(begin, end) on disjoint chunks covering [0, n), on up to host_threads() threads.
// Exceptions thrown by body are rethrown (the first one) on the calling thread after all chunks end.
void parallel_for(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& body);

}  // namespace fspmm
