// Magnitude pruning on the host: zero the entries of smallest |value|, exactly round(sparsity * n) of them
// per row or per matrix. Magnitude order is the order of (bits & 0x7FFF), which for fp16 and bf16 sorts
// zeros first and NaN after +Inf; ties go to the lower position (row-major), so the result is deterministic.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "common/parallel.h"
#include "format/host_formats.h"

namespace fspmm {
namespace {

constexpr int kMagnitudes = 1 << 15;

inline uint32_t magnitude(uint16_t bits) { return bits & 0x7FFFu; }

// Entries to zero out of n for this sparsity (round half to even).
int64_t prune_count(double sparsity, int64_t n) {
    return static_cast<int64_t>(std::nearbyint(sparsity * static_cast<double>(n)));
}

// Each row: the k smallest keys (magnitude, column) are zeroed.
void prune_rows(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k) {
    if (k <= 0) return;
    parallel_for(M, 16, [&](int64_t r0, int64_t r1) {
        std::vector<uint64_t> keys(static_cast<size_t>(K));
        for (int64_t r = r0; r < r1; ++r) {
            uint16_t* row = w + r * ld;
            if (k >= K) {
                std::fill(row, row + K, uint16_t(0));
                continue;
            }
            for (int64_t c = 0; c < K; ++c) keys[c] = (uint64_t(magnitude(row[c])) << 32) | uint64_t(c);
            std::nth_element(keys.begin(), keys.begin() + k, keys.end());
            const uint64_t threshold = keys[k];  // the smallest key that stays
            for (int64_t c = 0; c < K; ++c)
                if (((uint64_t(magnitude(row[c])) << 32) | uint64_t(c)) < threshold) row[c] = 0;
        }
    });
}

// Whole matrix: a magnitude histogram gives the threshold magnitude T; every entry below T is zeroed, and
// the first (k - below) entries equal to T in row-major order.
void prune_tensor(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k) {
    if (k <= 0) return;
    std::vector<int64_t> hist(kMagnitudes, 0);
    std::mutex merge;
    parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
        std::vector<int64_t> local(kMagnitudes, 0);
        for (int64_t r = r0; r < r1; ++r)
            for (int64_t c = 0; c < K; ++c) ++local[magnitude(w[r * ld + c])];
        std::lock_guard<std::mutex> lock(merge);
        for (int i = 0; i < kMagnitudes; ++i) hist[i] += local[i];
    });
    uint32_t T = 0;
    int64_t below = 0;
    while (T < kMagnitudes && below + hist[T] <= k) below += hist[T++];
    // Ties at T: rows are visited in order, so count the T entries of each row first.
    const int64_t ties = k - below;  // entries equal to T that go (0 when T == kMagnitudes: everything goes)
    std::vector<int64_t> row_ties(static_cast<size_t>(M), 0);
    if (ties > 0)
        parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r)
                for (int64_t c = 0; c < K; ++c) row_ties[r] += magnitude(w[r * ld + c]) == T;
        });
    std::vector<int64_t> ties_before(static_cast<size_t>(M), 0);  // T entries in the rows above
    for (int64_t r = 1; r < M; ++r) ties_before[r] = ties_before[r - 1] + row_ties[r - 1];
    parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            int64_t seen = ties_before[r];
            uint16_t* row = w + r * ld;
            for (int64_t c = 0; c < K; ++c) {
                const uint32_t m = magnitude(row[c]);
                if (m < T) {
                    row[c] = 0;
                } else if (m == T && seen < ties) {
                    row[c] = 0;
                    ++seen;
                }
            }
        }
    });
}

}  // namespace

void prune_host(uint16_t* w, int64_t M, int64_t K, int64_t ld, double sparsity, int scope) {
    if (scope == FSPMM_PRUNE_ROW)
        prune_rows(w, M, K, ld, prune_count(sparsity, K));
    else
        prune_tensor(w, M, K, ld, prune_count(sparsity, M * K));
}

}  // namespace fspmm
