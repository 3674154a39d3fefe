// CPU kernel of group norm's double backward without modulation maps (math: the "Double backward" section of
// fastgan/ops/group_norm_kernels.py).
//
//   group_norm_dbwd(ggx, ggscale, ggshift, grad_y, x, mean, rstd, scale, shift, groups, eps, act, alpha)
//       -> (g_grad_y, g_x, g_scale, g_shift)
//
// is the vector-Jacobian product of group_norm_bwd's (gx, gscale, gshift) with the cotangents (ggx, ggscale,
// ggshift): the second-order step of a gradient penalty through a GroupNorm(+activation) layer, such as the
// layer-norm WGAN-GP critic's GroupNorm(1, C). Without it that product ran as autograd of the reference backward in
// eager torch ops, dozens of full passes.
//
// Work unit: a (n, g) group, as in the forward (group_norm_cpu.cpp). Pass 1 reads x, grad_y and ggx and sums six
// per-channel quantities in double; SiLU, whose f'' is not 0, needs a second reduction pass for the terms through
// f''; the last pass writes both outputs. The elementwise combination is in double: like the backward's, its terms
// cancel. z and f'(z) are computed exactly as the backward computes them (same float formula), so relu/lrelu masks
// agree with the first-order pass. Channels-last and other strided inputs are copied to contiguous, and the outputs
// copied back.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "convert16.h"
#include "group_norm_dbwd_math.h"
#include "group_norm_math.h"
#include "norm_common.h"

