// Magnitude pruning on the host: zero the entries of smallest |value|, exactly round(sparsity * n) of them
// per row or per matrix. Magnitude order is the order of (bits & 0x7FFF), which for fp16 and bf16 sorts
// zeros first and NaN after +Inf; ties go to the lower position (row-major), so the result is deterministic.
// The threshold magnitude comes from a two-level radix select (a 256-bin histogram of m >> 7, then a 128-bin
// one of m & 127 among the entries of the selected bin), like the GPU's; rows shorter than kShortRow use a
// partial sort of their keys. About 8x (row scope) and 2.5x (tensor scope) the speed of the partial sort
// (docs/PERFORMANCE.md, "CPU pruning").
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

// The radix select's two levels: the high bits m >> kFineBits, then the low kFineBits among the entries of
// the high bin that holds the entry of rank k.
constexpr int kFineBits = 7;
constexpr int kMagnitudeBitsHigh = 15 - kFineBits;
constexpr int kCoarseBins = kMagnitudes >> kFineBits;
constexpr int kFineBins = 1 << kFineBits;

// The bin b of hist[0, bins) with below(b) <= k < below(b) + hist[b]; *below gets below(b).
template <typename Count>
int select_bin(const Count* hist, int bins, int64_t k, int64_t* below) {
    int64_t sum = 0;
    int b = 0;
    while (b < bins - 1 && sum + static_cast<int64_t>(hist[b]) <= k) sum += static_cast<int64_t>(hist[b++]);
    *below = sum;
    return b;
}

// Zero the entries of p[0, n) whose magnitude is below t (t <= 2^15): a loop the compiler vectorises
// (magnitudes fit a signed 16-bit compare).
void zero_under(uint16_t* p, int64_t n, uint32_t t) {
    if (t > 0x7FFFu) {
        std::fill(p, p + n, uint16_t(0));
        return;
    }
    const int16_t limit = static_cast<int16_t>(t);
    for (int64_t c = 0; c < n; ++c) p[c] = static_cast<int16_t>(p[c] & 0x7FFF) < limit ? uint16_t(0) : p[c];
}

// Zero the entries of row[0, K) below T, and its first `ties` entries equal to T: the last tie that goes is
// found first (T entries are few, so that is a cheap scan), then the entries up to it at or below T and those
// after it below T are zeroed.
void zero_below(uint16_t* row, int64_t K, uint32_t T, int64_t ties) {
    int64_t cut = 0;  // columns [0, cut) hold the ties that go
    for (int64_t c = 0; c < K && ties > 0; ++c)
        if (magnitude(row[c]) == T) {
            cut = c + 1;
            --ties;
        }
    zero_under(row, cut, T + 1);
    zero_under(row + cut, K - cut, T);
}

// Histogram counters of one level, (m >> kShift) & (2^kBits - 1) over the entries with
// m >> (kShift + kBits) == prefix: four interleaved sets, so that entries of one bin in a row do not wait on
// each other's increments, with 32-bit counts (add() at most 2^32 - 1 entries between flushes).
template <int kShift, int kBits>
struct Counts {
    static constexpr int kBins = 1 << kBits;
    uint32_t part[4][kBins] = {};
    // Count row[0, K), branch-free.
    void add(const uint16_t* row, int64_t K, uint32_t prefix) {
        auto one = [&](int j, uint16_t bits) {
            const uint32_t m = magnitude(bits);
            part[j][(m >> kShift) & (kBins - 1)] += (m >> (kShift + kBits)) == prefix;
        };
        int64_t c = 0;
        for (; c + 4 <= K; c += 4)
            for (int j = 0; j < 4; ++j) one(j, row[c + j]);
        for (; c < K; ++c) one(0, row[c]);
    }
    // Add the counts to hist[0, kBins) and clear them.
    template <typename Total>
    void flush(Total* hist) {
        for (int i = 0; i < kBins; ++i) {
            hist[i] += Total(part[0][i]) + part[1][i] + part[2][i] + part[3][i];
            part[0][i] = part[1][i] = part[2][i] = part[3][i] = 0;
        }
    }
};
using CoarseCounts = Counts<kFineBits, kMagnitudeBitsHigh>;
using FineCounts = Counts<0, kFineBits>;

// Rows shorter than this are pruned by a partial sort of their keys (the histograms' fixed cost per row
// would outweigh it).
constexpr int64_t kShortRow = 64;

