// The fastgan op library: every schema lives here, in the one TORCH_LIBRARY block of the namespace.
// Kernels are attached per device in their own files (TORCH_LIBRARY_IMPL(fastgan, CPU/CUDA, m)); fakes and
// autograd are attached from Python (fastgan/ops/norm_kernels.py). The math is documented in
// fastgan/ops/instance_norm_ref.py, which every kernel is tested against.
#include <Python.h>
#include <torch/library.h>

#include "cpu_isa.h"

#ifndef FASTGAN_CUDA_ARCHS
#define FASTGAN_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(fastgan, m) {
  // Instance-norm family: per-(n, c) plane statistics with a per-(n, c) affine (instance norm, AdaIN).
  m.def("instance_norm_fwd(Tensor x, Tensor scale, Tensor shift, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "instance_norm_bwd(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor scale, float eps) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "instance_norm_dbwd(Tensor ggx, Tensor ggscale, Tensor ggshift, Tensor grad_y, Tensor x, Tensor mean, "
      "Tensor rstd, Tensor scale, float eps) -> (Tensor, Tensor, Tensor)");
  // torch.nn's form: per-channel weight/bias (C,), folded into the per-(n, c) affine in C++ with its gradient
  // (instance_norm_wb.cpp); returns instance_norm_fwd's (y, mean, rstd).
  m.def("instance_norm_wb(Tensor x, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  // Group norm with a per-(n, c) affine and a fused activation (math: fastgan/ops/group_norm_kernels.py).
  // mean/rstd are (N, G); act as bias_act's codes (0 linear, 1 relu, 2 lrelu with slope alpha, 5 silu).
  // gamma/beta: optional per-element modulation maps (SPADE), both or neither: y = f(z + z * gamma + beta).
  // bwd returns (gx, gscale, gshift, ggamma, gbeta); ggamma/gbeta have 0 elements without maps, gbeta also for
  // linear act (it is grad_y).
  m.def(
      "group_norm_fwd(Tensor x, Tensor scale, Tensor shift, Tensor? gamma, Tensor? beta, int groups, float eps, "
      "int act, float alpha) -> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_bwd(Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor scale, Tensor shift, Tensor? gamma, "
      "Tensor? beta, int groups, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Double backward without maps: the vjp of bwd's (gx, gscale, gshift) with cotangents (ggx, ggscale, ggshift),
  // returning (g_grad_y, g_x, g_scale, g_shift); ggscale/ggshift and the last two outputs (N, C) float64.
  m.def(
      "group_norm_dbwd(Tensor ggx, Tensor ggscale, Tensor ggshift, Tensor grad_y, Tensor x, Tensor mean, "
      "Tensor rstd, Tensor scale, Tensor shift, int groups, float eps, int act, float alpha) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Double backward with maps: the vjp of bwd's (gx, gscale, gshift, ggamma, gbeta) when the forward had gamma and
  // beta, returning (g_grad_y, g_x, g_scale, g_shift, g_gamma, g_beta); ggbeta exactly when act is not linear
  // (g_beta then has 0 elements: beta does not enter a linear f's backward).
  m.def(
      "group_norm_dbwd_maps(Tensor ggx, Tensor ggscale, Tensor ggshift, Tensor gggamma, Tensor? ggbeta, "
      "Tensor grad_y, Tensor x, Tensor mean, Tensor rstd, Tensor scale, Tensor shift, Tensor gamma, Tensor beta, "
      "int groups, float eps, int act, float alpha) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // F.group_norm's per-channel weight/bias form of group_norm_fwd (fold and gradient reduction in C++).
  m.def(
      "group_norm_wb(Tensor x, Tensor? weight, Tensor? bias, int groups, float eps, int act, float alpha) "
      "-> (Tensor, Tensor, Tensor)");
  // One fused DDPM/DDIM step; coef holds 8 per-sample (or shared) coefficients (fastgan/diffusion/steps.py).
  m.def(
      "diffusion_step(Tensor x, Tensor model_out, Tensor? model_out_uncond, Tensor? noise, Tensor coef, "
      "float guidance, float clip) -> Tensor");
  // The same step with z drawn in the kernel: Philox4x32-10 keyed by the one-element int64 `seed` tensor, read
  // from memory (no host value per step), counter = logical element index / 4 (fastgan/diffusion/philox.py).
  m.def(
      "diffusion_step_philox(Tensor x, Tensor model_out, Tensor? model_out_uncond, Tensor seed, Tensor coef, "
      "float guidance, float clip) -> Tensor");
  // Fused bias + activation + gain + clamp (math: fastgan/ops/bias_act.py). act: 0 linear, 1 relu, 2 lrelu,
  // 3 tanh, 4 sigmoid, 5 silu, 6 gelu; clamp < 0 means no clamp. bwd gives grad_x (grad_bias is its sum over the
  // non-`dim` dims); dbwd is bwd's derivative in x, ggx * grad_y * gain * act''(x + bias) (its derivative in grad_y
  // is bwd itself), so first and second order run on these kernels.
  m.def("bias_act_fwd(Tensor x, Tensor? bias, int act, float alpha, float gain, float clamp, int dim) -> Tensor");
  m.def(
      "bias_act_bwd(Tensor grad_y, Tensor x, Tensor? bias, int act, float alpha, float gain, float clamp, "
      "int dim) -> Tensor");
  m.def(
      "bias_act_dbwd(Tensor ggx, Tensor grad_y, Tensor x, Tensor? bias, int act, float alpha, float gain, "
      "float clamp, int dim) -> Tensor");
  // Fused per-sample gradient-penalty reduction (math: fastgan/ops/grad_penalty.py). kind: 0 two-sided
  // (||g_n|| - target)^2 (wgan-gp, dragan), 1 half squared norm ||g_n||^2 / 2 (r1, r2). fwd returns p (N,) in grad's
  // dtype and the float64 norms it saves for bwd; bwd gives d<p, gp>/d grad; dbwd is bwd's derivative applied to
  // ggx: (w.r.t. grad, w.r.t. gp), so first and second order run on these kernels.
  m.def("grad_penalty_fwd(Tensor grad, int kind, float target) -> (Tensor, Tensor)");
  m.def("grad_penalty_bwd(Tensor gp, Tensor grad, Tensor norm, int kind, float target) -> Tensor");
  m.def(
      "grad_penalty_dbwd(Tensor ggx, Tensor gp, Tensor grad, Tensor norm, int kind, float target) "
      "-> (Tensor, Tensor)");
}

// A plain Python module so `import fastgan._C` loads the library and registers the ops above.
// CUDA_ARCHS records what the CUDA kernels were compiled for (empty in a CPU-only build); CPU_ISA which clones of
// the CPU kernels' inner loops this process runs (cpu_isa.h: "baseline", "avx2" or "avx512"; the same detection and
// ATEN_CPU_CAPABILITY cap as the kernels, so benchmark reports can say what they measured). ABI_VERSION is the
// contract with fastgan/_backend.py's EXTENSION_ABI: bump both when a kernel's inputs change meaning without a schema
// change (a table's layout, an argument's units). A build from older source then loads as stale and the ops fall back
// to the reference with a warning to rebuild, instead of reading new inputs the old way. 1: the diffusion step's
// 7-coefficient table.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "fastgan compiled ops", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) {
    PyModule_AddIntConstant(module, "ABI_VERSION", 1);
    PyModule_AddStringConstant(module, "CUDA_ARCHS", FASTGAN_CUDA_ARCHS);
    const fastgan::Isa isa = fastgan::cpu_isa();
    PyModule_AddStringConstant(module, "CPU_ISA",
                               isa == fastgan::kIsaAvx512 ? "avx512" : isa == fastgan::kIsaAvx2 ? "avx2" : "baseline");
  }
  return module;
}
