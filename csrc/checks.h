// Input validation shared by the CPU and CUDA implementations, so both backends
// reject exactly the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>

namespace int8q {

// int32 accumulation stays exact while K * 128 * 128 < 2^31 (int8 codes, -128 included).
constexpr int64_t kMaxK = 131071;

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(is_float_dtype(t.scalar_type()), "int8q.", op, ": ", name,
              " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

inline void check_int8(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kChar, "int8q.", op, ": ", name, " must be int8, got ",
              t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t,
                              const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "int8q.", op, ": ", name, " is on ", t.device(), " but ",
              ref_name, " is on ", ref.device(), "; all tensors must be on one device");
}

inline void check_k(const char* op, int64_t k) {
  TORCH_CHECK(k >= 1, "int8q.", op, ": the reduction dimension K must be at least 1, got ", k);
  TORCH_CHECK(k <= kMaxK, "int8q.", op, ": K = ", k, " is too large for exact int32 accumulation; ",
              "K must be at most ", kMaxK);
}

inline void check_qweight(const char* op, const at::Tensor& qweight, const at::Tensor& x,
                          const char* x_name) {
  check_int8(op, "qweight", qweight);
  TORCH_CHECK(qweight.dim() == 2, "int8q.", op, ": qweight must be 2-D [N, K], got shape ",
              qweight.sizes());
  check_same_device(op, "qweight", qweight, x, x_name);
  TORCH_CHECK(x.size(-1) == qweight.size(1), "int8q.", op, ": ", x_name, " has K = ", x.size(-1),
              " in its last dimension but qweight is [N, K] = ", qweight.sizes(),
              "; the last dimension of ", x_name, " must equal qweight.size(1)");
  check_k(op, qweight.size(1));
}

// A per-channel ([N]) or per-tensor ([1]) float32 scale on the weights' device.
inline void check_w_scale(const char* op, const at::Tensor& w_scale, const at::Tensor& qweight) {
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat, "int8q.", op, ": w_scale must be float32, got ",
              w_scale.scalar_type());
  const int64_t n = qweight.size(0);
  TORCH_CHECK(w_scale.dim() == 1 && (w_scale.numel() == n || w_scale.numel() == 1), "int8q.", op,
              ": w_scale must have shape [N] = [", n, "] (per channel) or [1] (per tensor), got ",
              w_scale.sizes());
  check_same_device(op, "w_scale", w_scale, qweight, "qweight");
}

inline void check_bias(const char* op, const c10::optional<at::Tensor>& bias,
                       const at::Tensor& qweight) {
  if (!bias.has_value()) return;
  check_float(op, "bias", *bias);
  TORCH_CHECK(bias->dim() == 1 && bias->numel() == qweight.size(0), "int8q.", op,
              ": bias must have shape [N] = [", qweight.size(0), "], got ", bias->sizes());
  check_same_device(op, "bias", *bias, qweight, "qweight");
}

// A static activation scale or shift: one float32 element, on x's device or on the CPU.
// Values are checked here when they live on the CPU (free); a CUDA-resident scale is
// checked inside the kernel (no host sync): an invalid one yields NaN outputs.
inline void check_static_param(const char* op, const char* name, const at::Tensor& t,
                               const at::Tensor& x, bool must_be_positive) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "int8q.", op, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.numel() == 1, "int8q.", op, ": ", name,
              " must hold exactly one element (a static per-tensor value), got shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device() || t.device().is_cpu(), "int8q.", op, ": ", name, " is on ",
              t.device(), " but x is on ", x.device(), "; it must be on x's device or on the CPU");
  if (t.device().is_cpu()) {
    const float v = t.item<float>();
    TORCH_CHECK(std::isfinite(v), "int8q.", op, ": ", name, " must be finite, got ", v);
    if (must_be_positive) {
      TORCH_CHECK(v > 0.f, "int8q.", op, ": ", name, " must be positive, got ", v);
    }
  }
}

// The per-input-channel multiplier of the activations (SmoothQuant's 1/s): float32 [K] on
// x's device. Its values are not checked (that would sync a CUDA tensor): a product that is
// not finite makes its row NaN, like a NaN in x.
inline void check_smooth(const char* op, const c10::optional<at::Tensor>& x_smooth, const at::Tensor& x) {
  if (!x_smooth.has_value()) return;
  TORCH_CHECK(x_smooth->scalar_type() == at::kFloat, "int8q.", op, ": x_smooth must be float32, got ",
              x_smooth->scalar_type());
  const int64_t k = x.size(-1);
  TORCH_CHECK(x_smooth->dim() == 1 && x_smooth->numel() == k, "int8q.", op,
              ": x_smooth must have shape [K] = [", k, "] (one multiplier per input channel of x), got ",
              x_smooth->sizes());
  check_same_device(op, "x_smooth", *x_smooth, x, "x");
}

