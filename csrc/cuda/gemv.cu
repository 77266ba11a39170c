// Decode-time W8A8 linear for a few rows (M <= kMaxM = 8): each CTA quantizes the activation rows
// into shared memory itself (no separate launch, no round trip of codes through memory),
// then its warps stream int8 weight rows once with 16-byte no-allocate loads. At this M
// the weight bytes set the time; everything else is arranged to keep enough weight loads
// in flight on every SM.
//
// Two kernels:
//  - gemv_kernel (M < kMmaMinM): dp4a on CUDA cores, warps own whole weight rows.
//  - gemv_mma_kernel (kMmaMinM <= M <= kMaxM): mma.sync m16n8k32 with the weights on the
//    16-row side and the tokens on the 8-column side (one or two n8 groups), so the cost
//    per weight byte does not grow with M. Each CTA owns a contiguous range of 16-row
//    weight tiles; its warps split (tile, K) evenly and add their int32 partial sums into
//    shared memory, so every CTA keeps 16 warps of loads in flight whatever N / 16 is. On
//    sm_90 the CTAs of a thread-block cluster share a tile range and split K: each reads,
//    takes the row absmax of and quantizes only its slice of the activation (the part of
//    the work every CTA repeats), and the row maxima and int32 sums are combined through
//    distributed shared memory. A slice whose codes do not fit in shared memory is
//    processed in column steps.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdint>

#include "../quant_math.h"
#include "cluster.cuh"
#include "epilogue.cuh"
#include "kernels.h"
#include "launch.cuh"
#include "row_quant.cuh"

