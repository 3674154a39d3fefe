// Autograd of fastgan::bias_act_fwd and bias_act_bwd in C++ (the Autograd alias key, so every device; kernels in
// bias_act_cpu.cpp, math in fastgan/ops/bias_act.py). The same formulas as attach_autograd in
// fastgan/ops/bias_act_kernels.py, which registers them for the Triton ops. They are C++ here because the Python
// registration (torch.library.register_autograd: a Python autograd.Function per call, its setup_context and
// backward, redispatch) cost ~50 us per forward + backward on a 2-core CPU, 2-3x an eager leaky_relu of a
// 2x16x32x32 tensor. The kernels the formulas call go through the dispatcher, so they are differentiable again
// (second order), traced by torch.compile and run on any device with a kernel. bias_act_dbwd (third order and up)
// keeps its Python formula: it is rare and needs the reference.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <vector>

#include "op_handle.h"

namespace fastgan {
namespace {

constexpr int64_t kLrelu = 2;  // activation codes 0..2 (linear, relu, lrelu) are piecewise linear: f'' = 0

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using FwdSig = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double, double, double,
                          int64_t);
using BwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
                          double, double, int64_t);
using DbwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           int64_t, double, double, double, int64_t);

FASTGAN_OP_HANDLE(fwd_op, FwdSig, "bias_act_fwd")
FASTGAN_OP_HANDLE(bwd_op, BwdSig, "bias_act_bwd")
FASTGAN_OP_HANDLE(dbwd_op, DbwdSig, "bias_act_dbwd")

// gx summed over every dim but `dim`, in the accumulation dtype, returned in bias's dtype (reduce_to_bias).
at::Tensor reduce_to_bias(const at::Tensor& gx, int64_t dim, const at::Tensor& bias) {
  const int64_t nd = gx.dim();
  dim = ((dim % nd) + nd) % nd;
  const auto acc = gx.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < nd; ++d)
    if (d != dim) dims.push_back(d);
  // An empty dim list would make sum reduce everything: a 1-D gx is already per-bias.
  const at::Tensor g = dims.empty() ? gx.to(acc) : gx.sum(dims, /*keepdim=*/false, acc);
  return g.to(bias.scalar_type());
}

struct ActArgs {
  int64_t act, dim;
  double alpha, gain, clamp;
};

void save_args(AutogradContext* ctx, const ActArgs& a) {
  ctx->saved_data["act"] = a.act;
  ctx->saved_data["dim"] = a.dim;
  ctx->saved_data["alpha"] = a.alpha;
  ctx->saved_data["gain"] = a.gain;
  ctx->saved_data["clamp"] = a.clamp;
}

ActArgs load_args(AutogradContext* ctx) {
  return {ctx->saved_data["act"].toInt(), ctx->saved_data["dim"].toInt(), ctx->saved_data["alpha"].toDouble(),
          ctx->saved_data["gain"].toDouble(), ctx->saved_data["clamp"].toDouble()};
}

inline std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Backward of fwd: gx = bwd(gy, ...), grad_bias = gx summed to the bias.
struct BiasActFwdFn : public torch::autograd::Function<BiasActFwdFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                            int64_t act, double alpha, double gain, double clamp, int64_t dim) {
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      y = fwd_op().call(x, bias, act, alpha, gain, clamp, dim);
    }
    ctx->save_for_backward({x, bias.value_or(at::Tensor())});
    save_args(ctx, {act, dim, alpha, gain, clamp});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto bias = opt(saved[1]);
    const ActArgs a = load_args(ctx);
    at::Tensor gx = bwd_op().call(grads[0], saved[0], bias, a.act, a.alpha, a.gain, a.clamp, a.dim);
    at::Tensor gbias;
    // Edge 1 exists only with a bias (a None bias is no autograd input).
    if (bias && ctx->needs_input_grad(1)) gbias = reduce_to_bias(gx, a.dim, *bias);
    return {gx, gbias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Backward of bwd: gx is linear in gy with bwd's own factor, so d/d gy is bwd again; d/d x (and bias) is dbwd.
struct BiasActBwdFn : public torch::autograd::Function<BiasActBwdFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gy, const at::Tensor& x,
                            const std::optional<at::Tensor>& bias, int64_t act, double alpha, double gain,
                            double clamp, int64_t dim) {
    at::Tensor gx;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      gx = bwd_op().call(gy, x, bias, act, alpha, gain, clamp, dim);
    }
    ctx->save_for_backward({gy, x, bias.value_or(at::Tensor())});
    save_args(ctx, {act, dim, alpha, gain, clamp});
    return gx;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &gy = saved[0], &x = saved[1];
    const auto bias = opt(saved[2]);
    const ActArgs a = load_args(ctx);
    const at::Tensor& ggx = grads[0];
    at::Tensor ggy, gx2, gbias2;
    if (ctx->needs_input_grad(0)) {
      ggy = bwd_op().call(ggx, x, bias, a.act, a.alpha, a.gain, a.clamp, a.dim);
      if (ggy.scalar_type() != gy.scalar_type()) ggy = ggy.to(gy.scalar_type());
    }
    const bool want_bias = bias && ctx->needs_input_grad(2);
    if (ctx->needs_input_grad(1) || want_bias) {
      if (a.act <= kLrelu) {
        // f'' = 0 and the clamp mask is constant almost everywhere: zeros, as eager's double backward of
        // leaky_relu/relu/clamp gives (also for NaN in ggx or gy), without a dbwd kernel reading three tensors.
        if (ctx->needs_input_grad(1)) gx2 = at::zeros_like(x);
        if (want_bias) gbias2 = at::zeros_like(*bias);
      } else {
        gx2 = dbwd_op().call(ggx, gy, x, bias, a.act, a.alpha, a.gain, a.clamp, a.dim);
        if (want_bias) gbias2 = reduce_to_bias(gx2, a.dim, *bias);
      }
    }
    return {ggy, gx2, gbias2, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool any_requires_grad(std::initializer_list<const at::Tensor*> ts, const std::optional<at::Tensor>& b) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return true;
  return b && b->requires_grad();
}

// The Autograd kernels: without grad to record they go straight to the kernel (no autograd node at all).
at::Tensor bias_act_fwd_autograd(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t act,
                                 double alpha, double gain, double clamp, int64_t dim) {
  if (!any_requires_grad({&x}, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(x, bias, act, alpha, gain, clamp, dim);
  }
  return BiasActFwdFn::apply(x, bias, act, alpha, gain, clamp, dim);
}

at::Tensor bias_act_bwd_autograd(const at::Tensor& gy, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                 int64_t act, double alpha, double gain, double clamp, int64_t dim) {
  if (!any_requires_grad({&gy, &x}, bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return bwd_op().call(gy, x, bias, act, alpha, gain, clamp, dim);
  }
  return BiasActBwdFn::apply(gy, x, bias, act, alpha, gain, clamp, dim);
}

}  // namespace

// Autograd (the alias key: every device). fastgan/ops/_family.py sees these and attaches no Python formula.
TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("bias_act_fwd", &bias_act_fwd_autograd);
  m.impl("bias_act_bwd", &bias_act_bwd_autograd);
}

}  // namespace fastgan
