// CPU kernels of the instance-norm family (math: fastgan/ops/instance_norm_ref.py).
//
// Contiguous input: one task per (n, c) plane, run in parallel with at::parallel_for. A task walks its plane in
// chunks converted to the accumulation type (float, double for double input); planes of up to a few hundred KiB
// stay in L2 between the statistics pass and the output pass.
// Channels-last input (N, L, C): one sample at a time, its rows split into chunks processed in parallel with the
// inner loops running along C (contiguous); per-chunk partial statistics are merged per sample, so the sample's
// slab stays in the last-level cache between the statistics pass and the output pass.
// Statistics: per chunk a mean pass then a centred sum of squares (the chunk is cached), merged across chunks
// with Chan's parallel formula in double, so a large mean offset costs no precision.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cl_tasks.h"
#include "cpu_reduce.h"
#include "group_norm_api.h"
#include "instance_norm_loops.h"
#include "norm_common.h"
#include "op_handle.h"

namespace fastgan {
namespace {

// ------------------------------------------------------------------------------ contiguous planes (N*C tasks)
// body(p, offset of plane p, scratch of nbuf * kChunk A values) for every plane, in parallel.
template <typename A, typename Body>
void for_each_plane(const PlaneShape& s, int nbuf, Body body) {
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / s.L);
  at::parallel_for(0, s.N * s.C, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> storage(static_cast<size_t>(nbuf) * kChunk);
    for (int64_t p = begin; p < end; ++p) body(p, p * s.L, storage.data());
  });
}

// ------------------------------------------------------------------------------------------------ forward
template <typename T>
void fwd_kernel_cl(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps,
                const PlaneShape& s, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  using A = acc_of<T>;
  const Loops<T> k;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const A *sp = scale.data_ptr<A>(), *bp = shift.data_ptr<A>();
  A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const int64_t L = s.L, C = s.C;
  // The mean is kept as an unevaluated sum hi + lo of two A values: with a large offset, x - hi is exact
  // (Sterbenz) and the output error stays a few ulps of y instead of ulp(mean) / std.
  std::vector<A> mean_lo(s.N * C);
  auto finish_plane = [&](int64_t plane, const Moments& m) {
    const double r = 1.0 / std::sqrt(m.m2 / L + eps);
    mp[plane] = static_cast<A>(m.mean);
    mean_lo[plane] = static_cast<A>(m.mean - static_cast<double>(mp[plane]));
    rp[plane] = static_cast<A>(r);
  };
  // Channels-last only: contiguous input runs the group-norm kernel (see instance_norm_fwd_cpu).
  std::vector<A> a(s.N * C), b(s.N * C);
  for_each_sample_cl(
      s, sizeof(T), 2,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        std::fill(out, out + 2 * C, 0.0);
        k.cl_moments(xp + n * L * C, r0, r1, C, out, out + C);
      },
      [&](int64_t n, const double* parts, int64_t chunks) {
        const int64_t rows = cl_rows(C);
        for (int64_t c = 0; c < C; ++c) {
          const int64_t p = n * C + c;
          finish_plane(p, cl_channel_moments(xp + n * L * C, parts, chunks, rows, L, C, c));
          a[p] = static_cast<A>(sp[p] * rp[p]);
          b[p] = bp[p];
        }
      },
      [&](int64_t n, int64_t r0, int64_t r1) {
        k.cl_fwd_out(xp + n * L * C, r0, r1, C, mp + n * C, mean_lo.data() + n * C, a.data() + n * C,
                     b.data() + n * C, yp + n * L * C);
      });
}

