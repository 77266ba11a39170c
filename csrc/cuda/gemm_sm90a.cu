// Hopper (sm_90a) int8 GEMM: TMA bulk copies + wgmma, warp-specialized and persistent.
//
//   out[m, n] = epilogue(sum_k a[m, k] * w[n, k]),  A [M, K] int8 (row stride lda), W [N, K] int8.
//
// Layout choices (all must agree, or the product is silently wrong):
// - CTA tile 128 x BN x 128 (BN = 256, or 128 when 256-wide tiles leave SMs idle, or 96 or
//   64 at small M, where the number of tiles decides how many SMs stream weights). A K tile of
//   128 int8 is exactly one 128-byte swizzle row, so each operand tile in shared memory is
//   rows x 128 B, written by one TMA box {128 (K), rows} with CU_TENSOR_MAP_SWIZZLE_128B: the
//   16-byte chunk c of row r lands at chunk c ^ (r % 8) inside each 1024-byte, 8-row atom.
//   Tiles start on 1024-byte boundaries, so the wgmma descriptors need no base offset.
// - wgmma descriptors (K-major, 128B swizzle): start address >> 4, leading byte offset unused
//   for swizzled K-major (set to 1), stride byte offset 1024 B (8 rows x 128 B to the next
//   8-row atom), layout bits 62-63 = 1. Stepping K by 32 (one m64nNk32) inside the 128-byte
//   row adds 32 B to the start address; the hardware applies the same address-based XOR.
// - Tails: M, N and K need not be tile multiples. TMA zero-fills rows and K columns outside
//   the tensor (and still counts the full box towards the mbarrier transaction bytes), so the
//   zeros add nothing to the sums; the epilogue bounds-checks every store. The last row tile
//   loads through a second tensor map whose box is only the rows that exist (rounded up to 8):
//   TMA's zero fill of a mostly empty 128-row box cost more than the copy itself. Tile rows
//   past the box then hold stale shared memory; they only reach accumulator rows past M,
//   which are never stored.
// - Warp roles (384 threads): warpgroup 0 is the producer (setmaxnreg drops it to 40
//   registers): one thread issues the TMA copies, warp 1 computes each tile's per-column
//   epilogue terms into shared memory while the main loop runs. Warpgroups 1 and 2 are the
//   consumers (232 registers), each owning 64 rows of the tile and issuing m64nBNk32 with
//   both operands in shared memory ("cooperative": one tile, split by rows). The int32
//   accumulator is BN/2 registers per consumer thread (128 for BN = 256). When M <= 64 the
//   second consumer warpgroup has no rows and skips to the end (barrier counts follow).
// - Accumulator fragment (per warp w of a consumer warpgroup, lane t): acc[4j + 0/1] hold
//   row 16w + t/4, columns 8j + 2(t%4) + 0/1; acc[4j + 2/3] the same columns of row + 8.
// - Pipeline: kStages shared-memory stages, each with a "full" mbarrier (1 arrival + TMA
//   transaction bytes) and an "empty" mbarrier (one arrival per consumer warp once its wgmma
//   reading that stage has retired, via wgmma.wait_group 1). Both sides walk the stages in
//   the same order with a phase bit that flips at each wrap.
// - Persistent grid: one CTA per SM loops over tiles in a grouped order (kGroupM row tiles
//   share each column sweep) so the A rows and W columns in flight stay in L2. The producer
//   runs ahead into the next tile while the consumers run the epilogue.
//   Tried and left out: clusters of 2 CTAs sharing one operand tile through TMA multicast
//   (pairs of row tiles sharing each W tile at large M, pairs of column tiles sharing each A
//   tile at small M). Bit-identical, but no faster on an H200 (raw 8192x28672x8192: 2987 us
//   against 2901 without; 4096x4096 M = 256: 14.8 against 13.7): L2 traffic does not seem
//   to be what limits this kernel. Tried again with the TMA-store epilogue (pairs of row tiles,
//   each CTA loading half of every W tile for both, a stage freed by both CTAs' consumers
//   through remote mbarrier arrivals): bit-identical, and 901 against 1643 TOP/s (H100,
//   8192x28672x8192). Nsight Compute (H200, 4096x28672x8192): tensor pipe 58% busy against
//   90% without, warps stalled on memory barriers for 36% of their cycles (the remote arrivals
//   are cluster-scope releases; a cheaper arrival was not tried: with the tensor pipe 90% busy
//   without multicast, it has little to gain).
//   Nsight Compute on this kernel as it is (H200, raw 4096x28672x8192, fp16 out): tensor pipe
//   90% busy, L2 55%, DRAM 16%. The main loop is bound by the tensor cores; the other 10% is
//   the epilogue and the pipeline's fill, and a card's sustained clock sets the rest (the same
//   call ran at 1522 and 1643 TOP/s on two H100s).
//   Also tried and left out: ping-pong consumers (each warpgroup a whole 64 x 256 unit, its
//   epilogue under the other warpgroup's main loop, the two main loops taking turns through
//   an mbarrier pair). Bit-identical, but 926 against 1522 TOP/s (H100, 8192x28672x8192) and
//   slower at every large shape: one warpgroup's wgmma stream keeps the tensor cores less busy
//   than two at once, and 64-row units load 40 KB per 64 x 256 x 128 step against 48 KB per
//   128 x 256 x 128.
//   Also tried and left out: a quantizing form for matmul at 3 <= M <= 64 (one cooperative
//   launch: each CTA first quantized one row of x into global codes with quantize_rows' code,
//   arrived on a one-way grid barrier built on the cooperative launch's workspace word, and
//   loaded its first W tiles; the TMA thread waited for the barrier before its first A
//   tile). Bit-identical to quantize kernel + GEMM, and slower on every LLM shape (H200, CUDA
//   graph of back-to-back calls, us per call, against the two kernels: 4096x4096 M = 4 10.6
//   / 8.6, M = 64 11.1 / 9.3; 14336x4096 M = 4 22.6 / 21.3, M = 64 27.3 / 25.9; 4096x14336
//   M = 4 20.2 / 19.1, M = 64 21.7 / 20.3). Timestamps (%globaltimer, 4096x4096 M = 4): the
//   rows were written 1.5 us after the start, the release arrivals took ~1.3 us more, and the
//   TMA thread saw the barrier flip at ~3 us, all on the critical path; with PDL the two-kernel
//   call hides most of the quantizer (this GEMM's launch and its first W tiles overlap it).
//   Also tried and left out: a quantizing form at large M, meant to hide the quantize pass
//   (352 MB at 14336x4096 M = 8192) under the tensor-bound main loops. Warps took rows of x
//   from a global counter and quantized each with the quantize kernel's code (one warp per
//   row), publishing per-row-tile counts that the TMA thread acquired (then a proxy fence)
//   before its A loads. Every warp quantized the first wave's row tiles before the main loops;
//   the producer's two spare warps (72 registers, consumers 216) did the rest while the
//   consumers multiplied; the tile groups shrank to one wave's row tiles. Bit-identical, and
//   slower at every point measured (H100, matmul dynamic fp16, us; quantize kernel + GEMM /
//   this form / raw GEMM): 4096x4096 M = 2048 56.3 / 69.6 / 50.2, M = 8192 230.4 / 262.3 /
//   182.6; 14336x4096 M = 2048 203.1 / 234.3 / 153.1, M = 8192 741.2 / 948.0 / 650.8. The
//   spare warps sustained ~0.35 TB/s against the ~0.5 that N = 4096 needs, and even with
//   every warp quantizing all rows before the main loops the kernel took 896 us at 14336x4096
//   M = 8192 (245 us over the raw GEMM, against 90 for the quantize kernel). Not established
//   why; likely that each warp reads its 28 KB row twice (absmax, then codes) in serial
//   chunks, where the quantize kernel holds a whole row in the registers of 256 threads.
//   Loads with L1::no_allocate and 16 loads in flight per lane did not help.
// - Epilogue (no M x N intermediate): per-row x scale (loaded at tile start), channel_terms of
//   epilogue.cuh (double-buffered in shared memory, handed over by an mbarrier pair),
//   apply_epilogue, then out through TMA: each consumer warp writes its 16 rows into one of
//   three 1 KB buffers (two in the split-K form), 64 bytes of columns at a time, and one lane
//   sends each with a bulk tensor store that runs on while the warp fills the next
//   (store_band_tma). The consumers are the tensor cores' only feeders, so every cycle of
//   epilogue is a cycle of idle tensor cores. Measured on an H100, raw scaled_mm, TOP/s in
//   one run each:
//   - storing pairs straight from the accumulator fragment (4 or 8 bytes on each of 8 rows per
//     instruction) against one 128-byte TMA buffer per warp: 8192x28672x8192 1120 / 1386,
//     8192x14336x4096 1066 / 1324, 8192x4096x4096 1114 / 1379; the same kernel with no output
//     stores at all: 1463, 1509, 1532. A synchronous variant (stage in shared memory, then
//     16-byte st.global per lane) got about two thirds of the gain.
//   - one 128-byte buffer (the warp waits for each store to read it before the next chunk),
//     two and three 64-byte buffers: 8192x28672x8192 1292 / 1358 / 1415, 2048x28672x8192
//     1320 / 1361 / 1405, 2048x4096x14336 1328 / 1367 / 1408. Four do not fit beside the
//     256-wide tiles' four stages.
//   What remains is the epilogue's arithmetic (a conversion and two multiplies per output),
//   which the tensor cores still wait for. Output rows that are not 16-byte aligned are
//   stored straight from registers.
// - Split-K (few tiles: small M): a second kernel form (kSplit) runs one work unit per CTA,
//   with thread-block clusters of `splits` = 2 or 4 CTAs along x. The CTAs of a cluster
//   share a tile; CTA rank s takes K tiles [s * per, min((s + 1) * per, k_tiles)) (the
//   launcher picks per so that no split is empty). After the main loop the tile's 128 rows
//   are cut into `splits` slices of 16-row warp bands; each consumer warp whose band belongs
//   to another rank stores its raw int32 sums into that CTA's shared memory (st.shared::cluster)
//   and arrives on its receive mbarrier; the owner waits for every other split, adds their
//   sums to its own and runs the normal epilogue. No workspace, no second kernel, and each
//   CTA stores only its slice of the output.
// - Early weights (w_ready, matmul only): the kernel before the GEMM is the activation
//   quantizer, which wrote nothing the GEMM reads but A and the x scales. Thread 0 then arms
//   the first kStages stages and issues their W tiles before pdl_wait(), so the weight stream
//   starts while the quantizer still runs; the producer adds the A tiles after the wait.
//   (H100/H200: 0.2-0.6 us off a matmul call at M <= 512, against the same call without.)
//   Also prefetching the first unit's remaining W tiles into L2 there was slower at every M
//   of 16..1024 on the four LLM shapes (H200, matmul with the weights rotated out of L2:
//   4096x4096 M = 128 13.2 us without, 13.5 / 14.2 with 96 / 256 KB per CTA).
//   The longest matmul GEMMs (over 2^41 ops) are launched without PDL (run_typed): they
//   then start once the quantizer has finished, and these loads simply come first.
//
// Built for every arch of the extension; the kernel body exists only for sm_90a
// (__CUDA_ARCH_FEAT_SM90_ALL), and gemm_sm90a returns false unless INT8Q_HAVE_SM90A is set.

