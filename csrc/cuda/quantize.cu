// Activation row quantization, weight quantization (per channel / per tensor) and weight
// code sums. Scales come from quant_math.h and every code equals its quantize_code (see
// RowQuantizer), so codes and scales match the CPU reference bit for bit. The row kernels
// read x once (rows up to 64 KB stay in registers between the absmax and quantize passes).

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
#include "row_quant.cuh"

namespace int8q {
namespace cuda {
namespace {

using namespace row_quant;


// Max over the `tpr` threads (a power of two, 32..kMaxRowThreads) that share one row.
// Every thread of the block calls it (it holds __syncthreads when a row spans warps).
__device__ __forceinline__ uint32_t row_group_max(uint32_t v, int tpr, uint32_t* red) {
  v = __reduce_max_sync(0xffffffffu, v);
  if (tpr <= 32) return v;
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) red[warp] = v;
  __syncthreads();
  const int first = warp & ~(tpr / 32 - 1);
  uint32_t r = 0;
  for (int w = 0; w < tpr / 32; ++w) r = max(r, red[first + w]);
  __syncthreads();  // red may be reused
  return r;
}

// 16-byte loads a thread keeps in flight; rows of up to kMaxRowThreads * kRowVecs vectors
// (64 KB) stay in registers between the absmax pass and the quantize pass, so x is read
// from memory once. Longer rows are read again (from L2) for the second pass. With x_smooth
// the multipliers (one float per element) need registers too: two loads in flight (rows
// up to 32 KB cached) keep that kernel within 64 registers without spilling.
template <bool HasSmooth>
constexpr int kRowVecs = HasSmooth ? 2 : 4;
constexpr int kMaxRowThreads = 1024;

// The per-channel multipliers of pack j (VEC consecutive channels). The vector path needs
// smooth 16-byte aligned (checked by the launcher); VEC is 1, 4 or 8.
template <int VEC>
__device__ __forceinline__ void load_smooth(const float* __restrict__ smooth, int j, float (&s)[VEC]) {
  if constexpr (VEC == 1) {
    s[0] = __ldg(smooth + j);
  } else {
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
}

// x' = x * smooth for pack j, one rounded multiply per element (as the CPU kernel and
// reference.py compute it), so the codes of the fast and exact paths see the same floats.
template <typename T, int VEC>
__device__ __forceinline__ void smoothed_values(const Pack<typename Elem<T>::Raw, VEC>& p,
                                                const float* __restrict__ smooth, int j,
                                                float (&v)[VEC]) {
  float s[VEC];
  load_smooth<VEC>(smooth, j, s);
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = mul_rn(Elem<T>::to_float(p.v[i]), s[i]);
}

// Quantizes rows of x ([m, k], row stride ldx elements). `tpr` threads (a power of two)
// share a row; a block holds blockDim.x / tpr rows. Dynamic mode reduces the row absmax
// first; static mode quantizes in one pass and reduces only to flag non-finite rows.
// HasSmooth: the row is x' = x * smooth[k], and the absmax runs on the products' float32
// bits; without it, on x's raw bits (no conversion needed).
template <typename T, int VEC, bool HasSmooth>
__global__ void __launch_bounds__(kMaxRowThreads)
    quantize_rows_kernel(const typename Elem<T>::Raw* __restrict__ x, int64_t m, int k,
                         int64_t ldx, int tpr, StaticParam scale, StaticParam shift,
                         const float* __restrict__ smooth, int8_t* __restrict__ codes,
                         float* __restrict__ row_scale) {
  using E = Elem<T>;
  using A = std::conditional_t<HasSmooth, Elem<float>, E>;  // the encoding of the absmax bits
  using P = Pack<typename E::Raw, VEC>;
  constexpr int kVecs = kRowVecs<HasSmooth>;
  __shared__ uint32_t red[kMaxRowThreads / 32];

  const int vpr = k / VEC;
  const int lt = threadIdx.x & (tpr - 1);
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / tpr) + threadIdx.x / tpr;
  const bool live = row < m;
  const P* src = reinterpret_cast<const P*>(x + (live ? row : 0) * ldx);
  Codes<VEC>* dst = reinterpret_cast<Codes<VEC>*>(codes + (live ? row : 0) * k);

  const bool is_static = scale.present;
  const float lo = shift.present ? kShiftedMin : -kSymMax;
  const float sh = shift.present ? shift.load() : 0.f;
  const int step = tpr * kVecs;
  const bool cached = vpr <= step;

  P v[kVecs];
  float s;
  if (is_static) {
    s = checked_static_scale(scale.load());
  } else {
    uint32_t amax = 0;
    for (int base = 0; base < vpr; base += step) {
#pragma unroll
      for (int c = 0; c < kVecs; ++c) {
        const int j = base + lt + c * tpr;
        v[c] = (live && j < vpr) ? src[j] : P{};
      }
#pragma unroll
      for (int c = 0; c < kVecs; ++c) {
        if constexpr (HasSmooth) {
          const int j = base + lt + c * tpr;
          if (live && j < vpr) {
            float f[VEC];
            smoothed_values<T, VEC>(v[c], smooth, j, f);
            amax = max(amax, values_absmax_bits<VEC>(f));
          }
        } else {
          amax = max(amax, pack_absmax_bits<T, VEC>(v[c]));
        }
      }
    }
    amax = row_group_max(amax, tpr, red);
    s = scale_from_absmax(amax < A::kInf ? A::to_float(amax) : NAN);
  }

  const RowQuantizer rq(s, RowQuantizer::inverse(s), lo, sh);
  uint32_t static_amax = 0;  // static mode only: detects NaN/Inf rows
  for (int base = 0; base < vpr; base += step) {
    if (is_static || !cached) {
#pragma unroll
      for (int c = 0; c < kVecs; ++c) {
        const int j = base + lt + c * tpr;
        v[c] = (live && j < vpr) ? src[j] : P{};
      }
    }
    uint32_t redo = 0;
#pragma unroll
    for (int c = 0; c < kVecs; ++c) {
      const int j = base + lt + c * tpr;
      if constexpr (HasSmooth) {
        if (live && j < vpr) {
          float f[VEC];
          smoothed_values<T, VEC>(v[c], smooth, j, f);
          if (is_static) static_amax = max(static_amax, values_absmax_bits<VEC>(f));
          if constexpr (VEC == 1) {
            dst[j] = rq.exact_pack_values<VEC>(f);
          } else {
            Codes<VEC> q;
            if (!rq.try_pack_values<VEC>(f, q)) redo |= 1u << c;
            dst[j] = q;
          }
        }
      } else {
        if (is_static) static_amax = max(static_amax, pack_absmax_bits<T, VEC>(v[c]));
        if (live && j < vpr) {
          if constexpr (VEC == 1) {  // the unaligned fallback: plain division, no fix-up pass
            dst[j] = rq.exact_pack<T, VEC>(v[c]);
          } else {
            Codes<VEC> q;
            if (!rq.try_pack<T, VEC>(v[c], q)) redo |= 1u << c;
            dst[j] = q;
          }
        }
      }
    }
    if (redo) {
#pragma unroll 1
      for (int c = 0; c < kVecs; ++c) {
        const int j = base + lt + c * tpr;
        if (redo & (1u << c)) {
          if constexpr (HasSmooth) {
            float f[VEC];
            smoothed_values<T, VEC>(src[j], smooth, j, f);
            dst[j] = rq.exact_pack_values<VEC>(f);
          } else {
            dst[j] = rq.exact_pack<T, VEC>(src[j]);
          }
        }
      }
    }
  }

  float rs = s;  // dynamic: s is already NaN for a non-finite row
  if (is_static) {
    rs = row_group_max(static_amax, tpr, red) < A::kInf ? s : NAN;
  }
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

template <typename T, int VEC, bool HasSmooth>
void launch_quantize_rows(const void* x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                          StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                          cudaStream_t stream) {
  constexpr int kVecs = kRowVecs<HasSmooth>;
  const int vpr = static_cast<int>(k / VEC);
  const int tpr = std::min(kMaxRowThreads, std::max(32, next_pow2((vpr + kVecs - 1) / kVecs)));
  const int threads = std::max(tpr, 256);
  const int64_t rows_per_block = threads / tpr;
  const int64_t blocks = (m + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(blocks <= 0x7fffffff, "int8q.quantize_activation: too many rows (", m, ")");
  quantize_rows_kernel<T, VEC, HasSmooth><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      static_cast<const typename Elem<T>::Raw*>(x), m, static_cast<int>(k), ldx, tpr, scale, shift,
      smooth, codes, row_scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, bool HasSmooth>
void quantize_rows_by_alignment(const void* x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                         StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                         cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  // 16-byte loads need every row start 16-byte aligned; codes then go out kVec bytes at a
  // time, and the multipliers are read as float4.
  const bool vec = aligned(x, 16) && (ldx * static_cast<int64_t>(sizeof(T))) % 16 == 0 &&
                   k % kVec == 0 && aligned(codes, kVec) && (!HasSmooth || aligned(smooth, 16));
  if (vec) {
    launch_quantize_rows<T, kVec, HasSmooth>(x, m, k, ldx, scale, shift, smooth, codes, row_scale, stream);
  } else {
    launch_quantize_rows<T, 1, HasSmooth>(x, m, k, ldx, scale, shift, smooth, codes, row_scale, stream);
  }
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