// ------------------------------------------------------------------------------------------------ backward
template <typename T>
void bwd_kernel(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                const at::Tensor& scale, const PlaneShape& s, at::Tensor& gx, at::Tensor& gscale,
                at::Tensor& gshift) {
  using A = acc_of<T>;
  const Loops<T> k;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>(), *sp = scale.data_ptr<A>();
  A *gsp = gscale.data_ptr<A>(), *gbp = gshift.data_ptr<A>();
  const int64_t L = s.L, C = s.C;
  if (!s.channels_last) {
    for_each_plane<A>(s, 2, [&](int64_t p, int64_t off, A* buf) {
      const A mu = mp[p], r = rp[p];
      double sums[2] = {0, 0};  // sum(gy), sum(gy * (x - mean)); the latter times rstd once at the end
      for (int64_t r0 = 0; r0 < L; r0 += kChunk)
        k.bwd_sums(xp + off + r0, gp + off + r0, std::min(kChunk, L - r0), mu, buf, sums);
      const double s_g = sums[0], s_gx = sums[1] * r;
      gsp[p] = static_cast<A>(s_gx);
      gbp[p] = static_cast<A>(s_g);
      const A coef = sp[p] * r, m_g = static_cast<A>(s_g / L), m_gx = static_cast<A>(s_gx / L);
      for (int64_t r0 = 0; r0 < L; r0 += kChunk)
        k.bwd_out(xp + off + r0, gp + off + r0, std::min(kChunk, L - r0), mu, r, coef, m_g, m_gx, gxp + off + r0);
    });
    return;
  }
  std::vector<A> coef(s.N * C), m_g(s.N * C), m_gx(s.N * C);
  for_each_sample_cl(
      s, sizeof(T), 2,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        std::fill(out, out + 2 * C, 0.0);  // sum(gy), sum(gy * (x - mean)) per channel; times rstd in the merge
        k.cl_bwd_sums(xp + n * L * C, gp + n * L * C, r0, r1, C, mp + n * C, out, out + C);
      },
      [&](int64_t n, const double* parts, int64_t chunks) {
        for (int64_t c = 0; c < C; ++c) {
          double s_g = 0, s_gx = 0;
          for (int64_t j = 0; j < chunks; ++j) s_g += parts[j * 2 * C + c], s_gx += parts[j * 2 * C + C + c];
          const int64_t p = n * C + c;
          s_gx *= rp[p];
          gsp[p] = static_cast<A>(s_gx);
          gbp[p] = static_cast<A>(s_g);
          coef[p] = sp[p] * rp[p];
          m_g[p] = static_cast<A>(s_g / L);
          m_gx[p] = static_cast<A>(s_gx / L);
        }
      },
      [&](int64_t n, int64_t r0, int64_t r1) {
        const int64_t pc = n * C;
        k.cl_bwd_out(xp + n * L * C, gp + n * L * C, r0, r1, C, mp + pc, rp + pc, coef.data() + pc,
                     m_g.data() + pc, m_gx.data() + pc, gxp + n * L * C);
      });
}

// ----------------------------------------------------------------------------------------- double backward
template <typename T>
void dbwd_kernel(const at::Tensor& ggx, const at::Tensor& ggscale, const at::Tensor& ggshift,
                 const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                 const at::Tensor& scale, const PlaneShape& s, at::Tensor& gx2, at::Tensor& ggy,
                 at::Tensor& gscale2) {
  using A = acc_of<T>;
  const Loops<T> k;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>(), *vp = ggx.data_ptr<T>();
  T *gx2p = gx2.data_ptr<T>(), *ggyp = ggy.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>(), *sp = scale.data_ptr<A>();
  const A *uwp = ggscale.data_ptr<A>(), *ubp = ggshift.data_ptr<A>();
  A* gs2p = gscale2.data_ptr<A>();
  const int64_t L = s.L, C = s.C;
  auto coef_of = [&](int64_t p, const double* sums) {
    double g2;
    auto kc = dbwd_coef<A>(sums, static_cast<double>(L), mp[p], rp[p], sp[p], uwp[p], ubp[p], &g2);
    gs2p[p] = static_cast<A>(g2);
    return kc;
  };
  if (!s.channels_last) {
    for_each_plane<A>(s, 3, [&](int64_t p, int64_t off, A* buf) {
      double sums[5] = {0, 0, 0, 0, 0};
      for (int64_t r0 = 0; r0 < L; r0 += kChunk)
        k.dbwd_sums(xp + off + r0, gp + off + r0, vp + off + r0, std::min(kChunk, L - r0), mp[p], buf, sums);
      sums[1] *= rp[p], sums[3] *= rp[p];  // sum(. * xhat) = rstd * sum(. * (x - mean))
      const DbwdCoef<A> kc = coef_of(p, sums);
      for (int64_t r0 = 0; r0 < L; r0 += kChunk)
        k.dbwd_out(xp + off + r0, gp + off + r0, vp + off + r0, std::min(kChunk, L - r0), kc, gx2p + off + r0,
                   ggyp + off + r0);
    });
    return;
  }
  std::vector<DbwdCoef<A>> coefs(s.N * C);
  for_each_sample_cl(
      s, sizeof(T), 5,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        std::fill(out, out + 5 * C, 0.0);  // with x - mean for xhat: times rstd in the merge
        k.cl_dbwd_sums(xp + n * L * C, gp + n * L * C, vp + n * L * C, r0, r1, C, mp + n * C, out);
      },
      [&](int64_t n, const double* parts, int64_t chunks) {
        for (int64_t c = 0; c < C; ++c) {
          double sums[5] = {0, 0, 0, 0, 0};
          for (int64_t j = 0; j < chunks; ++j)
            for (int q = 0; q < 5; ++q) sums[q] += parts[(j * 5 + q) * C + c];
          sums[1] *= rp[n * C + c], sums[3] *= rp[n * C + c];
          coefs[n * C + c] = coef_of(n * C + c, sums);
        }
      },
      [&](int64_t n, int64_t r0, int64_t r1) {
        k.cl_dbwd_out(xp + n * L * C, gp + n * L * C, vp + n * L * C, r0, r1, C, coefs.data() + n * C,
                      gx2p + n * L * C, ggyp + n * L * C);
      });
}