namespace int8q {
namespace cuda {
namespace {

using namespace row_quant;

// ---- Dispatch and decline thresholds (estimates; tune by measuring) --------------------
//
// M from kMmaMinM up to kMaxM runs the tensor-core kernel, smaller M the dp4a kernel.
constexpr int kMmaMinM = 3;
//
// Both kernels read the m x K activation from L2 in every CTA (the tensor-core kernel only
// the K slice of its CTA when clusters split K): once for the row absmax (dynamic scale)
// and once to quantize. x_bytes = grid * m * (K or slice) * sizeof(x elem) * passes. The
// caller's alternative (quantize_rows + tensor-core GEMM) streams the weights well below
// the fused kernels' rate at M <= 16 (H200: 1.6-3.3 TB/s against ~4), so the fused kernel
// is declined only when the activation traffic clearly outweighs that:
//   tensor-core kernel: x_bytes > kMmaXPerWeightByte * N * K + kMmaXFloorBytes.
// With an L2 read rate of about twice the HBM rate, 2.0 means "the activation reads cost
// about as much time as the weights". M = 16, fp16, dynamic, grid 128 (132 SMs), with
// clusters of 8 (K >= 8192) or 4 (K = 4096) on sm_90 / without clusters: K=4096/N=4096
// reads 8 / 34 MB (limit 66 MB), K=14336/N=4096 15 / 117 MB (limit 151 MB),
// K=4096/N=14336 8 / 34 MB (limit 151 MB), K=8192/N=28672 8 / 67 MB (limit 503 MB).
constexpr double kMmaXPerWeightByte = 2.0;
constexpr int64_t kMmaXFloorBytes = 32ll << 20;
//   dp4a kernel (M < kMmaMinM): x_bytes > max(kDp4aXPerWeightByte * N * K, kDp4aXFloorBytes).
constexpr double kDp4aXPerWeightByte = 0.5;
constexpr int64_t kDp4aXFloorBytes = 16ll << 20;
// Clusters (sm_90): CTAs that share a tile range and split K (each reads and quantizes
// only its slice of the activation). Used when the clusters that fit at once still cover
// at least kClusterMinSmShare[0] / [1] of the SMs and every slice has kMinClusterSliceK
// columns or more; otherwise smaller clusters, down to none.
constexpr int kMaxClusterSize = 8;
constexpr int kMinClusterSliceK = 1024;
constexpr int64_t kClusterMinSmShare[2] = {15, 16};
// Share of the L2 the tensor-core kernel fills with weight prefetches issued before each
// activation pass (the weights then stream from HBM while the CTA quantizes).
constexpr int kPrefetchL2Fraction = 2;  // 1 / 2 of the L2


// ---- The kernel -----------------------------------------------------------------------

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
// Measured on an H200 (benchmarks/bench_dispatch.py): at M = 12 and 16 the separate quantize
// kernel + GEMM beat this kernel on all four LLM shapes, at M <= 8 this kernel wins on three.
// The tensor-core kernel also compiles for MT = 16 should that change.
constexpr int kMaxM = 8;
constexpr int kChunk = 32 * 16;      // bytes of one weight row a warp loads per instruction
constexpr int kPrologueLoads = 4;    // 16-byte activation loads in flight per thread

// MT: rows of x the kernel is compiled for (m <= MT). kRows weight rows per warp share
// each 16-byte read of x codes from shared memory (fewer reads per dp4a as M grows);
// every lane keeps 8 weight loads (128 bytes) in flight, 64-128 KB per SM. CTAs are
// persistent, 1-2 per SM, so the activation prologue runs only once or twice per SM.
template <int MT>
struct GemvConfig {
  static constexpr int kRows = MT == 1 ? 1 : 2;
  static constexpr int kLoads = 8 / kRows;
  static constexpr int kCtasPerSm = MT == 1 ? 2 : 1;  // within 64 / 128 registers
};

__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

// Weights are read exactly once: keep them out of L1 and first in line for L2 eviction.
__device__ __forceinline__ int4 load_weights16(const int8_t* p, uint64_t policy) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.s32 {%0, %1, %2, %3}, [%4], %5;"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p), "l"(policy));
  return v;
}

// Starts fetching the 16 bytes at p into L2 without holding a register.
__device__ __forceinline__ void prefetch_l2(const int8_t* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Sums V per-lane values over the warp in V - 1 + log2(32 / V) shuffles instead of
// 5 * V: each step swaps half of the values with the partner lane. On return every lane
// holds the full sum of value lane / (32 / V).
template <int V>
__device__ __forceinline__ int warp_sum_transposed(int (&v)[V], int lane) {
  static_assert(V >= 1 && V <= 32 && (V & (V - 1)) == 0, "V must be a power of two <= 32");
#pragma unroll
  for (int s = 0; (V >> s) > 1; ++s) {
    const int half = (V >> s) / 2;
    const bool upper = lane & (16 >> s);
#pragma unroll
    for (int i = 0; i < half; ++i) {
      const int send = upper ? v[i] : v[i + half];
      const int keep = upper ? v[i + half] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, 16 >> s);
    }
  }
#pragma unroll
  for (int o = 16 / V; o > 0; o /= 2) v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
  return v[0];
}

__device__ __forceinline__ void store_out(void* out, OutType type, int64_t i, float v) {
  switch (type) {
    case OutType::kFloat: static_cast<float*>(out)[i] = v; break;
    case OutType::kHalf: static_cast<__half*>(out)[i] = to_out<__half>(v); break;
    default: static_cast<__nv_bfloat16*>(out)[i] = to_out<__nv_bfloat16>(v); break;
  }
}

// Quantizes x [m, k] into xq (shared, [m][k]) and sets x_scale[row] (shared): the scale
// that dequantizes the row, NaN for a row holding NaN/Inf. Ends with __syncthreads.
template <typename T, int MT>
__device__ __forceinline__ void quantize_activation(const typename Elem<T>::Raw* __restrict__ x,
                                                    int m, int k, int64_t ldx, StaticParam scale,
                                                    StaticParam shift, int8_t* xq, float* x_scale) {
  constexpr int N = 16 / sizeof(T);
  using P = Pack<typename Elem<T>::Raw, N>;
  __shared__ uint32_t red[kWarps][MT];
  __shared__ float row_s[MT], row_inv[MT];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int vpr = k / N, total = m * vpr;
  const bool is_static = scale.present;
  const float lo = shift.present ? kShiftedMin : -kSymMax;
  const float sh = shift.present ? shift.load() : 0.f;
  const float s_static = is_static ? checked_static_scale(scale.load()) : 0.f;
  auto row_of = [&](int e) { return MT == 1 ? 0 : e / vpr; };
  auto load = [&](int e) {
    const int row = row_of(e);
    return reinterpret_cast<const P*>(x + row * ldx)[e - row * vpr];
  };

  uint32_t amax[MT];
  auto reduce_amax = [&]() {
#pragma unroll
    for (int r = 0; r < MT; ++r) {
      const uint32_t b = __reduce_max_sync(0xffffffffu, amax[r]);
      if (lane == 0) red[warp][r] = b;
    }
    __syncthreads();
  };
  auto row_amax = [&](int r) {
    uint32_t b = 0;
    for (int w = 0; w < kWarps; ++w) b = max(b, red[w][r]);
    return b;
  };

#pragma unroll
  for (int r = 0; r < MT; ++r) amax[r] = 0;
  if (!is_static) {
    for (int e0 = tid; e0 < total; e0 += kThreads * kPrologueLoads) {
      P p[kPrologueLoads];
#pragma unroll
      for (int u = 0; u < kPrologueLoads; ++u) {
        const int e = e0 + u * kThreads;
        p[u] = e < total ? load(e) : P{};
      }
#pragma unroll
      for (int u = 0; u < kPrologueLoads; ++u) {
        const int row = row_of(e0 + u * kThreads);
        const uint32_t b = pack_absmax_bits<T, N>(p[u]);
#pragma unroll
        for (int r = 0; r < MT; ++r) amax[r] = row == r ? max(amax[r], b) : amax[r];
      }
    }
    reduce_amax();
    if (tid < m) {
      const uint32_t b = row_amax(tid);
      const float s = scale_from_absmax(b < Elem<T>::kInf ? Elem<T>::to_float(b) : NAN);
      row_s[tid] = s;
      row_inv[tid] = RowQuantizer::inverse(s);
      x_scale[tid] = s;
    }
    __syncthreads();
  }

  const float inv_static = is_static ? RowQuantizer::inverse(s_static) : 0.f;
  for (int e0 = tid; e0 < total; e0 += kThreads * kPrologueLoads) {
    P p[kPrologueLoads];
#pragma unroll
    for (int u = 0; u < kPrologueLoads; ++u) {
      const int e = e0 + u * kThreads;
      p[u] = e < total ? load(e) : P{};
    }
    uint32_t redo = 0;
#pragma unroll
    for (int u = 0; u < kPrologueLoads; ++u) {
      const int e = e0 + u * kThreads;
      if (e < total) {
        const int row = row_of(e);
        if (is_static) {
          const uint32_t b = pack_absmax_bits<T, N>(p[u]);
#pragma unroll
          for (int r = 0; r < MT; ++r) amax[r] = row == r ? max(amax[r], b) : amax[r];
        }
        const RowQuantizer rq(is_static ? s_static : row_s[row], is_static ? inv_static : row_inv[row], lo, sh);
        Codes<N> c;
        if (!rq.try_pack<T, N>(p[u], c)) redo |= 1u << u;
        reinterpret_cast<Codes<N>*>(xq)[e] = c;
      }
    }
    if (redo) {  // rare: values next to a rounding boundary, NaNs, extreme scales
#pragma unroll 1
      for (int u = 0; u < kPrologueLoads; ++u) {
        if (!(redo & (1u << u))) continue;
        const int e = e0 + u * kThreads;
        const int row = row_of(e);
        const RowQuantizer rq(is_static ? s_static : row_s[row], is_static ? inv_static : row_inv[row], lo, sh);
        reinterpret_cast<Codes<N>*>(xq)[e] = rq.exact_pack<T, N>(load(e));
      }
    }
  }
  if (is_static) {
    reduce_amax();
    if (tid < m) x_scale[tid] = row_amax(tid) < Elem<T>::kInf ? s_static : NAN;
  }
  __syncthreads();
}

// Persistent grid: warp gw handles row groups gw, gw + total_warps, ... (kRows output rows
// each, over all of K, kLoads 512-byte chunks per row per iteration).
template <typename T, int MT>
__global__ void __launch_bounds__(kThreads, GemvConfig<MT>::kCtasPerSm)
    gemv_kernel(const typename Elem<T>::Raw* __restrict__ x, int m, int n, int k, int64_t ldx,
                const int8_t* __restrict__ w, StaticParam scale, StaticParam shift, Epilogue ep,
                void* __restrict__ out, OutType out_type) {
  constexpr int R = GemvConfig<MT>::kRows;
  constexpr int U = GemvConfig<MT>::kLoads;
  constexpr int V = MT * R;  // accumulators per lane
  constexpr int kSpan = 32 / V;
  extern __shared__ __align__(16) int8_t xq[];  // [m][k] activation codes
  __shared__ float x_scale[MT];

  const int lane = threadIdx.x & 31;
  const int groups = (n + R - 1) / R;
  const int total_warps = gridDim.x * kWarps;
  const int iters = (k + U * kChunk - 1) / (U * kChunk);
  const uint64_t policy = evict_first_policy();

  int4 wv[R][U];
  auto weight_row = [&](int g, int r) { return w + static_cast<int64_t>(min(g * R + r, n - 1)) * k; };
  auto load_iter = [&](int g, int it) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int8_t* row = weight_row(g, r);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kk = it * U * kChunk + u * kChunk + lane * 16;
        wv[r][u] = make_int4(0, 0, 0, 0);
        if (kk < k) wv[r][u] = load_weights16(row + kk, policy);
      }
    }
  };

  int g = blockIdx.x * kWarps + (threadIdx.x >> 5);
  // The first weights stream into L2 while the CTA quantizes the activation.
  if (g < groups) {
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int kk = u * kChunk + lane * 16;
        if (kk < k) prefetch_l2(weight_row(g, r) + kk);
      }
  }
  // L2 prefetches may run ahead of the previous kernel (L2 is where its writes land);
  // nothing is read into the SM before the wait (launch.cuh).
  pdl_wait();
  pdl_launch_dependents();
  quantize_activation<T, MT>(x, m, k, ldx, scale, shift, xq, x_scale);
  if (g >= groups) return;

  int xrow[MT];  // rows past m read row m - 1; their sums are never stored
