// int8 x int8 -> int32 tensor-core GEMM for sm_80 and later (mma.sync m16n8k32), with the
// dequantizing epilogue fused, plus the any-shape fallback GEMM.
//
// A [M, K] int8 (row stride lda) and W [N, K] int8 are both K-major, which is what
// ldmatrix (no int8 transpose) and the m16n8k32 row.col fragments want. Tiles move
// global -> shared with 16-byte cp.async in a STAGES-deep ring; each smem row is BK = 128
// bytes (8 chunks of 16 B) and chunk c of row r is stored at c ^ (r & 7), so the 8 rows an
// ldmatrix phase reads hit 8 distinct bank groups. When the tile grid alone cannot fill the
// GPU (small M), K is split over gridDim.z and a second kernel adds the int32 partials and
// applies the epilogue.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <type_traits>

#include "epilogue.cuh"
#include "kernels.h"
#include "launch.cuh"

namespace int8q {
namespace cuda {
namespace {

constexpr int kBK = 128;  // bytes of K per stage: one 128-byte smem row

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  // src-size 0 zero-fills the 16 bytes without reading: out-of-range rows and K tails.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ void mma_s8(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ int swizzle(int row, int chunk) { return row * kBK + ((chunk ^ (row & 7)) << 4); }

struct GemmArgs {
  const int8_t* a;
  const int8_t* w;
  int64_t lda, m, n, k;
  int k_tiles_per_split;  // K tiles (of kBK) handled by one blockIdx.z
  Epilogue ep;
  void* out;
  int32_t* partial;  // [splits, M, N] when K is split, else null
};

template <typename Out>
__device__ __forceinline__ void store_pair(Out* out, int64_t n_total, int64_t row, int64_t col,
                                           float v0, float v1) {
  Out* p = out + row * n_total + col;
  if (col + 1 < n_total) {
    p[0] = to_out<Out>(v0);
    p[1] = to_out<Out>(v1);
  } else if (col < n_total) {
    p[0] = to_out<Out>(v0);
  }
}

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES, typename Out>
__global__ void __launch_bounds__(WARPS_M* WARPS_N * 32)
    gemm_s8_kernel(const GemmArgs args) {
  constexpr int kThreads = WARPS_M * WARPS_N * 32;
  constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
  constexpr int MT = WM / 16, NT = WN / 8;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16x16");
  constexpr int kStageA = BM * kBK, kStageB = BN * kBK;
  constexpr int kChunksA = BM * kBK / 16, kChunksB = BN * kBK / 16;
  static_assert(kChunksA % kThreads == 0 && kChunksB % kThreads == 0, "uneven tile load");

  extern __shared__ __align__(128) int8_t smem[];
  int8_t* sa = smem;
  int8_t* sb = smem + STAGES * kStageA;

  // Grouped tile order: GROUP consecutive tile-rows share the same W columns in L2.
  constexpr int kGroup = 8;
  const int tiles_m = static_cast<int>((args.m + BM - 1) / BM);
  const int tiles_n = static_cast<int>((args.n + BN - 1) / BN);
  const int pid = blockIdx.x;
  const int per_group = kGroup * tiles_n;
  const int first_m = (pid / per_group) * kGroup;
  const int group_rows = min(tiles_m - first_m, kGroup);
  const int tile_m = first_m + (pid % per_group) % group_rows;
  const int tile_n = (pid % per_group) / group_rows;
  const int64_t m0 = static_cast<int64_t>(tile_m) * BM, n0 = static_cast<int64_t>(tile_n) * BN;

  const int k_tiles_total = static_cast<int>((args.k + kBK - 1) / kBK);
  const int kt_begin = blockIdx.z * args.k_tiles_per_split;
  const int kt_end = min(kt_begin + args.k_tiles_per_split, k_tiles_total);
  const int k_tiles = max(kt_end - kt_begin, 0);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;

  // The tile's weight rows (the first part of their K range, within a budget) start moving
  // into L2 while the kernel before, the activation quantizer, may still run; A waits
  // (launch.cuh). Row starts are 16-byte aligned: K % 16 == 0 and 16-byte aligned W are
  // required of this kernel (run_gemm).
  {
    const int64_t k0 = static_cast<int64_t>(kt_begin) * kBK;
    const int rows = static_cast<int>(min(static_cast<int64_t>(BN), args.n - n0));
    const int64_t range = min(static_cast<int64_t>(k_tiles) * kBK, args.k - k0);
    const int bytes = static_cast<int>(min(range, static_cast<int64_t>(kPrefetchBytesPerCta / BN / 16 * 16)));
    for (int r = tid; r < rows && bytes > 0; r += kThreads) prefetch_l2_bytes(args.w + (n0 + r) * args.k + k0, bytes);
  }
  pdl_wait();  // A may come from the quantize kernel just before (launch.cuh)
  pdl_launch_dependents();

  // kChunks 16-byte chunks (rows of kBK bytes from row r0 of a [rows, K] operand with row
  // stride ld) into the swizzled stage at dst; chunks outside the operand are zero-filled.
  auto load_operand = [&](auto chunks_c, int8_t* dst, const int8_t* src, int64_t r0,
                          int64_t rows, int64_t ld, int64_t k0) {
    constexpr int kChunks = decltype(chunks_c)::value;
#pragma unroll
    for (int i = 0; i < kChunks / kThreads; ++i) {
      const int c = tid + i * kThreads, row = c >> 3, chunk = c & 7;
      const int64_t gr = r0 + row, gk = k0 + chunk * 16;
      const bool ok = gr < rows && gk < args.k;
      cp_async_16(smem_addr(dst + swizzle(row, chunk)), ok ? src + gr * ld + gk : src, ok);
    }
  };
  auto load_tile = [&](int kt, int stage) {
    const int64_t k0 = static_cast<int64_t>(kt_begin + kt) * kBK;
    load_operand(std::integral_constant<int, kChunksA>{}, sa + stage * kStageA, args.a, m0, args.m,
                 args.lda, k0);
    load_operand(std::integral_constant<int, kChunksB>{}, sb + stage * kStageB, args.w, n0, args.n,
                 args.k, k0);
  };

  int32_t acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) load_tile(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt landed for every thread; stage (kt-1) % STAGES is free again
    const int next = kt + STAGES - 1;
    if (next < k_tiles) load_tile(next, next % STAGES);
    cp_async_commit();

    const int8_t* a_st = sa + (kt % STAGES) * kStageA;
    const int8_t* b_st = sb + (kt % STAGES) * kStageB;
#pragma unroll
    for (int ks = 0; ks < kBK / 32; ++ks) {
      uint32_t af[MT][4];
      uint32_t bf[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int row = warp_m * WM + i * 16 + (lane & 15);
        ldmatrix_x4(af[i], smem_addr(a_st + swizzle(row, ks * 2 + (lane >> 4))));
      }
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        const int row = warp_n * WN + j * 8 + ((lane >> 4) << 3) + (lane & 7);
        uint32_t r[4];
        ldmatrix_x4(r, smem_addr(b_st + swizzle(row, ks * 2 + ((lane >> 3) & 1))));
        bf[j][0] = r[0];
        bf[j][1] = r[1];
        bf[j + 1][0] = r[2];
        bf[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_s8(acc[i][j], af[i], bf[j][0], bf[j][1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue. Accumulator (i, j): rows gid and gid + 8, columns 2 * tig and 2 * tig + 1.
  const int gid = lane >> 2, tig = lane & 3;
  Out* out = static_cast<Out*>(args.out);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t col = n0 + warp_n * WN + j * 8 + tig * 2;
    if (col >= args.n) continue;
    if (args.partial) {
      int32_t* part = args.partial + static_cast<int64_t>(blockIdx.z) * args.m * args.n;
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t row = m0 + warp_m * WM + i * 16 + gid + h * 8;
          if (row >= args.m) continue;
          part[row * args.n + col] = acc[i][j][2 * h];
          if (col + 1 < args.n) part[row * args.n + col + 1] = acc[i][j][2 * h + 1];
        }
      continue;
    }
    const ChannelTerms t0 = channel_terms(args.ep, col);
    const ChannelTerms t1 = col + 1 < args.n ? channel_terms(args.ep, col + 1) : t0;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = m0 + warp_m * WM + i * 16 + gid + h * 8;
        if (row >= args.m) continue;
        const float xs = args.ep.x_scale[row * args.ep.x_scale_stride];
        store_pair(out, args.n, row, col, apply_epilogue(acc[i][j][2 * h], xs, t0),
                   apply_epilogue(acc[i][j][2 * h + 1], xs, t1));
      }
  }
}

// Adds the split-K int32 partials (exact) and applies the epilogue. Each thread owns
// kReduceVec consecutive outputs of one row: one 16-byte load per split (all splits in
// flight together), 32-bit index math, and the row's x scale read once.
constexpr int kReduceVec = 4;

template <typename Out, bool kVec>
__global__ void __launch_bounds__(256)
    splitk_reduce_kernel(const int32_t* __restrict__ partial, int splits, int64_t m, int64_t n,
                         const Epilogue ep, Out* __restrict__ out) {
  pdl_wait();  // the partials come from the GEMM kernel just before
  pdl_launch_dependents();
  constexpr int V = kVec ? kReduceVec : 1;
  const int64_t total = m * n;
  const int64_t groups = total / V;  // with kVec, n % V == 0: a group never spans rows
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; g < groups; g += stride) {
    const int64_t idx = g * V;
    // The V partial sums of split s (streaming loads: each is read once).
    auto load = [&](int s, int32_t (&v)[V]) {
      const int32_t* p = partial + s * total + idx;
      if constexpr (kVec) {
        const int4 q = __ldcs(reinterpret_cast<const int4*>(p));
        v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
      } else {
        v[0] = __ldcs(p);
      }
    };
    int32_t acc[V] = {};
    int s = 0;
    for (; s + 4 <= splits; s += 4) {  // four loads in flight per thread
      int32_t v[4][V];
#pragma unroll
      for (int u = 0; u < 4; ++u) load(s + u, v[u]);
#pragma unroll
      for (int u = 0; u < 4; ++u)
#pragma unroll
        for (int i = 0; i < V; ++i) acc[i] += v[u][i];
    }
    for (; s < splits; ++s) {
      int32_t v[V];
      load(s, v);
#pragma unroll
      for (int i = 0; i < V; ++i) acc[i] += v[i];
    }
    // 32-bit division where the index fits (always at the small M where K is split).
    const int64_t row = total <= 0xffffffffll ? static_cast<uint32_t>(idx) / static_cast<uint32_t>(n) : idx / n;
    const int64_t col = idx - row * n;
    const float xs = ep.x_scale[row * ep.x_scale_stride];
#pragma unroll
    for (int i = 0; i < V; ++i) out[idx + i] = to_out<Out>(apply_epilogue(acc[i], xs, channel_terms(ep, col + i)));
  }
}

// The any-shape fallback: one thread per output, int32 dot product. Correct, not fast.
template <typename Out>
__global__ void gemm_generic_kernel(const int8_t* a, int64_t lda, const int8_t* w, int64_t m,
                                    int64_t n, int64_t k, const Epilogue ep, Out* out) {
  pdl_wait();
  pdl_launch_dependents();
  const int64_t total = m * n;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / n, col = idx % n;
    const int8_t* ap = a + row * lda;
    const int8_t* wp = w + col * k;
    int32_t acc = 0;
    for (int64_t i = 0; i < k; ++i) acc += static_cast<int32_t>(ap[i]) * static_cast<int32_t>(wp[i]);
    out[idx] = to_out<Out>(apply_epilogue(acc, ep.x_scale[row * ep.x_scale_stride], channel_terms(ep, col)));
  }
}

template <typename F>
void dispatch_out(OutType t, F&& f) {
  switch (t) {
    case OutType::kFloat: f(static_cast<float*>(nullptr)); break;
    case OutType::kHalf: f(static_cast<__half*>(nullptr)); break;
    case OutType::kBFloat16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
  }
}

int elementwise_blocks(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + 255) / 256, 65535));
}

