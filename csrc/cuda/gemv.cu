// Decode-time W8A8 linear for a few rows (M <= 8): each CTA quantizes the activation rows
// into shared memory itself (no separate launch, no round trip of codes through memory),
// then its warps stream int8 weight rows once with 16-byte no-allocate loads and reduce
// them against the codes with dp4a. At this M the weight bytes set the time; everything
// else is arranged to keep enough weight loads in flight on every SM.

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "../quant_math.h"
#include "epilogue.cuh"
#include "kernels.h"
#include "row_quant.cuh"

namespace int8q {
namespace cuda {
namespace {

using namespace row_quant;


// ---- The kernel -----------------------------------------------------------------------

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
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
  if (x_bytes > std::max<int64_t>(n * k / 2, 16 << 20)) return false;

  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<static_cast<unsigned>(grid), kThreads, static_cast<size_t>(smem), stream>>>(
      static_cast<const typename Elem<T>::Raw*>(x), static_cast<int>(m), static_cast<int>(n),
      static_cast<int>(k), ldx, w, scale, shift, ep, out, out_type);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <typename T>
bool gemv_typed(const void* x, int64_t m, int64_t n, int64_t k, int64_t ldx, const int8_t* w,
                StaticParam scale, StaticParam shift, const Epilogue& ep, void* out,
                OutType out_type, int num_sms, cudaStream_t stream) {
  if (!aligned16(x) || (ldx * static_cast<int64_t>(sizeof(T))) % 16 != 0) return false;
  if (m == 1) return launch_gemv<T, 1>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  if (m == 2) return launch_gemv<T, 2>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  if (m <= 4) return launch_gemv<T, 4>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
  return launch_gemv<T, 8>(x, m, n, k, ldx, w, scale, shift, ep, out, out_type, num_sms, stream);
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