#pragma unroll
  for (int r = 0; r < MT; ++r) xrow[r] = min(r, m - 1) * k;

  // Output (value index lane / kSpan) this lane stores at the end of a group.
  const int out_m = (lane / kSpan) / R;
  const int out_r = (lane / kSpan) % R;
  ChannelTerms terms = channel_terms(ep, min(g * R + out_r, n - 1));
  load_iter(g, 0);

  int acc[MT][R];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[i][r] = 0;

  int it = 0;
  while (true) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      // Past the end of K the weights are zero; read any valid codes.
      const int kk = min(it * U * kChunk + u * kChunk + lane * 16, k - 16);
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int4 xv = *reinterpret_cast<const int4*>(xq + xrow[i] + kk);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          acc[i][r] = __dp4a(wv[r][u].x, xv.x, acc[i][r]);
          acc[i][r] = __dp4a(wv[r][u].y, xv.y, acc[i][r]);
          acc[i][r] = __dp4a(wv[r][u].z, xv.z, acc[i][r]);
          acc[i][r] = __dp4a(wv[r][u].w, xv.w, acc[i][r]);
        }
      }
    }
    if (++it == iters) {
      int v[V];
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) v[i * R + r] = acc[i][r];
      const int sum = warp_sum_transposed<V>(v, lane);
      const int row = g * R + out_r;
      if (lane % kSpan == 0 && out_m < m && row < n) {
        store_out(out, out_type, static_cast<int64_t>(out_m) * n + row,
                  apply_epilogue(sum, x_scale[out_m], terms));
      }
      g += total_warps;
      if (g >= groups) break;
      it = 0;
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[i][r] = 0;
      terms = channel_terms(ep, min(g * R + out_r, n - 1));
    }
    load_iter(g, it);
  }
}

// ---- Tensor-core kernel (kMmaMinM <= M <= 16) --------------------------------------------

constexpr int kTcThreads = 512;
constexpr int kTcWarps = kTcThreads / 32;
constexpr int kTileRows = 16;       // weight rows per tile: the m16 side of the mma
constexpr int kKChunk = 64;         // bytes of K per chunk: 16 per lane of a quad
constexpr int kTcLoads = 8;         // chunks per weight row a warp loads before using them
constexpr int kMaxBatchTiles = 64;  // tiles whose int32 sums live in shared memory at once
constexpr int kRowGroup = 8;        // activation rows the quantize pass loads together

// How a launch splits the work (computed on the host, the same for every CTA).
struct TcPlan {
  int tiles;      // ceil(n / 16)
  int slice;      // K columns per CTA of a cluster: K, or a multiple of 64 (the last CTA less)
  int kc;         // K columns quantized per step within the slice: the slice, or a multiple of 64
  int ldq;        // shared row stride of the codes (>= round_up(kc, 64))
  int batch;      // tiles per batch of shared int32 sums
  int pf_chunks;  // 64-byte chunks per weight row each warp prefetches into L2 per step
};

