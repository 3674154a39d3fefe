// Autograd of fastgan::group_norm_fwd in C++ (the Autograd alias key, so every device): the same formula as
// fwd_backward in fastgan/ops/group_norm_kernels.py, without the Python autograd.Function around each call (about
// 60-100 us a forward+backward on a 2-core CPU, as much as the kernels themselves at UNet sizes like 2x256x16x16).
//
// The backward calls group_norm_bwd through the dispatcher, so under create_graph it is recorded with the autograd
// Python attaches to that op (the composite double backward) and torch.compile traces it as an op. group_norm_bwd
// keeps its Python formula: its backward is written in torch ops (torch.func.vjp of the reference backward).
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <utility>

#include "op_handle.h"

namespace fastgan {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Tensor5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using FwdSig = Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                       int64_t, double, int64_t, double);
using BwdSig = Tensor5(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, double, int64_t, double);

constexpr int64_t kLinear = 0;

FASTGAN_OP_HANDLE(fwd_op, FwdSig, "group_norm_fwd")
FASTGAN_OP_HANDLE(bwd_op, BwdSig, "group_norm_bwd")

OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The non-tensor arguments both Functions below keep for their backward, and group_norm_bwd called with them.
void save_args(AutogradContext* ctx, int64_t groups, double eps, int64_t act, double alpha) {
  ctx->saved_data["groups"] = groups;
  ctx->saved_data["eps"] = eps;
  ctx->saved_data["act"] = act;
  ctx->saved_data["alpha"] = alpha;
}
Tensor5 call_bwd(AutogradContext* ctx, const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean,
                 const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& shift, const OptTensor& gamma,
                 const OptTensor& beta) {
  return bwd_op().call(gy, x, mean, rstd, scale, shift, gamma, beta, ctx->saved_data["groups"].toInt(),
                       ctx->saved_data["eps"].toDouble(), ctx->saved_data["act"].toInt(),
                       ctx->saved_data["alpha"].toDouble());
}

// Backward of fwd is bwd; mean and rstd are non-differentiable outputs. The map gradients: ggamma from the
// kernel; gbeta from the kernel for a non-linear activation, else grad_y itself (d y / d beta is the identity).
struct GroupNormFwdFn : public torch::autograd::Function<GroupNormFwdFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, const OptTensor& gamma, const OptTensor& beta,
                               int64_t groups, double eps, int64_t act, double alpha) {
    Tensor3 out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = fwd_op().call(x, scale, shift, gamma, beta, groups, eps, act, alpha);
    }
    auto& [y, mean, rstd] = out;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward({x, scale, shift, gamma.value_or(at::Tensor()), beta.value_or(at::Tensor()), mean, rstd});
    save_args(ctx, groups, eps, act, alpha);
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();  // x, scale, shift, gamma, beta, mean, rstd
    const int64_t act = ctx->saved_data["act"].toInt();
    const bool mod = s[3].defined();
    auto call = [&] { return call_bwd(ctx, grads[0], s[0], s[5], s[6], s[1], s[2], opt(s[3]), opt(s[4])); };
    Tensor5 g;
    if (at::GradMode::is_enabled()) {
      g = call();  // create_graph: recorded with bwd's own (Python) autograd
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;  // nothing to record: skip the Python autograd wrapper
      g = call();
    }
    auto& [gx, gscale, gshift, ggamma, gbeta] = g;
    const at::Tensor none;
    return {gx,
            gscale,
            gshift,
            mod ? ggamma : none,
            mod ? (act == kLinear ? grads[0] : gbeta) : none,
            none,
            none,
            none,
            none};
  }
};

bool recording(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

// Without grad to record it goes straight to the kernel (no autograd node).
Tensor3 group_norm_fwd_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                const OptTensor& gamma, const OptTensor& beta, int64_t groups, double eps,
                                int64_t act, double alpha) {
  const at::Tensor none;
  if (!recording({&x, &scale, &shift, gamma ? &*gamma : &none, beta ? &*beta : &none})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(x, scale, shift, gamma, beta, groups, eps, act, alpha);
  }
  const variable_list out = GroupNormFwdFn::apply(x, scale, shift, gamma, beta, groups, eps, act, alpha);
  return {out[0], out[1], out[2]};
}

// ------------------------------------------------------------------------------------ group_norm_wb
// F.group_norm's arguments (per-channel weight and bias, either optional) with the fused activation: the fold into
// the (N, C) float64 affine the kernels take happens here, in C++, and so does the reduction of its gradient over
// N. Through Python (fold_affine, autograd of to/expand/contiguous) the same call cost ~20 us more forward and
// ~50 us more backward on a 2-core CPU, as much as the kernels at UNet sizes (2x256x16x16).
using WbSig = Tensor3(const at::Tensor&, const OptTensor&, const OptTensor&, int64_t, double, int64_t, double);

FASTGAN_OP_HANDLE(wb_op, WbSig, "group_norm_wb")

