// Declarations of the op implementations; each backend registers its own in its file.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace int8q {

std::tuple<at::Tensor, at::Tensor> quantize_weight_cpu(const at::Tensor& weight, bool per_channel);
std::tuple<at::Tensor, at::Tensor> quantize_activation_cpu(const at::Tensor& x,
                                                           const c10::optional<at::Tensor>& scale,
                                                           const c10::optional<at::Tensor>& shift,
                                                           const c10::optional<at::Tensor>& x_smooth);
at::Tensor matmul_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& w_scale,
                      const c10::optional<at::Tensor>& x_scale,
                      const c10::optional<at::Tensor>& x_shift,
                      const c10::optional<at::Tensor>& bias,
                      const c10::optional<at::Tensor>& x_smooth,
                      const c10::optional<at::Tensor>& w_sum);
at::Tensor scaled_mm_cpu(const at::Tensor& xq, const at::Tensor& qweight, const at::Tensor& x_scale,
                         const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                         c10::optional<at::ScalarType> out_dtype);

}  // namespace int8q
