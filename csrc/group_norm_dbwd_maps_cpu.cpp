// CPU kernel of group norm's double backward with SPADE modulation maps (math: the "Double backward" section of
// fastgan/ops/group_norm_kernels.py).
//
//   group_norm_dbwd_maps(ggx, ggscale, ggshift, gggamma, ggbeta?, grad_y, x, mean, rstd, scale, shift, gamma, beta,
//                        groups, eps, act, alpha) -> (g_grad_y, g_x, g_scale, g_shift, g_gamma, g_beta)
//
// is the vector-Jacobian product of group_norm_bwd's (gx, gscale, gshift, ggamma, gbeta) when the forward had maps
// (y = f(u), u = z + z * gamma + beta): the second order of a penalty through a SPADE layer (e.g. path-length or
// gradient regularisation of a SPADE generator). Before it, that order ran as autograd of the reference backward.
// ggbeta is given exactly when act is not linear (for linear f, bwd's gbeta is grad_y itself, so its cotangent
// reaches grad_y through autograd); g_beta then has 0 elements, as beta does not enter a linear f's backward.
//
// Work unit: a (n, g) group, as in the kernel without maps. z, u, gu = grad_y f'(u) and gz = gu + gu * gamma are
// computed in double by each pass; f'(u) and f''(u) once per element and kept between the passes for groups up to
// kDerivCap elements (recomputed per chunk above), relu/lrelu's mask from u in the acc dtype, as the backward
// computes it; the cotangent algebra is in double too. Pass 1 sums as without maps (with this gz); pass 2 sums Rz,
// the cotangent reaching z directly, which the maps make non-zero for every f; pass 3 writes the outputs.
// Per element, with Q the cotangent of gz (as without maps) and cgg, cgb the cotangents of ggamma, gbeta:
//   Qu = Q (1 + gamma) + cgg z + cgb,  Ru = Qu grad_y f''(u),  Rz = Ru (1 + gamma) + cgg gu
//   g_grad_y = Qu f'(u),  g_gamma = Q gu + Ru z,  g_beta = Ru
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "convert16.h"
#include "group_norm_dbwd_math.h"
#include "group_norm_math.h"
#include "norm_common.h"

