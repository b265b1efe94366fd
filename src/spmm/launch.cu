// Tile configuration, split-K heuristic and kernel dispatch for fspmm_linear.
#include "spmm/launch.h"

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common/error.h"
#include "format/layout.h"
#include "spmm/gemv.h"
#include "spmm/params.h"
#include "spmm/stream.h"
#include "spmm/variants.h"

namespace fspmm {

void check_cuda(cudaError_t err, const char* what) {
    if (err == cudaSuccess) return;
    const std::string msg =
        std::string(what) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
        raise(FSPMM_ERR_NO_DEVICE, msg + "; a CUDA device and driver are needed for this function");
    raise(FSPMM_ERR_CUDA, msg);
}

int current_device() {
    int device = -1;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    int count = 0;
    check_cuda(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
    if (count == 0) raise(FSPMM_ERR_NO_DEVICE, "no CUDA device is visible");
    return device;
}

DeviceScope::DeviceScope(int device) {
    int current = -1;
    check_cuda(cudaGetDevice(&current), "cudaGetDevice");
    if (current == device) return;
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    previous_ = current;
}

DeviceScope::~DeviceScope() {
    if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

namespace {

// Bitmap densities at which the decoders change (see kernel_id; measured on H100, docs/PERFORMANCE.md).
constexpr double kDirectDensity = 0.02;  // above: direct; at or below (98 % sparsity and more): scatter

// The kernel for (kernel id, dtype, n_tile): one case per row of variants.h.
KernelHandle select_kernel(int format, int dtype, int n_tile) {
#define FSPMM_CASE(F, D, Decoder, Dtype)               \
    if (format == F && dtype == D) switch (n_tile) {   \
            case 8: return kernel_handle<F, D, 8>();   \
            case 16: return kernel_handle<F, D, 16>(); \
            case 32: return kernel_handle<F, D, 32>(); \
            default: return kernel_handle<F, D, 64>(); \
        }
#define FSPMM_ROW(name) FSPMM_VARIANT(FSPMM_CASE, name)
    FSPMM_SPMM_VARIANTS(FSPMM_ROW)
#undef FSPMM_ROW
#undef FSPMM_CASE
    raise(FSPMM_ERR_INTERNAL, "no kernel for this format and dtype");
}

// Split-K that finishes soonest under a simple model: CTAs run in waves of `slots`; a wave costs the K tiles one
// of a CTA's `workers` walks (its K slice shared by them) plus a fixed `overhead` in tiles, splitting at all
// half a tile more, each split `per_split` tiles, and the last CTA's reduction `per_round_trip` tiles for each
// four slices it reads at once (epilogue.cuh, reduce). The streaming kernel: its kStreamWarps warps, one tile
// (a warp's pipeline fill) and 0.08 tiles per split, up to 256 (the split-count sweep on the H200,
// docs/EXPERIMENTS.md: 1024 x 8192 runs 1.12-1.26x faster with 16 slices than with the 32 chosen without that
// term; within 3 % of the best fixed count on 16 sweeps); the pipelined kernel: pipelined_splits; the CUDA-core
// kernel: one worker and two tiles, up to 16 (plan_gemv).
int fastest_splits(int64_t ctas, int64_t tiles_k, int64_t slots, int64_t workers, int64_t overhead, int64_t most,
                   double per_split, double per_round_trip = 0.0) {
    int best = 1;
    double best_cost = 0;
    const int64_t max_splits = tiles_k < most ? tiles_k : most;
    for (int s = 1; s <= max_splits; ++s) {
        const int64_t per = ceil_div(tiles_k, s);
        if (int64_t(ceil_div(tiles_k, per)) != s) continue;  // same slicing as a smaller split count
        const int64_t waves = ceil_div(ctas * s, slots);
        const double cost = double(waves) * double(ceil_div(per, workers) + overhead) +
                            (s > 1 ? 0.5 + per_round_trip * double(ceil_div(s, kReduceDepth)) : 0.0) + per_split * s;
        if (s == 1 || cost < best_cost) {
            best = s;
            best_cost = cost;
        }
    }
    return best;
}

// Which kernel runs a blob. Bitmap blobs have three decoders: "direct" builds the mma fragments in registers
// without a shared tile (fixed work per element), "scatter" stores each nonzero into a zeroed tile (work per
// nonzero, the faster one from about 98 % sparsity on), "rows" expands every 8-element row in registers and
// stores it whole into a dense tile (never the fastest since the direct decoder's rewrite: kept for
// comparison). `decoder` (FSPMM_DECODER_*) overrides the density rule.
int kernel_id(const fspmm_header_t& h, int decoder) {
    if (h.format != FSPMM_FORMAT_BITMAP) {
        FSPMM_REQUIRE(decoder == FSPMM_DECODER_AUTO,
                      "a decoder choice applies to bitmap matrices only; this one is tiled_csl: pass "
                      "FSPMM_DECODER_AUTO");
        return h.format;
    }
    if (decoder == FSPMM_DECODER_DIRECT) return kBitmapDirect;
    if (decoder == FSPMM_DECODER_ROWS) {
#if defined(FSPMM_NO_ROWS_DECODER)
        raise(FSPMM_ERR_NOT_SUPPORTED,
              "this build of flashspmm leaves the rows decoder out (configured with -DFSPMM_ROWS_DECODER=OFF): pass "
              "FSPMM_DECODER_AUTO, DIRECT or SCATTER, or rebuild with -DFSPMM_ROWS_DECODER=ON");
#endif
        return kBitmapRows;
    }
    if (decoder == FSPMM_DECODER_SCATTER) return FSPMM_FORMAT_BITMAP;
    const double density = double(h.nnz) / (double(h.M) * double(h.K));
    return density > kDirectDensity ? kBitmapDirect : FSPMM_FORMAT_BITMAP;
}

// What a kernel needs to be planned on a device, queried once per (device, kernel): its attributes, the
// dynamic shared memory it may use there (its limit is raised to that maximum the first time, so any later
// plan fits) and the SM count. Raises if the device is older than sm_80. The CUDA queries cost more than a
// launch, and every call plans twice (workspace query, then launch).
struct KernelInfo {
    cudaFuncAttributes attr;
    int max_smem;
    int sms;
};
const KernelInfo& kernel_info(int device, const void* func) {
    static std::mutex mutex;
    static std::map<std::pair<int, const void*>, KernelInfo> cache;  // entries are never changed or erased
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find({device, func});
    if (it != cache.end()) return it->second;
    KernelInfo info{};
    int major = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), "cudaDeviceGetAttribute");
    if (major < 8)
        raise(FSPMM_ERR_NOT_SUPPORTED, "flashspmm's kernels need a GPU of compute capability 8.0 or newer (Ampere+)");
    check_cuda(cudaDeviceGetAttribute(&info.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
               "cudaDeviceGetAttribute");
    check_cuda(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check_cuda(cudaFuncGetAttributes(&info.attr, func), "cudaFuncGetAttributes");
    info.max_smem -= int(info.attr.sharedSizeBytes);  // the kernel's static shared memory counts against the limit
    check_cuda(cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, info.max_smem),
               "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    return cache.emplace(std::make_pair(device, func), info).first->second;
}

}  // namespace

// Described in launch.h; the conversions' persistent grids use it too.
int64_t resident_ctas(int device, const void* func, int threads, size_t smem) {
    const KernelInfo& info = kernel_info(device, func);
    if (smem > size_t(info.max_smem))
        raise(FSPMM_ERR_NOT_SUPPORTED, "this matrix needs " + std::to_string(smem) +
                                           " bytes of shared memory per block; the device allows " +
                                           std::to_string(info.max_smem));
    static std::mutex mutex;
    static std::map<std::tuple<int, const void*, size_t>, int64_t> cache;
    std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_tuple(device, func, smem);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    int blocks = 0;
    check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, func, threads, smem),
               "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (blocks < 1) raise(FSPMM_ERR_NOT_SUPPORTED, "the kernel does not fit on this device's multiprocessors");
    const int64_t slots = int64_t(info.sms) * blocks;
    cache.emplace(key, slots);
    return slots;
}

namespace {

// Whether `func` runs on `device` as code compiled for compute capability 9.0 or newer (its PTX version): the
// kernels' shared-memory layout depends on it (params.h, stages_for).
bool runs_sm90_pipeline(int device, const void* func) { return kernel_info(device, func).attr.ptxVersion >= 90; }

// Shared-memory bytes reserved per compressed tile: the largest tile of the blob, rounded to 16.
uint32_t slot_bytes_of(const fspmm_header_t& h) {
    return uint32_t(round_up(h.max_tile_bytes > 16 ? h.max_tile_bytes : 16, 16));
}

// K tiles per split and workspace of a plan whose m_blocks and n_blocks are set, for `splits` K slices (given
// or chosen by the kernel's model) within what a launch allows; a CTA handles at most max_k_tiles K tiles.
void plan_splits(LinearPlan& plan, const fspmm_header_t& h, int64_t N, int splits, int max_k_tiles) {
    const int64_t min_splits = ceil_div(h.tiles_k, max_k_tiles);
    if (splits < min_splits) splits = int(min_splits);
    if (splits > h.tiles_k) splits = int(h.tiles_k);
    if (splits > 65535) splits = 65535;
    plan.k_tiles_per_split = int(ceil_div(h.tiles_k, splits));
    plan.splits = int(ceil_div(h.tiles_k, plan.k_tiles_per_split));  // no empty slices
    plan.counters_bytes = plan.splits > 1 ? round_up(uint64_t(plan.m_blocks * plan.n_blocks) * 8, 256) : 0;
    plan.workspace = linear_workspace_bytes(h, plan, N);
}

// Tiled-CSL density at or below which N tokens run the CUDA-core kernel (gemv.cu): there the work per stored
// value beats expanding tiles for the Tensor Cores. One token (H200, 2026-12-02, docs/PERFORMANCE.md, eight
// shapes): 1.1-1.6x the Tensor Core kernel at 20-30 % density, but one 4 % slower at 30 %; 0.7-0.9x at 50 %.
// Two to 16 tokens (H200, 2026-12-04, both kernels with their planned split counts, the 16 model projection
// shapes at 5-30 % density; docs/PERFORMANCE.md): two tokens (a tile of two) 1.09-1.22x at 20 %, 1.03x on
// average at 25 %, 1.00x at 30 %; three and four (a tile of four) 1.05-1.14x at 10 %, 0.87-0.99x at 20 %;
// five to 16 (blocks of four, each reading the whole matrix) lose on large matrices (0.22-0.86x even at 5 %),
// except on 4096 x 4096 up to 8 tokens at 5 % (1.04-1.07x; 0.90-0.96x at 10 %). Matrices of at most 1024 rows,
// where the Tensor Core kernel is bound by latency: 1.07-1.33x at 30 % up to four tokens, 1.01-1.16x at 20 % up
// to eight, 1.10-1.26x at 10 % for 12 tokens (0.78-0.90x at 20 %), 0.93-1.09x at 10 % for 16. The limits lie
// between the measured densities, so rounding of a matrix's exact density does not decide the kernel.
double gemv_density_limit(const fspmm_header_t& h, int64_t N) {
    if (N == 1) return 0.30;
    if (h.M <= 1024) return N <= kGemvMaxN ? 0.32 : N <= 8 ? 0.22 : 0.15;
    if (N == 2) return 0.27;
    if (N <= kGemvMaxN) return 0.15;
    return N <= 8 && h.M * h.K <= int64_t{4096} * 4096 ? 0.075 : 0.0;
}

// Whether this call runs the CUDA-core kernel: one token in either format, 2..kGemvMaxTokens for Tiled-CSL.
// FSPMM_KERNEL_CUDA_CORE asks for it where it exists (other N run on the Tensor Cores), FSPMM_KERNEL_TENSOR_CORE
// never uses it.
bool use_gemv(const fspmm_header_t& h, int64_t N, int kernel) {
    if (kernel != FSPMM_KERNEL_AUTO && kernel != FSPMM_KERNEL_CUDA_CORE) return false;
    const bool exists = N == 1 || (h.format == FSPMM_FORMAT_TILED_CSL && N <= kGemvMaxTokens);
    if (!exists || kernel == FSPMM_KERNEL_CUDA_CORE) return exists;
    const double density = double(h.nnz) / (double(h.M) * double(h.K));
    return h.format == FSPMM_FORMAT_TILED_CSL && density <= gemv_density_limit(h, N);
}

// Plan of the CUDA-core kernel: a CTA per 64-row stripe, K slice and block of n_tile tokens.
LinearPlan plan_gemv(const fspmm_header_t& h, int64_t N, int split_k, int device) {
    LinearPlan plan{};
    plan.kernel = kGemv;
    plan.n_tile = gemv_token_tile(h.format, N);
    plan.m_blocks = h.tiles_m;
    plan.n_blocks = int64_t(ceil_div(uint64_t(N), uint64_t(plan.n_tile)));
    FSPMM_REQUIRE(plan.m_blocks <= 0x7FFFFFFF, "M is too large");
    plan.slot_bytes = slot_bytes_of(h);
    plan.smem = gemv_smem_bytes(plan.slot_bytes, plan.n_tile);
    const void* func = gemv_kernel_func(h.format, h.dtype, plan.n_tile);
    // At most 16 slices: more measured slower everywhere (H200, 2026-12-04, a split sweep of 16 shapes at
    // 80-95 %, 1-8 tokens: 1024 x 4096 at 90 %, one token, 64 slices 6.8 µs, 16 slices 5.4 µs; 1.00-1.45x on
    // every matrix where the model chose more, 4.5 -> 2.4 % from the fastest count on average).
    constexpr int kGemvMostSplits = 16;
    const int64_t slots = resident_ctas(device, func, kGemvThreads, plan.smem);
    const int splits =
        split_k > 0 ? split_k
                    : fastest_splits(plan.m_blocks * plan.n_blocks, h.tiles_k, slots, 1, 2, kGemvMostSplits, 0.0);
    plan_splits(plan, h, N, splits, kGemvMaxKTiles);
    return plan;
}

// Whether this call runs the warp-streaming kernel (stream.cu: bitmap, direct decoder, N <= 16).
// FSPMM_KERNEL_STREAMING asks for it up to 16 tokens (larger N run on the pipelined kernel); AUTO takes it
// for bitmap matrices the direct decoder would run where it measured faster than the pipelined kernel (H200,
// 2026-12-02, docs/PERFORMANCE.md, N = 1 and 8 at 50 and 70 %): matrices of at most 2048 rows (1024 x 4096 /
// 8192: 1.8-2.5x the pipelined kernel), of at most 4096 rows up to 8 tokens (4096 x 4096 / 11008 / 14336:
// 1.01-1.33x), and for one token, matrices of at least 5120 columns and at most 72 M elements where the
// density is at most 35 % or the matrix at most 27 M elements (5120 x 5120: 1.10-1.12x; 5120 x 13824,
// 8192 x 8192, 13824 x 5120 at 70 %: 1.07-1.11x; not 11008 / 14336 x 4096 at 70 %: 0.88-0.92x, nor those at
// 50 %: 0.98-1.02x). Larger matrices fill the GPU with the pipelined kernel's CTAs, which run up to 38 %
// faster there.
constexpr int64_t kStreamAutoMaxN = 16;
bool stream_is_faster(const fspmm_header_t& h, int64_t N) {
    const double elements = double(h.M) * double(h.K), density = double(h.nnz) / elements;
    if (h.M <= 2048) return true;
    if (h.M <= 4096) return N <= 8;
    return N == 1 && h.K >= 5120 && elements <= 72e6 && (density <= 0.35 || elements <= 27e6);
}
bool use_stream(const fspmm_header_t& h, int64_t N, const LinearOptions& options) {
    if (options.kernel == FSPMM_KERNEL_STREAMING) {
        if (h.format != FSPMM_FORMAT_BITMAP)
            raise(FSPMM_ERR_NOT_SUPPORTED,
                  "the streaming kernel reads bitmap matrices only; this one is tiled_csl: pass FSPMM_KERNEL_AUTO "
                  "or FSPMM_KERNEL_TENSOR_CORE");
        FSPMM_REQUIRE(options.decoder == FSPMM_DECODER_AUTO || options.decoder == FSPMM_DECODER_DIRECT,
                      "the streaming kernel runs the direct bitmap decoder: pass FSPMM_DECODER_AUTO or "
                      "FSPMM_DECODER_DIRECT with FSPMM_KERNEL_STREAMING");
        return N <= kStreamMaxNTile;
    }
    if (options.kernel != FSPMM_KERNEL_AUTO || h.format != FSPMM_FORMAT_BITMAP || N > kStreamAutoMaxN) return false;
    if (options.decoder != FSPMM_DECODER_AUTO && options.decoder != FSPMM_DECODER_DIRECT) return false;
    return N <= kStreamAutoMaxN && kernel_id(h, options.decoder) == kBitmapDirect && stream_is_faster(h, N);
}

// Plan of the streaming kernel: a CTA per 64-row stripe, K slice and block of 8 or 16 tokens.
LinearPlan plan_stream(const fspmm_header_t& h, int64_t N, int split_k, int device) {
    LinearPlan plan{};
    plan.kernel = kStream;
    plan.n_tile = N <= 8 ? 8 : 16;
    plan.m_blocks = h.tiles_m;
    plan.n_blocks = ceil_div(N, plan.n_tile);
    FSPMM_REQUIRE(plan.n_blocks <= 65535, "N is too large for one call");
    FSPMM_REQUIRE(plan.m_blocks <= 0x7FFFFFFF, "M is too large");
    plan.slot_bytes = slot_bytes_of(h);
    plan.smem = stream_smem_bytes(plan.slot_bytes, plan.n_tile);
    const void* func = stream_kernel_func(h.dtype, plan.n_tile);
    plan.sm90 = runs_sm90_pipeline(device, func);  // with programmatic dependent launch
    const int64_t slots = resident_ctas(device, func, kStreamThreads, plan.smem);
    const int splits =
        split_k > 0 ? split_k
                    : fastest_splits(plan.m_blocks * plan.n_blocks, h.tiles_k, slots, kStreamWarps, 1, 256, 0.08);
    plan_splits(plan, h, N, splits, kStreamMaxKTilesPerSplit);
    return plan;
}

// The driver's cuTensorMapEncodeTiled, or nullptr where the driver does not provide it.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
    static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult status{};
#if CUDART_VERSION >= 12050
        const cudaError_t err =
            cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &status);
#else
        const cudaError_t err = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &status);
#endif
        if (err != cudaSuccess || status != cudaDriverEntryPointSuccess || fn == nullptr) {
            (void)cudaGetLastError();  // not sticky: clear it, the kernels copy x without TMA
            return PFN_cuTensorMapEncodeTiled_v12000(nullptr);
        }
        return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }();
    return encode;
}