// Thread-block clusters (sm_90, cluster.cuh): the CTAs of a cluster share a tile range and
// split K, so each reads and quantizes only its slice of the activation; row maxima and
// int32 sums are combined through distributed shared memory. Without clusters the size is 1.

// The 32-bit word at the address of p (shared) in CTA `rank` of the cluster.
__device__ __forceinline__ uint32_t ld_cluster_u32(const void* p, int rank, int csize) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (csize > 1) {
    const uint32_t ra = map_to_rank(static_cast<uint32_t>(__cvta_generic_to_shared(p)), rank);
    uint32_t v;
    asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(ra) : "memory");
    return v;
  }
#endif
  return *static_cast<const volatile uint32_t*>(p);
}

__device__ __forceinline__ int4 lds16(uint32_t addr) {
  int4 v;
  asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr)
               : "memory");
  return v;
}

__device__ __forceinline__ void mma_s8(int (&d)[4], int a0, int a1, int a2, int a3, int b0, int b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <typename T>
__device__ __forceinline__ uint4 load_x16(const T* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

template <typename P>
__device__ __forceinline__ P as_pack(const uint4& v) {
  static_assert(sizeof(P) == sizeof(uint4), "16-byte packs");
  P p;
  memcpy(&p, &v, sizeof(P));
  return p;
}

// Row maxima of the magnitude bits over columns [c0, c0 + cw) of x [m rows], folded into
// row_amax (shared). Every thread walks whole columns of 16-byte vectors down the m rows,
// so the m loads of one column are in flight together.
template <typename T, int MT>
__device__ __forceinline__ void absmax_rows(const typename Elem<T>::Raw* __restrict__ x, int m, int64_t ldx,
                                            int c0, int cw, uint32_t* row_amax) {
  constexpr int N = 16 / sizeof(T);
  const int tid = threadIdx.x, lane = tid & 31;
  const typename Elem<T>::Raw* xb = x + c0;
  uint32_t acc[MT];
#pragma unroll
  for (int r = 0; r < MT; ++r) acc[r] = 0;
  for (int v = tid; v < cw / N; v += kTcThreads) {
    uint4 p[MT];
#pragma unroll
    for (int r = 0; r < MT; ++r) p[r] = r < m ? load_x16(xb + r * ldx + v * N) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int r = 0; r < MT; ++r)
      if (r < m) acc[r] = lanes_absmax<T>(p[r], acc[r]);
  }
#pragma unroll
  for (int r = 0; r < MT; ++r) {
    if (r < m) {
      const uint32_t b = __reduce_max_sync(0xffffffffu, lanes_fold<T>(acc[r]));
      if (lane == 0 && b != 0) atomicMax(&row_amax[r], b);
    }
  }
}

// The quantizer's parameters, the same for every row (kept in shared memory).
struct QuantParams {
  float lo, sh, s_static, inv_static;
};

// Quantizes columns [c0, c0 + cw) of x into xq (shared, row stride ldq). With a static
// scale it also folds the rows' magnitude bits into row_amax (for the NaN rule). Walks
// the columns backwards: those the absmax pass read last are the likeliest still in L1.
template <typename T, int MT>
__device__ __forceinline__ void quantize_columns(const typename Elem<T>::Raw* __restrict__ x, int m,
                                                 int64_t ldx, int c0, int cw, bool is_static,
                                                 const QuantParams& qp, const float* row_s,
                                                 const float* row_inv, int8_t* xq, int ldq,
                                                 uint32_t* row_amax) {
  constexpr int N = 16 / sizeof(T);
  using P = Pack<typename Elem<T>::Raw, N>;
  const int tid = threadIdx.x, lane = tid & 31;
  const float s_static = qp.s_static, inv_static = qp.inv_static, lo = qp.lo, sh = qp.sh;
  const typename Elem<T>::Raw* xb = x + c0;
  auto quantizer = [&](int r) {
    return RowQuantizer(is_static ? s_static : row_s[r], is_static ? inv_static : row_inv[r], lo, sh);
  };
  // Row groups outermost: the group's maxima (static scale) need only kRowGroup registers.
  for (int r0 = 0; r0 < m; r0 += kRowGroup) {
    uint32_t acc[kRowGroup];
#pragma unroll
    for (int i = 0; i < kRowGroup; ++i) acc[i] = 0;
    for (int v = cw / N - 1 - tid; v >= 0; v -= kTcThreads) {
      uint4 p[kRowGroup];  // kRowGroup loads in flight
#pragma unroll
      for (int i = 0; i < kRowGroup; ++i) {
        p[i] = r0 + i < m ? load_x16(xb + (r0 + i) * ldx + v * N) : make_uint4(0, 0, 0, 0);
      }
      uint32_t redo = 0;
#pragma unroll
      for (int i = 0; i < kRowGroup; ++i) {
        const int r = r0 + i;
        if (r < m) {
          if (is_static) acc[i] = lanes_absmax<T>(p[i], acc[i]);
          Codes<N> c;
          if (!quantizer(r).template try_pack<T, N>(as_pack<P>(p[i]), c)) redo |= 1u << i;
          reinterpret_cast<Codes<N>*>(xq + r * ldq)[v] = c;
        }
      }
      if (redo) {  // rare: values next to a rounding boundary, NaNs, extreme scales
#pragma unroll 1
        for (int i = 0; i < kRowGroup; ++i) {
          if (!(redo & (1u << i))) continue;
          const int r = r0 + i;
          const P q = as_pack<P>(load_x16(xb + r * ldx + v * N));
          reinterpret_cast<Codes<N>*>(xq + r * ldq)[v] = quantizer(r).template exact_pack<T, N>(q);
        }
      }
    }
    if (is_static) {
#pragma unroll
      for (int i = 0; i < kRowGroup; ++i) {
        if (r0 + i < m) {
          const uint32_t b = __reduce_max_sync(0xffffffffu, lanes_fold<T>(acc[i]));
          if (lane == 0 && b != 0) atomicMax(&row_amax[r0 + i], b);
        }
      }
    }
  }
}

// The warp's share of one step: units [u0, u1) of (tile, chunk) pairs, tile-major, nc
// chunks per tile. Calls f(tile_local, c, ce) once per tile touched, for chunks [c, ce).
template <typename F>
__device__ __forceinline__ void for_each_segment(int u0, int u1, int nc, F&& f) {
  int u = u0;
  while (u < u1) {
    const int tl = u / nc, c = u - tl * nc;
    const int ce = min(nc, c + (u1 - u));
    f(tl, c, ce);
    u += ce - c;
  }
}

// One step of one warp: the K columns [k0, k0 + nc * 64) (clipped to k) of its tiles.
struct Step {
  int k0, kw, nc, u0, u1;
};

// Starts streaming the first pf_chunks chunks of the warp's share of a step into L2.
__device__ __forceinline__ void prefetch_step(const int8_t* __restrict__ w, int n, int k, int tile0,
                                              const Step& s, int pf_chunks, int lane) {
  for_each_segment(s.u0, min(s.u1, s.u0 + pf_chunks), s.nc, [&](int tl, int c, int ce) {
    const int kb = s.k0 + c * kKChunk;
    const int bytes = min(k, s.k0 + ce * kKChunk) - kb;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const int row = (tile0 + tl) * kTileRows + lane;
    if (lane < kTileRows && row < n) {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(w + static_cast<int64_t>(row) * k + kb),
                   "r"(bytes)
                   : "memory");
    }
#else
    for (int r = 0; r < kTileRows; ++r) {
      const int row = (tile0 + tl) * kTileRows + r;
      if (row >= n) break;
      const int8_t* p = w + static_cast<int64_t>(row) * k + kb;
      for (int i = lane * 32; i < bytes; i += 32 * 32) prefetch_l2(p + i);
    }
#endif
  });
}