namespace fastgan {
namespace {

// f'(z) into d1 and, for SiLU, f''(z) into d2, with z = (x - mu) * ra + b in float, exactly as the backward's
// pass computes it (the same relu/lrelu masks). SiLU's one exp serves both.
template <bool FMA, typename T, int ACT>
FASTGAN_GN_INLINE void dbwd_derivs_impl(const T* x, int64_t n, acc_of<T> mu, acc_of<T> ra, acc_of<T> b,
                                        acc_of<T> al, acc_of<T>* d1, acc_of<T>* d2) {
  using A = acc_of<T>;
  const ExpRangeT<FMA> er = exp_range<FMA>();
  for (int64_t i = 0; i < n; ++i) {
    const A z = (load_as<A>(x[i]) - mu) * ra + b;
    if constexpr (ACT == kSilu) {
      A sg, sm;  // sigmoid(z), 1 - sigmoid(z)
      sigmoid_pair(z, er, sg, sm);
      d1[i] = sg * (A(1) + z * sm);
      d2[i] = sg * sm * (A(2) + z * (sm - sg));
    } else {
      d1[i] = act_d1<ACT>(z, al, er);
    }
  }
}

// s += the six pass-1 sums over n elements (d1 unused for linear f).
template <typename T, int ACT>
FASTGAN_GN_INLINE void dbwd_sums_impl(const T* x, const T* gy, const T* v, const acc_of<T>* d1, int64_t n,
                                      acc_of<T> mu, double* s) {
  using A = acc_of<T>;
  double acc[kSums][kDl] = {};
  auto add = [&](int64_t i, int l) {
    const A ga = load_as<A>(gy[i]);
    const double xd = static_cast<double>(load_as<A>(x[i])) - static_cast<double>(mu);
    const double g = static_cast<double>(ACT == kLinear ? ga : ga * d1[i]), vv = load_as<A>(v[i]);
    acc[0][l] += xd, acc[1][l] += g, acc[2][l] += g * xd, acc[3][l] += vv, acc[4][l] += vv * xd, acc[5][l] += vv * g;
    acc[6][l] += xd * xd;
  };
  over_lanes(n, add);
  for (int q = 0; q < kSums; ++q) s[q] += tree8(acc[q]);
}

// SiLU only: s += {sum Rz, sum Rz * xhat}, Rz = Q * grad_y * f''(z) with Q as in dbwd_out.
template <typename T>
FASTGAN_GN_INLINE void dbwd_rz_impl(const T* x, const T* gy, const T* v, const acc_of<T>* d2, int64_t n,
                                    const DbwdCoef& k, double* s) {
  using A = acc_of<T>;
  double lr[kDl] = {}, lx[kDl] = {};
  auto add = [&](int64_t i, int l) {
    const double xh = (static_cast<double>(load_as<A>(x[i])) - k.mu) * k.r;
    const double q = k.a * (k.r * (static_cast<double>(load_as<A>(v[i])) - k.m_v - k.B2 * xh)) + k.uw * xh + k.ub;
    const double rz = q * static_cast<double>(load_as<A>(gy[i])) * static_cast<double>(d2[i]);
    lr[l] += rz, lx[l] += rz * xh;
  };
  over_lanes(n, add);
  s[0] += tree8(lr);
  s[1] += tree8(lx);
}

// Q = scale * P + ggscale * xhat + ggshift, P = r (v - m_v - B2 xhat);  g_grad_y = f'(z) * Q;
// g_x = r * T + c0 + cx * xhat with T = -r (v A2 + scale gz B2) + ggscale gz + scale Rz.
template <typename T, int ACT>
FASTGAN_GN_INLINE void dbwd_out_impl(const T* x, const T* gy, const T* v, const acc_of<T>* d1,
                                     const acc_of<T>* d2, int64_t n, const DbwdCoef& k, T* __restrict__ ggy,
                                     T* __restrict__ gx2) {
  using A = acc_of<T>;
  const double r = k.r, a = k.a, uw = k.uw, ub = k.ub, m_v = k.m_v, b2 = k.B2, ra2 = k.r * k.A2;
  const double rab2 = k.r * k.a * k.B2, c0 = k.c0, cx = k.cx, mu = k.mu;
  for (int64_t i = 0; i < n; ++i) {
    const A ga = load_as<A>(gy[i]);
    const double xh = (static_cast<double>(load_as<A>(x[i])) - mu) * r, vv = load_as<A>(v[i]);
    const double q = a * (r * (vv - m_v - b2 * xh)) + uw * xh + ub;
    const double gz = static_cast<double>(ACT == kLinear ? ga : ga * d1[i]);
    double t = uw * gz - ra2 * vv - rab2 * gz;
    if constexpr (ACT == kSilu) t += a * (q * static_cast<double>(ga) * static_cast<double>(d2[i]));
    ggy[i] = store_as<T>(static_cast<A>(ACT == kLinear ? q : static_cast<double>(d1[i]) * q));
    gx2[i] = store_as<T>(static_cast<A>(r * t + c0 + cx * xh));
  }
}

FASTGAN_ISA_CLONES_FMA(dbwd_derivs, typename T FASTGAN_COMMA int ACT,
                       (const T* x, int64_t n, acc_of<T> mu, acc_of<T> ra, acc_of<T> b, acc_of<T> al, acc_of<T>* d1,
                        acc_of<T>* d2),
                       T FASTGAN_COMMA ACT, (x, n, mu, ra, b, al, d1, d2))
FASTGAN_ISA_CLONES(dbwd_sums, typename T FASTGAN_COMMA int ACT,
                   (const T* x, const T* gy, const T* v, const acc_of<T>* d1, int64_t n, acc_of<T> mu, double* s),
                   <T FASTGAN_COMMA ACT>(x, gy, v, d1, n, mu, s))
FASTGAN_ISA_CLONES(dbwd_rz, typename T,
                   (const T* x, const T* gy, const T* v, const acc_of<T>* d2, int64_t n, const DbwdCoef& k,
                    double* s),
                   <T>(x, gy, v, d2, n, k, s))
FASTGAN_ISA_CLONES(dbwd_out, typename T FASTGAN_COMMA int ACT,
                   (const T* x, const T* gy, const T* v, const acc_of<T>* d1, const acc_of<T>* d2, int64_t n,
                    const DbwdCoef& k, T* __restrict__ ggy, T* __restrict__ gx2),
                   <T FASTGAN_COMMA ACT>(x, gy, v, d1, d2, n, k, ggy, gx2))

template <typename T, int ACT>
struct DbwdLoops {
  decltype(&dbwd_derivs_base<T, ACT>) derivs =
      pick_isa(&dbwd_derivs_base<T, ACT>, &dbwd_derivs_avx2<T, ACT>, &dbwd_derivs_avx512<T, ACT>);
  decltype(&dbwd_sums_base<T, ACT>) sums =
      pick_isa(&dbwd_sums_base<T, ACT>, &dbwd_sums_avx2<T, ACT>, &dbwd_sums_avx512<T, ACT>);
  decltype(&dbwd_rz_base<T>) rz = pick_isa(&dbwd_rz_base<T>, &dbwd_rz_avx2<T>, &dbwd_rz_avx512<T>);
  decltype(&dbwd_out_base<T, ACT>) out =
      pick_isa(&dbwd_out_base<T, ACT>, &dbwd_out_avx2<T, ACT>, &dbwd_out_avx512<T, ACT>);
};

// Per group: pass 1 sums, the group constants (dbwd_group, group_norm_dbwd_math.h), for SiLU the Rz sums, then
// the outputs.
template <typename T, int ACT>
void dbwd_kernel(const at::Tensor& v_t, const at::Tensor& uw_t, const at::Tensor& ub_t, const at::Tensor& gy_t,
                 const at::Tensor& x_t, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale,
                 const at::Tensor& shift, double eps, double alpha, const Shape& s, at::Tensor& ggy_t,
                 at::Tensor& gx2_t, at::Tensor& gscale2, at::Tensor& gshift2) {
  using A = acc_of<T>;
  const DbwdLoops<T, ACT> k;
  const T *xp = x_t.data_ptr<T>(), *gp = gy_t.data_ptr<T>(), *vp = v_t.data_ptr<T>();
  T *ggyp = ggy_t.data_ptr<T>(), *gx2p = gx2_t.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  const double *uwp = uw_t.data_ptr<double>(), *ubp = ub_t.data_ptr<double>();
  double *gsp = gscale2.data_ptr<double>(), *gbp = gshift2.data_ptr<double>();
  const A al = static_cast<A>(alpha);
  const double M = static_cast<double>(s.M);
  // f', f'' of the whole group stay in per-thread scratch between the passes when it fits (SiLU's exp once per
  // element); otherwise each pass recomputes them per chunk.
  const bool keep = ACT != kLinear && s.M <= kDerivCap;
  const int64_t span = keep ? s.M : kChunk;
  run_tasks(s.N * s.G, s.M, [&](int64_t begin, int64_t end) {
    A* d1 = ACT == kLinear ? nullptr : scratch<A>(2 * span);
    A* d2 = ACT == kLinear ? nullptr : d1 + span;
    std::vector<double> sums(static_cast<size_t>(kSums * s.Cg));
    std::vector<DbwdCoef> coef(static_cast<size_t>(s.Cg));
    for (int64_t p = begin; p < end; ++p) {
      const A mu_s = mp[p];
      // Element range [j0, j1) of channel ch: its f', f'' (cached or fresh), then f(offset, d1, d2).
      auto over = [&](int64_t ch, bool first, const auto& f) {
        const int64_t nc = p * s.Cg + ch;
        for (int64_t j0 = 0; j0 < s.L; j0 += kChunk) {
          const int64_t o = nc * s.L + j0, n = std::min(kChunk, s.L - j0), c0 = keep ? ch * s.L + j0 : 0;
          if (ACT != kLinear && (first || !keep))
            k.derivs(xp + o, n, mu_s, rp[p] * static_cast<A>(sp[nc]), static_cast<A>(bp[nc]), al, d1 + c0, d2 + c0);
          f(o, n, ACT == kLinear ? nullptr : d1 + c0, ACT == kLinear ? nullptr : d2 + c0);
        }
      };
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t ch = 0; ch < s.Cg; ++ch)
        over(ch, true, [&](int64_t o, int64_t n, const A* a1, const A*) {
          k.sums(xp + o, gp + o, vp + o, a1, n, mu_s, &sums[kSums * ch]);
        });
      const int64_t q0 = p * s.Cg;  // the group's first channel
      DbwdGroup grp = dbwd_group(sums.data(), s.Cg, M, eps, static_cast<double>(mu_s), sp + q0, uwp + q0, ubp + q0,
                                 coef.data(), gsp + q0, gbp + q0);
      if constexpr (ACT == kSilu) {
        for (int64_t ch = 0; ch < s.Cg; ++ch) {
          double rs[2] = {0.0, 0.0};
          over(ch, false, [&](int64_t o, int64_t n, const A*, const A* a2p) {
            k.rz(xp + o, gp + o, vp + o, a2p, n, coef[ch], rs);
          });
          dbwd_add_rz(grp, coef[ch], rs, M, gsp[q0 + ch], gbp[q0 + ch]);
        }
      }
      for (int64_t ch = 0; ch < s.Cg; ++ch) {
        dbwd_finish(grp, coef[ch]);
        over(ch, false, [&](int64_t o, int64_t n, const A* a1, const A* a2p) {
          k.out(xp + o, gp + o, vp + o, a1, a2p, n, coef[ch], ggyp + o, gx2p + o);
        });
      }
    }
  });
}

using Tensor4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// (g_grad_y, g_x) like x (its dtype and layout), (g_scale, g_shift) (N, C) float64.
Tensor4 group_norm_dbwd_cpu(const at::Tensor& ggx_in, const at::Tensor& ggscale, const at::Tensor& ggshift,
                            const at::Tensor& gy_in, const at::Tensor& x_in, const at::Tensor& mean,
                            const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& shift, int64_t groups,
                            double eps, int64_t act, double alpha) {
  const char* op = "fastgan::group_norm_dbwd";
  const Shape s = check_group_shape(x_in, groups, op);
  check_like_input(ggx_in, x_in, op, "ggx");
  check_like_input(gy_in, x_in, op, "grad_y");
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
  const at::Tensor x = x_in.contiguous(), gy = in_x_dtype(gy_in), ggx = in_x_dtype(ggx_in);
  at::Tensor ggy = empty_in_layout(x, false, x.scalar_type()), gx2 = empty_in_layout(x, false, x.scalar_type());
  at::Tensor gscale2 = at::empty({s.N, s.C}, scale.options()), gshift2 = at::empty_like(gscale2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_dbwd_cpu", [&] {
    dispatch_act(act, op, [&](auto a) {
      dbwd_kernel<scalar_t, decltype(a)::value>(ggx, ggscale, ggshift, gy, x, mean, rstd, scale, shift, eps, alpha, s,
                                                ggy, gx2, gscale2, gshift2);
    });
  });
  auto back = [&](const at::Tensor& t) { return cl ? match_layout(t, true) : t; };
  return {back(ggy), back(gx2), gscale2, gshift2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("group_norm_dbwd", &group_norm_dbwd_cpu); }

}  // namespace fastgan
