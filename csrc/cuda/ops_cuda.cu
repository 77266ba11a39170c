// CUDA entry points of the int8q ops: input checks, device guard, and dispatch by M and
// shape to the kernel families declared in kernels.h. Everything runs on the current
// stream, allocates only through PyTorch's caching allocator and never synchronizes with
// the host (quantize_weight, an offline op, excepted: it must reject non-finite weights).

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>

#include "../checks.h"
#include "kernels.h"
#include "launch.cuh"

namespace int8q {
namespace cuda {
namespace {

StaticParam static_param(const c10::optional<at::Tensor>& t) {
  StaticParam p;
  if (!t.has_value()) return p;
  p.present = true;
  if (t->device().is_cpu()) {
    p.value = t->item<float>();  // a CPU tensor: no device sync
  } else {
    p.ptr = t->data_ptr<float>();
  }
  return p;
}

OutType out_type_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return OutType::kFloat;
    case at::kHalf: return OutType::kHalf;
    case at::kBFloat16: return OutType::kBFloat16;
    default: TORCH_CHECK(false, "int8q: unsupported output dtype ", t);
  }
}

void set_bias(Epilogue& ep, const c10::optional<at::Tensor>& bias, at::Tensor& holder) {
  if (!bias.has_value()) return;
  holder = bias->contiguous();
  ep.bias = holder.data_ptr();
  switch (holder.scalar_type()) {
    case at::kFloat: ep.bias_type = BiasType::kFloat; break;
    case at::kHalf: ep.bias_type = BiasType::kHalf; break;
    default: ep.bias_type = BiasType::kBFloat16; break;
  }
}

constexpr int64_t kFusedMaxMWithPdl = 2;

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// INT8Q_DISABLE_SM90A=1 routes Hopper GPUs through the mma.sync kernels, so that path stays
// tested (and comparable) on H100/H200. Read per call: tests flip it at run time.
bool sm90a_disabled() {
  const char* v = std::getenv("INT8Q_DISABLE_SM90A");
  return v != nullptr && v[0] == '1';
}

}  // namespace

bool pdl_enabled() {
  if (at::cuda::getCurrentDeviceProperties()->major < 9) return false;
  const char* v = std::getenv("INT8Q_DISABLE_PDL");
  return v == nullptr || v[0] != '1';
}