#include "kernels.h"

#ifdef INT8Q_HAVE_SM90A

#include <c10/cuda/CUDAException.h>
#include <cuda.h>  // CUtensorMap and its enums; the encoder itself comes via the runtime
#include <cudaTypedefs.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <climits>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "cluster.cuh"
#include "epilogue.cuh"
#include "launch.cuh"

namespace int8q {
namespace cuda {
namespace {

constexpr int kBlockM = 128;
constexpr int kBlockK = 128;  // bytes of K per stage = the 128-byte swizzle span
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
// Epilogue TMA stores (store_band_tma): boxes of 16 rows x 64 bytes, TileConfig::kOutBuffers
// of them per consumer warp.
constexpr int kOutChunkBytes = 64;
constexpr int kOutBufferBytes = 16 * kOutChunkBytes;
// kSplit: the cluster split-K kernel (header), which also holds a receive buffer for the
// partial sums of the other CTAs of its cluster: one int32 per accumulator of the tile.
template <int BN, bool kSplit = false>
struct TileConfig {
  static_assert(BN == 256 || BN == 128 || BN == 96 || BN == 64, "tile widths with a wgmma form");
  static_assert(!kSplit || BN == 128 || BN == 64, "split-K runs 128- or 64-wide tiles");
  static constexpr int kStages =
      BN == 256 ? 4 : BN == 128 ? (kSplit ? 4 : 6) : BN == 96 ? 7 : (kSplit ? 6 : 8);
  static constexpr int kABytes = kBlockM * kBlockK;  // 16 KB
  static constexpr int kWBytes = BN * kBlockK;       // 32, 16, 12 or 8 KB (1024-byte multiples)
  static constexpr int kStageBytes = kABytes + kWBytes;
  static constexpr int kRecvBytes = kSplit ? kBlockM * BN * 4 : 0;
  static constexpr int kTermsBytes = 2 * 3 * BN * 4;  // 2 buffers of w_scale, shift, bias [BN]
  static constexpr int kBarrierBytes = 8 * (2 * kStages + 5);
  // Epilogue staging for the TMA stores (store_band_tma), per consumer warp.
  // Three let a long GEMM's stores drain while the warp fills the next (store_band_tma). The
  // split-K kernel (small M, one tile per CTA) keeps two: with three, matmul at 14336x4096,
  // M = 32..128, ran 1-1.6 us slower on an H100 (raw scaled_mm unchanged).
  static constexpr int kOutBuffers = kSplit ? 2 : 3;
  static constexpr int kOutStageBytes = 8 * kOutBuffers * kOutBufferBytes;
  // + 1 KB so the tiles can be aligned up to the 1024-byte swizzle atom.
  static constexpr int kSmemBytes = kStages * kStageBytes + kRecvBytes + kTermsBytes +
                                    kOutStageBytes + kBarrierBytes + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90 is 227 KB");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kWgmmaK = 32;
constexpr int kGroupM = 16;        // row tiles per group of the tile order
constexpr int kProducerRegs = 40;
constexpr int kConsumerRegs = 232;

// Grouped tile order: kGroupM row tiles at a time, column tiles swept inside the group.
__device__ __forceinline__ void tile_coords(int tile, int tiles_m, int tiles_n, int& tm, int& tn) {
  const int per_group = kGroupM * tiles_n;
  const int group = tile / per_group;
  const int first_m = group * kGroupM;
  const int group_m = min(tiles_m - first_m, kGroupM);
  const int in_group = tile - group * per_group;
  tm = first_m + in_group % group_m;
  tn = in_group / group_m;
}

// Work unit -> tile coordinates and K range. Without split-K a unit is a tile over all of K;
// with it, unit = tile * splits + split, so the `splits` CTAs of one cluster (consecutive
// block indices) share a tile, CTA rank s of the cluster taking the K tiles of split s.
// kt_count >= 1: the launcher leaves no split empty.
template <bool kSplit>
__device__ __forceinline__ void unit_coords(int unit, int splits, int tiles_m, int tiles_n,
                                            int k_tiles, int split_k_tiles, int& tm, int& tn,
                                            int& kt_begin, int& kt_count) {
  int tile = unit;
  kt_begin = 0;
  kt_count = k_tiles;
  if constexpr (kSplit) {
    tile = unit / splits;
    kt_begin = (unit - tile * splits) * split_k_tiles;
    kt_count = min(split_k_tiles, k_tiles - kt_begin);
  }
  tile_coords(tile, tiles_m, tiles_n, tm, tn);
}

template <typename T>
__device__ __forceinline__ void store_pair(T* p, float a, float b);
template <>
__device__ __forceinline__ void store_pair<float>(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
template <>
__device__ __forceinline__ void store_pair<__half>(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __halves2half2(to_out<__half>(a), to_out<__half>(b));
}
template <>
__device__ __forceinline__ void store_pair<__nv_bfloat16>(__nv_bfloat16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) =
      __halves2bfloat162(to_out<__nv_bfloat16>(a), to_out<__nv_bfloat16>(b));
}

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// 2-D tile copy global -> shared; completes on `bar` with the box's byte count.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, uint32_t bar,
                                            int inner, int outer) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4}], [%2];" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(inner), "r"(outer)
      : "memory");
}

