// Hopper (sm_90a) int8 GEMM: TMA bulk copies + wgmma, warp-specialized and persistent.
//
//   out[m, n] = epilogue(sum_k a[m, k] * w[n, k]),  A [M, K] int8 (row stride lda), W [N, K] int8.
//
// Layout choices (all must agree, or the product is silently wrong):
// - CTA tile 128 x BN x 128 (BN = 256, or 128 when 256-wide tiles leave SMs idle). A K tile of
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
//   zeros add nothing to the sums; the epilogue bounds-checks every store.
// - Warp roles (384 threads): warpgroup 0 is the producer (setmaxnreg drops it to 40
//   registers): one thread issues the TMA copies, warp 1 computes each tile's per-column
//   epilogue terms into shared memory while the main loop runs. Warpgroups 1 and 2 are the
//   consumers (232 registers), each owning 64 rows of the tile and issuing m64nBNk32 with
//   both operands in shared memory ("cooperative": one tile, split by rows). The int32
//   accumulator is BN/2 registers per consumer thread (128 for BN = 256).
// - Accumulator fragment (per warp w of a consumer warpgroup, lane t): acc[4j + 0/1] hold
//   row 16w + t/4, columns 8j + 2(t%4) + 0/1; acc[4j + 2/3] the same columns of row + 8.
// - Pipeline: kStages shared-memory stages, each with a "full" mbarrier (1 arrival + TMA
//   transaction bytes) and an "empty" mbarrier (one arrival per consumer warp once its wgmma
//   reading that stage has retired, via wgmma.wait_group 1). Both sides walk the stages in
//   the same order with a phase bit that flips at each wrap.
// - Persistent grid: one CTA per SM loops over tiles in a grouped order (kGroupM row tiles
//   share each column sweep) so the A rows and W columns in flight stay in L2. The producer
//   runs ahead into the next tile while the consumers run the epilogue.
// - Epilogue: straight from registers (no M x N intermediate): per-row x scale (loaded at
//   tile start), channel_terms of epilogue.cuh (double-buffered in shared memory, handed over
//   by an mbarrier pair), apply_epilogue, and stores of two adjacent outputs at a time.
// - Split-K (few tiles: small M): the persistent loop runs over work units, not tiles. A unit
//   is (split s, tile), numbered split-major (unit = s * tiles + tile, so each split walks the
//   tiles in the grouped order), and covers K tiles [s * per, min((s + 1) * per, k_tiles)).
//   The launcher picks per so that no split is empty. Producer and consumers derive the unit's
//   coordinates and K range from the same unit index, and both advance their stage / phase
//   counters once per K tile, so units with different K-tile counts keep them in step. The
//   split kernel (OutT = int32_t) stores the raw int32 accumulators to partial[s, M, N]
//   (every in-range element of every split, so the workspace needs no zeroing) and skips the
//   channel terms; splitk_reduce (gemm_sm80.cu) then sums the splits and applies the epilogue.
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
#include <type_traits>

#include "epilogue.cuh"
#include "launch.cuh"

