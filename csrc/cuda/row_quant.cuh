// Row quantization rules on the device, shared by the activation-quantize kernels
// (quantize.cu) and the fused small-M kernel (gemv.cu): element bit tricks, packed
// loads, and RowQuantizer and BracketQuantizer, whose codes equal quant_math.h's
// quantize_code exactly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

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

// 16-byte vectors of elements, kept as four 32-bit words: two fp16/bf16 elements or one
// fp32 element per word, so no register is split into 16-bit halves.
template <typename T>
constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));

// The VEC elements of v as floats (exact conversions).
template <typename T>
__device__ __forceinline__ void vec_to_floats(const uint4& v, float (&f)[kVecElems<T>]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (std::is_same_v<T, float>) {
      f[i] = __uint_as_float(w[i]);
    } else if constexpr (std::is_same_v<T, __half>) {
      __half2 h;
      memcpy(&h, &w[i], 4);
      const float2 p = __half22float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    } else {
      __nv_bfloat162 h;
      memcpy(&h, &w[i], 4);
      const float2 p = __bfloat1622float2(h);
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
}

// Running max of the magnitude bits of a vector (pack_absmax_bits' encoding), lane-wise:
// two 16-bit lanes per word for fp16/bf16, so one __vmaxu2 covers two elements; lanes_fold
// gives the max of the lanes. A lane never exceeds kMag, so lanes stay independent.
template <typename T>
__device__ __forceinline__ uint32_t lanes_absmax(const uint4& v, uint32_t acc) {
  if constexpr (sizeof(T) == 2) {
    constexpr uint32_t kMask = Elem<T>::kMag * 0x10001u;
    acc = __vmaxu2(acc, __vmaxu2(v.x & kMask, v.y & kMask));
    return __vmaxu2(acc, __vmaxu2(v.z & kMask, v.w & kMask));
  } else {
    constexpr uint32_t kMask = Elem<T>::kMag;
    return max(max(acc, v.x & kMask), max(max(v.y & kMask, v.z & kMask), v.w & kMask));
  }
}

template <typename T>
__device__ __forceinline__ uint32_t lanes_fold(uint32_t acc) {
  return sizeof(T) == 2 ? max(acc & 0xffffu, acc >> 16) : acc;
}

// Nonzero iff some lane of a lanes_absmax result is >= kInf (NaN or Inf). Adding
// 2^(w-1) - kInf to a lane (w = lane width) sets its top bit exactly when lane >= kInf, and
// cannot carry out of the lane: lane <= kMag = 2^(w-1) - 1 and kInf > 0.
template <typename T>
__device__ __forceinline__ uint32_t lanes_nonfinite(uint32_t acc) {
  if constexpr (sizeof(T) == 2) {
    return (acc + (0x8000u - Elem<T>::kInf) * 0x10001u) & 0x80008000u;
  } else {
    return (acc + (0x80000000u - Elem<T>::kInf)) & 0x80000000u;
  }
}

// Quantizes values that share one scale s: the code of v is quantize_code(v, s, lo), read
// off two fused multiply-adds instead of a division, and checked in the same breath.
//
// c_lo < 1/s < c_hi bracket the reciprocal; the constructor verifies with directed-rounding
// FMAs that c_hi * s - 1 lies in [2^-24, 2^-18] and c_lo * s - 1 in [-2^-18, -2^-24],
// whatever the approximate reciprocal they come from did (fast is false otherwise). For v > 0, with
// z = v / s (exact): RN(z) <= z (1 + 2^-24) <= v c_hi, and v c_lo <= z (1 - 2^-24) <= RN(z)
// when z is normal; when z < 2^-126, v c_lo, v c_hi and RN(z) are all below 0.5 in
// magnitude. Mirrored for v < 0, and v = +-0 gives 0 everywhere. fmaf(v, c, M) with
// M = 1.5 * 2^23 rounds the exact v * c + M once, to M + rint(v * c) (ties to even: M is
// even) as long as |v * c| < 2^22. rint is monotone, so when rint(v c_lo) == rint(v c_hi)
// both equal rint(RN(v / s)), the reference's unclamped code, and the low byte of the sum's
// bits (M's low byte is 0) is that code as an int8. When they differ (v / s within about
// 2^-20 relative of a rounding boundary k + 0.5, or exactly on one: rare), the caller
// redoes the pack with fixed_codes, which divides for those values only. So "the two sums
// have the same bits" is the whole fast-path test.
//
// Range of the codes. Dynamic (Clamp = false): s = RN(a / 127) >= a / 127 (1 - 2^-24) for
// the row absmax a >= |v|, so |RN(v / s)| <= RN(127 (1 + 2^-23)) < 127.5: the reference
// clamp is a no-op, and |v c| <= 127 (1 + 2^-23)(1 + 2^-18) < 2^22. (s = 1 from a zero or
// underflowing absmax: |v| <= 127 * 2^-149, every code is 0.) A row holding NaN/Inf has a
// NaN scale, so fast is false and the whole row takes the exact path.
// Static (Clamp = true): v is first clamped to [v_lo, v_hi], v_hi = RN(127 s), v_lo =
// RN(lo s) (finite: s <= 2^120; for lo = -128 exact, v_lo / s = -128). For v >= v_hi the
// reference gives 127, as RN(v / s) >= RN(v_hi / s) > 126.5; the fast path sees v_hi, whose
// agreeing code is rint(RN(v_hi / s)) = 127 since RN(v_hi / s) < 127.5 too. Likewise
// v <= v_lo gives lo on both sides (RN(v_lo / s) is in (-127.5, -126.5) for lo = -127 and
// is -128 for lo = -128). Between the bounds RN(v / s) lies in (lo - 0.5, 127.5), so the
// reference clamp is a no-op again, and |v c| <= 128 (1 + 2^-18)(1 + 2^-24) < 2^22. This
// covers v = +-Inf (clamped to a bound, code 127 or lo, as quantize_code gives), but not
// NaN: the clamp turns it into v_lo, where quantize_code gives 0, so the caller must flag
// packs holding NaN itself (static mode flags NaN and Inf packs by their absmax bits).
// A shift must be finite (fast is false otherwise): RN(x - shift) is then NaN only for a NaN
// x (an overflow gives +-Inf, covered above).
struct BracketQuantizer {
  float c_lo, c_hi, v_lo, v_hi;
  float scale, lo, shift;
  bool fast;

  __device__ __forceinline__ BracketQuantizer(float scale_, float lo_, float shift_)
      : scale(scale_), lo(lo_), shift(shift_) {
    float r;  // about 1/s (1 ulp); its accuracy matters to speed only, the checks below decide
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(scale_));
    c_hi = __fmul_ru(r, 1.f + 0x1p-21f);
    c_lo = __fmul_rd(r, 1.f - 0x1p-21f);
    v_hi = __fmul_rn(kSymMax, scale_);
    v_lo = __fmul_rn(lo_, scale_);
    fast = scale_ >= 0x1p-126f && scale_ <= 0x1p120f && fabsf(shift_) <= 3.402823466e38f &&
           __fmaf_rd(c_hi, scale_, -1.f) >= 0x1p-24f && __fmaf_ru(c_hi, scale_, -1.f) <= 0x1p-18f &&
           __fmaf_ru(c_lo, scale_, -1.f) <= -0x1p-24f && __fmaf_rd(c_lo, scale_, -1.f) >= -0x1p-18f;
  }

  // Codes of N values (before the shift) into out; the result is nonzero when the pack
  // must be redone with exact_codes. Needs fast.
  template <bool Clamp, bool Shift, int N>
  __device__ __forceinline__ uint32_t try_codes(const float (&x)[N], Codes<N>& out) const {
    constexpr float kMagic = 12582912.f;  // 1.5 * 2^23, bits 0x4b400000
    int c[N];
    uint32_t diff = 0;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      float v = Shift ? __fsub_rn(x[i], shift) : x[i];
      if constexpr (Clamp) v = fminf(fmaxf(v, v_lo), v_hi);
      const float hi = __fmaf_rn(v, c_hi, kMagic);
      const float lo_sum = __fmaf_rn(v, c_lo, kMagic);
      c[i] = __float_as_int(hi);
      diff |= __float_as_uint(hi) ^ __float_as_uint(lo_sum);
    }
    out = pack_codes<N>(c);
    return diff;
  }

  // quantize_code(x - shift, scale, lo) for each value (x itself when there is no shift:
  // x - 0 is x for every x, NaN aside, whose code is 0 either way).
  template <bool Shift, int N>
  __device__ __forceinline__ Codes<N> exact_codes(const float (&x)[N]) const {
    int c[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      c[i] = quantize_code(Shift ? __fsub_rn(x[i], shift) : x[i], scale, lo);
    }
    return pack_codes<N>(c);
  }

  // The redo of a pack that try_codes flagged: the same two sums per value, and the
  // division only for the values whose sums differ, or that are NaN (see above). Needs fast.
  template <bool Clamp, bool Shift, int N>
  __device__ __forceinline__ Codes<N> fixed_codes(const float (&x)[N]) const {
    constexpr float kMagic = 12582912.f;
    int c[N];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const float u = Shift ? __fsub_rn(x[i], shift) : x[i];
      const float v = Clamp ? fminf(fmaxf(u, v_lo), v_hi) : u;
      const float hi = __fmaf_rn(v, c_hi, kMagic);
      c[i] = __float_as_int(hi);
      if (__float_as_uint(hi) != __float_as_uint(__fmaf_rn(v, c_lo, kMagic)) || u != u) {
        c[i] = quantize_code(u, scale, lo);
      }
    }
    return pack_codes<N>(c);
  }
};

}  // namespace row_quant
}  // namespace cuda
}  // namespace int8q