// Starts fetching a 2-D box (the tile tma_load_2d would load) from memory into L2 only.
__device__ __forceinline__ void tma_prefetch_2d(const CUtensorMap* map, int inner, int outer) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(inner), "r"(outer)
               : "memory");
}

// 2-D tile copy shared -> global (bulk group of this thread); rows/columns outside the tensor
// are not written.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int inner,
                                             int outer) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(src), "r"(inner), "r"(outer)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
// This thread's bulk stores have read their shared-memory source (it may be overwritten).
template <int N = 0>
__device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}
// Orders this thread's generic-proxy shared-memory writes before later async-proxy reads.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Split-K exchange through distributed shared memory (cluster.cuh has the rest).
__device__ __forceinline__ void st_cluster_v4(uint32_t addr, int32_t a, int32_t b, int32_t c,
                                              int32_t d) {
  asm volatile("st.shared::cluster.v4.s32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(a), "r"(b),
               "r"(c), "r"(d)
               : "memory");
}

// Arrives on an mbarrier of another CTA of the cluster, releasing this thread's earlier
// stores into that CTA's shared memory to whoever acquires the barrier's phase.
__device__ __forceinline__ void mbar_arrive_remote(uint32_t cluster_bar) {
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(cluster_bar)
               : "memory");
}

// mbar_wait with cluster-scope acquire: stores other CTAs released through their arrivals
// are visible afterwards.
__device__ __forceinline__ void mbar_wait_cluster(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}

// Shared-memory matrix descriptor of a K-major, 128B-swizzled operand tile at `addr`
// (1024-byte aligned, or offset from such a tile by k * 32 bytes along K).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4)  // start address
         | (static_cast<uint64_t>(1) << 16)           // leading byte offset: unused here
         | (static_cast<uint64_t>(1024 >> 4) << 32)   // stride byte offset: next 8-row atom
         | (static_cast<uint64_t>(1) << 62);          // 128-byte swizzle
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator reads/writes across wgmma issue and wait.
template <int R>
__device__ __forceinline__ void fence_acc(int32_t (&d)[R]) {
#pragma unroll
  for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i])::"memory");
}

// D[64 x 256] (+)= A[64 x 32] * B[256 x 32]^T, both from shared memory (K-major descriptors);
// `accumulate` = 0 overwrites D.
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[128], uint64_t desc_a, uint64_t desc_b,
                                         uint32_t accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
      "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
      "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "
      "%60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, "
      "%72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, "
      "%84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, "
      "%108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, "
      "%120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]),
        "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]),
        "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]),
        "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]),
        "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]),
        "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]),
        "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]),
        "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]), "+r"(d[64]), "+r"(d[65]),
        "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
        "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]),
        "+r"(d[78]), "+r"(d[79]), "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]),
        "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]), "+r"(d[88]), "+r"(d[89]),
        "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]),
        "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]),
        "+r"(d[102]), "+r"(d[103]), "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]),
        "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]), "+r"(d[112]), "+r"(d[113]),
        "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]),
        "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]),
        "+r"(d[126]), "+r"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 128] (+)= A[64 x 32] * B[128 x 32]^T, both from shared memory (K-major descriptors);
// `accumulate` = 0 overwrites D.
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[64], uint64_t desc_a, uint64_t desc_b,
                                         uint32_t accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
      "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
      "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "
      "%60, %61, %62, %63"
      "}, %64, %65, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]),
        "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]),
        "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]),
        "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]),
        "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]),
        "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]),
        "+r"(d[54]), "+r"(d[55]), "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]),
        "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 96] (+)= A[64 x 32] * B[96 x 32]^T, both from shared memory (K-major descriptors);
// `accumulate` = 0 overwrites D.
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[48], uint64_t desc_a, uint64_t desc_b,
                                         uint32_t accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %50, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n96k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
      "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
      "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
      "}, %48, %49, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]),
        "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]),
        "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]),
        "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31]), "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]),
        "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]), "+r"(d[40]), "+r"(d[41]),
        "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x 64] (+)= A[64 x 32] * B[64 x 32]^T, both from shared memory (K-major descriptors);
// `accumulate` = 0 overwrites D.
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                         uint32_t accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, "
      "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, "
      "%24, %25, %26, %27, %28, %29, %30, %31"
      "}, %32, %33, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]),
        "+r"(d[6]), "+r"(d[7]), "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]),
        "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]), "+r"(d[16]), "+r"(d[17]),
        "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]),
        "+r"(d[30]), "+r"(d[31])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// The outputs of accumulator group j of a consumer thread (a0..a3 = acc[4j .. 4j + 3]: rows
