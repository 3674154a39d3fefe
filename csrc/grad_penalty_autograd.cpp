// Autograd of fastgan::grad_penalty_fwd and grad_penalty_bwd in C++ (the Autograd alias key, so every device;
// kernels in grad_penalty_cpu.cpp, math in fastgan/ops/grad_penalty.py). The same formulas as attach_autograd in
// fastgan/ops/grad_penalty_kernels.py, which registers them for the Triton ops: the backward of fwd is bwd, the
// backward of bwd is dbwd (in both gp and grad), through the dispatcher so each is differentiable again.
// grad_penalty_dbwd (third order and up) keeps its Python formula: it is rare and needs the reference.
//
// Why C++: a penalty runs right after the critic's create_graph backward, when the convolutions have evicted the
// interpreter's code and data from the caches. There the Python registration (torch.library's autograd.Function
// per call, its setup_context, redispatch) cost 0.4-1.2 ms a call on a 2-core CPU instead of the ~30 us it takes
// in a loop, 15% of a 4x3x32x32 DCGAN critic step.
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "op_handle.h"

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor2 = std::tuple<at::Tensor, at::Tensor>;

using FwdSig = Tensor2(const at::Tensor&, int64_t, double);
using BwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double);
using DbwdSig = Tensor2(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double);

FASTGAN_OP_HANDLE(fwd_op, FwdSig, "grad_penalty_fwd")
FASTGAN_OP_HANDLE(bwd_op, BwdSig, "grad_penalty_bwd")
FASTGAN_OP_HANDLE(dbwd_op, DbwdSig, "grad_penalty_dbwd")

void save_args(AutogradContext* ctx, int64_t kind, double target) {
  ctx->saved_data["kind"] = kind;
  ctx->saved_data["target"] = target;
}

// Backward of fwd: gx = bwd(gp, grad, norm). norm (the per-sample ||g_n||, float64) is not differentiable.
struct GradPenaltyFwdFn : public torch::autograd::Function<GradPenaltyFwdFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad, int64_t kind, double target) {
    at::Tensor p, norm;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(p, norm) = fwd_op().call(grad, kind, target);
    }
    ctx->mark_non_differentiable({norm});
    ctx->save_for_backward({grad, norm});
    save_args(ctx, kind, target);
    return {p, norm};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor gx = bwd_op().call(grads[0], saved[0], saved[1], ctx->saved_data["kind"].toInt(),
                                        ctx->saved_data["target"].toDouble());
    return {gx, at::Tensor(), at::Tensor()};
  }
};

// Backward of bwd: dbwd gives (d gx/d grad . ggx, d gx/d gp . ggx); norm gets none (the path through it is in
// dbwd's formula).
struct GradPenaltyBwdFn : public torch::autograd::Function<GradPenaltyBwdFn> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gp, const at::Tensor& grad,
                            const at::Tensor& norm, int64_t kind, double target) {
    at::Tensor gx;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      gx = bwd_op().call(gp, grad, norm, kind, target);
    }
    ctx->save_for_backward({gp, grad, norm});
    save_args(ctx, kind, target);
    return gx;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const bool want_gp = ctx->needs_input_grad(0), want_grad = ctx->needs_input_grad(1);
    if (!want_gp && !want_grad) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    auto [g_grad, g_gp] = dbwd_op().call(grads[0], saved[0], saved[1], saved[2], ctx->saved_data["kind"].toInt(),
                                         ctx->saved_data["target"].toDouble());
    return {want_gp ? g_gp : at::Tensor(), want_grad ? g_grad : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// The Autograd kernels: without grad to record they go straight to the kernel (no autograd node at all).
Tensor2 grad_penalty_fwd_autograd(const at::Tensor& grad, int64_t kind, double target) {
  if (!(at::GradMode::is_enabled() && grad.requires_grad())) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(grad, kind, target);
  }
  const variable_list out = GradPenaltyFwdFn::apply(grad, kind, target);
  return {out[0], out[1]};
}

at::Tensor grad_penalty_bwd_autograd(const at::Tensor& gp, const at::Tensor& grad, const at::Tensor& norm,
                                     int64_t kind, double target) {
  if (!(at::GradMode::is_enabled() && (gp.requires_grad() || grad.requires_grad()))) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return bwd_op().call(gp, grad, norm, kind, target);
  }
  return GradPenaltyBwdFn::apply(gp, grad, norm, kind, target);
}

}  // namespace

// Autograd (the alias key: every device). fastgan/ops/_family.py sees these and attaches no Python formula.
TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("grad_penalty_fwd", &grad_penalty_fwd_autograd);
  m.impl("grad_penalty_bwd", &grad_penalty_bwd_autograd);
}

}  // namespace fastgan