namespace int8q {
namespace cuda {
namespace {

constexpr int kBlockM = 128;
constexpr int kBlockK = 128;  // bytes of K per stage = the 128-byte swizzle span
constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
// Fewer rows than this go to the sm80 / small-M paths. From here on, one (partly empty)
// row tile split over K streams the weights over every SM; the zero rows cost tensor-core
// time only, and TMA reads no memory for them. Measured on an H200 (bench_dispatch.py):
// at M = 48 the sm80 path's 32-row tiles read the weights twice and lose to this kernel;
// at M <= 32 the two are within a few percent.
constexpr int kMinRows = 33;

template <int BN>
struct TileConfig {
  static constexpr int kStages = BN == 256 ? 4 : 6;
  static constexpr int kABytes = kBlockM * kBlockK;  // 16 KB
  static constexpr int kWBytes = BN * kBlockK;       // 32 KB or 16 KB
  static constexpr int kStageBytes = kABytes + kWBytes;
  static constexpr int kTermsBytes = 2 * 3 * BN * 4;  // 2 buffers of w_scale, shift, bias [BN]
  static constexpr int kBarrierBytes = 8 * (2 * kStages + 4);
  // + 1 KB so the tiles can be aligned up to the 1024-byte swizzle atom.
  static constexpr int kSmemBytes = kStages * kStageBytes + kTermsBytes + kBarrierBytes + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per block on sm_90 is 227 KB");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

constexpr int kWgmmaK = 32;
constexpr int kConsumerWarps = 8;  // arrivals that free a stage
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

// Work unit -> tile coordinates and K range (see the header: split-major units; without
// split-K a unit is a tile over all of K). kt_count >= 1: the launcher leaves no split empty.
template <bool kSplit>
__device__ __forceinline__ void unit_coords(int unit, int num_tiles, int tiles_m, int tiles_n,
                                            int k_tiles, int split_k_tiles, int& tm, int& tn,
                                            int& split, int& kt_begin, int& kt_count) {
  int tile = unit;
  split = 0;
  kt_begin = 0;
  kt_count = k_tiles;
  if constexpr (kSplit) {
    split = unit / num_tiles;
    tile = unit - split * num_tiles;
    kt_begin = split * split_k_tiles;
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

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
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

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// OutT = float / __half / __nv_bfloat16: the full epilogue, one unit per tile (splits = 1).
// OutT = int32_t: split-K, `out` is the partial workspace [splits, m, n] of raw sums.
template <int BN, typename OutT>
__global__ void __launch_bounds__(kThreads, 1)
    gemm_sm90a_kernel(const __grid_constant__ CUtensorMap tmap_a,
                      const __grid_constant__ CUtensorMap tmap_w, int m, int n, int k_tiles,
                      int tiles_m, int tiles_n, int splits, int split_k_tiles, Epilogue ep,
                      OutT* __restrict__ out, bool vec2) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr bool kSplit = std::is_same<OutT, int32_t>::value;
  using Cfg = TileConfig<BN>;
  constexpr int kStages = Cfg::kStages;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024u - smem_addr(smem_raw) % 1024u) % 1024u);
  const uint32_t smem_a = smem_addr(smem);
  const uint32_t smem_w = smem_a + kStages * Cfg::kABytes;
  // Channel terms of the tile's BN columns, double-buffered: [buffer][w_scale | shift | bias][BN].
  float* terms = reinterpret_cast<float*>(smem + kStages * Cfg::kStageBytes);
  const uint32_t full_bar = smem_addr(terms) + Cfg::kTermsBytes;
  const uint32_t empty_bar = full_bar + 8 * kStages;
  const uint32_t terms_full_bar = empty_bar + 8 * kStages;
  const uint32_t terms_empty_bar = terms_full_bar + 16;

  const int warpgroup = threadIdx.x / 128;
  const int warp = (threadIdx.x / 32) % 4;
  const int lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_bar + 8 * s, 1);
      mbar_init(empty_bar + 8 * s, kConsumerWarps);
    }
    for (int b = 0; b < 2; ++b) {
      mbar_init(terms_full_bar + 8 * b, 32);
      mbar_init(terms_empty_bar + 8 * b, 2 * 128);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    prefetch_tensor_map(&tmap_a);
    prefetch_tensor_map(&tmap_w);
  }
  __syncthreads();