namespace {

int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

// A [M, K] int8 (row stride lda) x W [N, K]^T with the epilogue ep, into out [M, N].
// w_ready: the kernel launched just before on the stream is int8q's activation quantizer
// (gemm_sm90a may then load W before it ends; see kernels.h).
void run_gemm(const int8_t* a, int64_t lda, const int8_t* w, int64_t m, int64_t n, int64_t k,
              const Epilogue& ep, void* out, OutType out_type, bool w_ready, cudaStream_t stream) {
  const bool tensor_core_ok = k % 16 == 0 && lda % 16 == 0 && aligned16(a) && aligned16(w);
  if (!tensor_core_ok) {
    gemm_generic(a, lda, w, m, n, k, ep, out, out_type, stream);
    return;
  }
  const int sms = num_sms();
  const auto* prop = at::cuda::getCurrentDeviceProperties();
  if (prop->major == 9 && prop->minor == 0 && !sm90a_disabled() &&
      gemm_sm90a(a, lda, w, m, n, k, ep, out, out_type, sms, w_ready, stream)) {
    return;
  }
  gemm_sm80(a, lda, w, m, n, k, ep, out, out_type, sms, stream);
}

at::Tensor rows_view(const at::Tensor& x, int64_t k) {
  // [..., K] -> [M, K] with a unit stride along K (copies only when it must).
  return x.reshape({-1, k}).contiguous();
}

// The x_smooth multipliers as a contiguous device array (held by `holder`), or nullptr.
const float* smooth_ptr(const c10::optional<at::Tensor>& x_smooth, at::Tensor& holder) {
  if (!x_smooth.has_value()) return nullptr;
  holder = x_smooth->contiguous();
  return holder.data_ptr<float>();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_weight_cuda(const at::Tensor& weight, bool per_channel) {
  check_quantize_weight(weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  TORCH_CHECK(at::isfinite(weight).all().item<bool>(),
              "int8q.quantize_weight: weight contains NaN or Inf; only finite weights can be quantized");
  const at::Tensor w = weight.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  at::Tensor q = at::empty({n, k}, w.options().dtype(at::kChar));
  at::Tensor scale = at::empty({per_channel ? n : 1}, w.options().dtype(at::kFloat));
  quantize_weight_rows(w, per_channel, q.data_ptr<int8_t>(), scale.data_ptr<float>(),
                       at::cuda::getCurrentCUDAStream());
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> quantize_activation_cuda(const at::Tensor& x,
                                                            const c10::optional<at::Tensor>& scale,
                                                            const c10::optional<at::Tensor>& shift,
                                                            const c10::optional<at::Tensor>& x_smooth) {
  check_quantize_activation(x, scale, shift, x_smooth);
  const int64_t k = x.size(-1);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  const int64_t m = x.numel() / k;
  at::Tensor row_scale = at::empty({m}, x.options().dtype(at::kFloat));
  if (m > 0) {
    const at::Tensor x2 = rows_view(x, k);
    at::Tensor smooth_holder;
    quantize_rows(x2, m, k, k, static_param(scale), static_param(shift),
                  smooth_ptr(x_smooth, smooth_holder), q.data_ptr<int8_t>(),
                  row_scale.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  }
  if (scale.has_value()) {
    // A CPU scale is written with a fill kernel, not copied: no host sync, graph-capturable.
    const at::Tensor s = scale->device().is_cpu()
                             ? at::full({1}, scale->item<float>(), x.options().dtype(at::kFloat))
                             : scale->reshape({1}).clone();
    return {q, s};
  }
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end() - 1);
  return {q, row_scale.reshape(scale_shape)};
}

at::Tensor matmul_cuda(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                       const c10::optional<at::Tensor>& x_scale,
                       const c10::optional<at::Tensor>& x_shift,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& x_smooth,
                       const c10::optional<at::Tensor>& w_sum_in) {
  check_matmul(x, qweight, w_scale, x_scale, x_shift, bias, x_smooth, w_sum_in);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = qweight.size(0), k = qweight.size(1);
  const int64_t m = x.numel() / k;
  at::Tensor out = at::empty(output_shape(x, n), x.options());
  if (m == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor x2 = rows_view(x, k);
  const at::Tensor w = qweight.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  Epilogue ep;
  ep.w_scale = ws.data_ptr<float>();
  ep.w_scale_stride = ws.numel() == 1 ? 0 : 1;
  const StaticParam scale = static_param(x_scale), shift = static_param(x_shift);
  at::Tensor w_sum;
  if (shift.present) {
    if (w_sum_in.has_value()) {
      w_sum = w_sum_in->contiguous();  // given: no pass over the weights
    } else {
      w_sum = at::empty({n}, x.options().dtype(at::kInt));
      weight_sums(w.data_ptr<int8_t>(), n, k, w_sum.data_ptr<int32_t>(), stream);
    }
    ep.w_sum = w_sum.data_ptr<int32_t>();
    ep.shift = shift;
  }
  at::Tensor bias_holder;
  set_bias(ep, bias, bias_holder);
  const OutType ot = out_type_of(x.scalar_type());

  at::Tensor smooth_holder;
  const float* smooth = smooth_ptr(x_smooth, smooth_holder);
  // The fused small-M kernel (quantization inside, one launch; no x_smooth) against the
  // quantize kernel + GEMM: without PDL the fused kernel wins up to M = 8. With PDL (sm_90)
  // the GEMM's launch overlaps the quantizer (launch.cuh), and the two-pass path wins from M = 3 on
  // all four LLM shapes (H200: 4096x4096 M=3 11.9 us against 14.2, M=8 13.1 against 15.9;
  // 8192x28672 M=3 65.2 against 67.4), the fused dp4a kernel still at M <= 2. A Hopper GEMM
  // that quantized x itself (grid barrier, one launch) was slower still (gemm_sm90a.cu).
  const int64_t fused_max_m = pdl_enabled() ? std::min<int64_t>(kFusedMaxMWithPdl, gemv_max_m()) : gemv_max_m();
  if (smooth == nullptr && m <= fused_max_m &&
      gemv_fused(x2, m, n, k, k, w.data_ptr<int8_t>(), scale, shift, ep, out.data_ptr(), ot,
                 num_sms(), stream)) {
    return out;
  }
  at::Tensor codes = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor row_scale = at::empty({m}, x.options().dtype(at::kFloat));
  quantize_rows(x2, m, k, k, scale, shift, smooth, codes.data_ptr<int8_t>(),
                row_scale.data_ptr<float>(), stream);
  ep.x_scale = row_scale.data_ptr<float>();
  ep.x_scale_stride = 1;
  // quantize_rows is one kernel that waits for everything before it (launch.cuh) and writes
  // only codes and row_scale: W, its scales, sums and the bias are complete when the GEMM
  // starts, so it may load them before the quantizer ends.
  run_gemm(codes.data_ptr<int8_t>(), k, w.data_ptr<int8_t>(), m, n, k, ep, out.data_ptr(), ot,
           /*w_ready=*/true, stream);
  return out;
}

at::Tensor scaled_mm_cuda(const at::Tensor& xq, const at::Tensor& qweight, const at::Tensor& x_scale,
                          const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                          c10::optional<at::ScalarType> out_dtype) {
  check_scaled_mm(xq, qweight, x_scale, w_scale, bias, out_dtype);
  const c10::cuda::CUDAGuard guard(xq.device());
  const int64_t n = qweight.size(0), k = qweight.size(1);
  const int64_t m = xq.numel() / k;
  const at::ScalarType dtype = out_dtype.value_or(at::kFloat);
  at::Tensor out = at::empty(output_shape(xq, n), xq.options().dtype(dtype));
  if (m == 0) return out;
  const at::Tensor a = rows_view(xq, k);
  const at::Tensor w = qweight.contiguous();
  const at::Tensor xs = x_scale.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  Epilogue ep;
  ep.x_scale = xs.data_ptr<float>();
  ep.x_scale_stride = xs.numel() == 1 ? 0 : 1;
  ep.w_scale = ws.data_ptr<float>();
  ep.w_scale_stride = ws.numel() == 1 ? 0 : 1;
  at::Tensor bias_holder;
  set_bias(ep, bias, bias_holder);
  run_gemm(a.data_ptr<int8_t>(), k, w.data_ptr<int8_t>(), m, n, k, ep, out.data_ptr(),
           out_type_of(dtype), /*w_ready=*/false, at::cuda::getCurrentCUDAStream());
  return out;
}

TORCH_LIBRARY_IMPL(int8q, CUDA, m) {
  m.impl("quantize_weight", &quantize_weight_cuda);
  m.impl("quantize_activation", &quantize_activation_cuda);
  m.impl("matmul", &matmul_cuda);
  m.impl("scaled_mm", &scaled_mm_cuda);
}

}  // namespace cuda
}  // namespace int8q