// r and r + 8, columns c and c + 1 of the tile), from the tile's channel terms in shared
// memory ([w_scale | shift | bias] x BN, c even). kPlain: no shift term and no bias, not even
// a + 0 (reference.py adds neither), so a -0 product stays -0.
template <int BN, bool kPlain>
__device__ __forceinline__ float4 group_outputs(int32_t a0, int32_t a1, int32_t a2, int32_t a3,
                                                float xs0, float xs1, const float* terms, int c) {
  const float2 ws = *reinterpret_cast<const float2*>(terms + c);
  if constexpr (kPlain) {
    return make_float4(dequantize(a0, xs0, ws.x), dequantize(a1, xs0, ws.y),
                       dequantize(a2, xs1, ws.x), dequantize(a3, xs1, ws.y));
  } else {
    const float2 sh = *reinterpret_cast<const float2*>(terms + BN + c);
    const float2 b = *reinterpret_cast<const float2*>(terms + 2 * BN + c);
    const ChannelTerms t0{ws.x, sh.x, b.x}, t1{ws.y, sh.y, b.y};
    return make_float4(apply_epilogue(a0, xs0, t0), apply_epilogue(a1, xs0, t1),
                       apply_epilogue(a2, xs1, t0), apply_epilogue(a3, xs1, t1));
  }
}