// Measured on an H200 at M = 16 and 32 (2026-11-26): 2 CTAs per SM beat 1 and 4
// on 4096x4096 and 4096x14336 (e.g. 4096x4096 M=32 14.4 us against 16.7 and 15.0).
constexpr int kSmallTileCtasPerSm = 2;

template <int BM, int BN, int WARPS_M, int WARPS_N, int STAGES>
void launch_tiles(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                  const Epilogue& ep, void* out, OutType out_type, int num_sms, cudaStream_t stream) {
  const int64_t tiles = ((m + BM - 1) / BM) * ((n + BN - 1) / BN);
  const int k_tiles = static_cast<int>((k + kBK - 1) / kBK);
  // Split K only while the tiles leave SMs idle and each split keeps >= 4 K tiles. The
  // small-M tile (BM = 32: 4 warps, 48 KB of shared memory) fits several CTAs per SM and
  // streams the weights with only its STAGES loads in flight, so there it splits until
  // about kSmallTileCtasPerSm CTAs per SM keep loads in flight.
  const int ctas_per_sm = BM == 32 ? kSmallTileCtasPerSm : 1;
  int splits = 1;
  while (tiles * splits * 2 <= static_cast<int64_t>(num_sms) * ctas_per_sm && k_tiles / (splits * 2) >= 4) {
    splits *= 2;
  }
  const int per_split = (k_tiles + splits - 1) / splits;
  splits = (k_tiles + per_split - 1) / per_split;

  GemmArgs args{a, w, lda, m, n, k, per_split, ep, out, nullptr};
  at::Tensor partial;
  if (splits > 1) {
    partial = at::empty({splits, m, n}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, c10::cuda::current_device()));
    args.partial = partial.data_ptr<int32_t>();
  }
  constexpr int kSmem = STAGES * (BM + BN) * kBK;
  dim3 grid(static_cast<unsigned>(tiles), 1, splits);
  dispatch_out(out_type, [&](auto* tag) {
    using Out = std::remove_pointer_t<decltype(tag)>;
    auto kernel = gemm_s8_kernel<BM, BN, WARPS_M, WARPS_N, STAGES, Out>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem));
    launch_kernel(kernel, grid, WARPS_M * WARPS_N * 32, kSmem, stream, 1, args);
  });
  if (splits > 1) splitk_reduce(args.partial, splits, m, n, ep, out, out_type, stream);
}

}  // namespace