namespace fastgan {
namespace {

// The channel's inputs to the element math: the stored mean, r * scale and shift in the acc dtype, as the backward
// has them (relu/lrelu's mask), lrelu's slope, and the group's exact mean and rstd with scale and shift in double.
template <typename A>
struct ModChan {
  A mu, ra, b, al;
  double mu_d, r_d, a_d, b_d;
};

// One element's forward-of-backward values. They are in double: the double backward is the derivative of the exact
// function, and f''(u) and the products below, rounded in float, cost float32 penalty gradients 2-5x eager's error.
// Only relu/lrelu's mask comes from u in the acc dtype, by the backward's own formula, so the two orders agree on
// it.
struct ModElem {
  double xh, z, gm, d1, d2, gu, gz;
};

// f'(u) into d1 and, for SiLU, f''(u) into d2 over n elements (SiLU's one exp serves both). Computed once per
// element and kept between the passes where the group fits kDerivCap.
template <typename T, int ACT>
FASTGAN_GN_INLINE void mod_derivs_impl(const T* x, const T* gm, const T* bm, int64_t n, const ModChan<acc_of<T>>& c,
                                       double* __restrict__ d1, double* __restrict__ d2) {
  using A = acc_of<T>;
  const ExpRange er = exp_range();  // SiLU is in double here: libm exp, no FMA variant
  for (int64_t i = 0; i < n; ++i) {
    const A xa = load_as<A>(x[i]), gma = load_as<A>(gm[i]), bma = load_as<A>(bm[i]);
    if constexpr (ACT == kSilu) {
      const double z = (static_cast<double>(xa) - c.mu_d) * c.r_d * c.a_d + c.b_d;
      const double u = (z + z * static_cast<double>(gma)) + static_cast<double>(bma);
      double sg, sm;  // sigmoid(u), 1 - sigmoid(u)
      sigmoid_pair(u, er, sg, sm);
      d1[i] = sg * (1.0 + u * sm);
      d2[i] = sg * sm * (2.0 + u * (sm - sg));
    } else {
      const A zf = (xa - c.mu) * c.ra + c.b;
      d1[i] = (zf + zf * gma) + bma > A(0) ? 1.0 : (ACT == kLrelu ? static_cast<double>(c.al) : 0.0);
    }
  }
}

// d1, d2: f'(u), f''(u) from mod_derivs (unused for linear f).
template <typename T, int ACT>
FASTGAN_GN_INLINE ModElem mod_elem(T xv, T gv, T gmv, const double* d1, const double* d2, int64_t i,
                                   const ModChan<acc_of<T>>& c) {
  using A = acc_of<T>;
  ModElem e;
  e.xh = (static_cast<double>(load_as<A>(xv)) - c.mu_d) * c.r_d;
  e.z = e.xh * c.a_d + c.b_d;
  e.gm = load_as<A>(gmv);
  e.d1 = ACT == kLinear ? 1.0 : d1[i];
  e.d2 = ACT == kSilu ? d2[i] : 0.0;
  e.gu = static_cast<double>(load_as<A>(gv)) * e.d1;
  e.gz = e.gu + e.gu * e.gm;
  return e;
}

// The cotangents of one element (double): q of gz, qu of gu, ru of u, rz of z.
struct ModCot {
  double xh, q, qu, ru, rz;
};

template <typename T, int ACT>
FASTGAN_GN_INLINE ModCot mod_cot(const ModElem& e, T vv, T gv, T cgv, const T* cb, int64_t i, const DbwdCoef& k) {
  using A = acc_of<T>;
  ModCot c;
  c.xh = e.xh;
  c.q = k.a * (k.r * (static_cast<double>(load_as<A>(vv)) - k.m_v - k.B2 * c.xh)) + k.uw * c.xh + k.ub;
  const double cgg = load_as<A>(cgv), one_gm = 1.0 + e.gm;
  c.qu = c.q * one_gm + cgg * e.z;
  if constexpr (ACT != kLinear) c.qu += static_cast<double>(load_as<A>(cb[i]));
  c.ru = ACT == kSilu ? c.qu * static_cast<double>(load_as<A>(gv)) * e.d2 : 0.0;
  c.rz = c.ru * one_gm + cgg * e.gu;
  return c;
}

// The element pointers of one chunk (offset applied).
template <typename T>
struct ModPtrs {
  const T *x, *gy, *v, *gm, *bm, *cg, *cb;
  const double *d1, *d2;
};

// s += {sum d, sum d^2} over n elements, d = x - (stored mean): the group's exact statistics, before pass 1.
template <typename T>
FASTGAN_GN_INLINE void mod_stats_impl(const T* x, int64_t n, acc_of<T> mu, double* s) {
  using A = acc_of<T>;
  double l1[kDl] = {}, l2[kDl] = {};
  auto add = [&](int64_t i, int l) {
    const double d = static_cast<double>(load_as<A>(x[i])) - static_cast<double>(mu);
    l1[l] += d, l2[l] += d * d;
  };
  over_lanes(n, add);
  s[0] += tree8(l1);
  s[1] += tree8(l2);
}

// s += the seven pass-1 sums over n elements.
template <typename T, int ACT>
FASTGAN_GN_INLINE void mod_sums_impl(const ModPtrs<T>& p, int64_t n, const ModChan<acc_of<T>>& c, double* s) {
  using A = acc_of<T>;
  double acc[kSums][kDl] = {};
  auto add = [&](int64_t i, int l) {
    const ModElem e = mod_elem<T, ACT>(p.x[i], p.gy[i], p.gm[i], p.d1, p.d2, i, c);
    const double xd = static_cast<double>(load_as<A>(p.x[i])) - static_cast<double>(c.mu);
    const double g = e.gz, vv = load_as<A>(p.v[i]);
    acc[0][l] += xd, acc[1][l] += g, acc[2][l] += g * xd, acc[3][l] += vv, acc[4][l] += vv * xd, acc[5][l] += vv * g;
    acc[6][l] += xd * xd;
  };
  over_lanes(n, add);
  for (int q = 0; q < kSums; ++q) s[q] += tree8(acc[q]);
}

// s += {sum Rz, sum Rz * xhat}.
template <typename T, int ACT>
FASTGAN_GN_INLINE void mod_rz_impl(const ModPtrs<T>& p, int64_t n, const ModChan<acc_of<T>>& c, const DbwdCoef& k,
                                   double* s) {
  double lr[kDl] = {}, lx[kDl] = {};
  auto add = [&](int64_t i, int l) {
    const ModElem e = mod_elem<T, ACT>(p.x[i], p.gy[i], p.gm[i], p.d1, p.d2, i, c);
    const ModCot t = mod_cot<T, ACT>(e, p.v[i], p.gy[i], p.cg[i], p.cb, i, k);
    lr[l] += t.rz, lx[l] += t.rz * t.xh;
  };
  over_lanes(n, add);
  s[0] += tree8(lr);
  s[1] += tree8(lx);
}

// g_grad_y = Qu f'(u), g_x = r T + c0 + cx xhat with T = -r (v A2 + scale gz B2) + ggscale gz + scale Rz,
// g_gamma = Q gu + Ru z, g_beta = Ru (non-linear f only).
template <typename T, int ACT>
FASTGAN_GN_INLINE void mod_out_impl(const ModPtrs<T>& p, int64_t n, const ModChan<acc_of<T>>& c, const DbwdCoef& k,
                                    T* __restrict__ ggy, T* __restrict__ gx2, T* __restrict__ ggm,
                                    T* __restrict__ gbm) {
  using A = acc_of<T>;
  const double ra2 = k.r * k.A2, rab2 = k.r * k.a * k.B2;
  for (int64_t i = 0; i < n; ++i) {
    const ModElem e = mod_elem<T, ACT>(p.x[i], p.gy[i], p.gm[i], p.d1, p.d2, i, c);
    const ModCot t = mod_cot<T, ACT>(e, p.v[i], p.gy[i], p.cg[i], p.cb, i, k);
    const double gz = e.gz, vv = load_as<A>(p.v[i]);
    const double tt = k.uw * gz - ra2 * vv - rab2 * gz + k.a * t.rz;
    ggy[i] = store_as<T>(static_cast<A>(ACT == kLinear ? t.qu : t.qu * e.d1));
    gx2[i] = store_as<T>(static_cast<A>(k.r * tt + k.c0 + k.cx * t.xh));
    ggm[i] = store_as<T>(static_cast<A>(t.q * e.gu + t.ru * e.z));
    if constexpr (ACT != kLinear) gbm[i] = store_as<T>(static_cast<A>(t.ru));
  }
}

FASTGAN_ISA_CLONES(mod_derivs, typename T FASTGAN_COMMA int ACT,
                   (const T* x, const T* gm, const T* bm, int64_t n, const ModChan<acc_of<T>>& c,
                    double* __restrict__ d1, double* __restrict__ d2),
                   <T FASTGAN_COMMA ACT>(x, gm, bm, n, c, d1, d2))
FASTGAN_ISA_CLONES(mod_stats, typename T, (const T* x, int64_t n, acc_of<T> mu, double* s), <T>(x, n, mu, s))
FASTGAN_ISA_CLONES(mod_sums, typename T FASTGAN_COMMA int ACT,
                   (const ModPtrs<T>& p, int64_t n, const ModChan<acc_of<T>>& c, double* s),
                   <T FASTGAN_COMMA ACT>(p, n, c, s))
FASTGAN_ISA_CLONES(mod_rz, typename T FASTGAN_COMMA int ACT,
                   (const ModPtrs<T>& p, int64_t n, const ModChan<acc_of<T>>& c, const DbwdCoef& k, double* s),
                   <T FASTGAN_COMMA ACT>(p, n, c, k, s))
FASTGAN_ISA_CLONES(mod_out, typename T FASTGAN_COMMA int ACT,
                   (const ModPtrs<T>& p, int64_t n, const ModChan<acc_of<T>>& c, const DbwdCoef& k,
                    T* __restrict__ ggy, T* __restrict__ gx2, T* __restrict__ ggm, T* __restrict__ gbm),
                   <T FASTGAN_COMMA ACT>(p, n, c, k, ggy, gx2, ggm, gbm))

template <typename T, int ACT>
struct ModLoops {
  decltype(&mod_derivs_base<T, ACT>) derivs =
      pick_isa(&mod_derivs_base<T, ACT>, &mod_derivs_avx2<T, ACT>, &mod_derivs_avx512<T, ACT>);
  decltype(&mod_stats_base<T>) stats = pick_isa(&mod_stats_base<T>, &mod_stats_avx2<T>, &mod_stats_avx512<T>);
  decltype(&mod_sums_base<T, ACT>) sums =
      pick_isa(&mod_sums_base<T, ACT>, &mod_sums_avx2<T, ACT>, &mod_sums_avx512<T, ACT>);
  decltype(&mod_rz_base<T, ACT>) rz = pick_isa(&mod_rz_base<T, ACT>, &mod_rz_avx2<T, ACT>, &mod_rz_avx512<T, ACT>);
  decltype(&mod_out_base<T, ACT>) out =
      pick_isa(&mod_out_base<T, ACT>, &mod_out_avx2<T, ACT>, &mod_out_avx512<T, ACT>);
};

// Inputs and outputs of the kernel, all contiguous (x's element order); cb and g_beta unused for linear f.
struct ModTensors {
  at::Tensor v, uw, ub, cg, cb, gy, x, mean, rstd, scale, shift, gm, bm;
  at::Tensor ggy, gx2, gs, gb, ggm, gbm;
};

template <typename T, int ACT>
void dbwd_maps_kernel(ModTensors& t, double eps, double alpha, const Shape& s) {
  using A = acc_of<T>;
  const ModLoops<T, ACT> k;
  auto in = [](const at::Tensor& u) { return u.defined() && u.numel() ? u.data_ptr<T>() : nullptr; };
  const ModPtrs<T> base{in(t.x), in(t.gy), in(t.v), in(t.gm), in(t.bm), in(t.cg), in(t.cb)};
  T *ggyp = t.ggy.data_ptr<T>(), *gx2p = t.gx2.data_ptr<T>(), *ggmp = t.ggm.data_ptr<T>();
  T* gbmp = ACT == kLinear ? nullptr : t.gbm.data_ptr<T>();
  const A *mp = t.mean.data_ptr<A>(), *rp = t.rstd.data_ptr<A>();
  const double *sp = t.scale.data_ptr<double>(), *bp = t.shift.data_ptr<double>();
  const double *uwp = t.uw.data_ptr<double>(), *ubp = t.ub.data_ptr<double>();
  double *gsp = t.gs.data_ptr<double>(), *gbp = t.gb.data_ptr<double>();
  const double M = static_cast<double>(s.M);
  // f', f'' of the whole group stay in per-thread scratch between the passes when it fits (one exp per element);
  // otherwise each pass recomputes them per chunk.
  const bool keep = ACT != kLinear && s.M <= kDerivCap;
  const int64_t span = keep ? s.M : kChunk;
  run_tasks(s.N * s.G, s.M, [&](int64_t begin, int64_t end) {
    double* d1 = ACT == kLinear ? nullptr : scratch<double>(2 * span);
    double* d2 = ACT == kLinear ? nullptr : d1 + span;
    std::vector<double> sums(static_cast<size_t>(kSums * s.Cg));
    std::vector<DbwdCoef> coef(static_cast<size_t>(s.Cg));
    for (int64_t p = begin; p < end; ++p) {
      const int64_t q0 = p * s.Cg;  // the group's first channel
      // The group's mean and rstd in double (as dbwd_group will find them): z in double from them, not from the
      // stored float statistics, whose rounding the small groups' large rstd amplifies.
      double st[2] = {0.0, 0.0};
      for (int64_t ch = 0; ch < s.Cg; ++ch)
        for (int64_t j0 = 0; j0 < s.L; j0 += kChunk)
          k.stats(base.x + (q0 + ch) * s.L + j0, std::min(kChunk, s.L - j0), mp[p], st);
      const double delta = st[0] / M;
      const double mu_d = static_cast<double>(mp[p]) + delta;
      const double r_d = 1.0 / std::sqrt(std::max(0.0, st[1] / M - delta * delta) + eps);
      // f(chunk pointers, n, channel constants, element offset) over channel ch's chunks, with their f', f''
      // (cached, or fresh: `first` is pass 1).
      auto over = [&](int64_t ch, bool first, const auto& f) {
        const int64_t nc = q0 + ch;
        const ModChan<A> c{mp[p], rp[p] * static_cast<A>(sp[nc]), static_cast<A>(bp[nc]), static_cast<A>(alpha),
                           mu_d, r_d, sp[nc], bp[nc]};
        for (int64_t j0 = 0; j0 < s.L; j0 += kChunk) {
          const int64_t o = nc * s.L + j0, n = std::min(kChunk, s.L - j0), c0 = keep ? ch * s.L + j0 : 0;
          if (ACT != kLinear && (first || !keep))
            k.derivs(base.x + o, base.gm + o, base.bm + o, n, c, d1 + c0, d2 + c0);
          auto at = [o](const T* q) { return q == nullptr ? nullptr : q + o; };
          f(ModPtrs<T>{base.x + o, base.gy + o, base.v + o, base.gm + o, base.bm + o, base.cg + o, at(base.cb),
                       ACT == kLinear ? nullptr : d1 + c0, ACT == kLinear ? nullptr : d2 + c0},
            n, c, o);
        }
      };
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t ch = 0; ch < s.Cg; ++ch)
        over(ch, true, [&](const ModPtrs<T>& q, int64_t n, const ModChan<A>& c, int64_t) {
          k.sums(q, n, c, &sums[kSums * ch]);
        });
      DbwdGroup grp = dbwd_group(sums.data(), s.Cg, M, eps, static_cast<double>(mp[p]), sp + q0, uwp + q0, ubp + q0,
                                 coef.data(), gsp + q0, gbp + q0);
      for (int64_t ch = 0; ch < s.Cg; ++ch) {
        double rs[2] = {0.0, 0.0};
        over(ch, false,
             [&](const ModPtrs<T>& q, int64_t n, const ModChan<A>& c, int64_t) { k.rz(q, n, c, coef[ch], rs); });
        dbwd_add_rz(grp, coef[ch], rs, M, gsp[q0 + ch], gbp[q0 + ch]);
      }
      for (int64_t ch = 0; ch < s.Cg; ++ch) {
        dbwd_finish(grp, coef[ch]);
        over(ch, false, [&](const ModPtrs<T>& q, int64_t n, const ModChan<A>& c, int64_t o) {
          k.out(q, n, c, coef[ch], ggyp + o, gx2p + o, ggmp + o, gbmp == nullptr ? nullptr : gbmp + o);
        });
      }
    }
  });
}

using Tensor6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// (g_grad_y, g_x, g_gamma, g_beta) like x (its dtype and layout; g_beta 0 elements for linear f),
// (g_scale, g_shift) (N, C) float64.
Tensor6 group_norm_dbwd_maps_cpu(const at::Tensor& ggx_in, const at::Tensor& ggscale, const at::Tensor& ggshift,
                                 const at::Tensor& gggamma_in, const std::optional<at::Tensor>& ggbeta_in,
                                 const at::Tensor& gy_in, const at::Tensor& x_in, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& shift,
                                 const at::Tensor& gamma_in, const at::Tensor& beta_in, int64_t groups, double eps,
                                 int64_t act, double alpha) {
  const char* op = "fastgan::group_norm_dbwd_maps";
  const Shape s = check_group_shape(x_in, groups, op);
  check_like_input(ggx_in, x_in, op, "ggx");
  check_like_input(gggamma_in, x_in, op, "gggamma");
  check_like_input(gy_in, x_in, op, "grad_y");
  for (const auto* m : {&gamma_in, &beta_in}) {
    const char* name = m == &gamma_in ? "gamma" : "beta";
    check_like_input(*m, x_in, op, name);
    TORCH_CHECK(m->scalar_type() == x_in.scalar_type(), op, ": ", name, " must have x's dtype ", x_in.scalar_type(),
                ", got ", m->scalar_type());
  }
  TORCH_CHECK(ggbeta_in.has_value() == (act != kLinear), op, ": ggbeta must be given exactly when act is not 0 "
              "(linear), got act ", act, (ggbeta_in.has_value() ? " with" : " without"), " ggbeta");
  if (ggbeta_in.has_value()) check_like_input(*ggbeta_in, x_in, op, "ggbeta");
  check_group_stat(mean, s, x_in, op, "mean");
  check_group_stat(rstd, s, x_in, op, "rstd");
  check_affine(ggscale, s, x_in, op, "ggscale");
  check_affine(ggshift, s, x_in, op, "ggshift");
  check_affine(scale, s, x_in, op, "scale");
  check_affine(shift, s, x_in, op, "shift");
  const bool cl = is_channels_last(x_in);
  auto in_x_dtype = [&](const at::Tensor& t) {
    return (t.scalar_type() == x_in.scalar_type() ? t : t.to(x_in.scalar_type())).contiguous();
  };
  ModTensors t;
  t.x = x_in.contiguous(), t.gy = in_x_dtype(gy_in), t.v = in_x_dtype(ggx_in), t.cg = in_x_dtype(gggamma_in);
  t.cb = ggbeta_in.has_value() ? in_x_dtype(*ggbeta_in) : at::Tensor();
  t.gm = gamma_in.contiguous(), t.bm = beta_in.contiguous();
  t.uw = ggscale, t.ub = ggshift, t.mean = mean, t.rstd = rstd, t.scale = scale, t.shift = shift;
  const auto dt = t.x.scalar_type();
  t.ggy = empty_in_layout(t.x, false, dt), t.gx2 = empty_in_layout(t.x, false, dt);
  t.ggm = empty_in_layout(t.x, false, dt);
  t.gbm = act != kLinear ? empty_in_layout(t.x, false, dt) : t.x.new_empty({0});
  t.gs = at::empty({s.N, s.C}, scale.options()), t.gb = at::empty_like(t.gs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "group_norm_dbwd_maps_cpu", [&] {
    dispatch_act(act, op, [&](auto a) { dbwd_maps_kernel<scalar_t, decltype(a)::value>(t, eps, alpha, s); });
  });
  auto back = [&](const at::Tensor& u) { return cl && u.numel() ? match_layout(u, true) : u; };
  return {back(t.ggy), back(t.gx2), t.gs, t.gb, back(t.ggm), back(t.gbm)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("group_norm_dbwd_maps", &group_norm_dbwd_maps_cpu); }

}  // namespace fastgan
