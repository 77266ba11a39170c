// Activation row quantization, weight quantization (per channel / per tensor) and weight
// code sums. Scales come from quant_math.h and every code equals its quantize_code (see
// BracketQuantizer and RowQuantizer), so codes and scales match the CPU reference bit for
// bit. The row kernels read x once (rows up to 32 KB stay in registers between the absmax
// and quantize passes).

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../quant_math.h"
#include "kernels.h"
#include "launch.cuh"
#include "row_quant.cuh"

namespace int8q {
namespace cuda {
namespace {

using namespace row_quant;


// Max over the 2^tpr_shift threads (32..kMaxRowThreads) that share one row. Every thread
// of the block calls it (it holds __syncthreads when a row spans warps), at most once per
// kernel: red is never written again, so no barrier follows its reads.
__device__ __forceinline__ uint32_t row_group_max(uint32_t v, int tpr_shift, uint32_t* red) {
  v = __reduce_max_sync(0xffffffffu, v);
  if (tpr_shift <= 5) return v;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  const int warps = 1 << (tpr_shift - 5);
  return __reduce_max_sync(0xffffffffu, lane < warps ? red[(warp & -warps) + lane] : 0u);
}

// 16-byte loads a thread keeps in flight (kVecs); rows of up to kMaxRowThreads * kVecs
// vectors stay in registers between the absmax pass and the quantize pass, so x is read
// from memory once. Longer rows are read again (from L2) for the second pass.
// Without x_smooth: eight loads per thread (rows up to 32 KB cached) halve the per-row work
// (index math, reduction, scale) per element against four, and keep 96 KB in flight per SM
// (blocks of 256 threads, 3 per SM, <= 80 registers; 64 would spill). Up to 8M elements
// with rows of at most 16 KB, four loads per thread are faster (a copy of this kernel on an
// H200, 16..2048 rows of 4096: 3-14% less time, 4096 rows: 2.5%; 8192 rows and rows of
// 14336: 2-8% more): 4 blocks per SM (<= 64 registers) and twice the threads per row, so a
// call of a few hundred rows spreads over more SMs. With x_smooth the multipliers (one float
// per element) need registers too: four loads, 3 blocks per SM.
constexpr int kMaxRowThreads = 256;
template <bool HasSmooth, int kVecs>
constexpr int kRowBlocksPerSm = !HasSmooth && kVecs == 4 ? 4 : 3;
// Blocks per SM that a call of few rows may spread to (launch_quantize_rows). Two against one
// (H100, fp16 rows of 4096, one row per 256-thread block against two): quantize_activation at
// M = 160..256 3.1 us against 4.0; matmul dynamic 4096x4096 M = 160 13.7 against 15.2, M = 192
// 14.2 / 15.5, M = 256 14.4 / 15.2; 4096x14336 M = 192 31.8 / 32.6, M = 256 32.8 / 33.6.
// Four: the quantizer faster at M = 384 and 512 (4.3 / 4.8, 4.6 / 5.4 us), but matmul no faster
// there (4096x4096 M = 512 19.6 against 18.9 us).
// Also tried: matmul's quantizer spreading only as far as leaves room for every CTA of the
// Hopper GEMM after it, so that all of them start and load their first weight tiles while
// it runs (a GEMM CTA takes a whole SM's registers). Bit-identical and no better (H200,
// matmul dynamic, us with / without, one row to a block without): 4096x4096 M = 128 13.0 /
// 13.2, but M = 96 13.8 / 12.9 and M = 112 13.9 / 13.4.
constexpr int64_t kSpreadBlocksPerSm = 2;

// What a launch of the row kernels does, fixed at compile time so that the hot loop holds
// no per-element work for the modes it is not in: dynamic per-row scales (no clamp, no
// shift, see BracketQuantizer), a static scale, or a static scale with a shift.
enum class RowMode { kDynamic, kStatic, kShifted };

// The per-channel multipliers of pack j (VEC consecutive channels). The vector path needs
// smooth 16-byte aligned (checked by the launcher); VEC is 4 or 8.
template <int VEC>
__device__ __forceinline__ void load_smooth(const float* __restrict__ smooth, int j, float (&s)[VEC]) {
  const float4* p = reinterpret_cast<const float4*>(smooth) + j * (VEC / 4);
#pragma unroll
  for (int i = 0; i < VEC / 4; ++i) {
    const float4 q = __ldg(p + i);
    s[4 * i] = q.x;
    s[4 * i + 1] = q.y;
    s[4 * i + 2] = q.z;
    s[4 * i + 3] = q.w;
  }
}

// x' = x * smooth for vector j, one rounded multiply per element (as the CPU kernel and
// reference.py compute it), so the codes of the fast and exact paths see the same floats.
template <typename T>
__device__ __forceinline__ void smoothed_values(const uint4& p, const float* __restrict__ smooth, int j,
                                                float (&v)[kVecElems<T>]) {
  constexpr int VEC = kVecElems<T>;
  float s[VEC];
  load_smooth<VEC>(smooth, j, s);
  vec_to_floats<T>(p, v);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = mul_rn(v[i], s[i]);
}

// Lane-wise max of two lanes_absmax results.
template <typename A>
__device__ __forceinline__ uint32_t lanes_max(uint32_t a, uint32_t b) {
  return sizeof(A) == 2 ? __vmaxu2(a, b) : max(a, b);
}

// Quantizes rows of x ([m, k], row stride ldx elements, 16-byte aligned rows, k a multiple
// of 16 bytes) with 16-byte loads. tpr = 2^tpr_shift threads share a row; a block holds
// blockDim.x / tpr rows. Dynamic mode reduces the row absmax first; static mode
// quantizes in one pass and reduces only to flag non-finite rows. HasSmooth: the row is
// x' = x * smooth[k], and the absmax runs on the products' float32 bits; without it, on x's
// raw bits, two fp16/bf16 lanes per instruction (no conversion needed).
template <typename T, bool HasSmooth, RowMode kMode, int kVecs>
__global__ void __launch_bounds__(kMaxRowThreads, (kRowBlocksPerSm<HasSmooth, kVecs>))
    quantize_rows_kernel(const typename Elem<T>::Raw* __restrict__ x, int64_t m, int k,
                         int64_t ldx, int tpr_shift, StaticParam scale, StaticParam shift,
                         const float* __restrict__ smooth, int8_t* __restrict__ codes,
                         float* __restrict__ row_scale) {
  constexpr int VEC = kVecElems<T>;
  constexpr bool kStatic = kMode != RowMode::kDynamic;
  constexpr bool kShift = kMode == RowMode::kShifted;
  using A = std::conditional_t<HasSmooth, float, T>;  // the lanes of the absmax bits
  __shared__ uint32_t red[kMaxRowThreads / 32];
  pdl_wait();  // x may come from the kernel just before (launch.cuh)
  pdl_launch_dependents();

  const int tpr = 1 << tpr_shift;
  const int lt = threadIdx.x & (tpr - 1);
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> tpr_shift;
  const bool live = row < m;
  const int n = live ? k / VEC : 0;  // vectors in this thread's row (none past the last row)
  const uint4* src = reinterpret_cast<const uint4*>(x + (live ? row : 0) * ldx);
  Codes<VEC>* dst = reinterpret_cast<Codes<VEC>*>(codes + (live ? row : 0) * k);
  const int step = kVecs * tpr;

  auto values = [&](const uint4& p, int j, float (&f)[VEC]) {
    if constexpr (HasSmooth) {
      smoothed_values<T>(p, smooth, j, f);
    } else {
      vec_to_floats<T>(p, f);
    }
  };
  // Vectors base + lt + c * tpr. Past the row's end a thread loads the row's last vector
  // instead: no predicated loads or zero fill, and a copy of a row element changes no
  // absmax; it is never quantized or stored (the j < n tests below).
  uint4 v[kVecs];
  auto load_chunk = [&](int base) {
#pragma unroll
    for (int c = 0; c < kVecs; ++c) v[c] = __ldg(src + min(base + lt + c * tpr, n - 1));
  };

  float s;
  if constexpr (kStatic) {
    s = checked_static_scale(scale.load());
  } else {
    uint32_t amax = 0;
    for (int base = 0; base < n; base += step) {
      load_chunk(base);
#pragma unroll
      for (int c = 0; c < kVecs; ++c) {
        if constexpr (HasSmooth) {
          float f[VEC];
          values(v[c], min(base + lt + c * tpr, n - 1), f);
          amax = max(amax, values_absmax_bits<VEC>(f));
        } else {
          amax = lanes_absmax<T>(v[c], amax);
        }
      }
    }
    const uint32_t b = row_group_max(lanes_fold<A>(amax), tpr_shift, red);
    s = scale_from_absmax(b < Elem<A>::kInf ? Elem<A>::to_float(b) : NAN);
  }

  const BracketQuantizer q(s, kShift ? kShiftedMin : -kSymMax, kShift ? shift.load() : 0.f);
  uint32_t row_amax = 0;  // static mode: lanes absmax of the row, to flag NaN/Inf rows
  // Quantizes the chunk at base from v. kGuarded: the chunk runs past the row's end.
  // A pack that fails its check is redone at once with fixed_codes, from the values still in
  // registers. (This kernel used to reload a flagged chunk from memory after the loop: a
  // second memory round trip for every block with one flagged value, and flags are common:
  // e.g. x = +-absmax / 2 in dynamic mode, within rounding error of the boundary 63.5, is
  // likely in a 4096-wide fp16 row. H200, 2048 x 4096 fp16 dynamic: 14.4 us before, 9.4
  // after, with the four-load form below.)
  auto quantize_chunk = [&](int base, auto guarded) {
    constexpr bool kGuarded = decltype(guarded)::value;
#pragma unroll
    for (int c = 0; c < kVecs; ++c) {
      const int j = base + lt + c * tpr;
      if (!kGuarded || j < n) {
        float f[VEC];
        values(v[c], j, f);
        Codes<VEC> out;
        uint32_t bad = q.try_codes<kStatic, kShift>(f, out);
        if constexpr (kStatic) {  // NaN/Inf packs are redone (NaN needs it, see BracketQuantizer)
          const uint32_t a = HasSmooth ? values_absmax_bits<VEC>(f) : lanes_absmax<T>(v[c], 0u);
          row_amax = lanes_max<A>(row_amax, a);
          bad |= lanes_nonfinite<A>(a);
        }
        // Rare: a value on or next to a rounding boundary, NaN/Inf in static mode.
        if (bad) out = q.fixed_codes<kStatic, kShift>(f);
        dst[j] = out;
      }
    }
  };

  if (q.fast) {
    const bool cached = !kStatic && n <= step;  // v already holds the whole row
    for (int base = 0; base < n; base += step) {
      if (!cached) load_chunk(base);
      if (base + step <= n) {
        quantize_chunk(base, std::false_type{});
      } else {
        quantize_chunk(base, std::true_type{});
      }
    }
  } else {  // a NaN/Inf row in dynamic mode, or a scale/shift the fast path does not cover
#pragma unroll 1
    for (int j = lt; j < n; j += tpr) {
      const uint4 p = __ldg(src + j);
      float f[VEC];
      values(p, j, f);
      if constexpr (kStatic) {
        const uint32_t a = HasSmooth ? values_absmax_bits<VEC>(f) : lanes_absmax<T>(p, 0u);
        row_amax = lanes_max<A>(row_amax, a);
      }
      dst[j] = q.exact_codes<kShift>(f);
    }
  }

  float rs = s;  // dynamic: s is already NaN for a non-finite row
  if constexpr (kStatic) {
    rs = row_group_max(lanes_fold<A>(row_amax), tpr_shift, red) < Elem<A>::kInf ? s : NAN;
  }
  if (live && lt == 0) row_scale[row] = rs;
}

// The unaligned fallback: one element at a time, codes by plain division (quantize_code).
// The absmax runs on the float32 bits of the (smoothed) values.
template <typename T, bool HasSmooth>
__global__ void __launch_bounds__(kMaxRowThreads)
    quantize_rows_scalar_kernel(const typename Elem<T>::Raw* __restrict__ x, int64_t m, int k,
                                int64_t ldx, int tpr_shift, StaticParam scale, StaticParam shift,
                                const float* __restrict__ smooth, int8_t* __restrict__ codes,
                                float* __restrict__ row_scale) {
  using F = Elem<float>;
  __shared__ uint32_t red[kMaxRowThreads / 32];
  pdl_wait();
  pdl_launch_dependents();
  const int tpr = 1 << tpr_shift;
  const int lt = threadIdx.x & (tpr - 1);
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> tpr_shift;
  const bool live = row < m;
  const int n = live ? k : 0;
  const typename Elem<T>::Raw* src = x + (live ? row : 0) * ldx;
  int8_t* dst = codes + (live ? row : 0) * k;
  auto value = [&](int i) {
    const float f = Elem<T>::to_float(src[i]);
    return HasSmooth ? mul_rn(f, __ldg(smooth + i)) : f;
  };

  const bool is_static = scale.present;
  float s;
  if (is_static) {
    s = checked_static_scale(scale.load());
  } else {
    uint32_t b = 0;
    for (int i = lt; i < n; i += tpr) b = max(b, __float_as_uint(value(i)) & F::kMag);
    b = row_group_max(b, tpr_shift, red);
    s = scale_from_absmax(b < F::kInf ? F::to_float(b) : NAN);
  }
  const float lo = shift.present ? kShiftedMin : -kSymMax;
  const float sh = shift.present ? shift.load() : 0.f;
  uint32_t b = 0;
  for (int i = lt; i < n; i += tpr) {
    const float f = value(i);
    b = max(b, __float_as_uint(f) & F::kMag);
    dst[i] = quantize_code(__fsub_rn(f, sh), s, lo);
  }
  float rs = s;
  if (is_static) rs = row_group_max(b, tpr_shift, red) < F::kInf ? s : NAN;
  if (live && lt == 0) row_scale[row] = rs;
}

// Largest absolute value of a flat tensor, accumulated with atomicMax on the bits of a
// float (valid because magnitudes are non-negative; *absmax must start at +0).
template <typename T, int VEC>
__global__ void __launch_bounds__(256)
    absmax_kernel(const typename Elem<T>::Raw* __restrict__ w, int64_t total, float* absmax) {
  using E = Elem<T>;
  using P = Pack<typename E::Raw, VEC>;
  __shared__ uint32_t red[8];
  const int64_t packs = total / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const P* src = reinterpret_cast<const P*>(w);
  uint32_t b = 0;
  int64_t i = tid;
  for (; i + 3 * stride < packs; i += 4 * stride) {  // four loads in flight
    P p[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) p[u] = src[i + u * stride];
#pragma unroll
    for (int u = 0; u < 4; ++u) b = max(b, pack_absmax_bits<T, VEC>(p[u]));
  }
  for (; i < packs; i += stride) b = max(b, pack_absmax_bits<T, VEC>(src[i]));
  for (int64_t t = packs * VEC + tid; t < total; t += stride) {
    b = max(b, static_cast<uint32_t>(w[t]) & E::kMag);
  }
  b = __reduce_max_sync(0xffffffffu, b);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = b;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int k = 1; k < static_cast<int>(blockDim.x >> 5); ++k) b = max(b, red[k]);
    atomicMax(reinterpret_cast<unsigned int*>(absmax), __float_as_uint(E::to_float(b)));
  }
}

// Quantizes a flat tensor with the per-tensor scale derived from *absmax.
template <typename T, int VEC>
__global__ void __launch_bounds__(256)
    quantize_tensor_kernel(const typename Elem<T>::Raw* __restrict__ w, int64_t total,
                           const float* __restrict__ absmax, int8_t* __restrict__ q) {
  using P = Pack<typename Elem<T>::Raw, VEC>;
  const float s = scale_from_absmax(*absmax);
  const RowQuantizer rq(s, RowQuantizer::inverse(s), -kSymMax, 0.f);
  const int64_t packs = total / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const P* src = reinterpret_cast<const P*>(w);
  Codes<VEC>* dst = reinterpret_cast<Codes<VEC>*>(q);
  for (int64_t i = tid; i < packs; i += stride) {
    const P p = src[i];
    Codes<VEC> c;
    if (!rq.try_pack<T, VEC>(p, c)) c = rq.exact_pack<T, VEC>(p);
    dst[i] = c;
  }
  for (int64_t t = packs * VEC + tid; t < total; t += stride) {
    q[t] = quantize_code(Elem<T>::to_float(w[t]), rq.scale, -kSymMax);
  }
}

// Runs after every block of quantize_tensor_kernel has read the absmax (stream order).
__global__ void absmax_to_scale_kernel(float* scale) { scale[0] = scale_from_absmax(scale[0]); }

// Sum of each weight row's codes: one warp per row, dp4a against 0x01010101 adds four
// signed bytes at a time.
template <bool kVec>
__global__ void __launch_bounds__(256)
    weight_sums_kernel(const int8_t* __restrict__ w, int64_t n, int k, int32_t* __restrict__ w_sum) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (row >= n) return;
  const int8_t* wr = w + row * k;
  int acc = 0;
  if (kVec) {
    const int4* src = reinterpret_cast<const int4*>(wr);
    const int vecs = k / 16;
    int j = lane;
    for (; j + 96 < vecs; j += 128) {  // four 16-byte loads in flight
      int4 p[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) p[u] = __ldcs(src + j + 32 * u);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        acc = __dp4a(p[u].x, 0x01010101, acc);
        acc = __dp4a(p[u].y, 0x01010101, acc);
        acc = __dp4a(p[u].z, 0x01010101, acc);
        acc = __dp4a(p[u].w, 0x01010101, acc);
      }
    }
    for (; j < vecs; j += 32) {
      const int4 p = __ldcs(src + j);
      acc = __dp4a(p.x, 0x01010101, acc);
      acc = __dp4a(p.y, 0x01010101, acc);
      acc = __dp4a(p.z, 0x01010101, acc);
      acc = __dp4a(p.w, 0x01010101, acc);
    }
  } else {
    for (int j = lane; j < k; j += 32) acc += wr[j];
  }
  acc = __reduce_add_sync(0xffffffffu, acc);
  if (lane == 0) w_sum[row] = acc;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int next_pow2(int v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

template <typename T, bool HasSmooth>
void launch_quantize_rows(const void* x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                          StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                          bool vec, cudaStream_t stream) {
  using Raw = typename Elem<T>::Raw;
  using Kernel = void (*)(const Raw*, int64_t, int, int64_t, int, StaticParam, StaticParam, const float*,
                          int8_t*, float*);
  const int vpr = static_cast<int>(vec ? k / kVecElems<T> : k);
  // Loads in flight per thread (see kRowBlocksPerSm): four for x_smooth, and for calls of
  // up to 8M elements whose rows fit four loads of every thread of a block; else eight.
  const bool four = HasSmooth || (m * k <= (int64_t{1} << 23) && vpr <= 4 * kMaxRowThreads);
  const int vecs = four ? 4 : 8;
  int tpr = std::min(kMaxRowThreads, std::max(32, next_pow2((vpr + vecs - 1) / vecs)));
  auto blocks_for = [&](int t) {
    const int64_t rows_per_block = std::max(t, 256) / t;
    return (m + rows_per_block - 1) / rows_per_block;
  };
  // A few rows (decode, small batches) leave most SMs idle, and the call's time is then one
  // thread's serial work: spread each row over more threads (up to one vector per thread)
  // while the blocks still fit kSpreadBlocksPerSm to an SM.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  while (tpr < kMaxRowThreads && tpr < vpr && blocks_for(2 * tpr) <= kSpreadBlocksPerSm * sms) tpr *= 2;
  int tpr_shift = 0;
  while ((1 << tpr_shift) < tpr) ++tpr_shift;
  const int threads = std::max(tpr, 256);
  const int64_t blocks = blocks_for(tpr);
  TORCH_CHECK(blocks <= 0x7fffffff, "int8q.quantize_activation: too many rows (", m, ")");
  auto pick = [&](auto vecs_c) -> Kernel {
    constexpr int kVecs = decltype(vecs_c)::value;
    return !scale.present ? quantize_rows_kernel<T, HasSmooth, RowMode::kDynamic, kVecs>
           : !shift.present ? quantize_rows_kernel<T, HasSmooth, RowMode::kStatic, kVecs>
                            : quantize_rows_kernel<T, HasSmooth, RowMode::kShifted, kVecs>;
  };
  Kernel kernel = quantize_rows_scalar_kernel<T, HasSmooth>;
  if (vec) {
    if constexpr (HasSmooth) {
      kernel = pick(std::integral_constant<int, 4>{});
    } else {
      kernel = four ? pick(std::integral_constant<int, 4>{}) : pick(std::integral_constant<int, 8>{});
    }
  }
  launch_kernel(kernel, static_cast<unsigned>(blocks), threads, 0, stream, 1, static_cast<const Raw*>(x), m,
                static_cast<int>(k), ldx, tpr_shift, scale, shift, smooth, codes, row_scale);
}

template <typename T, bool HasSmooth>
void quantize_rows_by_alignment(const void* x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                         StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                         cudaStream_t stream) {
  constexpr int kVec = kVecElems<T>;
  // 16-byte loads need every row start 16-byte aligned; codes then go out kVec bytes at a
  // time, and the multipliers are read as float4.
  const bool vec = aligned(x, 16) && (ldx * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                   k % kVec == 0 && aligned(codes, kVec) && (!HasSmooth || aligned(smooth, 16));
  launch_quantize_rows<T, HasSmooth>(x, m, k, ldx, scale, shift, smooth, codes, row_scale, vec, stream);
}

template <typename T>
void quantize_rows_typed(const void* x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                         StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                         cudaStream_t stream) {
  if (smooth != nullptr) {
    quantize_rows_by_alignment<T, true>(x, m, k, ldx, scale, shift, smooth, codes, row_scale, stream);
  } else {
    quantize_rows_by_alignment<T, false>(x, m, k, ldx, scale, shift, nullptr, codes, row_scale, stream);
  }
}

template <typename T>
void quantize_tensor_typed(const void* w, int64_t total, int8_t* q, float* scale,
                           cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  using Raw = typename Elem<T>::Raw;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t want = (total / kVec + 255) / 256;
  const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, sms * 8)));
  C10_CUDA_CHECK(cudaMemsetAsync(scale, 0, sizeof(float), stream));
  const bool vec = aligned(w, 16) && aligned(q, kVec);
  if (vec) {
    absmax_kernel<T, kVec><<<blocks, 256, 0, stream>>>(static_cast<const Raw*>(w), total, scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    quantize_tensor_kernel<T, kVec><<<blocks, 256, 0, stream>>>(static_cast<const Raw*>(w), total, scale, q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    absmax_kernel<T, 1><<<blocks, 256, 0, stream>>>(static_cast<const Raw*>(w), total, scale);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    quantize_tensor_kernel<T, 1><<<blocks, 256, 0, stream>>>(static_cast<const Raw*>(w), total, scale, q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  absmax_to_scale_kernel<<<1, 1, 0, stream>>>(scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void quantize_rows(const at::Tensor& x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                   StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                   cudaStream_t stream) {
  TORCH_CHECK(k >= 1 && k <= 0x7fffffff, "int8q: quantize_rows got K = ", k);
  TORCH_CHECK(scale.present || !shift.present, "int8q: quantize_rows got a shift without a static scale");
  if (m <= 0) return;
  const void* p = x.data_ptr();
  switch (x.scalar_type()) {
    case at::kFloat:
      quantize_rows_typed<float>(p, m, k, ldx, scale, shift, smooth, codes, row_scale, stream);
      break;
    case at::kHalf:
      quantize_rows_typed<__half>(p, m, k, ldx, scale, shift, smooth, codes, row_scale, stream);
      break;
    case at::kBFloat16:
      quantize_rows_typed<__nv_bfloat16>(p, m, k, ldx, scale, shift, smooth, codes, row_scale, stream);
      break;
    default: TORCH_CHECK(false, "int8q: quantize_rows got unsupported dtype ", x.scalar_type());
  }
}

void weight_sums(const int8_t* w, int64_t n, int64_t k, int32_t* w_sum, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int kRowsPerBlock = 8;  // one warp per row
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  if (k % 16 == 0 && aligned(w, 16)) {
    weight_sums_kernel<true><<<static_cast<unsigned>(blocks), 32 * kRowsPerBlock, 0, stream>>>(
        w, n, static_cast<int>(k), w_sum);
  } else {
    weight_sums_kernel<false><<<static_cast<unsigned>(blocks), 32 * kRowsPerBlock, 0, stream>>>(
        w, n, static_cast<int>(k), w_sum);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void quantize_weight_rows(const at::Tensor& w, bool per_channel, int8_t* q, float* scale,
                          cudaStream_t stream) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous(), "int8q: quantize_weight_rows needs a contiguous [N, K] weight");
  const int64_t n = w.size(0), k = w.size(1);
  if (n == 0 || k == 0) return;
  const void* p = w.data_ptr();
  if (per_channel) {
    // Per-channel scales are exactly the dynamic row scales (weights are finite).
    switch (w.scalar_type()) {
      case at::kFloat: quantize_rows_typed<float>(p, n, k, k, {}, {}, nullptr, q, scale, stream); break;
      case at::kHalf: quantize_rows_typed<__half>(p, n, k, k, {}, {}, nullptr, q, scale, stream); break;
      case at::kBFloat16:
        quantize_rows_typed<__nv_bfloat16>(p, n, k, k, {}, {}, nullptr, q, scale, stream);
        break;
      default: TORCH_CHECK(false, "int8q: quantize_weight_rows got unsupported dtype ", w.scalar_type());
    }
    return;
  }
  switch (w.scalar_type()) {
    case at::kFloat: quantize_tensor_typed<float>(p, n * k, q, scale, stream); break;
    case at::kHalf: quantize_tensor_typed<__half>(p, n * k, q, scale, stream); break;
    case at::kBFloat16: quantize_tensor_typed<__nv_bfloat16>(p, n * k, q, scale, stream); break;
    default: TORCH_CHECK(false, "int8q: quantize_weight_rows got unsupported dtype ", w.scalar_type());
  }
}

}  // namespace cuda
}  // namespace int8q