// One warp's share of a step: for each tile it touches, rows tile*16 + [0, 16) over its
// chunks of the step, against all m tokens; the int32 sums are added into acc_s.
// Lane (gid, tq) loads bytes [tq*16, tq*16 + 16) of every 64-byte chunk of weight rows gid
// and gid + 8, and of token rows gid (and gid + 8): one 16-byte load feeds two m16n8k32
// steps, the order of K inside a chunk being the same permutation for both operands.
template <int MT>
__device__ __forceinline__ void mma_step(const int8_t* __restrict__ w, int m, int n, int k, int tile0,
                                         const Step& s, const int8_t* xq, int ldq, int* acc_s,
                                         int acc_ld, int lane) {
  constexpr int G = MT / 8;  // n8 token groups
  constexpr int U = kTcLoads;
  const uint64_t policy = evict_first_policy();
  const int gid = lane >> 2, tq = lane & 3;
  uint32_t xrow[G];  // shared addresses of this lane's codes; tokens past m read row m - 1
#pragma unroll
  for (int g = 0; g < G; ++g) {
    xrow[g] = static_cast<uint32_t>(__cvta_generic_to_shared(xq + min(g * 8 + gid, m - 1) * ldq + tq * 16));
  }
  const int kleft = k - s.k0 - tq * 16;  // chunk j of this lane holds data iff j * 64 < kleft

  for_each_segment(s.u0, s.u1, s.nc, [&](int tl, int c, int ce) {
    const int row0 = (tile0 + tl) * kTileRows + gid;
    const int8_t* wa = w + static_cast<int64_t>(min(row0, n - 1)) * k + s.k0 + tq * 16;
    const int8_t* wb = w + static_cast<int64_t>(min(row0 + 8, n - 1)) * k + s.k0 + tq * 16;
    int acc[G][4];
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[g][i] = 0;

    for (int cc = c; cc < ce; cc += U) {
      int4 va[U], vb[U];
#pragma unroll
      for (int j = 0; j < U; ++j) {
        const int cj = cc + j;
        va[j] = make_int4(0, 0, 0, 0);
        vb[j] = make_int4(0, 0, 0, 0);
        if (cj < ce && cj * kKChunk < kleft) {
          va[j] = load_weights16(wa + cj * kKChunk, policy);
          vb[j] = load_weights16(wb + cj * kKChunk, policy);
        }
      }
#pragma unroll
      for (int j = 0; j < U; ++j) {
        if (cc + j < ce) {  // past the K tail the weights are zero and any codes do
#pragma unroll
          for (int g = 0; g < G; ++g) {
            const int4 xv = lds16(xrow[g] + (cc + j) * kKChunk);
            mma_s8(acc[g], va[j].x, vb[j].x, va[j].y, vb[j].y, xv.x, xv.y);
            mma_s8(acc[g], va[j].z, vb[j].z, va[j].w, vb[j].w, xv.z, xv.w);
          }
        }
      }
    }
    // acc[g][i]: weight row gid + 8 * (i / 2), token g * 8 + 2 * tq + i % 2.
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int tok = g * 8 + 2 * tq + (i & 1);
        if (tok < m) atomicAdd(&acc_s[tok * acc_ld + tl * kTileRows + gid + 8 * (i >> 1)], acc[g][i]);
      }
  });
}

