// Device helpers shared by every GEMM kernel family: the dequantizing epilogue and
// output conversion, so each kernel applies exactly the rules of quant_math.h.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../quant_math.h"
#include "kernels.h"

namespace int8q {
namespace cuda {

__device__ __forceinline__ float load_bias(const Epilogue& ep, int64_t n) {
  switch (ep.bias_type) {
    case BiasType::kFloat: return static_cast<const float*>(ep.bias)[n];
    case BiasType::kHalf: return __half2float(static_cast<const __half*>(ep.bias)[n]);
    case BiasType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(ep.bias)[n]);
    default: return 0.f;
  }
}

// Per output channel: w_scale, the shift term and the bias (0 when absent).
struct ChannelTerms {
  float w_scale;
  float shift;
  float bias;
};

__device__ __forceinline__ ChannelTerms channel_terms(const Epilogue& ep, int64_t n) {
  ChannelTerms t;
  t.w_scale = ep.w_scale[n * ep.w_scale_stride];
  t.shift = ep.w_sum ? shift_term(ep.shift.load(), t.w_scale, ep.w_sum[n]) : 0.f;
  t.bias = ep.bias_type != BiasType::kNone ? load_bias(ep, n) : 0.f;
  return t;
}

// The same rounding sequence as the CPU kernels and reference.py: no fused multiply-adds.
__device__ __forceinline__ float apply_epilogue(int32_t acc, float x_scale, const ChannelTerms& t) {
  return add_rn(add_rn(dequantize(acc, x_scale, t.w_scale), t.shift), t.bias);
}

template <typename T>
__device__ __forceinline__ T to_out(float v);
template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 to_out<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace cuda
}  // namespace int8q