inline void check_activation_args(const char* op, const at::Tensor& x,
                                  const c10::optional<at::Tensor>& scale,
                                  const c10::optional<at::Tensor>& shift) {
  check_float(op, "x", x);
  TORCH_CHECK(x.dim() >= 1, "int8q.", op, ": x must have at least 1 dimension [..., K], got a scalar");
  if (scale.has_value()) check_static_param(op, "x_scale", *scale, x, /*must_be_positive=*/true);
  if (shift.has_value()) {
    TORCH_CHECK(scale.has_value(), "int8q.", op,
                ": x_shift needs a static x_scale as well; dynamic quantization is symmetric");
    check_static_param(op, "x_shift", *shift, x, /*must_be_positive=*/false);
  }
}

inline void check_quantize_activation(const at::Tensor& x, const c10::optional<at::Tensor>& scale,
                                      const c10::optional<at::Tensor>& shift,
                                      const c10::optional<at::Tensor>& x_smooth) {
  check_activation_args("quantize_activation", x, scale, shift);
  check_k("quantize_activation", x.size(-1));
  check_smooth("quantize_activation", x_smooth, x);
}

inline void check_quantize_weight(const at::Tensor& weight) {
  check_float("quantize_weight", "weight", weight);
  TORCH_CHECK(weight.dim() == 2, "int8q.quantize_weight: weight must be 2-D [N, K] (nn.Linear layout), got shape ",
              weight.sizes());
  check_k("quantize_weight", weight.size(1));
}

// The shift term's weight sums, passed in instead of computed per call: int32 [N] on
// qweight's device, and only with a shift (they mean nothing without one).
inline void check_w_sum(const char* op, const c10::optional<at::Tensor>& w_sum,
                        const c10::optional<at::Tensor>& x_shift, const at::Tensor& qweight) {
  if (!w_sum.has_value()) return;
  TORCH_CHECK(x_shift.has_value(), "int8q.", op,
              ": w_sum (the weight sums of the shift term) is only used with x_shift; pass both "
              "or neither");
  TORCH_CHECK(w_sum->scalar_type() == at::kInt, "int8q.", op,
              ": w_sum must be int32 (qweight.sum(1, dtype=torch.int32)), got ", w_sum->scalar_type());
  TORCH_CHECK(w_sum->dim() == 1 && w_sum->numel() == qweight.size(0), "int8q.", op,
              ": w_sum must have shape [N] = [", qweight.size(0), "], got ", w_sum->sizes());
  check_same_device(op, "w_sum", *w_sum, qweight, "qweight");
}

inline void check_matmul(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                         const c10::optional<at::Tensor>& x_scale,
                         const c10::optional<at::Tensor>& x_shift,
                         const c10::optional<at::Tensor>& bias,
                         const c10::optional<at::Tensor>& x_smooth,
                         const c10::optional<at::Tensor>& w_sum) {
  check_activation_args("matmul", x, x_scale, x_shift);
  check_qweight("matmul", qweight, x, "x");
  check_smooth("matmul", x_smooth, x);
  check_w_scale("matmul", w_scale, qweight);
  check_bias("matmul", bias, qweight);
  check_w_sum("matmul", w_sum, x_shift, qweight);
}

inline void check_scaled_mm(const at::Tensor& xq, const at::Tensor& qweight,
                            const at::Tensor& x_scale, const at::Tensor& w_scale,
                            const c10::optional<at::Tensor>& bias,
                            c10::optional<at::ScalarType> out_dtype) {
  check_int8("scaled_mm", "xq", xq);
  TORCH_CHECK(xq.dim() >= 1, "int8q.scaled_mm: xq must have at least 1 dimension [..., K], got a scalar");
  check_qweight("scaled_mm", qweight, xq, "xq");
  const int64_t m = xq.numel() / xq.size(-1);
  TORCH_CHECK(x_scale.scalar_type() == at::kFloat, "int8q.scaled_mm: x_scale must be float32, got ",
              x_scale.scalar_type());
  TORCH_CHECK(x_scale.numel() == m || x_scale.numel() == 1, "int8q.scaled_mm: x_scale must hold one scale per row of xq (",
              m, " elements, e.g. shape xq.shape[:-1]) or a single per-tensor scale, got shape ",
              x_scale.sizes());
  check_same_device("scaled_mm", "x_scale", x_scale, xq, "xq");
  check_w_scale("scaled_mm", w_scale, qweight);
  check_bias("scaled_mm", bias, qweight);
  if (out_dtype.has_value()) {
    TORCH_CHECK(is_float_dtype(*out_dtype),
                "int8q.scaled_mm: out_dtype must be float32, float16 or bfloat16, got ", *out_dtype);
  }
}

// [..., K] -> [..., N]
inline std::vector<int64_t> output_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

}  // namespace int8q