// Cluster c (of gridDim.x / csize) owns tiles [c * tiles / clusters, (c + 1) * tiles /
// clusters); CTA `rank` of it covers K columns [rank * slice, (rank + 1) * slice). The
// tiles go in batches of at most plan.batch; each batch runs one step per plan.kc columns
// of the slice, and in every step the 16 warps split the (tile, 64-byte chunk) units
// evenly. Each batch ends with the cluster's partial sums added up and the epilogue.
template <typename T, int MT>
__global__ void __launch_bounds__(kTcThreads, 1)
    gemv_mma_kernel(const typename Elem<T>::Raw* __restrict__ x, int m, int n, int k, int64_t ldx,
                    const int8_t* __restrict__ w, StaticParam scale, StaticParam shift, Epilogue ep,
                    void* __restrict__ out, OutType out_type, TcPlan plan) {
  extern __shared__ __align__(128) int8_t smem[];
  int8_t* xq = smem;                                         // [m][ldq] codes of one step
  int* acc_s = reinterpret_cast<int*>(smem + m * plan.ldq);  // [m][batch * 16] int32 sums
  __shared__ uint32_t row_amax[MT];
  __shared__ float row_s[MT], row_inv[MT], x_scale[MT];
  __shared__ QuantParams qp;
  // Per-CTA constants, kept in shared memory: re-read after each barrier rather than held
  // in registers through the weight loop.
  __shared__ struct {
    int csize, crank;            // cluster size, rank in it
    int tile_begin, tile_end;    // the cluster's tiles
    int s0, sw, ksteps;          // this CTA's K slice [s0, s0 + sw), in ksteps steps
  } cta;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool is_static = scale.present;
  pdl_wait();  // x (and a device scale) may come from the kernel just before (launch.cuh)
  pdl_launch_dependents();
  if (tid == 0) {
    const int csize = cluster_size(), crank = cluster_rank();
    const int64_t clusters = gridDim.x / csize, cid = blockIdx.x / csize;
    cta.csize = csize;
    cta.crank = crank;
    cta.tile_begin = static_cast<int>(cid * plan.tiles / clusters);
    cta.tile_end = static_cast<int>((cid + 1) * plan.tiles / clusters);
    cta.s0 = min(k, crank * plan.slice);
    cta.sw = min(k - cta.s0, plan.slice);
    cta.ksteps = (cta.sw + plan.kc - 1) / plan.kc;
    qp.lo = shift.present ? kShiftedMin : -kSymMax;
    qp.sh = shift.present ? shift.load() : 0.f;
    qp.s_static = is_static ? checked_static_scale(scale.load()) : 0.f;
    qp.inv_static = is_static ? RowQuantizer::inverse(qp.s_static) : 0.f;
  }
  if (tid < MT) row_amax[tid] = 0;
  __syncthreads();

  auto step_of = [&](int b0, int ks) {
    Step s;
    s.k0 = cta.s0 + ks * plan.kc;
    s.kw = min(plan.kc, cta.s0 + cta.sw - s.k0);
    s.nc = (s.kw + kKChunk - 1) / kKChunk;
    const int units = min(plan.batch, cta.tile_end - b0) * s.nc;
    s.u0 = warp * units / kTcWarps;
    s.u1 = (warp + 1) * units / kTcWarps;
    return s;
  };

  // The first weights stream into L2 while the CTA reads and quantizes the activation.
  if (cta.ksteps > 0 && cta.tile_begin < cta.tile_end) {
    prefetch_step(w, n, k, cta.tile_begin, step_of(cta.tile_begin, 0), plan.pf_chunks, lane);
  }
  if (!is_static) {
    absmax_rows<T, MT>(x, m, ldx, cta.s0, cta.sw, row_amax);
    cluster_sync(cta.csize);  // every slice's row maxima are in
    if (tid < m) {
      uint32_t b = 0;
      for (int j = 0; j < cta.csize; ++j) b = max(b, ld_cluster_u32(&row_amax[tid], j, cta.csize));
      const float s = scale_from_absmax(b < Elem<T>::kInf ? Elem<T>::to_float(b) : NAN);
      row_s[tid] = s;
      row_inv[tid] = RowQuantizer::inverse(s);
      x_scale[tid] = s;
    }
    __syncthreads();
  }

  const int acc_ld = plan.batch * kTileRows;
  for (int b0 = cta.tile_begin; b0 < cta.tile_end; b0 += plan.batch) {  // the same batches cluster-wide
    for (int i = tid; i < m * acc_ld; i += kTcThreads) acc_s[i] = 0;
    for (int ks = 0; ks < cta.ksteps; ++ks) {
      const bool first = b0 == cta.tile_begin && ks == 0;
      const bool quantize = cta.ksteps > 1 || b0 == cta.tile_begin;
      const Step s = step_of(b0, ks);
      if (!first) prefetch_step(w, n, k, b0, s, plan.pf_chunks, lane);
      if (quantize) {
        quantize_columns<T, MT>(x, m, ldx, s.k0, s.kw, is_static, qp, row_s, row_inv, xq, plan.ldq, row_amax);
      }
      __syncthreads();  // codes (and zeroed sums) visible
      mma_step<MT>(w, m, n, k, b0, s, xq, plan.ldq, acc_s, acc_ld, lane);
      __syncthreads();  // sums of this step complete; the codes may be overwritten
    }
    const int csize = cta.csize;
    cluster_sync(csize);  // every CTA's sums (and, static scale, row maxima) are in
    if (is_static && tid < m) {
      uint32_t b = 0;
      for (int j = 0; j < csize; ++j) b = max(b, ld_cluster_u32(&row_amax[tid], j, csize));
      x_scale[tid] = b < Elem<T>::kInf ? qp.s_static : NAN;
    }
    __syncthreads();
    // The cluster's CTAs share the outputs of the batch, each adding all the partial sums.
    const int rows = min(plan.batch, cta.tile_end - b0) * kTileRows;
    for (int i = cta.crank * kTcThreads + tid; i < m * rows; i += csize * kTcThreads) {
      const int tok = i / rows, r = i - tok * rows;
      const int col = b0 * kTileRows + r;
      if (col < n) {
        int sum = 0;
        for (int j = 0; j < csize; ++j) sum += static_cast<int>(ld_cluster_u32(&acc_s[tok * acc_ld + r], j, csize));
        store_out(out, out_type, static_cast<int64_t>(tok) * n + col,
                  apply_epilogue(sum, x_scale[tok], channel_terms(ep, col)));
      }
    }
    cluster_sync(csize);  // all reads of the sums done: they may be cleared, the CTA may exit
  }
  // A cluster without tiles still read its peers' row maxima: leave only together.
  if (cta.tile_begin >= cta.tile_end) cluster_sync(cta.csize);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T, int MT>
bool launch_gemv(const void* x, int64_t m, int64_t n, int64_t k, int64_t ldx, const int8_t* w,
                 StaticParam scale, StaticParam shift, const Epilogue& ep, void* out,
                 OutType out_type, int num_sms, cudaStream_t stream) {
  using Cfg = GemvConfig<MT>;
  auto kernel = gemv_kernel<T, MT>;
  static const int64_t static_smem = [] {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, gemv_kernel<T, MT>));
    return static_cast<int64_t>(attr.sharedSizeBytes);
  }();
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const int64_t smem = m * k;
  if (smem + static_smem > static_cast<int64_t>(prop->sharedMemPerBlockOptin)) return false;
  // Persistent grid: as many CTAs as fit (shared memory may allow fewer than configured),
  // then trimmed so that every warp gets the same number of row groups.
  const int64_t per_cta_smem = smem + static_smem + 1024;  // the driver reserves 1 KB per CTA
  const int fit = static_cast<int>(std::min<int64_t>(Cfg::kCtasPerSm, prop->sharedMemPerMultiprocessor / per_cta_smem));
  const int64_t groups = (n + Cfg::kRows - 1) / Cfg::kRows;
  const int64_t max_warps = static_cast<int64_t>(num_sms) * std::max(fit, 1) * kWarps;
  const int64_t per_warp = (groups + max_warps - 1) / max_warps;
  const int64_t warps = (groups + per_warp - 1) / per_warp;
  const int64_t grid = (warps + kWarps - 1) / kWarps;
  // Every CTA reads all of x (twice when the scale is dynamic, from L2): decline when that
  // traffic would rival the weight bytes (past a floor below which one launch beats two);
  // the caller's quantize + GEMM path is then better.
  const int64_t x_bytes = grid * m * k * static_cast<int64_t>(sizeof(T)) * (scale.present ? 1 : 2);
  if (static_cast<double>(x_bytes) >
      std::max(kDp4aXPerWeightByte * static_cast<double>(n * k), static_cast<double>(kDp4aXFloorBytes))) {
    return false;
  }

  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  launch_kernel(kernel, static_cast<unsigned>(grid), kThreads, static_cast<size_t>(smem), stream, 1,
                static_cast<const typename Elem<T>::Raw*>(x), static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), ldx, w, scale, shift, ep, out, out_type);
  return true;
}