// x [N, K] (leading dimension ldx) as a 2-D tensor map whose box is one x tile (64 columns, n_tile rows, the
// 128-byte swizzle of the kernels' x tiles; zeros outside x). x must be 16-byte aligned and ldx % 8 == 0.
// False where the driver cannot encode the map: the kernels then copy x with cp.async.
bool encode_x_map(CUtensorMap& map, const void* x, int64_t ldx, int64_t N, int64_t K, int n_tile) {
    const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
    if (!encode) return false;
    const cuuint64_t dims[2] = {cuuint64_t(K), cuuint64_t(N)};
    const cuuint64_t strides[1] = {cuuint64_t(ldx) * 2};
    const cuuint32_t box[2] = {64, cuuint32_t(n_tile)};
    const cuuint32_t element_strides[2] = {1, 1};
    return encode(&map, CU_TENSOR_MAP_DATA_TYPE_UINT16, 2, const_cast<void*>(x), dims, strides, box, element_strides,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Split count of the pipelined kernel (fastest_splits), from a split-count sweep of the direct decoder on the
// H200 (docs/PERFORMANCE.md, 2026-12-04, fourth run: 16 shapes, 50 / 70 %, N = 1-64, 1-64 slices; 1 % slower
// than the fastest count on average, against 9.5 % for waves of every resident CTA and a fixed reduction cost;
// Tiled-CSL at 80 / 90 %: 2 % against 12 %):
//   * a wave holds at most four CTAs per SM: a fifth, where shared memory allows one (70 % sparsity up to 16
//     tokens), adds no throughput, so filling it costs a wave's fill and reduction for nothing (8192 x 8192 at
//     70 %: 8 slices 9-11 % faster than the 10 that fill five CTAs per SM);
//   * the last CTA's reduction is a chain of L2 round trips, half a tile each: one per four slices for each pass
//     of its threads over the output tile (1024 x 4096 at 32 tokens: 8 slices 2.3x faster than 64).
int pipelined_splits(const LinearPlan& plan, const fspmm_header_t& h, int64_t N, int threads, int64_t slots,
                     int64_t sms) {
    constexpr int64_t kBusyCtasPerSm = 4;
    const int64_t waves_of = std::min(slots, sms * kBusyCtasPerSm);
    const int64_t runs = (N < plan.n_tile ? N : plan.n_tile) * kCtaRows / 4;  // float4 runs of an output tile
    const int groups = threads == cta_threads(1) ? 1 : 2;  // 16-row groups per consumer warp (params.h)
    const int64_t passes = ceil_div(runs, int64_t(threads) * reduce_chunk(groups, plan.n_tile));
    return fastest_splits(plan.m_blocks * plan.n_blocks, h.tiles_k, waves_of, 1, 2, 64, 0.0, 0.5 * double(passes));
}

// Plan of the Tensor Core kernels.
LinearPlan plan_tensor_core(const fspmm_header_t& h, int64_t N, const LinearOptions& options, int device) {
    const int split_k = options.split_k;
    LinearPlan plan{};
    plan.n_tile = N <= 8 ? 8 : N <= 16 ? 16 : N <= 32 ? 32 : 64;
    plan.m_blocks = ceil_div(h.tiles_m, kStripes);
    plan.n_blocks = ceil_div(N, plan.n_tile);
    FSPMM_REQUIRE(plan.n_blocks <= 65535, "N is too large for one call (at most 65535 * 64 tokens); split x");
    FSPMM_REQUIRE(plan.m_blocks <= 0x7FFFFFFF, "M is too large");
    plan.slot_bytes = slot_bytes_of(h);
    plan.kernel = kernel_id(h, options.decoder);
    const KernelHandle k = select_kernel(plan.kernel, h.dtype, plan.n_tile);
    const bool dense = plan.kernel != kBitmapDirect;
    plan.sm90 = runs_sm90_pipeline(device, k.func);
    plan.smem = smem_bytes(plan.slot_bytes, plan.n_tile, dense, plan.sm90);

    const int64_t slots = resident_ctas(device, k.func, k.threads, plan.smem);
    const int splits =
        split_k > 0 ? split_k : pipelined_splits(plan, h, N, k.threads, slots, kernel_info(device, k.func).sms);
    plan_splits(plan, h, N, splits, kMaxKTilesPerSplit);
    return plan;
}

}  // namespace

size_t linear_workspace_bytes(const fspmm_header_t& h, const LinearPlan& plan, int64_t N) {
    if (plan.splits <= 1) return 0;
    return plan.counters_bytes + uint64_t(plan.splits) * uint64_t(N) * uint64_t(h.M) * 4;
}

int kernel_kind(const LinearPlan& plan) {
    return plan.kernel == kGemv     ? FSPMM_KERNEL_CUDA_CORE
           : plan.kernel == kStream ? FSPMM_KERNEL_STREAMING
                                    : FSPMM_KERNEL_TENSOR_CORE;
}

int decoder_kind(const LinearPlan& plan) {
    switch (plan.kernel) {
        case kBitmapDirect:
        case kStream: return FSPMM_DECODER_DIRECT;
        case kBitmapRows: return FSPMM_DECODER_ROWS;
        case FSPMM_FORMAT_BITMAP: return FSPMM_DECODER_SCATTER;
        default: return FSPMM_DECODER_AUTO;
    }
}

LinearPlan plan_linear(const fspmm_header_t& h, int64_t N, const LinearOptions& options, int device) {
    FSPMM_REQUIRE(N >= 1, "N (number of tokens) must be >= 1");
    const int split_k = options.split_k;
    FSPMM_REQUIRE(split_k >= 0, "split_k must be 0 (automatic) or a positive number of K slices");
    LinearPlan plan = use_gemv(h, N, options.kernel) ? plan_gemv(h, N, split_k, device)
                      : use_stream(h, N, options)    ? plan_stream(h, N, split_k, device)
                                                     : plan_tensor_core(h, N, options, device);
    return plan;
}

void run_linear(const fspmm_header_t& h, const LinearPlan& plan, const void* blob, const void* x, int64_t ldx,
                int64_t N, const void* bias, void* y, int64_t ldy, float alpha, float beta, void* workspace,
                cudaStream_t stream) {
    LinearParams p{};
    const uint8_t* base = static_cast<const uint8_t*>(blob);
    p.data = base + h.data_offset;
    p.offsets = reinterpret_cast<const uint64_t*>(base + h.offsets_offset);
    p.M = h.M;
    p.K = h.K;
    p.N = N;
    p.tiles_m = h.tiles_m;
    p.tiles_k = h.tiles_k;
    p.slot_bytes = plan.slot_bytes;
    p.x = static_cast<const uint16_t*>(x);
    p.ldx = ldx;
    const bool x_rows16 = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 8 == 0;  // 16-byte aligned rows
    p.x_vec = x_rows16 && h.K % 8 == 0;
    p.x_tma = x_rows16 && plan.sm90 && plan.kernel != kGemv && plan.kernel != kStream &&
              encode_x_map(p.x_map, x, ldx, N, h.K, plan.n_tile);
    p.bias = static_cast<const uint16_t*>(bias);
    p.y = static_cast<uint16_t*>(y);
    p.ldy = ldy;
    p.alpha = alpha;
    p.beta = beta;
    p.splits = plan.splits;
    p.k_tiles_per_split = plan.k_tiles_per_split;
    if (plan.splits > 1) {
        // Counters first, at a fixed place for every N of a plan; they check themselves (epilogue.cuh), so
        // whatever the workspace holds needs no memset.
        p.counters = static_cast<unsigned long long*>(workspace);
        p.partial = reinterpret_cast<float*>(static_cast<uint8_t*>(workspace) + plan.counters_bytes);
    }
    const dim3 grid(unsigned(plan.m_blocks), unsigned(plan.splits), unsigned(plan.n_blocks));
    const cudaError_t err = plan.kernel == kGemv ? launch_gemv(h.format, h.dtype, plan.n_tile, p, grid, stream)
                            : plan.kernel == kStream
                                ? launch_stream(h.dtype, plan.n_tile, p, grid, plan.smem, plan.sm90, stream)
                                : select_kernel(plan.kernel, h.dtype, plan.n_tile).launch(p, grid, plan.smem, stream);
    if (err != cudaSuccess) {
        const std::string what = "SpMM kernel launch (kernel " + std::to_string(plan.kernel) + ", N tile " +
                                 std::to_string(plan.n_tile) + ", grid " + std::to_string(grid.x) + "x" +
                                 std::to_string(grid.y) + "x" + std::to_string(grid.z) + ", " +
                                 std::to_string(plan.smem) + " B shared memory)";
        check_cuda(err, what.c_str());
    }
}

}  // namespace fspmm
