// parallel_for on plain std::threads: a fresh set of workers per call, chunks handed out dynamically.
#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

namespace fspmm {
namespace {

// 0 = use every hardware thread.
std::atomic<int> g_threads{0};

// Chunks per worker: a few, so that uneven chunks (dense vs empty tiles) still balance.
constexpr int64_t kChunksPerThread = 4;

// Run the chunks of [0, n) handed out by `next`, recording each chunk's exception in `errors`.
void run_chunks(int64_t n, int64_t chunk, std::atomic<int64_t>& next, std::vector<std::exception_ptr>& errors,
                const std::function<void(int64_t, int64_t)>& body) {
    for (;;) {
        const int64_t index = next.fetch_add(1, std::memory_order_relaxed);
        const int64_t begin = index * chunk;
        if (begin >= n) return;
        try {
            body(begin, std::min(n, begin + chunk));
        } catch (...) {
            errors[static_cast<size_t>(index)] = std::current_exception();
        }
    }
}

}  // namespace

int host_threads() {
    const int configured = g_threads.load(std::memory_order_relaxed);
    if (configured > 0) return configured;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

void set_host_threads(int threads) { g_threads.store(threads < 0 ? 0 : threads, std::memory_order_relaxed); }

void parallel_for(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& body) {
    if (n <= 0) return;
    min_chunk = std::max<int64_t>(min_chunk, 1);
    const int64_t max_useful = (n + min_chunk - 1) / min_chunk;
    const int64_t threads = std::min<int64_t>(host_threads(), max_useful);
    if (threads <= 1) {
        body(0, n);
        return;
    }
    // Chunk size: at least min_chunk, about kChunksPerThread chunks per thread.
    const int64_t wanted_chunks = threads * kChunksPerThread;
    const int64_t chunk = std::max(min_chunk, (n + wanted_chunks - 1) / wanted_chunks);
    const int64_t chunks = (n + chunk - 1) / chunk;

    std::atomic<int64_t> next{0};
    std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(threads - 1));
    for (int64_t t = 1; t < threads; ++t) {
        try {
            workers.emplace_back(run_chunks, n, chunk, std::ref(next), std::ref(errors), std::cref(body));
        } catch (const std::system_error&) {
            break;  // cannot start more threads: the ones running (and this one) do the rest
        }
    }
    run_chunks(n, chunk, next, errors, body);
    for (std::thread& w : workers) w.join();
    // Rethrow the error of the lowest chunk, so that the reported failure does not depend on timing.
    for (const std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace fspmm