// Stores a consumer warp's 16 output rows (band_row.., the tile's columns col0..col0 + BN)
// through its kBuffers x 1 KB of shared memory `band`: one 16-row x 64-byte chunk at a
// time, written in the TMA's 64B-swizzled layout (16-byte chunk c of row r at c ^ (r / 2 % 4);
// the fragment writes then hit 32 distinct banks for 16-bit outputs) and sent by one bulk
// tensor store that clips rows and columns outside the output. The stores are asynchronous:
// the warp fills the next buffer while earlier ones drain, and goes on to its next tile
// while the last ones do. Before refilling a buffer, lane 0 waits until the store that last
// read it is done reading (at a tile's first chunk, for all of them: the previous tile's
// stores finished long before). Against one 128-byte buffer per warp, whose store the warp
// had to wait for before each next chunk, three 64-byte buffers made a large GEMM 5-10%
// faster (header). kPlain: no shift term and no bias (not even a + 0, as in reference.py).
template <int BN, int kBuffers, bool kPlain, typename OutT, int R>
__device__ __forceinline__ void store_band_tma(const int32_t (&acc)[R], float xs0, float xs1,
                                               const float* terms, uint8_t* band,
                                               const CUtensorMap* tmap_out, int col0,
                                               int band_row, int lane) {
  constexpr int kChunkCols = kOutChunkBytes / static_cast<int>(sizeof(OutT));
  constexpr int kGroups = kChunkCols / 8;  // 8-column groups j per chunk
  static_assert(BN % kChunkCols == 0, "whole 64-byte chunks per tile row");
  const int r = lane / 4;
  const int sw = (r >> 1) & 3;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int jj = j % kGroups;
    const int q = j / kGroups;
    uint8_t* buf = band + (q % kBuffers) * kOutBufferBytes;
    if (jj == 0 && (q == 0 || q >= kBuffers)) {
      if (lane == 0) {
        if (q == 0) {
          bulk_wait_read<0>();
        } else {
          bulk_wait_read<kBuffers - 1>();  // the store of chunk q - kBuffers is done
        }
      }
      __syncwarp();
    }
    const float4 v = group_outputs<BN, kPlain>(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2],
                                               acc[4 * j + 3], xs0, xs1, terms,
                                               8 * j + 2 * (lane % 4));
    const int bo = (8 * jj + 2 * (lane % 4)) * static_cast<int>(sizeof(OutT));
    const int off = r * kOutChunkBytes + (((bo >> 4) ^ sw) << 4) + (bo & 15);
    store_pair(reinterpret_cast<OutT*>(buf + off), v.x, v.y);
    store_pair(reinterpret_cast<OutT*>(buf + 8 * kOutChunkBytes + off), v.z, v.w);
    if (jj == kGroups - 1) {
      fence_proxy_async_shared();  // the generic-proxy writes, before the bulk copy reads them
      __syncwarp();
      if (lane == 0) {
        tma_store_2d(tmap_out, smem_addr(buf), col0 + q * kChunkCols, band_row);
        bulk_commit();
      }
    }
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// OutT = float / __half / __nv_bfloat16. kSplit = false: persistent, one unit per tile.
// kSplit = true: one unit per CTA, clusters of `splits` CTAs along x splitting one tile's K
// (header); the partial sums meet in distributed shared memory and the epilogue runs there.
// w_ready: the weights and channel terms were not written by the kernel just before this one
// on the stream (matmul: that kernel is the activation quantizer, which itself waited for
// everything before it), so the first weight tiles may be loaded before pdl_wait().
template <int BN, typename OutT, bool kSplit>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90a_kernel(const __grid_constant__ CUtensorMap tmap_a,
                      const __grid_constant__ CUtensorMap tmap_a_last,
                      const __grid_constant__ CUtensorMap tmap_w,
                      const __grid_constant__ CUtensorMap tmap_out, int m, int n, int k_tiles,
                      int tiles_m, int tiles_n, int splits, int split_k_tiles, int last_box_rows,
                      Epilogue ep, OutT* __restrict__ out, bool vec2, bool tma_out,
                      bool w_ready) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Cfg = TileConfig<BN, kSplit>;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024u - smem_addr(smem_raw) % 1024u) % 1024u);
  const uint32_t smem_a = smem_addr(smem);
  const uint32_t smem_w = smem_a + kStages * Cfg::kABytes;
  // Epilogue staging (1024-byte aligned): per consumer warp, 16 rows of output.
  uint8_t* out_stage = smem + kStages * Cfg::kStageBytes;
  // Split-K receive buffer (kSplit): int4 slots [source rank][warp of the slice][j][lane].
  const uint32_t recv = smem_a + kStages * Cfg::kStageBytes + Cfg::kOutStageBytes;
  // Channel terms of the tile's BN columns, double-buffered: [buffer][w_scale | shift | bias][BN].
  float* terms = reinterpret_cast<float*>(smem + kStages * Cfg::kStageBytes +
                                          Cfg::kOutStageBytes + Cfg::kRecvBytes);
  const uint32_t full_bar = smem_addr(terms) + Cfg::kTermsBytes;
  const uint32_t empty_bar = full_bar + 8 * kStages;
  const uint32_t terms_full_bar = empty_bar + 8 * kStages;
  const uint32_t terms_empty_bar = terms_full_bar + 16;
  const uint32_t recv_bar = terms_empty_bar + 16;  // kSplit: the other splits' sums are in

  const int warpgroup = threadIdx.x / 128;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  const int num_tiles = tiles_m * tiles_n;
  const int num_units = kSplit ? num_tiles * splits : num_tiles;
  // kSplit: the consumer warps' 128 rows are cut into `splits` slices of 8 / splits warps
  // (splits divides 8; pick_plan uses 2 or 4); CTA rank r of the cluster sums and stores slice r.
  const int slice_warps = kSplit ? 8 / splits : 8;
  // The last row tile's A box (tmap_a_last) holds only the rows that exist (last_box_rows,
  // see launch_gemm). M <= 64: the second consumer warpgroup has no rows and sits the call
  // out, and each stage is freed by the 4 warps of the first.
  const int consumer_wgs = tiles_m == 1 && last_box_rows <= 64 ? 1 : 2;
  // No shift term and no bias: the epilogue is (acc * x_scale) * w_scale alone.
  const bool plain = ep.w_sum == nullptr && ep.bias_type == BiasType::kNone;
  // TMA bytes of a stage of row tile tm.
  auto stage_bytes = [&](int tm) -> uint32_t {
    return (tm == tiles_m - 1 ? last_box_rows : kBlockM) * kBlockK + Cfg::kWBytes;
  };
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_bar + 8 * s, 1);
      mbar_init(empty_bar + 8 * s, 4 * consumer_wgs);
    }
    for (int b = 0; b < 2; ++b) {
      mbar_init(terms_full_bar + 8 * b, 32);
      mbar_init(terms_empty_bar + 8 * b, 128 * consumer_wgs);
    }
    if (kSplit) mbar_init(recv_bar, (splits - 1) * slice_warps * 32);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    prefetch_tensor_map(&tmap_a);
    prefetch_tensor_map(&tmap_a_last);
    prefetch_tensor_map(&tmap_w);
    if (tma_out) prefetch_tensor_map(&tmap_out);
    if (blockIdx.x < num_units) {
      int tm, tn, kt_begin, kt_count;
      unit_coords<kSplit>(blockIdx.x, splits, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn,
                          kt_begin, kt_count);
      if (w_ready) {
        // The first stages' weight tiles load now, while the quantizer still runs; each
        // stage's barrier already expects the A tile too, which the producer adds after
        // pdl_wait() (stage s = K tile s of the first unit, phase 0, all stages free).
        for (int s = 0; s < min(kt_count, kStages); ++s) {
          mbar_arrive_expect_tx(full_bar + 8 * s, stage_bytes(tm));
          tma_load_2d(smem_w + s * Cfg::kWBytes, &tmap_w, full_bar + 8 * s,
                      (kt_begin + s) * kBlockK, tn * BN);
        }
      } else {
        // Unknown writer of W: only an L2 prefetch (always safe, launch.cuh).
        const int count = min(kt_count, max(1, kPrefetchBytesPerCta / Cfg::kWBytes));
        for (int kt = kt_begin; kt < kt_begin + count; ++kt) {
          tma_prefetch_2d(&tmap_w, kt * kBlockK, tn * BN);
        }
      }
    }
  }
  __syncthreads();
  // kSplit: no CTA may arrive on another's barrier before that CTA has initialized it.
  if constexpr (kSplit) cluster_barrier();
  pdl_wait();  // A and the x scales may come from the quantize kernel just before (launch.cuh)
  pdl_launch_dependents();
  if (warpgroup == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegs));
    if (warp == 0 && lane == 0) {
      // TMA producer: keeps every free stage loading, running ahead across units.
      int stage = 0;
      uint32_t phase = 0;
      // K tiles of the first unit whose stage was armed and given its W tile above.
      int preloaded = w_ready ? kStages : 0;
      for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x) {
        int tm, tn, kt_begin, kt_count;
        unit_coords<kSplit>(unit, splits, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn,
                            kt_begin, kt_count);
        for (int kt = kt_begin; kt < kt_begin + kt_count; ++kt) {
          const uint32_t bar = full_bar + 8 * stage;
          if (preloaded > 0) {
            --preloaded;
          } else {
            mbar_wait(empty_bar + 8 * stage, phase ^ 1);  // a fresh barrier passes parity 1
            mbar_arrive_expect_tx(bar, stage_bytes(tm));
            tma_load_2d(smem_w + stage * Cfg::kWBytes, &tmap_w, bar, kt * kBlockK, tn * BN);
          }
          tma_load_2d(smem_a + stage * Cfg::kABytes, tm == tiles_m - 1 ? &tmap_a_last : &tmap_a,
                      bar, kt * kBlockK, tm * kBlockM);
          if (++stage == kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
        preloaded = 0;
      }
    } else if (warp == 1) {
      // Channel terms (w scale, shift term, bias) of each tile's columns, computed while
      // the consumers run the main loop, so their epilogue only reads shared memory.
      int it = 0;
      for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x, ++it) {
        int tm, tn, kt_begin, kt_count;
        unit_coords<kSplit>(unit, splits, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn,
                            kt_begin, kt_count);
        const int buf = it & 1;
        mbar_wait(terms_empty_bar + 8 * buf, ((it >> 1) & 1) ^ 1);
        float* w_scale = terms + buf * 3 * BN;
#pragma unroll 4
        for (int c = lane; c < BN; c += 32) {
          const int col = tn * BN + c;
          ChannelTerms t{0.f, 0.f, 0.f};
          if (col < n) t = channel_terms(ep, col);
          w_scale[c] = t.w_scale;
          w_scale[BN + c] = t.shift;
          w_scale[2 * BN + c] = t.bias;
        }
        mbar_arrive(terms_full_bar + 8 * buf);
      }
    }
  } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kConsumerRegs));
    const int half = warpgroup - 1;  // rows [64 * half, 64 * half + 64) of the tile
    // M <= 64: no rows for the second warpgroup (nothing waits for it); it skips to the end.
    const int first_unit = half < consumer_wgs ? static_cast<int>(blockIdx.x) : num_units;
    const int cwarp = half * 4 + warp;  // consumer warp 0..7 = 16-row band of the tile
    int32_t acc[BN / 2];
    int stage = 0;
    uint32_t phase = 0;
    int it = 0;
    for (int unit = first_unit; unit < num_units; unit += gridDim.x, ++it) {
      int tm, tn, kt_begin, kt_count;
      unit_coords<kSplit>(unit, splits, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn,
                          kt_begin, kt_count);
      // This thread's output rows; their x scales load during the main loop.
      const int64_t row0 = static_cast<int64_t>(tm) * kBlockM + cwarp * 16 + lane / 4;
      const int64_t row1 = row0 + 8;
      const bool in0 = row0 < m, in1 = row1 < m;
      const float xs0 = in0 ? ep.x_scale[row0 * ep.x_scale_stride] : 0.f;
      const float xs1 = in1 ? ep.x_scale[row1 * ep.x_scale_stride] : 0.f;

      // kt counts this unit's K tiles from 0 (the producer issues them from kt_begin on);
      // kt_count >= 1, so the first one overwrites acc and the last one releases its stage.
      int prev_stage = 0;
      for (int kt = 0; kt < kt_count; ++kt) {
        mbar_wait(full_bar + 8 * stage, phase);
        const uint64_t desc_a = smem_desc(smem_a + stage * Cfg::kABytes + half * 64 * kBlockK);
        const uint64_t desc_w = smem_desc(smem_w + stage * Cfg::kWBytes);
        fence_acc(acc);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kBlockK / kWgmmaK; ++kk) {
          // +32 bytes along K = +2 in the descriptor's 16-byte address units.
          wgmma_s8(acc, desc_a + 2 * kk, desc_w + 2 * kk, (kt > 0 || kk > 0) ? 1u : 0u);
        }
        wgmma_commit();
        fence_acc(acc);
        // The previous k tile's wgmma has retired: its stage may be refilled.
        wgmma_wait<1>();
        if (kt > 0 && lane == 0) mbar_arrive(empty_bar + 8 * prev_stage);
        prev_stage = stage;
        if (++stage == kStages) {
          stage = 0;
          phase ^= 1;
        }
      }
      wgmma_wait<0>();
      fence_acc(acc);
      if (lane == 0) mbar_arrive(empty_bar + 8 * prev_stage);

      if constexpr (kSplit) {
        // Split-K exchange: a warp whose 16-row band belongs to another rank's slice sends
        // its raw sums there (one int4 per 8-column group j: acc[4j .. 4j + 3]) and is done;
        // the owner's warp adds every other split's sums to its own (int32: exact, in any
        // order) and runs the epilogue below.
        const int rank = cluster_rank();
        const int owner = cwarp / slice_warps;
        const uint32_t slot_stride = (BN / 8) * 32 * 16;  // bytes of one warp's sums
        const uint32_t slot = (cwarp % slice_warps) * slot_stride + lane * 16;
        if (owner != rank) {
          const uint32_t dst =
              map_to_rank(recv + rank * slice_warps * slot_stride + slot, owner);
#pragma unroll
          for (int j = 0; j < BN / 8; ++j) {
            st_cluster_v4(dst + j * 32 * 16, acc[4 * j], acc[4 * j + 1], acc[4 * j + 2],
                          acc[4 * j + 3]);
          }
          mbar_arrive_remote(map_to_rank(recv_bar, owner));
          continue;
        }
        mbar_wait_cluster(recv_bar, 0);
        for (int src = 0; src < splits; ++src) {
          if (src == rank) continue;
          const int4* part = reinterpret_cast<const int4*>(
              smem + kStages * Cfg::kStageBytes + Cfg::kOutStageBytes +
              src * slice_warps * slot_stride + slot);
#pragma unroll
          for (int j = 0; j < BN / 8; ++j) {
            const int4 v = part[j * 32];
            acc[4 * j] += v.x;
            acc[4 * j + 1] += v.y;
            acc[4 * j + 2] += v.z;
            acc[4 * j + 3] += v.w;
          }
        }
      }

      // Epilogue: this thread holds rows row0 and row0 + 8; for each 8-column group j, the
      // column pair 8j + 2 (lane % 4) + {0, 1}.
      const int buf = it & 1;
      mbar_wait(terms_full_bar + 8 * buf, (it >> 1) & 1);
      const float* w_scale = terms + buf * 3 * BN;
      if (tma_out) {
        if (tm * kBlockM + cwarp * 16 < m) {  // else all 16 rows of the warp lie past M
          uint8_t* band = out_stage + cwarp * Cfg::kOutBuffers * kOutBufferBytes;
          const int band_row = tm * kBlockM + cwarp * 16;
          constexpr int kBuf = Cfg::kOutBuffers;
          if (plain) {
            store_band_tma<BN, kBuf, true, OutT>(acc, xs0, xs1, w_scale, band, &tmap_out, tn * BN,
                                                 band_row, lane);
          } else {
            store_band_tma<BN, kBuf, false, OutT>(acc, xs0, xs1, w_scale, band, &tmap_out, tn * BN,
                                                  band_row, lane);
          }
        }
      } else {
        // Straight from registers (outputs whose rows are not 16-byte aligned).
        OutT* out0 = out + row0 * n;
        OutT* out1 = out0 + 8 * static_cast<int64_t>(n);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int c = 8 * j + 2 * (lane % 4);
          const int col = tn * BN + c;
          if (col < n) {
            const bool has1 = col + 1 < n;
            const float4 v =
                plain ? group_outputs<BN, true>(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2],
                                                acc[4 * j + 3], xs0, xs1, w_scale, c)
                      : group_outputs<BN, false>(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2],
                                                 acc[4 * j + 3], xs0, xs1, w_scale, c);
            const float v00 = v.x, v01 = v.y, v10 = v.z, v11 = v.w;
            if (vec2 && has1) {
              if (in0) store_pair(out0 + col, v00, v01);
              if (in1) store_pair(out1 + col, v10, v11);
            } else {
              if (in0) {
                out0[col] = to_out<OutT>(v00);
                if (has1) out0[col + 1] = to_out<OutT>(v01);
              }
              if (in1) {
                out1[col] = to_out<OutT>(v10);
                if (has1) out1[col + 1] = to_out<OutT>(v11);
              }
            }
          }
        }
      }
      // kSplit runs one unit per CTA and only the owning warps get here: nothing to free.
      if constexpr (!kSplit) mbar_arrive(terms_empty_bar + 8 * buf);
    }
    // The shared memory of the last bulk stores must stay until they have read it.
    if (tma_out && lane == 0) bulk_wait_read();
  }
  // kSplit: every thread of the cluster meets here before any CTA exits, so no CTA's shared
  // memory goes away while another might still write into it (the receive mbarrier already
  // orders the writes before the owner's reads; this orders them before the exit).
  if constexpr (kSplit) cluster_barrier_diverged();