  const int num_tiles = tiles_m * tiles_n;
  const int num_units = kSplit ? num_tiles * splits : num_tiles;
  // The weight tiles of the CTA's first unit (within a budget) start moving into L2 while
  // the kernel before, the activation quantizer, may still run; A waits (launch.cuh).
  if (threadIdx.x == 0 && blockIdx.x < num_units) {
    int tm, tn, split, kt_begin, kt_count;
    unit_coords<kSplit>(blockIdx.x, num_tiles, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn, split,
                        kt_begin, kt_count);
    const int count = min(kt_count, max(1, kPrefetchBytesPerCta / Cfg::kWBytes));
    for (int kt = kt_begin; kt < kt_begin + count; ++kt) tma_prefetch_2d(&tmap_w, kt * kBlockK, tn * BN);
  }
  pdl_wait();  // A may come from the quantize kernel just before (launch.cuh)
  pdl_launch_dependents();
  if (warpgroup == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegs));
    if (warp == 0 && lane == 0) {
      // TMA producer: keeps every free stage loading, running ahead across units.
      int stage = 0;
      uint32_t phase = 0;
      for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x) {
        int tm, tn, split, kt_begin, kt_count;
        unit_coords<kSplit>(unit, num_tiles, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn,
                            split, kt_begin, kt_count);
        for (int kt = kt_begin; kt < kt_begin + kt_count; ++kt) {
          mbar_wait(empty_bar + 8 * stage, phase ^ 1);  // a fresh barrier passes parity 1
          const uint32_t bar = full_bar + 8 * stage;
          mbar_arrive_expect_tx(bar, Cfg::kStageBytes);
          tma_load_2d(smem_a + stage * Cfg::kABytes, &tmap_a, bar, kt * kBlockK, tm * kBlockM);
          tma_load_2d(smem_w + stage * Cfg::kWBytes, &tmap_w, bar, kt * kBlockK, tn * BN);
          if (++stage == kStages) {
            stage = 0;
            phase ^= 1;
          }
        }
      }
    } else if (warp == 1 && !kSplit) {
      // Channel terms (w scale, shift term, bias) of each tile's columns, computed while
      // the consumers run the main loop, so their epilogue only reads shared memory.
      // (Split-K leaves them to splitk_reduce.)
      int it = 0;
      for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x, ++it) {
        int tm, tn;
        tile_coords(tile, tiles_m, tiles_n, tm, tn);
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
    int32_t acc[BN / 2];
    int stage = 0;
    uint32_t phase = 0;
    int it = 0;
    for (int unit = blockIdx.x; unit < num_units; unit += gridDim.x, ++it) {
      int tm, tn, split, kt_begin, kt_count;
      unit_coords<kSplit>(unit, num_tiles, tiles_m, tiles_n, k_tiles, split_k_tiles, tm, tn,
                          split, kt_begin, kt_count);
      // This thread's output rows; their x scales load during the main loop.
      const int64_t row0 = static_cast<int64_t>(tm) * kBlockM + half * 64 + warp * 16 + lane / 4;
      const int64_t row1 = row0 + 8;
      const bool in0 = row0 < m, in1 = row1 < m;
      float xs0 = 0.f, xs1 = 0.f;
      if constexpr (!kSplit) {
        xs0 = in0 ? ep.x_scale[row0 * ep.x_scale_stride] : 0.f;
        xs1 = in1 ? ep.x_scale[row1 * ep.x_scale_stride] : 0.f;
      }

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
        // Raw int32 sums of this split into partial[split]: rows row0 and row0 + 8, for
        // each 8-column group j the column pair 8j + 2 (lane % 4) + {0, 1}. Every in-range
        // (row, col) of the tile is stored, so the workspace needs no zeroing.
        int32_t* part0 = out + static_cast<int64_t>(split) * m * n + row0 * n;
        int32_t* part1 = part0 + 8 * static_cast<int64_t>(n);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int c = 8 * j + 2 * (lane % 4);
          const int col = tn * BN + c;
          if (col < n) {
            const bool has1 = col + 1 < n;
            if (vec2 && has1) {
              const int2 p0 = make_int2(acc[4 * j + 0], acc[4 * j + 1]);
              const int2 p1 = make_int2(acc[4 * j + 2], acc[4 * j + 3]);
              if (in0) *reinterpret_cast<int2*>(part0 + col) = p0;
              if (in1) *reinterpret_cast<int2*>(part1 + col) = p1;
            } else {
              if (in0) {
                part0[col] = acc[4 * j + 0];
                if (has1) part0[col + 1] = acc[4 * j + 1];
              }
              if (in1) {
                part1[col] = acc[4 * j + 2];
                if (has1) part1[col + 1] = acc[4 * j + 3];
              }
            }
          }
        }
      } else {
        // Epilogue from registers: rows row0 and row0 + 8; for each 8-column group j, the
        // column pair 8j + 2 (lane % 4) + {0, 1}.
        const int buf = it & 1;
        mbar_wait(terms_full_bar + 8 * buf, (it >> 1) & 1);
        const float* w_scale = terms + buf * 3 * BN;
        OutT* out0 = out + row0 * n;
        OutT* out1 = out0 + 8 * static_cast<int64_t>(n);
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const int c = 8 * j + 2 * (lane % 4);
          const int col = tn * BN + c;
          if (col < n) {
            const bool has1 = col + 1 < n;
            const float2 ws = *reinterpret_cast<const float2*>(w_scale + c);
            const float2 sh = *reinterpret_cast<const float2*>(w_scale + BN + c);
            const float2 b = *reinterpret_cast<const float2*>(w_scale + 2 * BN + c);
            const ChannelTerms t0{ws.x, sh.x, b.x}, t1{ws.y, sh.y, b.y};
            const float v00 = apply_epilogue(acc[4 * j + 0], xs0, t0);
            const float v01 = apply_epilogue(acc[4 * j + 1], xs0, t1);
            const float v10 = apply_epilogue(acc[4 * j + 2], xs1, t0);
            const float v11 = apply_epilogue(acc[4 * j + 3], xs1, t1);
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
        mbar_arrive(terms_empty_bar + 8 * buf);
      }
    }
  }
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