// Brings a gradient-like input to x's dtype and layout (autograd may hand over expanded or permuted tensors).
at::Tensor like_x(const at::Tensor& t, const at::Tensor& x, bool channels_last) {
  return match_layout(t.scalar_type() == x.scalar_type() ? t : t.to(x.scalar_type()), channels_last);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_fwd_cpu(const at::Tensor& x_in,
                                                                    const at::Tensor& scale,
                                                                    const at::Tensor& shift, double eps) {
  const char* op = "fastgan::instance_norm_fwd";
  const PlaneShape s = check_norm_input(x_in, op, "x");
  check_plane_param(scale, s, x_in, op, "scale");
  check_plane_param(shift, s, x_in, op, "shift");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const at::Tensor x = canonical(x_in);
  at::Tensor y = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor mean = at::empty({s.N, s.C}, x.options().dtype(acc_type_of(x.scalar_type())));
  at::Tensor rstd = at::empty_like(mean);
  if (!s.channels_last) {
    // Contiguous planes: the group-norm kernel with one channel per group (its chunked two-pass statistics and
    // output loop are this file's plane forward; one copy of them, as issue 3's kernel-family design asks).
    group_norm_fwd_contiguous(x, scale.to(at::kDouble).contiguous(), shift.to(at::kDouble).contiguous(), s.C, eps,
                              y, mean, rstd);
    return {y, mean, rstd};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_fwd_cpu",
                                  [&] { fwd_kernel_cl<scalar_t>(x, scale, shift, eps, s, y, mean, rstd); });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_bwd_cpu(const at::Tensor& gy_in,
                                                                    const at::Tensor& x_in,
                                                                    const at::Tensor& mean,
                                                                    const at::Tensor& rstd,
                                                                    const at::Tensor& scale, double eps) {
  const char* op = "fastgan::instance_norm_bwd";
  const PlaneShape s = check_norm_input(x_in, op, "x");
  check_like_input(gy_in, x_in, op, "grad_y");
  check_plane_param(mean, s, x_in, op, "mean");
  check_plane_param(rstd, s, x_in, op, "rstd");
  check_plane_param(scale, s, x_in, op, "scale");
  const at::Tensor x = canonical(x_in);
  const at::Tensor gy = like_x(gy_in, x, s.channels_last);
  at::Tensor gx = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor gscale = at::empty_like(mean), gshift = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_bwd_cpu", [&] {
    bwd_kernel<scalar_t>(gy, x, mean, rstd, scale, s, gx, gscale, gshift);
  });
  return {gx, gscale, gshift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_dbwd_cpu(
    const at::Tensor& ggx_in, const at::Tensor& ggscale, const at::Tensor& ggshift, const at::Tensor& gy_in,
    const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale, double eps) {
  const char* op = "fastgan::instance_norm_dbwd";
  const PlaneShape s = check_norm_input(x_in, op, "x");
  check_like_input(ggx_in, x_in, op, "ggx");
  check_like_input(gy_in, x_in, op, "grad_y");
  check_plane_param(ggscale, s, x_in, op, "ggscale");
  check_plane_param(ggshift, s, x_in, op, "ggshift");
  check_plane_param(mean, s, x_in, op, "mean");
  check_plane_param(rstd, s, x_in, op, "rstd");
  check_plane_param(scale, s, x_in, op, "scale");
  const at::Tensor x = canonical(x_in);
  const at::Tensor gy = like_x(gy_in, x, s.channels_last);
  const at::Tensor ggx = like_x(ggx_in, x, s.channels_last);
  at::Tensor gx2 = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor ggy = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor gscale2 = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_dbwd_cpu", [&] {
    dbwd_kernel<scalar_t>(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, s, gx2, ggy, gscale2);
  });
  if (gy_in.scalar_type() != x.scalar_type()) ggy = ggy.to(gy_in.scalar_type());
  return {gx2, ggy, gscale2};
}