// Clusters of c CTAs of gemv_mma_kernel<T, MT> that can run at once on the current device
// (0: none, or no cluster support). The kernel fits one CTA per SM by its registers
// whatever its shared memory, so the answer depends only on the device and c.
template <typename T, int MT>
int cluster_capacity(int c) {
  constexpr int kDevices = 64, kSizes = 4;  // c in {1, 2, 4, 8}
  static std::atomic<int> cache[kDevices][kSizes] = {};  // value + 1; 0: not asked yet
  const int dev = at::cuda::current_device();
  int log_c = 0;
  while ((1 << log_c) < c) ++log_c;
  if (dev < kDevices && log_c < kSizes) {
    const int v = cache[dev][log_c].load(std::memory_order_relaxed);
    if (v > 0) return v - 1;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(c));
  cfg.blockDim = dim3(kTcThreads);
  cfg.dynamicSmemBytes = 0;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = static_cast<unsigned>(c);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, gemv_mma_kernel<T, MT>, &cfg) != cudaSuccess) {
    (void)cudaGetLastError();  // not an error of the op: no clusters here
    clusters = 0;
  }
  if (dev < kDevices && log_c < kSizes) cache[dev][log_c].store(clusters + 1, std::memory_order_relaxed);
  return clusters;
}

template <typename T, int MT>
bool launch_gemv_mma(const void* x, int64_t m, int64_t n, int64_t k, int64_t ldx, const int8_t* w,
                     StaticParam scale, StaticParam shift, const Epilogue& ep, void* out,
                     OutType out_type, int num_sms, cudaStream_t stream) {
  auto kernel = gemv_mma_kernel<T, MT>;
  static const int64_t static_smem = [] {
    cudaFuncAttributes attr;
    C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, gemv_mma_kernel<T, MT>));
    // A hint: the smallest shared-memory carveout that fits the CTA leaves the most L1 for
    // the activation, which the quantize pass then re-reads from L1 rather than L2.
    C10_CUDA_CHECK(cudaFuncSetAttribute(gemv_mma_kernel<T, MT>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        static_cast<int>(cudaSharedmemCarveoutMaxL1)));
    return static_cast<int64_t>(attr.sharedSizeBytes);
  }();
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  auto round_up = [&](int64_t v, int64_t a) { return ceil_div(v, a) * a; };

  // Cluster size: the largest (up to kMaxClusterSize) whose co-resident clusters still
  // cover nearly every SM, with slices of at least kMinClusterSliceK columns.
  const int64_t tiles = ceil_div(n, kTileRows);
  int csize = 1;
  int64_t ctas = num_sms;  // CTAs that run at once
  if (prop->major >= 9) {
    for (int c = kMaxClusterSize; c >= 2; c /= 2) {
      if (k < static_cast<int64_t>(c) * kMinClusterSliceK) continue;
      const int64_t cap = static_cast<int64_t>(std::min(cluster_capacity<T, MT>(c) * c, num_sms));
      if (cap * kClusterMinSmShare[1] >= static_cast<int64_t>(num_sms) * kClusterMinSmShare[0]) {
        csize = c;
        ctas = cap;
        break;
      }
    }
  }
  // Every cluster the same number of tiles at most (the grid trimmed to match).
  const int64_t cluster_tiles = ceil_div(tiles, ctas / csize);
  const int64_t clusters = ceil_div(tiles, cluster_tiles);
  const int64_t grid = clusters * csize;
  const int64_t slice = csize == 1 ? k : round_up(ceil_div(k, csize), kKChunk);
  // Int32 sums of at most kMaxBatchTiles tiles and half the shared memory at once.
  const int64_t sum_bytes_per_tile = m * kTileRows * static_cast<int64_t>(sizeof(int));
  const int64_t half_smem = (static_cast<int64_t>(prop->sharedMemPerBlockOptin) - static_smem) / 2;
  const int64_t batch = std::max<int64_t>(
      1, std::min<int64_t>({cluster_tiles, kMaxBatchTiles, half_smem / sum_bytes_per_tile}));
  const int64_t batches = ceil_div(cluster_tiles, batch);
  const int64_t acc_bytes = batch * sum_bytes_per_tile;
  const int64_t budget = static_cast<int64_t>(prop->sharedMemPerBlockOptin) - static_smem - acc_bytes;

  // The codes of the whole slice in one step when they fit (rows padded to 64 mod 128
  // bytes so the two tokens of a quarter warp hit different banks; unpadded if only that
  // fits), else the slice in the fewest steps of a multiple of 64 columns that fit.
  int64_t kc = slice, ldq = round_up(slice, 128) + 64;
  if (m * ldq > budget) ldq = round_up(slice, kKChunk);
  for (int64_t steps = 2; m * ldq > budget && kc > kKChunk; ++steps) {
    kc = round_up(ceil_div(slice, steps), kKChunk);
    ldq = round_up(kc, 128) + 64;
  }
  if (m * ldq > budget) return false;
  const int64_t ksteps = ceil_div(slice, kc);

  // Activation reads from L2 (see kMmaXPerWeightByte): each CTA reads its slice for the
  // row maxima (dynamic scale), then to quantize it, again per batch when it takes steps.
  const int64_t passes = (scale.present ? 0 : 1) + (ksteps > 1 ? batches : 1);
  const int64_t x_bytes = grid * m * slice * static_cast<int64_t>(sizeof(T)) * passes;
  if (static_cast<double>(x_bytes) >
      kMmaXPerWeightByte * static_cast<double>(n * k) + static_cast<double>(kMmaXFloorBytes)) {
    return false;
  }

  const int64_t pf_per_warp = std::max(prop->l2CacheSize, 0) / kPrefetchL2Fraction / (grid * kTcWarps);
  TcPlan plan;
  plan.tiles = static_cast<int>(tiles);
  plan.slice = static_cast<int>(slice);
  plan.kc = static_cast<int>(kc);
  plan.ldq = static_cast<int>(ldq);
  plan.batch = static_cast<int>(batch);
  plan.pf_chunks = static_cast<int>(std::min<int64_t>(pf_per_warp / (kTileRows * kKChunk), 1 << 20));

  const int64_t smem = m * ldq + acc_bytes;
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  launch_kernel(kernel, static_cast<unsigned>(grid), kTcThreads, static_cast<size_t>(smem), stream,
                static_cast<unsigned>(csize), static_cast<const typename Elem<T>::Raw*>(x),
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), ldx, w, scale, shift,
                ep, out, out_type, plan);
  return true;
}