// Each row: the k smallest keys (magnitude, column) are zeroed.
void prune_rows(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k) {
    if (k <= 0) return;
    parallel_for(M, 16, [&](int64_t r0, int64_t r1) {
        std::vector<uint64_t> keys(static_cast<size_t>(K < kShortRow ? K : 0));
        for (int64_t r = r0; r < r1; ++r) {
            uint16_t* row = w + r * ld;
            if (k >= K) {
                std::fill(row, row + K, uint16_t(0));
                continue;
            }
            if (K < kShortRow) {
                for (int64_t c = 0; c < K; ++c) keys[c] = (uint64_t(magnitude(row[c])) << 32) | uint64_t(c);
                std::nth_element(keys.begin(), keys.begin() + k, keys.end());
                const uint64_t threshold = keys[k];  // the smallest key that stays
                for (int64_t c = 0; c < K; ++c)
                    if (((uint64_t(magnitude(row[c])) << 32) | uint64_t(c)) < threshold) row[c] = 0;
                continue;
            }
            uint32_t coarse[kCoarseBins] = {}, fine[kFineBins] = {};  // K < 2^31 entries
            CoarseCounts coarse_counts;
            coarse_counts.add(row, K, 0);
            coarse_counts.flush(coarse);
            int64_t below = 0, fine_below = 0;
            const uint32_t high = static_cast<uint32_t>(select_bin(coarse, kCoarseBins, k, &below));
            FineCounts fine_counts;
            fine_counts.add(row, K, high);
            fine_counts.flush(fine);
            const uint32_t T =
                high << kFineBits | static_cast<uint32_t>(select_bin(fine, kFineBins, k - below, &fine_below));
            zero_below(row, K, T, k - below - fine_below);
        }
    });
}

// Whole matrix: the same two-level select over all rows gives the threshold magnitude T; every entry below T
// is zeroed, and the first (k - below) entries equal to T in row-major order.
void prune_tensor(uint16_t* w, int64_t M, int64_t K, int64_t ld, int64_t k) {
    if (k <= 0) return;
    if (k >= M * K) {
        for (int64_t r = 0; r < M; ++r) std::fill(w + r * ld, w + r * ld + K, uint16_t(0));
        return;
    }
    // One level's histogram over the matrix: each chunk of rows counts into its own counters (flushed into
    // 64-bit totals before they can wrap), then adds them up.
    std::mutex merge;
    auto histogram = [&](auto counts, uint32_t prefix, std::vector<int64_t>& hist) {
        hist.assign(decltype(counts)::kBins, 0);
        parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
            auto local = counts;
            std::vector<int64_t> totals(decltype(counts)::kBins, 0);
            int64_t pending = 0;
            for (int64_t r = r0; r < r1; ++r) {
                if (pending + K > (int64_t{1} << 32) - 1) {
                    local.flush(totals.data());
                    pending = 0;
                }
                local.add(w + r * ld, K, prefix);
                pending += K;
            }
            local.flush(totals.data());
            std::lock_guard<std::mutex> lock(merge);
            for (size_t i = 0; i < totals.size(); ++i) hist[i] += totals[i];
        });
    };
    std::vector<int64_t> hist;
    histogram(CoarseCounts{}, 0, hist);
    int64_t below = 0, fine_below = 0;
    const uint32_t high = static_cast<uint32_t>(select_bin(hist.data(), kCoarseBins, k, &below));
    histogram(FineCounts{}, high, hist);
    const uint32_t T =
        high << kFineBits | static_cast<uint32_t>(select_bin(hist.data(), kFineBins, k - below, &fine_below));
    const int64_t ties = k - below - fine_below;  // entries equal to T that go
    // Ties at T go in row-major order: count the T entries of each row first.
    std::vector<int64_t> ties_before(static_cast<size_t>(M) + 1, 0);  // T entries in the rows above
    if (ties > 0) {
        parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
                const uint16_t* row = w + r * ld;
                int64_t n = 0;
                for (int64_t c = 0; c < K; ++c) n += magnitude(row[c]) == T;
                ties_before[r + 1] = n;
            }
        });
        for (int64_t r = 0; r < M; ++r) ties_before[r + 1] += ties_before[r];
    }
    parallel_for(M, 64, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) zero_below(w + r * ld, K, T, std::max<int64_t>(0, ties - ties_before[r]));
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
