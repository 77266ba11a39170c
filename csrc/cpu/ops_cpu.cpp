// CPU kernels: the reference implementation of every op, for any shape, with exact
// int32 accumulation. Clarity over speed; the fast paths live in csrc/cuda/.

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "../ops.h"
#include "../quant_math.h"

namespace int8q {
namespace {

// Quantizes M rows of K float32 values, each first multiplied by smooth[k] when smooth is
// given. row_scale[m] receives the scale used for row m: the dynamic per-row scale, or the
// static one; NaN where the (smoothed) row holds NaN/Inf, so that row's matmul output is NaN
// and no other row is affected.
void quantize_rows(const float* x, int64_t m, int64_t k, const float* static_scale,
                   const float* static_shift, const float* smooth, int8_t* codes,
                   float* row_scale) {
  const float lo = static_shift ? kShiftedMin : -kSymMax;
  const float shift = static_shift ? *static_shift : 0.f;
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> smoothed(smooth ? k : 0);
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x + r * k;
      if (smooth) {
        for (int64_t i = 0; i < k; ++i) smoothed[i] = mul_rn(row[i], smooth[i]);
        row = smoothed.data();
      }
      float absmax = 0.f;
      bool finite = true;
      for (int64_t i = 0; i < k; ++i) {
        finite = finite && std::isfinite(row[i]);
        absmax = std::max(absmax, std::fabs(row[i]));
      }
      const float s = static_scale ? checked_static_scale(*static_scale)
                                   : scale_from_absmax(finite ? absmax : NAN);
      int8_t* out = codes + r * k;
      for (int64_t i = 0; i < k; ++i) out[i] = quantize_code(row[i] - shift, s, lo);
      row_scale[r] = finite ? s : NAN;
    }
  });
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t k) {
  int32_t acc = 0;
  for (int64_t i = 0; i < k; ++i) acc += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return acc;
}

// out[m, n] = acc * x_scale[m] * w_scale[n] (+ shift * w_scale[n] * w_sum[n]) (+ bias[n]);
// the weight sums are computed here unless given (given_w_sum, int32 [N]).
at::Tensor gemm_dequant(const int8_t* a, const float* x_scale, bool x_scale_per_row, int64_t m,
                        const at::Tensor& qweight, const at::Tensor& w_scale,
                        const float* shift, const c10::optional<at::Tensor>& bias,
                        std::vector<int64_t> out_shape, at::ScalarType out_dtype,
                        const c10::optional<at::Tensor>& given_w_sum = c10::nullopt) {
  const int64_t n = qweight.size(0), k = qweight.size(1);
  const at::Tensor w = qweight.contiguous();
  const at::Tensor ws = w_scale.contiguous();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* wsp = ws.data_ptr<float>();
  const bool ws_per_channel = ws.numel() != 1;
  at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* bp = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;

  std::vector<int32_t> w_sum;
  if (shift && given_w_sum.has_value()) {
    const at::Tensor g = given_w_sum->contiguous();
    w_sum.assign(g.data_ptr<int32_t>(), g.data_ptr<int32_t>() + n);
  } else if (shift) {
    w_sum.resize(n);
    for (int64_t j = 0; j < n; ++j) {
      int32_t s = 0;
      for (int64_t i = 0; i < k; ++i) s += wp[j * k + i];
      w_sum[j] = s;
    }
  }

  at::Tensor out = at::empty({m, n}, at::TensorOptions().dtype(at::kFloat));
  float* op = out.data_ptr<float>();
  at::parallel_for(0, m * n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t r = idx / n, c = idx % n;
      const float xs = x_scale[x_scale_per_row ? r : 0];
      const float wsc = wsp[ws_per_channel ? c : 0];
      float v = dequantize(dot_i8(a + r * k, wp + c * k, k), xs, wsc);
      if (shift) v += shift_term(*shift, wsc, w_sum[c]);
      if (bp) v += bp[c];
      op[idx] = v;
    }
  });
  return out.to(out_dtype).reshape(out_shape);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_weight_cpu(const at::Tensor& weight, bool per_channel) {
  check_quantize_weight(weight);
  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const float* wp = w.data_ptr<float>();
  for (int64_t i = 0; i < n * k; ++i) {
    TORCH_CHECK(std::isfinite(wp[i]), "int8q.quantize_weight: weight contains NaN or Inf (first at flat index ",
                i, "); only finite weights can be quantized");
  }
  at::Tensor q = at::empty({n, k}, w.options().dtype(at::kChar));
  at::Tensor scale = at::empty({per_channel ? n : 1}, w.options());
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = scale.data_ptr<float>();
  if (!per_channel) {
    float absmax = 0.f;
    for (int64_t i = 0; i < n * k; ++i) absmax = std::max(absmax, std::fabs(wp[i]));
    sp[0] = scale_from_absmax(absmax);
  }
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = wp + r * k;
      float s = sp[0];
      if (per_channel) {
        float absmax = 0.f;
        for (int64_t i = 0; i < k; ++i) absmax = std::max(absmax, std::fabs(row[i]));
        s = sp[r] = scale_from_absmax(absmax);
      }
      for (int64_t i = 0; i < k; ++i) qp[r * k + i] = quantize_code(row[i], s, -kSymMax);
    }
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor> quantize_activation_cpu(const at::Tensor& x,
                                                           const c10::optional<at::Tensor>& scale,
                                                           const c10::optional<at::Tensor>& shift,
                                                           const c10::optional<at::Tensor>& x_smooth) {
  check_quantize_activation(x, scale, shift, x_smooth);
  const int64_t k = x.size(-1);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor sm = x_smooth.has_value() ? x_smooth->contiguous() : at::Tensor();
  const int64_t m = xf.numel() / k;
  at::Tensor q = at::empty(x.sizes(), xf.options().dtype(at::kChar));
  at::Tensor row_scale = at::empty({m}, xf.options());
  const float s = scale.has_value() ? scale->item<float>() : 0.f;
  const float sh = shift.has_value() ? shift->item<float>() : 0.f;
  quantize_rows(xf.data_ptr<float>(), m, k, scale.has_value() ? &s : nullptr,
                shift.has_value() ? &sh : nullptr, sm.defined() ? sm.data_ptr<float>() : nullptr,
                q.data_ptr<int8_t>(), row_scale.data_ptr<float>());
  if (scale.has_value()) {
    return {q, scale->to(xf.options()).reshape({1}).clone()};
  }
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end() - 1);
  return {q, row_scale.reshape(scale_shape)};
}