#elif defined(__CUDA_ARCH__)
  __trap();  // only the sm_90a build of this kernel is ever launched
#endif
}

using EncodeTiledFn = PFN_cuTensorMapEncodeTiled_v12000;

// The driver's tensor-map encoder, looked up once through the runtime (no libcuda link).
EncodeTiledFn encode_tiled_fn() {
  static const EncodeTiledFn fn = []() -> EncodeTiledFn {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
#if CUDART_VERSION >= 12050
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000,
                                                             cudaEnableDefault, &status);
#else
    const cudaError_t err =
        cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &ptr, cudaEnableDefault, &status);
#endif
    if (err != cudaSuccess || status != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(ptr);
  }();
  return fn;
}

// A row-major 2-D tensor [rows, cols] of `type` (row stride `ld` bytes) moved in boxes of
// box_rows x box_cols elements; reads outside the tensor give zeros, writes outside it are
// dropped.
bool encode_2d(CUtensorMap* map, CUtensorMapDataType type, const void* ptr, int64_t rows,
               int64_t cols, int64_t ld, int box_cols, int box_rows, CUtensorMapSwizzle swizzle,
               CUtensorMapL2promotion promotion) {
  const EncodeTiledFn encode = encode_tiled_fn();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(box_cols), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, type, 2, const_cast<void*>(ptr), dims, strides, box, elem_strides,
                CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// A row-major int8 matrix [rows, cols] (row stride `ld` bytes) read as boxes of
// `box_rows` x 128 bytes into 128B-swizzled shared memory; zeros outside the matrix.
bool encode_operand(CUtensorMap* map, const int8_t* ptr, int64_t rows, int64_t cols, int64_t ld,
                    int box_rows) {
  return encode_2d(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, ptr, rows, cols, ld, kBlockK, box_rows,
                   CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The output [rows, cols] of OutT (row-major, contiguous) written from shared memory in boxes of
// 16 rows x 64 bytes, 64B-swizzled (store_band_tma).
template <typename OutT>
bool encode_output(CUtensorMap* map, OutT* ptr, int64_t rows, int64_t cols) {
  const CUtensorMapDataType type =
      std::is_same<OutT, float>::value    ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
      : std::is_same<OutT, __half>::value ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                          : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  return encode_2d(map, type, ptr, rows, cols, cols * sizeof(OutT),
                   kOutChunkBytes / static_cast<int>(sizeof(OutT)), 16, CU_TENSOR_MAP_SWIZZLE_64B,
                   CU_TENSOR_MAP_L2_PROMOTION_NONE);
}

// 256-wide tiles read shared memory most efficiently; 128-wide ones when they fill more SMs.
// Cost model: waves of tiles x tile width, with the narrower tile ~10% less efficient.
int pick_block_n(int64_t m, int64_t n, int num_sms) {
  const int64_t tiles_m = ceil_div(m, kBlockM);
  const int64_t waves256 = ceil_div(tiles_m * ceil_div(n, 256), num_sms);
  const int64_t waves128 = ceil_div(tiles_m * ceil_div(n, 128), num_sms);
  return waves128 * 128 * 11 < waves256 * 256 * 10 ? 128 : 256;
}

// Tile width, split count and K tiles per split of one call.
struct Plan {
  int block_n;
  int splits;
  int k_tiles_per_split;
};

// How many clusters of `size` CTAs of `kernel` (with `smem` bytes of shared memory each) the
// current GPU holds at once. Clusters live inside one GPC, so this can be well below
// #SMs / size (an H200 holds 66 clusters of 2 but fewer than 32 of 4 and 16 of 8). Asked
// once per device, kernel and size; 0 when the runtime cannot say (that size is not used).
int cluster_capacity(const void* kernel, int smem, int size) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int>, int> cache;
  const int device = c10::cuda::current_device();
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(device, kernel, size);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int clusters = 0;
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) ==
      cudaSuccess) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(size, 1, 1);
    cfg.blockDim = dim3(kThreads, 1, 1);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = size;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) clusters = 0;
  }
  (void)cudaGetLastError();  // a refused query leaves no sticky error behind
  cache.emplace(key, clusters);
  return clusters;
}