// ------------------------------------------------------------------------------------------------- autograd
// The autograd formulas of instance_norm_fwd and instance_norm_bwd (the same as attach_autograd in
// fastgan/ops/norm_kernels.py, which registers them for the Triton ops), in C++ because the Python registration
// (torch.library.register_autograd: a Python autograd.Function per call) cost more per call than the kernels at
// small sizes (~70 us of a ~170 us forward + backward of a 2x16x32x32 InstanceNorm2d on a 2-core CPU). This file
// is compiled into every build, so the formulas serve the CUDA kernels too. The kernels are called through the
// dispatcher: differentiable again, traced by torch.compile. instance_norm_dbwd (third order and up) keeps its
// Python formula (it needs the reference).
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using FwdSig = Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, double);
using BwdSig = Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, double);
using DbwdSig = Tensor3(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double);

FASTGAN_OP_HANDLE(fwd_op, FwdSig, "instance_norm_fwd")
FASTGAN_OP_HANDLE(bwd_op, BwdSig, "instance_norm_bwd")
FASTGAN_OP_HANDLE(dbwd_op, DbwdSig, "instance_norm_dbwd")

inline variable_list as_list(Tensor3&& t) {
  return {std::move(std::get<0>(t)), std::move(std::get<1>(t)), std::move(std::get<2>(t))};
}

// Backward of fwd is bwd; mean and rstd are non-differentiable outputs.
struct InstanceNormFwdFn : public torch::autograd::Function<InstanceNormFwdFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                               const at::Tensor& shift, double eps) {
    variable_list out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = as_list(fwd_op().call(x, scale, shift, eps));
    }
    ctx->mark_non_differentiable({out[1], out[2]});
    ctx->save_for_backward({x, scale, out[1], out[2]});
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();  // x, scale, mean, rstd
    variable_list g = as_list(bwd_op().call(grads[0], s[0], s[2], s[3], s[1], ctx->saved_data["eps"].toDouble()));
    return {g[0], g[1], g[2], at::Tensor()};
  }
};

// Backward of bwd is dbwd.
struct InstanceNormBwdFn : public torch::autograd::Function<InstanceNormBwdFn> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& gy, const at::Tensor& x,
                               const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale, double eps) {
    variable_list out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = as_list(bwd_op().call(gy, x, mean, rstd, scale, eps));
    }
    ctx->save_for_backward({gy, x, mean, rstd, scale});
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();  // gy, x, mean, rstd, scale
    const at::Tensor& mean = s[2];
    // Upstream grads of the (N, C) outputs may be expanded views (e.g. from a sum); the kernels take dense ones.
    const at::Tensor ggscale = grads[1].to(mean.scalar_type()).contiguous();
    const at::Tensor ggshift = grads[2].to(mean.scalar_type()).contiguous();
    variable_list g = as_list(
        dbwd_op().call(grads[0], ggscale, ggshift, s[0], s[1], mean, s[3], s[4], ctx->saved_data["eps"].toDouble()));
    // (gx2, ggy, gscale2) -> grads of (gy, x, mean, rstd, scale, eps)
    return {g[1], g[0], at::Tensor(), at::Tensor(), g[2], at::Tensor()};
  }
};

inline bool recording(std::initializer_list<const at::Tensor*> ts) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts)
    if (t->requires_grad()) return true;
  return false;
}

// Autograd kernels: without grad to record they go straight to the kernel (no autograd node).
Tensor3 instance_norm_fwd_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift,
                                   double eps) {
  if (!recording({&x, &scale, &shift})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return fwd_op().call(x, scale, shift, eps);
  }
  const variable_list out = InstanceNormFwdFn::apply(x, scale, shift, eps);
  return {out[0], out[1], out[2]};
}

Tensor3 instance_norm_bwd_autograd(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean,
                                   const at::Tensor& rstd, const at::Tensor& scale, double eps) {
  if (!recording({&gy, &x, &mean, &rstd, &scale})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return bwd_op().call(gy, x, mean, rstd, scale, eps);
  }
  const variable_list out = InstanceNormBwdFn::apply(gy, x, mean, rstd, scale, eps);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("instance_norm_fwd", &instance_norm_fwd_cpu);
  m.impl("instance_norm_bwd", &instance_norm_bwd_cpu);
  m.impl("instance_norm_dbwd", &instance_norm_dbwd_cpu);
}

// Autograd (the alias key: every device). fastgan/ops/_family.py sees these and attaches no Python formula.
TORCH_LIBRARY_IMPL(fastgan, Autograd, m) {
  m.impl("instance_norm_fwd", &instance_norm_fwd_autograd);
  m.impl("instance_norm_bwd", &instance_norm_bwd_autograd);
}

}  // namespace fastgan
