// The int8q operator registry: every schema lives here, in one block.
// Implementations register themselves per backend (csrc/cpu/, csrc/cuda/);
// fake (meta) kernels are registered in Python (python/int8q/ops.py).

#include <Python.h>
#include <torch/library.h>

// A real (empty) Python module, so `import int8q._C` loads the op library.
// Built against the limited API: one binary serves every Python >= 3.9.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(int8q, m) {
  // Symmetric int8 weight quantization (nn.Linear layout [N, K]):
  // scale = absmax / 127 per output channel ([N]) or per tensor ([1]),
  // q = round_half_even(w / scale) clamped to [-127, 127]. Zero rows get scale 1.
  m.def("quantize_weight(Tensor weight, bool per_channel=True) -> (Tensor qweight, Tensor w_scale)");

  // Activation quantization, [..., K] float -> int8 codes and float32 scales.
  // x_smooth (float32 [K], SmoothQuant's 1/s where no fold exists): x' = x * x_smooth per
  // channel (one rounded float32 multiply), inside the quantization pass; everything below
  // then applies to x'. Absent: x' = x.
  // scale=None: dynamic per row (shape x.shape[:-1]); a row whose x' holds NaN/Inf (x * x_smooth
  // can overflow) gets a NaN scale. In matmul such a row gives a NaN output row in every mode.
  // scale given (1 element): static per tensor, codes in [-127, 127]; with shift,
  // q = round((x' - shift) / scale) in [-128, 127].
  m.def(
      "quantize_activation(Tensor x, Tensor? scale=None, Tensor? shift=None, Tensor? x_smooth=None) "
      "-> (Tensor xq, Tensor x_scale)");

  // The fused W8A8 linear: quantize x' = x * x_smooth (x when x_smooth is None; dynamic per
  // row, or static with optional shift), int8 x int8 -> exact int32, dequantize
  // (x_scale * w_scale [+ shift term]) + bias, returned as [..., N] in x.dtype.
  // The shift term of channel n is x_shift * w_scale[n] * w_sum[n], w_sum[n] = sum_k
  // qweight[n, k]. w_sum (int32 [N], only with x_shift) passes those sums in, saving the pass
  // over the weights that computes them otherwise on every call (QuantLinear keeps them).
  // They are used as given, not checked against qweight.
  m.def(
      "matmul(Tensor x, Tensor qweight, Tensor w_scale, Tensor? x_scale=None, Tensor? x_shift=None, "
      "Tensor? bias=None, Tensor? x_smooth=None, Tensor? w_sum=None) -> Tensor");

  // The same product for activations that are already int8 codes:
  // out = (xq @ qweight^T) * x_scale[m] * w_scale[n] + bias[n], out_dtype default float32.
  m.def(
      "scaled_mm(Tensor xq, Tensor qweight, Tensor x_scale, Tensor w_scale, Tensor? bias=None, "
      "ScalarType? out_dtype=None) -> Tensor");
}
