// Row quantization rules on the device, shared by the activation-quantize kernels
// (quantize.cu) and the fused small-M kernel (gemv.cu): element bit tricks, packed
// loads, and RowQuantizer, whose codes equal quant_math.h's quantize_code exactly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "../quant_math.h"

namespace int8q {
namespace cuda {
namespace row_quant {

// One input element as raw bits. For a non-negative IEEE value, unsigned integer order is
// numeric order and every NaN sorts above Inf, so an integer max over magnitude bits gives
// the absmax and, compared against kInf, whether the row holds NaN/Inf.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using Raw = uint32_t;
  static constexpr uint32_t kMag = 0x7fffffffu;
  static constexpr uint32_t kInf = 0x7f800000u;
  __device__ __forceinline__ static float to_float(uint32_t r) { return __uint_as_float(r); }
};
template <>
struct Elem<__half> {
  using Raw = uint16_t;
  static constexpr uint32_t kMag = 0x7fffu;
  static constexpr uint32_t kInf = 0x7c00u;
  __device__ __forceinline__ static float to_float(uint32_t r) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(r)));
  }
};
template <>
struct Elem<__nv_bfloat16> {
  using Raw = uint16_t;
  static constexpr uint32_t kMag = 0x7fffu;
  static constexpr uint32_t kInf = 0x7f80u;
  __device__ __forceinline__ static float to_float(uint32_t r) {
    return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(r)));
  }
};

// VEC consecutive elements loaded as one access (16 bytes on the vector paths).
template <typename Raw, int VEC>
struct alignas(sizeof(Raw) * VEC) Pack {
  Raw v[VEC];
};

// VEC codes stored as one access.
template <int VEC>
struct Codes;
template <>
struct Codes<1> {
  int8_t c;
};
template <>
struct alignas(4) Codes<4> {
  uint32_t w;
};
template <>
struct alignas(8) Codes<8> {
  uint32_t w[2];
};

// The low bytes of four ints -> one little-endian word.
__device__ __forceinline__ uint32_t pack4(int a, int b, int c, int d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

template <int VEC>
__device__ __forceinline__ Codes<VEC> pack_codes(const int (&c)[VEC]) {
  Codes<VEC> q;
  if constexpr (VEC == 1) {
    q.c = static_cast<int8_t>(c[0]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC / 4; ++i) {
      reinterpret_cast<uint32_t*>(&q)[i] = pack4(c[4 * i], c[4 * i + 1], c[4 * i + 2], c[4 * i + 3]);
    }
  }
  return q;
}

template <typename T, int VEC>
__device__ __forceinline__ uint32_t pack_absmax_bits(const Pack<typename Elem<T>::Raw, VEC>& p) {
  uint32_t b = 0;
#pragma unroll
  for (int i = 0; i < VEC; ++i) b = max(b, static_cast<uint32_t>(p.v[i]) & Elem<T>::kMag);
  return b;
}

// Magnitude bits of the largest |v|, as float32 bits (Elem<float>'s encoding).
template <int VEC>
__device__ __forceinline__ uint32_t values_absmax_bits(const float (&v)[VEC]) {
  uint32_t b = 0;
#pragma unroll
  for (int i = 0; i < VEC; ++i) b = max(b, __float_as_uint(v[i]) & Elem<float>::kMag);
  return b;
}

// Quantizes values that share one scale, giving exactly quantize_code(x - shift, scale, lo)
// without an IEEE division per element. q = (x - shift) * RN(1/scale) is within 3 * 2^-24
// relative of RN((x - shift) / scale). Unless q lies within 2^-12 of a rounding boundary
// k + 0.5, both round to the same integer (for |q| > 512 both clamp to the same end), so
// only such values, NaNs and scales whose reciprocal is not a normal float need the true
// division: try_pack reports them and the caller redoes that pack with exact_pack (rare,
// and kept out of the hot loop so it costs no registers there).
// Rounding adds 1.5 * 2^23 (round half to even); the low byte of the sum's bits is the code.
struct RowQuantizer {
  float scale, inv, lo, shift;
  bool fast;

  // inv: inverse(scale), computed once per row (or per tensor).
  __device__ __forceinline__ RowQuantizer(float scale_, float inv_, float lo_, float shift_)
      : scale(scale_), inv(inv_), lo(lo_), shift(shift_), fast(is_fast(scale_)) {}
  __device__ __forceinline__ static bool is_fast(float s) { return s >= 0x1p-126f && s <= 0x1p126f; }
  __device__ __forceinline__ static float inverse(float s) { return is_fast(s) ? __fdiv_rn(1.f, s) : 0.f; }

  // Codes for VEC values; get(i) gives the i-th as a float (converted from a pack, or an
  // already computed value such as a smoothed activation).
  template <int VEC, typename Get>
  __device__ __forceinline__ bool try_pack_with(Get get, Codes<VEC>& out) const {
    constexpr float kMagic = 12582912.f;  // 1.5 * 2^23, bits 0x4b400000
    bool ok = fast;
    int c[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float q = __fmul_rn(__fsub_rn(get(i), shift), inv);
      const float qc = fminf(fmaxf(q, lo), kSymMax);
      const float t = __fadd_rn(qc, kMagic);
      c[i] = __float_as_int(t);
      const float frac = fabsf(__fsub_rn(qc, __fsub_rn(t, kMagic)));
      ok = ok && frac <= 0.5f - 0x1p-12f && q == q;
    }
    out = pack_codes<VEC>(c);
    return ok;
  }

  template <int VEC, typename Get>
  __device__ __forceinline__ Codes<VEC> exact_pack_with(Get get) const {
    int c[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) c[i] = quantize_code(__fsub_rn(get(i), shift), scale, lo);
    return pack_codes<VEC>(c);
  }

  template <typename T, int VEC>
  __device__ __forceinline__ bool try_pack(const Pack<typename Elem<T>::Raw, VEC>& p,
                                           Codes<VEC>& out) const {
    return try_pack_with<VEC>([&](int i) { return Elem<T>::to_float(p.v[i]); }, out);
  }

  template <typename T, int VEC>
  __device__ __forceinline__ Codes<VEC> exact_pack(const Pack<typename Elem<T>::Raw, VEC>& p) const {
    return exact_pack_with<VEC>([&](int i) { return Elem<T>::to_float(p.v[i]); });
  }

  template <int VEC>
  __device__ __forceinline__ bool try_pack_values(const float (&v)[VEC], Codes<VEC>& out) const {
    return try_pack_with<VEC>([&](int i) { return v[i]; }, out);
  }

  template <int VEC>
  __device__ __forceinline__ Codes<VEC> exact_pack_values(const float (&v)[VEC]) const {
    return exact_pack_with<VEC>([&](int i) { return v[i]; });
  }
};


}  // namespace row_quant
}  // namespace cuda
}  // namespace int8q