// CTAs of the split-K kernel (tile width BN, clusters of `splits`) resident at once.
template <int BN, typename OutT>
int64_t split_slots(int splits) {
  return static_cast<int64_t>(splits) *
         cluster_capacity(reinterpret_cast<const void*>(gemm_sm90a_kernel<BN, OutT, true>),
                          TileConfig<BN, true>::kSmemBytes, splits);
}

// When 128-wide tiles fill every SM, the persistent kernel with 128- or 256-wide tiles
// (pick_block_n). Otherwise (small M) the weights stream through too few SMs, and the plan is
// the one that keeps the most SMs busy in a single wave: 64- or 96-wide tiles, then 128- or
// 64-wide tiles split over clusters of 2 or 4 (tried in this order, a later one taken only
// when it keeps strictly more SMs busy, so wider tiles and no split win ties). 96-wide tiles
// win where 64-wide ones overflow the wave, e.g. three row tiles (M = 257..384) of N = 4096:
// 3 x 43 = 129 CTAs against 96 of 128-wide tiles and 192 of 64-wide ones (H200, raw
// scaled_mm at M = 320: 4096x4096 13.5 us against 15.6, 14336x4096 36.3 against 41.0; of
// the four LLM shapes only N = 4096 at M = 257..384 changes plan). A split pays for its
// cluster launch and exchange only over a long K: each split keeps >= kMinSplitKTiles K tiles.
// Measured on an H200 (every plan forced, scaled_mm, M = 16..512): 4096x4096 at M <= 128
// runs best as 64-wide tiles unsplit (8.2-9.9 us; split in 2: 8.8-10.3), 14336x4096 at
// M <= 128 as 64-wide tiles split in 2 (19.3-22.4 us; unsplit 22.3-26.8), and at M = 256
// 64-wide tiles unsplit beat 128-wide ones split in 2 (11.2 against 13.5 us; 28.2 against
// 30.3). Clusters of 4 rarely fit: an H200 holds 30 at once, not the 32 a 4096-wide N needs.
constexpr int kMinSplitKTiles = 24;

template <typename OutT>
Plan pick_plan(int64_t m, int64_t n, int64_t k_tiles, int num_sms) {
  const int64_t tiles_m = ceil_div(m, kBlockM);
  const int64_t tiles128 = tiles_m * ceil_div(n, 128);
  if (tiles128 >= num_sms) return {pick_block_n(m, n, num_sms), 1, static_cast<int>(k_tiles)};
  Plan best{128, 1, static_cast<int>(k_tiles)};
  int64_t best_ctas = tiles128;
  const Plan candidates[] = {{64, 1, 0}, {96, 1, 0}, {128, 2, 0}, {64, 2, 0}, {128, 4, 0}, {64, 4, 0}};
  for (Plan p : candidates) {
    const int64_t ctas = tiles_m * ceil_div(n, p.block_n) * p.splits;
    const int64_t per = ceil_div(k_tiles, p.splits);
    int64_t slots = num_sms;
    if (p.splits > 1) {
      if (per < kMinSplitKTiles || (p.splits - 1) * per >= k_tiles) continue;
      slots = p.block_n == 128 ? split_slots<128, OutT>(p.splits) : split_slots<64, OutT>(p.splits);
    }
    if (ctas > slots || ctas <= best_ctas) continue;
    p.k_tiles_per_split = static_cast<int>(p.splits > 1 ? per : k_tiles);
    best = p;
    best_ctas = ctas;
  }
  return best;
}