// weight and bias as the kernels' (N, C) float64 scale and shift (ones and zeros where absent). Without grad to
// record, one broadcasting copy each; with `record` (the create_graph backward below), to + expand + contiguous,
// whose autograd reduces over N (as fastgan.ops.group_norm.fold_affine does).
std::pair<at::Tensor, at::Tensor> fold_wb(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                          bool record = false) {
  const int64_t N = x.size(0), C = x.size(1);
  const auto f64 = x.options().dtype(at::kDouble);
  auto fold = [&](const at::Tensor& t, double fill) {
    if (!t.defined()) return at::full({N, C}, fill, f64);
    if (record) return t.to(at::kDouble).expand({N, C}).contiguous();
    return at::empty({N, C}, f64).copy_(t);
  };
  return {fold(weight, 1.0), fold(bias, 0.0)};
}

void check_wb_param(const OptTensor& t, const at::Tensor& x, const char* name) {
  if (!t) return;
  TORCH_CHECK(x.dim() >= 2, "fastgan::group_norm_wb: x must have at least 2 dims (N, C, ...), got ", x.dim());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), "fastgan::group_norm_wb: ", name, " must have shape (",
              x.size(1), ",) for x of shape ", x.sizes(), ", got ", t->sizes());
  TORCH_CHECK(t->device() == x.device(), "fastgan::group_norm_wb: ", name, " is on ", t->device(), " but x is on ",
              x.device());
  TORCH_CHECK(at::isFloatingType(t->scalar_type()), "fastgan::group_norm_wb: ", name, " must be floating, got ",
              t->scalar_type());
}

// The op without autograd (every device): fold, then group_norm_fwd.
Tensor3 group_norm_wb_impl(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias, int64_t groups,
                           double eps, int64_t act, double alpha) {
  check_wb_param(weight, x, "weight");
  check_wb_param(bias, x, "bias");
  const auto [a, b] = fold_wb(x, weight.value_or(at::Tensor()), bias.value_or(at::Tensor()));
  return fwd_op().call(x, a, b, std::nullopt, std::nullopt, groups, eps, act, alpha);
}

// Backward: group_norm_bwd with the folded affine, its (N, C) gradients summed over N into weight's and bias's
// dtypes. Under create_graph the fold is redone with grad recording, so the graph reaches weight and bias through
// it and group_norm_bwd's own autograd (the same graph the Python fold built).
struct GroupNormWbFn : public torch::autograd::Function<GroupNormWbFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight_in,
                               const OptTensor& bias_in, int64_t groups, double eps, int64_t act, double alpha) {
    Tensor3 out;
    at::Tensor a, b;
    const at::Tensor weight = weight_in.value_or(at::Tensor()), bias = bias_in.value_or(at::Tensor());
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      check_wb_param(weight_in, x, "weight");
      check_wb_param(bias_in, x, "bias");
      std::tie(a, b) = fold_wb(x, weight, bias);
      out = fwd_op().call(x, a, b, std::nullopt, std::nullopt, groups, eps, act, alpha);
    }
    auto& [y, mean, rstd] = out;
    ctx->mark_non_differentiable({mean, rstd});
    ctx->save_for_backward({x, weight, bias, mean, rstd, a, b});  // a, b: the fold, reused by a plain backward
    save_args(ctx, groups, eps, act, alpha);
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();  // x, weight, bias, mean, rstd, a, b
    const at::Tensor &x = s[0], &weight = s[1], &bias = s[2];
    auto call = [&](const at::Tensor& a, const at::Tensor& b) {
      return call_bwd(ctx, grads[0], x, s[3], s[4], a, b, std::nullopt, std::nullopt);
    };
    Tensor5 g;
    if (at::GradMode::is_enabled()) {
      const auto [a, b] = fold_wb(x, weight, bias, true);  // recorded: the graph reaches weight and bias
      g = call(a, b);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      g = call(s[5], s[6]);
    }
    // needs_input_grad counts tensor inputs only: an absent weight shifts bias's index.
    const at::Tensor none;
    const size_t w_edge = 1, b_edge = weight.defined() ? 2 : 1;
    const at::Tensor gw = weight.defined() && ctx->needs_input_grad(w_edge)
                              ? std::get<1>(g).sum(0).to(weight.scalar_type())
                              : none;
    const at::Tensor gb = bias.defined() && ctx->needs_input_grad(b_edge) ? std::get<2>(g).sum(0).to(bias.scalar_type())
                                                                          : none;
    return {std::get<0>(g), gw, gb, none, none, none, none};
  }
};

Tensor3 group_norm_wb_autograd(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias, int64_t groups,
                               double eps, int64_t act, double alpha) {
  const at::Tensor none;
  if (!recording({&x, weight ? &*weight : &none, bias ? &*bias : &none})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return wb_op().call(x, weight, bias, groups, eps, act, alpha);
  }
  const variable_list out = GroupNormWbFn::apply(x, weight, bias, groups, eps, act, alpha);
  return {out[0], out[1], out[2]};
}

}  // namespace

// fastgan/ops/group_norm_kernels.py sees this and attaches its Python formula to group_norm_bwd only.
TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("group_norm_fwd", &group_norm_fwd_autograd);
  m.impl("group_norm_wb", &group_norm_wb_autograd);
}
TORCH_LIBRARY_IMPL(fastgan, CompositeExplicitAutograd, m) { m.impl("group_norm_wb", &group_norm_wb_impl); }

}  // namespace fastgan