// A row-major int8 matrix [rows, cols] (row stride `ld` bytes) read as boxes of
// `box_rows` x 128 bytes into 128B-swizzled shared memory; zeros outside the matrix.
bool encode_operand(CUtensorMap* map, const int8_t* ptr, int64_t rows, int64_t cols, int64_t ld,
                    int box_rows) {
  const EncodeTiledFn encode = encode_tiled_fn();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld)};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(kBlockK), static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<int8_t*>(ptr), dims, strides, box,
                elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Split-K: K tiles per split and the split count (every split non-empty).
struct SplitPlan {
  int splits;
  int k_tiles_per_split;
};

constexpr int kMaxSplits = 16;
constexpr int kMinSplitKTiles = 4;  // K tiles (of 128) each split keeps at least

// Splits K when the tiles leave SMs idle. Cost model, in "steps" (one K tile on every SM):
// the busiest CTA runs ceil(units / num_sms) units of (K tiles per split + kUnitSteps, the
// pipeline fill and the epilogue); a split also pays the reduce launch (kReduceSteps) and
// the int32 partials written and read back (8 bytes per output per split) against the bytes
// a step streams (num_sms stages). A split must beat no split by kSplitGain (the model is
// rough; a second kernel and a workspace are not worth a predicted few percent). No split
// when the tiles alone fill the GPU, which keeps every larger-M shape on the unchanged path.
SplitPlan pick_splits(int64_t tiles, int64_t k_tiles, int64_t m, int64_t n, int stage_bytes,
                      int num_sms) {
  SplitPlan plan{1, static_cast<int>(k_tiles)};
  if (tiles >= num_sms) return plan;
  constexpr double kUnitSteps = 2.0, kReduceSteps = 2.0, kSplitGain = 0.9;
  const double step_bytes = static_cast<double>(num_sms) * stage_bytes;
  double best = kSplitGain * (static_cast<double>(k_tiles) + kUnitSteps);
  for (int s = 2; s <= kMaxSplits; ++s) {
    const int64_t per = ceil_div(k_tiles, s);
    if (per < kMinSplitKTiles) break;
    // ceil(k_tiles / per) splits of `per` cover K with a non-empty last split
    // ((splits - 1) * per < k_tiles); it may be fewer than s.
    const int64_t splits = ceil_div(k_tiles, per);
    const double waves = static_cast<double>(ceil_div(tiles * splits, num_sms));
    const double cost = waves * (static_cast<double>(per) + kUnitSteps) + kReduceSteps +
                        8.0 * static_cast<double>(splits) * static_cast<double>(m * n) / step_bytes;
    if (cost < best) {
      best = cost;
      plan = {static_cast<int>(splits), static_cast<int>(per)};
    }
  }
  return plan;
}

template <int BN, typename OutT>
void launch_gemm(const CUtensorMap& tmap_a, const CUtensorMap& tmap_w, int64_t m, int64_t n,
                 int k_tiles, int tiles_m, int tiles_n, const SplitPlan& plan,
                 const Epilogue& ep, OutT* out, bool vec2, int num_sms, cudaStream_t stream) {
  using Cfg = TileConfig<BN>;
  const int64_t units = static_cast<int64_t>(tiles_m) * tiles_n * plan.splits;
  const int grid = static_cast<int>(std::min<int64_t>(units, num_sms));
  auto* kernel = gemm_sm90a_kernel<BN, OutT>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      Cfg::kSmemBytes));
  launch_kernel(kernel, grid, kThreads, Cfg::kSmemBytes, stream, 1, tmap_a, tmap_w,
                static_cast<int>(m), static_cast<int>(n), k_tiles, tiles_m, tiles_n, plan.splits,
                plan.k_tiles_per_split, ep, out, vec2);
}

template <int BN, typename OutT>
void launch_direct(const CUtensorMap& tmap_a, const CUtensorMap& tmap_w, int64_t m, int64_t n,
                   int k_tiles, int tiles_m, int tiles_n, const SplitPlan& plan,
                   const Epilogue& ep, void* out, int num_sms, cudaStream_t stream) {
  const bool vec2 = n % 2 == 0 && reinterpret_cast<uintptr_t>(out) % (2 * sizeof(OutT)) == 0;
  launch_gemm<BN, OutT>(tmap_a, tmap_w, m, n, k_tiles, tiles_m, tiles_n, plan, ep,
                        static_cast<OutT*>(out), vec2, num_sms, stream);
}