// Returns false, launching nothing, when the driver refuses a tensor map.
template <int BN, typename OutT>
bool launch_gemm(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                 const Plan& plan, const Epilogue& ep, void* out_ptr, int num_sms, bool w_ready,
                 bool pdl, cudaStream_t stream) {
  // The last row tile's A box covers the rows that exist (rounded up to a swizzle atom of 8
  // rows) instead of 128 rows partly filled with zeros by TMA: on an H200 the zero fill made a
  // K tile of a 16-row A take ~2.5x as long as a full one. The box's rows past M hold zeros;
  // the tile rows past the box keep whatever shared memory held, and only feed accumulator
  // rows past M, which are never stored.
  const int tiles_m = static_cast<int>(ceil_div(m, kBlockM));
  const int last_box_rows = static_cast<int>(ceil_div(m - (tiles_m - 1) * kBlockM, 8) * 8);
  CUtensorMap tmap_a, tmap_a_last, tmap_w;
  if (!encode_operand(&tmap_a_last, a, m, k, lda, last_box_rows)) return false;
  if (tiles_m == 1 || last_box_rows == kBlockM) {
    tmap_a = tmap_a_last;  // every tile's box is the last one's
  } else if (!encode_operand(&tmap_a, a, m, k, lda, kBlockM)) {
    return false;
  }
  if (!encode_operand(&tmap_w, w, n, k, k, BN)) return false;
  // The output goes out through TMA where its rows are 16-byte aligned; otherwise straight
  // from registers (tmap_out unused).
  CUtensorMap tmap_out = tmap_w;
  const bool tma_out = (n * sizeof(OutT)) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out_ptr) % 16 == 0 &&
                       encode_output(&tmap_out, static_cast<OutT*>(out_ptr), m, n);
  const int tiles_n = static_cast<int>(ceil_div(n, BN));
  const int k_tiles = static_cast<int>(ceil_div(k, kBlockK));
  const int64_t tiles = static_cast<int64_t>(tiles_m) * tiles_n;
  OutT* out = static_cast<OutT*>(out_ptr);
  const bool vec2 = n % 2 == 0 && reinterpret_cast<uintptr_t>(out) % (2 * sizeof(OutT)) == 0;
  if constexpr (BN == 128 || BN == 64) {
    if (plan.splits > 1) {
      // One CTA per (tile, split): clusters of `splits` consecutive CTAs.
      using Cfg = TileConfig<BN, true>;
      auto* kernel = gemm_sm90a_kernel<BN, OutT, true>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          Cfg::kSmemBytes));
      launch_kernel_pdl_if(pdl, kernel, static_cast<unsigned>(tiles * plan.splits), kThreads,
                           Cfg::kSmemBytes, stream, static_cast<unsigned>(plan.splits), tmap_a,
                           tmap_a_last, tmap_w, tmap_out, static_cast<int>(m),
                           static_cast<int>(n), k_tiles, tiles_m, tiles_n, plan.splits,
                           plan.k_tiles_per_split, last_box_rows, ep, out, vec2, tma_out, w_ready);
      return true;
    }
  }
  using Cfg = TileConfig<BN, false>;
  auto* kernel = gemm_sm90a_kernel<BN, OutT, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Cfg::kSmemBytes));
  launch_kernel_pdl_if(pdl, kernel, static_cast<unsigned>(std::min<int64_t>(tiles, num_sms)),
                       kThreads, Cfg::kSmemBytes, stream, 1, tmap_a, tmap_a_last, tmap_w, tmap_out,
                       static_cast<int>(m), static_cast<int>(n), k_tiles, tiles_m, tiles_n, 1,
                       k_tiles, last_box_rows, ep, out, vec2, tma_out, w_ready);
  return true;
}

// Integer ops (2 * M * N * K) from which matmul's GEMM is launched without PDL (run_typed).
constexpr double kLongGemmOps = static_cast<double>(int64_t{1} << 41);  // 2.2 TOP

template <typename OutT>
bool run_typed(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
               const Epilogue& ep, void* out, int num_sms, bool w_ready, cudaStream_t stream) {
  const Plan plan = pick_plan<OutT>(m, n, ceil_div(k, kBlockK), num_sms);
  // matmul (w_ready: the quantizer runs just before) launches its GEMM with PDL up to 2^41
  // ops. Two A/B runs in one process on an H100 (rotated rounds, matmul dynamic, us without
  // / with PDL for the GEMM, both runs) found PDL faster for every call of the LLM shapes
  // over 2^37 ops (M >= 2048) but one, e.g. 4096x4096 M = 4096 128.1, 129.8 / 119.3,
  // 119.2, M = 8192 245.6, 251.1 / 232.3, 233.7; 4096x14336 M = 4096 396.5, 396.4 / 369.9,
  // 365.4; 14336x4096 M = 8192 808.0, 793.8 / 765.1, 752.9; 8192x28672 M = 2048 723.2,
  // 718.5 / 684.1, 673.9, M = 4096 1410, 1426 / 1401, 1400; but M = 8192 (3.8 TOP) 2725,
  // 2781 / 2886, 2942. (Calls that run the same path in both columns differed by up to 4%.)
  // An earlier version of this kernel had measured PDL 2-10% slower from 137 GOP on
  // (4096x4096 M = 8192 289 against 271 us).
  const bool pdl = !w_ready || 2.0 * m * n * k < kLongGemmOps;
  switch (plan.block_n) {
    case 256: return launch_gemm<256, OutT>(a, lda, w, m, n, k, plan, ep, out, num_sms, w_ready, pdl, stream);
    case 128: return launch_gemm<128, OutT>(a, lda, w, m, n, k, plan, ep, out, num_sms, w_ready, pdl, stream);
    case 96: return launch_gemm<96, OutT>(a, lda, w, m, n, k, plan, ep, out, num_sms, w_ready, pdl, stream);
    default: return launch_gemm<64, OutT>(a, lda, w, m, n, k, plan, ep, out, num_sms, w_ready, pdl, stream);
  }
}

}  // namespace

bool gemm_sm90a(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                Epilogue ep, void* out, OutType out_type, int num_sms, bool w_ready,
                cudaStream_t stream) {
  // TMA coordinates and the kernel's tile indices are 32-bit. (The ops already cap K at
  // kMaxK, where the int32 accumulation is exact.)
  // Every M from 1 up runs here on sm_90a (measured on an H100 and an H200, scaled_mm: faster
  // than the mma.sync kernels at every M of 1..512 on the LLM shapes, e.g. 4096x4096 M = 16
  // 8.8 against 9.9 us); matmul still sends M <= 2 to its fused decode kernel (ops_cuda.cu).
  if (m < 1 || n < 1 || k < 1 || num_sms < 1) return false;
  if (m > INT_MAX - 2 * kBlockM || n > INT_MAX - 512 || k > INT_MAX - kBlockK) return false;
  if (ceil_div(m, kBlockM) * ceil_div(n, 64) > INT_MAX / 4) return false;
  if (k % 16 != 0 || lda % 16 != 0 || lda < k || reinterpret_cast<uintptr_t>(a) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w) % 16 != 0) {
    return false;  // TMA needs 16-byte aligned bases and row strides
  }
  switch (out_type) {
    case OutType::kFloat:
      return run_typed<float>(a, lda, w, m, n, k, ep, out, num_sms, w_ready, stream);
    case OutType::kHalf:
      return run_typed<__half>(a, lda, w, m, n, k, ep, out, num_sms, w_ready, stream);
    case OutType::kBFloat16:
      return run_typed<__nv_bfloat16>(a, lda, w, m, n, k, ep, out, num_sms, w_ready, stream);
  }
  return false;
}

}  // namespace cuda
}  // namespace int8q

#else  // !INT8Q_HAVE_SM90A

namespace int8q {
namespace cuda {

bool gemm_sm90a(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int64_t, Epilogue, void*,
                OutType, int, bool, cudaStream_t) {
  return false;  // built without a 9.0a target
}

}  // namespace cuda
}  // namespace int8q

#endif  // INT8Q_HAVE_SM90A