void gemm_sm80(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
               Epilogue ep, void* out, OutType out_type, int num_sms, cudaStream_t stream) {
  // Larger tiles move fewer shared-memory bytes per MAC (ldmatrix + cp.async traffic is
  // what caps mma.sync here); they need the shared memory of an A100/H100-class part.
  const size_t smem = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  if (m > 1024 && smem >= 4 * (128 + 256) * kBK) {
    launch_tiles<128, 256, 2, 4, 4>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream);
  } else if (m > 1024 && smem >= 3 * (128 + 256) * kBK) {
    launch_tiles<128, 256, 2, 4, 3>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream);
  } else if (m > 256) {
    launch_tiles<128, 128, 2, 4, 3>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream);
  } else if (m > 64) {
    launch_tiles<64, 128, 2, 4, 4>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream);
  } else {
    launch_tiles<32, 64, 1, 4, 4>(a, lda, w, m, n, k, ep, out, out_type, num_sms, stream);
  }
}

void splitk_reduce(const int32_t* partial, int splits, int64_t m, int64_t n, Epilogue ep,
                   void* out, OutType out_type, cudaStream_t stream) {
  dispatch_out(out_type, [&](auto* tag) {
    using Out = std::remove_pointer_t<decltype(tag)>;
    // 16-byte partial loads need N % 4 == 0 (rows then start 16-byte aligned in the
    // allocator's 512-byte aligned workspace).
    if (n % kReduceVec == 0 && reinterpret_cast<uintptr_t>(partial) % 16 == 0) {
      launch_kernel(splitk_reduce_kernel<Out, true>, elementwise_blocks(m * n / kReduceVec), 256, 0,
                    stream, 1, partial, splits, m, n, ep, static_cast<Out*>(out));
    } else {
      launch_kernel(splitk_reduce_kernel<Out, false>, elementwise_blocks(m * n), 256, 0, stream, 1,
                    partial, splits, m, n, ep, static_cast<Out*>(out));
    }
  });
}

void gemm_generic(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                  Epilogue ep, void* out, OutType out_type, cudaStream_t stream) {
  dispatch_out(out_type, [&](auto* tag) {
    using Out = std::remove_pointer_t<decltype(tag)>;
    launch_kernel(gemm_generic_kernel<Out>, elementwise_blocks(m * n), 256, 0, stream, 1, a, lda, w,
                  m, n, k, ep, static_cast<Out*>(out));
  });
}

}  // namespace cuda
}  // namespace int8q
