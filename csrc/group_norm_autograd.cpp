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

const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto h = c10::Dispatcher::singleton().findSchemaOrThrow("fastgan::group_norm_fwd", "").typed<FwdSig>();
  return h;
}
const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static const auto h = c10::Dispatcher::singleton().findSchemaOrThrow("fastgan::group_norm_bwd", "").typed<BwdSig>();
  return h;
}

OptTensor opt(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

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
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = act;
    ctx->saved_data["alpha"] = alpha;
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();  // x, scale, shift, gamma, beta, mean, rstd
    const int64_t act = ctx->saved_data["act"].toInt();
    const bool mod = s[3].defined();
    auto call = [&] {
      return bwd_op().call(grads[0], s[0], s[5], s[6], s[1], s[2], opt(s[3]), opt(s[4]),
                           ctx->saved_data["groups"].toInt(), ctx->saved_data["eps"].toDouble(), act,
                           ctx->saved_data["alpha"].toDouble());
    };
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

}  // namespace

// fastgan/ops/group_norm_kernels.py sees this and attaches its Python formula to group_norm_bwd only.
TORCH_LIBRARY_IMPL(fastgan, Autograd, m) { m.impl("group_norm_fwd", &group_norm_fwd_autograd); }

}  // namespace fastgan