template <int BN>
bool launch_out(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                const Epilogue& ep, void* out, OutType out_type, int num_sms, cudaStream_t stream) {
  using Cfg = TileConfig<BN>;
  if (out_type != OutType::kFloat && out_type != OutType::kHalf &&
      out_type != OutType::kBFloat16) {
    return false;
  }
  CUtensorMap tmap_a, tmap_w;
  if (!encode_operand(&tmap_a, a, m, k, lda, kBlockM)) return false;
  if (!encode_operand(&tmap_w, w, n, k, k, BN)) return false;
  const int tiles_m = static_cast<int>(ceil_div(m, kBlockM));
  const int tiles_n = static_cast<int>(ceil_div(n, BN));
  const int k_tiles = static_cast<int>(ceil_div(k, kBlockK));
  const int64_t tiles = static_cast<int64_t>(tiles_m) * tiles_n;
  const SplitPlan plan = pick_splits(tiles, k_tiles, m, n, Cfg::kStageBytes, num_sms);

  if (plan.splits > 1) {
    // int32 partials [splits, M, N]: every element is written by the kernel (no memset).
    // Allocated on the current stream, which is `stream` (ops_cuda.cu launches everything
    // there), so the caching allocator reuses the block only after the reduce has run.
    const at::Tensor partial = at::empty(
        {plan.splits, m, n},
        at::TensorOptions().dtype(at::kInt).device(at::kCUDA, c10::cuda::current_device()));
    int32_t* part = partial.data_ptr<int32_t>();
    // The allocator's blocks are 512-byte aligned; with N even every (split, row, even col)
    // is 8-byte aligned.
    launch_gemm<BN, int32_t>(tmap_a, tmap_w, m, n, k_tiles, tiles_m, tiles_n, plan, ep, part,
                             n % 2 == 0, num_sms, stream);
    splitk_reduce(part, plan.splits, m, n, ep, out, out_type, stream);
    return true;
  }
  switch (out_type) {
    case OutType::kFloat:
      launch_direct<BN, float>(tmap_a, tmap_w, m, n, k_tiles, tiles_m, tiles_n, plan, ep, out,
                               num_sms, stream);
      return true;
    case OutType::kHalf:
      launch_direct<BN, __half>(tmap_a, tmap_w, m, n, k_tiles, tiles_m, tiles_n, plan, ep, out,
                                num_sms, stream);
      return true;
    case OutType::kBFloat16:
      launch_direct<BN, __nv_bfloat16>(tmap_a, tmap_w, m, n, k_tiles, tiles_m, tiles_n, plan, ep,
                                       out, num_sms, stream);
      return true;
  }
  return false;
}

// 256-wide tiles read shared memory most efficiently; 128-wide ones when they fill more SMs.
// Cost model: waves of tiles x tile width, with the narrower tile ~10% less efficient.
int pick_block_n(int64_t m, int64_t n, int num_sms) {
  const int64_t tiles_m = ceil_div(m, kBlockM);
  const int64_t waves256 = ceil_div(tiles_m * ceil_div(n, 256), num_sms);
  const int64_t waves128 = ceil_div(tiles_m * ceil_div(n, 128), num_sms);
  return waves128 * 128 * 11 < waves256 * 256 * 10 ? 128 : 256;
}

}  // namespace

bool gemm_sm90a(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                Epilogue ep, void* out, OutType out_type, int num_sms, cudaStream_t stream) {
  // TMA coordinates and the kernel's tile indices are 32-bit. (The ops already cap K at
  // kMaxK, where the int32 accumulation is exact.)
  if (m < kMinRows || n < 1 || k < 1 || num_sms < 1) return false;
  if (m > INT_MAX - 2 * kBlockM || n > INT_MAX - 512 || k > INT_MAX - kBlockK) return false;
  if (ceil_div(m, kBlockM) * ceil_div(n, 128) > INT_MAX) return false;
  if (k % 16 != 0 || lda % 16 != 0 || lda < k || reinterpret_cast<uintptr_t>(a) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(w) % 16 != 0) {
    return false;  // TMA needs 16-byte aligned bases and row strides
  }
  return pick_block_n(m, n, num_sms) == 256
             ? launch_out<256>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream)
             : launch_out<128>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream);
}

}  // namespace cuda
}  // namespace int8q

#else  // !INT8Q_HAVE_SM90A

namespace int8q {
namespace cuda {

bool gemm_sm90a(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int64_t, Epilogue, void*,
                OutType, int, cudaStream_t) {
  return false;  // built without a 9.0a target
}

}  // namespace cuda
}  // namespace int8q

#endif  // INT8Q_HAVE_SM90A
