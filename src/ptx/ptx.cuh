// Tiny inline-PTX wrappers used by the kernels. One comment each; fragment layouts follow the PTX ISA
// (mma.m16n8k16 with .row.col, ldmatrix .x2/.x4, cp.async.cg with zero fill).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

namespace fspmm {
namespace ptx {

// A operand of m16n8k16: four 8x8 quarters (a0 rows 0-7/k 0-7, a1 rows 8-15/k 0-7, a2 rows 0-7/k 8-15,
// a3 rows 8-15/k 8-15); lane L holds row-major elements 2L, 2L+1 of each quarter, two 16-bit values a register.
struct FragA {
    uint32_t x[4];
};
// B operand (k16 x n8, "col" layout = x[n][k] row-major): b0 k 0-7, b1 k 8-15; lane L holds n = L/4, k = 2(L%4), +1.
struct FragB {
    uint32_t x[2];
};
// Accumulator (m16 x n8, fp32): c0,c1 at (row L/4, col 2(L%4), +1), c2,c3 at row L/4 + 8.
struct FragC {
    float x[4] = {0.f, 0.f, 0.f, 0.f};
};

// 32-bit shared-state-space address of a generic pointer to shared memory.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// D = A*B + D on Tensor Cores, fp16 inputs, fp32 accumulate.
__device__ __forceinline__ void mma_f16(FragC& d, const FragA& a, const FragB& b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d.x[0]), "+f"(d.x[1]), "+f"(d.x[2]), "+f"(d.x[3])
        : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}

// D = A*B + D on Tensor Cores, bf16 inputs, fp32 accumulate.
__device__ __forceinline__ void mma_bf16(FragC& d, const FragA& a, const FragB& b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d.x[0]), "+f"(d.x[1]), "+f"(d.x[2]), "+f"(d.x[3])
        : "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3]), "r"(b.x[0]), "r"(b.x[1]));
}

// Four 8x8 b16 matrices from shared memory; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two 8x8 b16 matrices from shared memory; lanes 0-15 give the row addresses.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
}

// Asynchronous 16-byte global->shared copy bypassing L1; copies src_bytes (0 or 16) and zero-fills the rest.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, uint32_t src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// Make the mbarrier receive one arrival once all of this thread's earlier cp.async have completed
// (the arrival is not pre-counted: the barrier's expected count includes it).
__device__ __forceinline__ void cp_async_mbarrier_arrive_noinc(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}

// Close the group of cp.async issued so far by this thread.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Wait until at most N of this thread's cp.async groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Initialise an mbarrier in shared memory expecting `count` arrivals per phase.
__device__ __forceinline__ void mbarrier_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}

// Arrive on an mbarrier and add `bytes` to the transaction count the current phase waits for (sm_90).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

// Arrive on an mbarrier (release: this thread's earlier shared-memory accesses are ordered before it).
__device__ __forceinline__ void mbarrier_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Barrier among the kThreads consumer threads only (named barrier 1): the producer warp is not held.
template <int kThreads>
__device__ __forceinline__ void consumer_sync() {
    asm volatile("bar.sync 1, %0;\n" ::"n"(kThreads) : "memory");
}

// Spin until the mbarrier phase with the given parity has completed.
__device__ __forceinline__ void mbarrier_wait_parity(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n .reg .pred done;\n"
        "wait_%=:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        " @!done bra wait_%=;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

// Bulk copy of `bytes` (a multiple of 16, both addresses 16-byte aligned) global -> shared by the copy
// engine, completing as transactions on the mbarrier `bar` (sm_90).
__device__ __forceinline__ void bulk_copy_g2s(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}

// Tensor copy (TMA) of the 2-D box at coordinates (c0 innermost, c1) of the tensor map `map` into shared memory
// at dst, completing on the mbarrier bar (transaction bytes: the whole box; parts outside the tensor are zeros).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const void* map, int c0, int c1, uint32_t bar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(bar)
        : "memory");
}

// 16-byte store of zeros to shared memory.
__device__ __forceinline__ void st_shared_zero16(uint32_t addr) {
    asm volatile("st.shared.v4.u32 [%0], {%1,%1,%1,%1};\n" ::"r"(addr), "r"(0));
}

// 16-byte store of four registers to shared memory.
__device__ __forceinline__ void st_shared_v4(uint32_t addr, const uint32_t (&v)[4]) {
    asm volatile("st.shared.v4.u32 [%0], {%1,%2,%3,%4};\n" ::"r"(addr), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3]));
}

// Byte permute (prmt.b32): byte i of the result is byte (sel >> 4i) & 7 of the pair (a, b), taken as-is
// (selectors here never set the sign-replicate bit). Unlike __byte_perm, no masking of sel is emitted.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}

// 16-bit load from shared memory, zero-extended to 32 bits. Not volatile: callers order it after the data
// arrived through the address, which depends on loads made after the wait.
__device__ __forceinline__ uint32_t ld_shared_u16(uint32_t addr) {
    uint32_t d;
    asm("ld.shared.u16 %0, [%1];\n" : "=r"(d) : "r"(addr));
    return d;
}

// 16-bit store to shared memory (the low half of v).
__device__ __forceinline__ void st_shared_u16(uint32_t addr, uint32_t v) {
    asm volatile("st.shared.u16 [%0], %1;\n" ::"r"(addr), "h"(static_cast<unsigned short>(v)));
}

