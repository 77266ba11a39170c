// Internal interface between the CUDA op entry points (ops_cuda.cu) and the kernel
// families (quantize.cu, gemv.cu, gemm_sm80.cu, gemm_sm90a.cu). Plain structs passed by
// value to kernels; no allocation or host synchronization inside any launcher.
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace int8q {
namespace cuda {

// A static activation scale or shift: read from device memory when `ptr` is set (a CUDA
// tensor: checked inside the kernel, an invalid scale gives NaN), else the host `value`.
struct StaticParam {
  const float* ptr = nullptr;
  float value = 0.f;
  bool present = false;
#if defined(__CUDACC__)
  __device__ __forceinline__ float load() const { return ptr ? __ldg(ptr) : value; }
#endif
};

enum class BiasType : int { kNone = 0, kFloat = 1, kHalf = 2, kBFloat16 = 3 };

// What the GEMM epilogue applies to the int32 accumulator of output (m, n):
//   out = acc * x_scale[m * x_scale_stride] * w_scale[n * w_scale_stride]
//         (+ shift * w_scale[n] * w_sum[n] when w_sum) (+ bias[n])
struct Epilogue {
  const float* x_scale = nullptr;  // per row of A (stride 1) or one value (stride 0)
  int x_scale_stride = 1;
  const float* w_scale = nullptr;  // per channel (stride 1) or per tensor (stride 0)
  int w_scale_stride = 1;
  const int32_t* w_sum = nullptr;  // [N] sums of weight codes; only with a shift
  StaticParam shift;
  const void* bias = nullptr;
  BiasType bias_type = BiasType::kNone;
};

enum class OutType : int { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

// Row-wise activation quantization: x [M, K] (row stride ldx elements, last dim contiguous)
// of fp32/fp16/bf16 -> codes [M, K] int8 contiguous, row_scale [M] float32.
// smooth: float32 [K] contiguous or nullptr; when set, the rows quantized are
// x' = mul_rn(x, smooth[k]) (SmoothQuant's per-channel 1/s, applied in the same pass).
// Dynamic when !scale.present. row_scale is NaN for rows whose x' holds NaN/Inf (any mode).
void quantize_rows(const at::Tensor& x, int64_t m, int64_t k, int64_t ldx, StaticParam scale,
                   StaticParam shift, const float* smooth, int8_t* codes, float* row_scale,
                   cudaStream_t stream);

// Per-channel weight code sums (for the shift term): w [N, K] int8 contiguous -> w_sum [N].
void weight_sums(const int8_t* w, int64_t n, int64_t k, int32_t* w_sum, cudaStream_t stream);

// Per-channel / per-tensor weight quantization: w [N, K] float contiguous.
void quantize_weight_rows(const at::Tensor& w, bool per_channel, int8_t* q, float* scale,
                          cudaStream_t stream);

// Small-M path (decode): activation quantization fused into the kernel.
// x [M, K] float (row stride ldx), w [N, K] int8 contiguous, out [M, N] contiguous.
// Returns false (launching nothing) when the shape is outside what it handles.
bool gemv_fused(const at::Tensor& x, int64_t m, int64_t n, int64_t k, int64_t ldx,
                const int8_t* w, StaticParam scale, StaticParam shift, Epilogue ep, void* out,
                OutType out_type, int num_sms, cudaStream_t stream);
int64_t gemv_max_m();

// Tensor-core GEMM on int8 A [M, K] (row stride lda) and W [N, K] contiguous, mma.sync
// m16n8k32 (sm_80+). Requires K % 16 == 0, lda % 16 == 0 and 16-byte aligned pointers.
void gemm_sm80(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
               Epilogue ep, void* out, OutType out_type, int num_sms, cudaStream_t stream);

// Sums split-K int32 partials [splits, M, N] (exact) and applies the epilogue into out [M, N].
void splitk_reduce(const int32_t* partial, int splits, int64_t m, int64_t n, Epilogue ep,
                   void* out, OutType out_type, cudaStream_t stream);

// Any-shape fallback GEMM (no alignment requirements); correct, not fast.
void gemm_generic(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                  Epilogue ep, void* out, OutType out_type, cudaStream_t stream);

// Hopper wgmma + TMA GEMM (sm_90a builds only). Returns false when not compiled in or the
// shape is not supported, so the caller falls back to gemm_sm80. w_ready: W and the epilogue's
// per-channel data were not written by the kernel launched just before on the stream, so the
// GEMM may start loading W before that kernel has finished (PDL, launch.cuh).
bool gemm_sm90a(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
                Epilogue ep, void* out, OutType out_type, int num_sms, bool w_ready,
                cudaStream_t stream);

}  // namespace cuda
}  // namespace int8q
