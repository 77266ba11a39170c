// Scalar quantization rules shared by host and device code, so the CPU reference
// kernels and the CUDA kernels round, clamp and treat edge cases identically.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define INT8Q_HD __host__ __device__ __forceinline__
#else
#define INT8Q_HD inline
#endif

namespace int8q {

// Code range of symmetric quantization, and of the shifted (asymmetric) activation form.
constexpr float kSymMax = 127.f;
constexpr float kShiftedMin = -128.f;

// scale = absmax / 127; a zero (or underflowing) absmax gets scale 1 so codes are 0 and
// the scale stays finite and positive. A non-finite absmax (NaN/Inf in the row) gives NaN.
INT8Q_HD float scale_from_absmax(float absmax) {
  if (!(absmax <= 3.402823466e38f)) return NAN;  // NaN or +Inf
  const float s = absmax / kSymMax;
  return s > 0.f ? s : 1.f;
}

// round_half_even(v / scale), clamped to [lo, 127]. NaN maps to code 0.
INT8Q_HD int8_t quantize_code(float v, float scale, float lo) {
  float q = rintf(v / scale);
  if (q != q) return 0;
  q = fminf(fmaxf(q, lo), kSymMax);
  return static_cast<int8_t>(q);
}

// Rounded float ops that the compiler may not fuse into an FMA, so every backend (and
// reference.py, which rounds each torch op) produces bit-identical float32 results.
INT8Q_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;  // host code is built with -ffp-contract=off
#endif
}
INT8Q_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// The dequantized output element: ((acc * x_scale) * w_scale) (+ shift term) (+ bias),
// rounded in that order.
INT8Q_HD float dequantize(int32_t acc, float x_scale, float w_scale) {
  return mul_rn(mul_rn(static_cast<float>(acc), x_scale), w_scale);
}

INT8Q_HD float shift_term(float shift, float w_scale, int32_t w_sum) {
  return mul_rn(mul_rn(shift, w_scale), static_cast<float>(w_sum));
}

// A static scale must be finite and positive; kernels that cannot raise turn a bad one into NaN.
INT8Q_HD float checked_static_scale(float s) {
  return (s > 0.f && s <= 3.402823466e38f) ? s : NAN;
}

}  // namespace int8q