// ---- sm_90a warpgroup MMA (wgmma): B from shared memory, A from registers or shared memory -------------
// Descriptor of a K-major operand in shared memory with the 128-byte swizzle: rows of 128 bytes whose 16-byte
// chunk c of row r sits at chunk c ^ (r % 8), groups of eight rows 1024 bytes apart; the tile must be
// 1024-byte aligned, and a step of 16 elements along K adds 32 bytes to addr.
__device__ __forceinline__ uint64_t wgmma_desc_sw128(uint32_t addr) {
    return uint64_t((addr & 0x3FFFFu) >> 4) | uint64_t(1) << 16 | uint64_t(1024 >> 4) << 32 | uint64_t(1) << 62;
}

// Order this thread's register writes (A fragments, accumulators) before the warpgroup MMAs that follow.
__device__ __forceinline__ void wgmma_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

// Close the group of warpgroup MMAs issued so far.
__device__ __forceinline__ void wgmma_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Wait until at most N groups of warpgroup MMAs are pending (their registers and shared memory are free).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Programmatic dependent launch (sm_90): wait until the grids this one depends on in its stream have completed
// and their memory is visible (a no-op for a grid launched without the programmatic-serialization attribute).
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Programmatic dependent launch (sm_90): the next grid of the stream may start once every CTA of this one has
// called this (or exited); it still waits for this grid's completion in its own griddep_wait.
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Make this thread's view of shared memory written through the generic proxy (stores, cp.async) visible
// to the async proxy (wgmma operand reads, bulk copies) that it uses next.
__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// D[64 x N] += A[64 x 16] * B[16 x N] for the warpgroup (this warp: 16 rows of A and D), fp32 accumulate,
// B (x, K-major) by descriptor, N = 8, 16, 32 or 64. wgmma_<type>: A from registers (this warp's FragA);
// wgmma_ss_<type>: A (K-major, 64 rows) by descriptor too. d holds N / 8 fragments, in the per-warp layout of
// mma.m16n8k16's accumulators.
#define FSPMM_D(j) "+f"(d[j].x[0]), "+f"(d[j].x[1]), "+f"(d[j].x[2]), "+f"(d[j].x[3])
#define FSPMM_A "r"(a.x[0]), "r"(a.x[1]), "r"(a.x[2]), "r"(a.x[3])
#define FSPMM_D1 FSPMM_D(0)
#define FSPMM_D2 FSPMM_D1, FSPMM_D(1)
#define FSPMM_D4 FSPMM_D2, FSPMM_D(2), FSPMM_D(3)
#define FSPMM_D8 FSPMM_D4, FSPMM_D(4), FSPMM_D(5), FSPMM_D(6), FSPMM_D(7)
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FSPMM_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define FSPMM_WGMMA_ASM(...) __trap()
#endif
// One N: FRAGS fragments, REGS the asm list of the N / 2 accumulators, RS / SS the operand numbers after them.
#define FSPMM_WGMMA_N(TYPE, N, FRAGS, REGS, RS, SS)                                                        \
    __device__ __forceinline__ void wgmma_##TYPE(FragC(&d)[FRAGS], const FragA& a, uint64_t desc_b) {      \
        FSPMM_WGMMA_ASM("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TYPE "." #TYPE " " REGS ", " RS \
                        ", 1, 1, 1, 0;\n" : FSPMM_D##FRAGS : FSPMM_A,                                      \
                        "l"(desc_b) : "memory");                                                           \
    }                                                                                                      \
    __device__ __forceinline__ void wgmma_ss_##TYPE(FragC(&d)[FRAGS], uint64_t desc_a, uint64_t desc_b) {  \
        FSPMM_WGMMA_ASM("wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." #TYPE "." #TYPE " " REGS ", " SS \
                        ", 1, 1, 1, 0, 0;\n" : FSPMM_D##FRAGS : "l"(desc_a),                               \
                        "l"(desc_b) : "memory");                                                           \
    }
// Accumulator lists of 1, 2, 4 and 8 fragments.
#define FSPMM_ACC1 "{%0,%1,%2,%3"
#define FSPMM_ACC2 FSPMM_ACC1 ",%4,%5,%6,%7"
#define FSPMM_ACC4 FSPMM_ACC2 ",%8,%9,%10,%11,%12,%13,%14,%15"
#define FSPMM_ACC8 FSPMM_ACC4 ",%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define FSPMM_WGMMA_TYPE(TYPE)                                                       \
    FSPMM_WGMMA_N(TYPE, 8, 1, FSPMM_ACC1 "}", "{%4,%5,%6,%7}, %8", "%4, %5")         \
    FSPMM_WGMMA_N(TYPE, 16, 2, FSPMM_ACC2 "}", "{%8,%9,%10,%11}, %12", "%8, %9")     \
    FSPMM_WGMMA_N(TYPE, 32, 4, FSPMM_ACC4 "}", "{%16,%17,%18,%19}, %20", "%16, %17") \
    FSPMM_WGMMA_N(TYPE, 64, 8, FSPMM_ACC8 "}", "{%32,%33,%34,%35}, %36", "%32, %33")
FSPMM_WGMMA_TYPE(f16)
FSPMM_WGMMA_TYPE(bf16)
#undef FSPMM_WGMMA_TYPE
#undef FSPMM_ACC8
#undef FSPMM_ACC4
#undef FSPMM_ACC2
#undef FSPMM_ACC1
#undef FSPMM_WGMMA_N
#undef FSPMM_WGMMA_ASM
#undef FSPMM_D8
#undef FSPMM_D4
#undef FSPMM_D2
#undef FSPMM_D1
#undef FSPMM_A
#undef FSPMM_D

}  // namespace ptx
}  // namespace fspmm