at::Tensor matmul_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                      const c10::optional<at::Tensor>& x_scale,
                      const c10::optional<at::Tensor>& x_shift,
                      const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& x_smooth,
                      const c10::optional<at::Tensor>& w_sum) {
  check_matmul(x, qweight, w_scale, x_scale, x_shift, bias, x_smooth, w_sum);
  const int64_t k = qweight.size(1);
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor sm = x_smooth.has_value() ? x_smooth->contiguous() : at::Tensor();
  const int64_t m = xf.numel() / k;
  std::vector<int8_t> codes(m * k);
  std::vector<float> row_scale(m);
  const float s = x_scale.has_value() ? x_scale->item<float>() : 0.f;
  const float sh = x_shift.has_value() ? x_shift->item<float>() : 0.f;
  quantize_rows(xf.data_ptr<float>(), m, k, x_scale.has_value() ? &s : nullptr,
                x_shift.has_value() ? &sh : nullptr, sm.defined() ? sm.data_ptr<float>() : nullptr,
                codes.data(), row_scale.data());
  return gemm_dequant(codes.data(), row_scale.data(), true, m, qweight, w_scale,
                      x_shift.has_value() ? &sh : nullptr, bias,
                      output_shape(x, qweight.size(0)), x.scalar_type(), w_sum);
}

at::Tensor scaled_mm_cpu(const at::Tensor& xq, const at::Tensor& qweight, const at::Tensor& x_scale,
                         const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                         c10::optional<at::ScalarType> out_dtype) {
  check_scaled_mm(xq, qweight, x_scale, w_scale, bias, out_dtype);
  const at::Tensor a = xq.contiguous();
  const at::Tensor xs = x_scale.contiguous();
  const int64_t m = a.numel() / a.size(-1);
  return gemm_dequant(a.data_ptr<int8_t>(), xs.data_ptr<float>(), xs.numel() != 1, m,
                      qweight, w_scale, nullptr, bias, output_shape(xq, qweight.size(0)),
                      out_dtype.value_or(at::kFloat));
}

TORCH_LIBRARY_IMPL(int8q, CPU, m) {
  m.impl("quantize_weight", &quantize_weight_cpu);
  m.impl("quantize_activation", &quantize_activation_cpu);
  m.impl("matmul", &matmul_cpu);
  m.impl("scaled_mm", &scaled_mm_cpu);
}

}  // namespace int8q