template <typename T>
bool gemv_typed(const void* x, int64_t m, int64_t n, int64_t k, int64_t ldx, const int8_t* w,
                StaticParam scale, StaticParam shift, const Epilogue& ep, void* out,
                OutType out_type, int num_sms, cudaStream_t stream) {
  static_assert(kMmaMinM >= 2 && kMmaMinM <= kMaxM, "M 1 (and up to kMmaMinM - 1) have dp4a variants");
  if (!aligned16(x) || (ldx * static_cast<int64_t>(sizeof(T))) % 16 != 0) return false;
  if (m >= kMmaMinM) {
    return launch_gemv_mma<T, kMaxM>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  }
  if (m == 1) return launch_gemv<T, 1>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  if constexpr (kMmaMinM > 2) {
    if (m == 2) return launch_gemv<T, 2>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  }
  if constexpr (kMmaMinM > 3) {
    if (m <= 4) return launch_gemv<T, 4>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  }
  if constexpr (kMmaMinM > 5) {
    return launch_gemv<T, 8>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  }
  return false;  // unreachable: m < kMmaMinM is covered above
}

}  // namespace

int64_t gemv_max_m() { return kMaxM; }

bool gemv_fused(const at::Tensor& x, int64_t m, int64_t n, int64_t k, int64_t ldx,
                const int8_t* w, StaticParam scale, StaticParam shift, Epilogue ep, void* out,
                OutType out_type, int num_sms, cudaStream_t stream) {
  // 16-byte weight and activation vectors; int32 indexing inside the kernel.
  if (m < 1 || m > kMaxM || n < 1 || n > (1 << 30) || k < 16 || k % 16 != 0 ||
      k > 0x7fffffff / kMaxM || !aligned16(w) || num_sms < 1) {
    return false;
  }
  const void* p = x.data_ptr();
  switch (x.scalar_type()) {
    case at::kFloat: return gemv_typed<float>(p, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
    case at::kHalf: return gemv_typed<__half>(p, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
    case at::kBFloat16:
      return gemv_typed<__nv_bfloat16>(p, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
    default: return false;
  }
}

}  // namespace cuda
}  // namespace int8q
