// Channels-last CPU kernels of group norm (per-(n, c) affine, fused activation; no modulation maps, which take the
// contiguous kernels in group_norm_cpu.cpp after a copy). Math: fastgan/ops/group_norm_kernels.py.
//
// Memory is (N, L, C): a group's Cg channels are a short run in every one of the L rows. The scheme is the
// instance-norm kernel's channels-last one (cl_tasks.h): per sample, row chunks in parallel accumulate
// per-channel partial sums with the inner loops along C (contiguous, vectorised), the partials are merged per
// channel and then per group, and a second parallel pass writes the output. Copying channels-last input to
// contiguous and back instead cost more than the kernel itself (PyTorch's transposing copy of a 2x512x64x64
// float tensor takes ~9 ms on 2 cores, the whole GN + SiLU forward ~3 ms).
//
// Precision as the contiguous kernels: channel moments (a mean, then centred squares) in double merged with
// Chan's formula into group moments; the group mean stored as hi + lo; backward sums in double and the output
// combination in double.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cl_moments.h"
#include "cl_tasks.h"
#include "convert16.h"
#include "group_norm_api.h"
#include "group_norm_math.h"
#include "norm_common.h"

namespace fastgan {
namespace {

Shape shape_of(const at::Tensor& x, int64_t groups) {
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / std::max<int64_t>(1, N * C);
  return Shape{N, C, groups, C / groups, L, (C / groups) * L};
}

// ------------------------------------------------------------------------------------------ row loops
// Over rows [r0, r1) of one sample's (L, C) slab, inner loops along C. Compiled for the baseline ISA, AVX2 and
// AVX-512 (same bits from each: cpu_isa.h), as in group_norm_cpu.cpp.

// Forward statistics: cl_moments_impl and cl_channel_moments (cl_moments.h).

// y = f(((x - mu_hi) - mu_lo) * a + b) with per-channel mu (the group's), a = rstd * scale, b = shift.
template <bool FMA, typename T, int ACT>
FASTGAN_GN_INLINE void cl_fwd_rows_impl(const T* src, T* dst, int64_t r0, int64_t r1, int64_t C,
                                        const acc_of<T>* mu, const acc_of<T>* lo, const acc_of<T>* a,
                                        const acc_of<T>* b, acc_of<T> al) {
  using A = acc_of<T>;
  const ExpRangeT<FMA> er = exp_range<FMA>();
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const A z = ((load_as<A>(src[r * C + c]) - mu[c]) - lo[c]) * a[c] + b[c];
      dst[r * C + c] = store_as<T>(act_f<ACT>(z, al, er));
    }
}

// gz = gy * f'((x - mean) * (rstd * scale) + shift), as the contiguous kernel forms it (A arithmetic).
template <int ACT, typename A, typename T, bool FMA>
FASTGAN_GN_INLINE A grad_z(const T& x, const T& gy, A mu, A ra, A b, A al, const ExpRangeT<FMA>& er) {
  const A g = load_as<A>(gy);
  if constexpr (ACT == kLinear) return g;
  else return g * act_d1<ACT>((load_as<A>(x) - mu) * ra + b, al, er);
}

// SiLU keeps gz for the output pass (kept_gz, indexed like x): recomputing its exp there made the channels-last
// backward 2x the contiguous one (which keeps gz per group in scratch).
template <int ACT>
constexpr bool kKeepGz = ACT == kSilu;

// Per channel: s[c] += sum gz, s[C + c] += sum gz * (x - mu), s[2C + c] += sum (x - mu), in double.
template <bool FMA, typename T, int ACT>
FASTGAN_GN_INLINE void cl_bwd_sums_impl(const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C,
                                        const acc_of<T>* mu, const acc_of<T>* ra, const acc_of<T>* b, acc_of<T> al,
                                        double* s, acc_of<T>* __restrict__ kept_gz) {
  using A = acc_of<T>;
  const ExpRangeT<FMA> er = exp_range<FMA>();
  for (int64_t r = r0; r < r1; ++r) {
    if constexpr (kKeepGz<ACT>)  // the row's gz first, in a loop of its own: the exp vectorises best alone
      for (int64_t c = 0; c < C; ++c)
        kept_gz[r * C + c] = grad_z<ACT>(x[r * C + c], gy[r * C + c], mu[c], ra[c], b[c], al, er);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      A gz_a;
      if constexpr (kKeepGz<ACT>) gz_a = kept_gz[i];
      else gz_a = grad_z<ACT>(x[i], gy[i], mu[c], ra[c], b[c], al, er);
      const double gz = static_cast<double>(gz_a);
      const double xc = static_cast<double>(load_as<A>(x[i])) - static_cast<double>(mu[c]);
      s[c] += gz;
      s[C + c] += gz * xc;
      s[2 * C + c] += xc;
    }
  }
}

// gx = r * (scale * gz - m_h - xhat * m_hx), xhat = (x - mean_exact) * r, in double; k[5C] = per channel
// {mean_exact, r, scale, m_h, m_hx}.
template <bool FMA, typename T, int ACT>
FASTGAN_GN_INLINE void cl_bwd_out_impl(const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C,
                                       const acc_of<T>* mu, const acc_of<T>* ra, const acc_of<T>* b, acc_of<T> al,
                                       const double* k, const acc_of<T>* kept_gz, T* __restrict__ gx) {
  using A = acc_of<T>;
  const ExpRangeT<FMA> er = exp_range<FMA>();
  const double *k_mu = k, *k_r = k + C, *k_a = k + 2 * C, *k_mh = k + 3 * C, *k_mhx = k + 4 * C;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      A gz;
      if constexpr (kKeepGz<ACT>) gz = kept_gz[i];
      else gz = grad_z<ACT>(x[i], gy[i], mu[c], ra[c], b[c], al, er);
      const double xh = (static_cast<double>(load_as<A>(x[i])) - k_mu[c]) * k_r[c];
      gx[i] = store_as<T>(static_cast<A>(k_r[c] * (k_a[c] * static_cast<double>(gz) - k_mh[c] - xh * k_mhx[c])));
    }
}

FASTGAN_ISA_CLONES(cl_moments, typename T,
                   (const T* base, int64_t r0, int64_t r1, int64_t C, double* mean_c, double* m2_c),
                   <T>(base, r0, r1, C, mean_c, m2_c))
FASTGAN_ISA_CLONES_FMA(cl_fwd_rows, typename T FASTGAN_COMMA int ACT,
                       (const T* src, T* dst, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu,
                        const acc_of<T>* lo, const acc_of<T>* a, const acc_of<T>* b, acc_of<T> al),
                       T FASTGAN_COMMA ACT, (src, dst, r0, r1, C, mu, lo, a, b, al))
FASTGAN_ISA_CLONES_FMA(cl_bwd_sums, typename T FASTGAN_COMMA int ACT,
                       (const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu,
                        const acc_of<T>* ra, const acc_of<T>* b, acc_of<T> al, double* s, acc_of<T>* __restrict__ kg),
                       T FASTGAN_COMMA ACT, (x, gy, r0, r1, C, mu, ra, b, al, s, kg))
FASTGAN_ISA_CLONES_FMA(cl_bwd_out, typename T FASTGAN_COMMA int ACT,
                       (const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu,
                        const acc_of<T>* ra, const acc_of<T>* b, acc_of<T> al, const double* k, const acc_of<T>* kg,
                        T* __restrict__ gx),
                       T FASTGAN_COMMA ACT, (x, gy, r0, r1, C, mu, ra, b, al, k, kg, gx))

template <typename T, int ACT>
struct ClLoops {
  decltype(&cl_moments_base<T>) moments =
      pick_isa(&cl_moments_base<T>, &cl_moments_avx2<T>, &cl_moments_avx512<T>);
  decltype(&cl_fwd_rows_base<T, ACT>) fwd_rows =
      pick_isa(&cl_fwd_rows_base<T, ACT>, &cl_fwd_rows_avx2<T, ACT>, &cl_fwd_rows_avx512<T, ACT>);
  decltype(&cl_bwd_sums_base<T, ACT>) bwd_sums =
      pick_isa(&cl_bwd_sums_base<T, ACT>, &cl_bwd_sums_avx2<T, ACT>, &cl_bwd_sums_avx512<T, ACT>);
  decltype(&cl_bwd_out_base<T, ACT>) bwd_out =
      pick_isa(&cl_bwd_out_base<T, ACT>, &cl_bwd_out_avx2<T, ACT>, &cl_bwd_out_avx512<T, ACT>);
};

// ------------------------------------------------------------------------------------------------ kernels
template <typename T, int ACT>
void fwd_cl(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const Shape& s, double eps,
            double alpha, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  using A = acc_of<T>;
  const ClLoops<T, ACT> k;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const int64_t C = s.C, L = s.L;
  const A al = static_cast<A>(alpha);
  // Per (n, c): the group's mean as hi + lo, the channel's multiplier rstd * scale and its shift.
  std::vector<A> mu(s.N * C), lo(s.N * C), a(s.N * C), b(s.N * C);
  for_each_sample_cl(
      PlaneShape{s.N, C, L, true}, sizeof(T), 2,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        std::fill(out, out + 2 * C, 0.0);
        k.moments(xp + n * L * C, r0, r1, C, out, out + C);
      },
      [&](int64_t n, const double* parts, int64_t chunks) {
        const int64_t rows = cl_rows(C);
        for (int64_t g = 0; g < s.G; ++g) {
          Moments m;
          for (int64_t c = g * s.Cg; c < (g + 1) * s.Cg; ++c) {
            const Moments mc = cl_channel_moments(xp + n * L * C, parts, chunks, rows, L, C, c);
            m.merge(mc.count, mc.mean, mc.m2);
          }
          const int64_t p = n * s.G + g;
          mp[p] = static_cast<A>(m.mean);
          const A mean_lo = static_cast<A>(m.mean - static_cast<double>(mp[p]));
          rp[p] = static_cast<A>(1.0 / std::sqrt(m.m2 / s.M + eps));
          for (int64_t nc = n * C + g * s.Cg; nc < n * C + (g + 1) * s.Cg; ++nc) {
            mu[nc] = mp[p];
            lo[nc] = mean_lo;
            a[nc] = static_cast<A>(sp[nc] * static_cast<double>(rp[p]));
            b[nc] = static_cast<A>(bp[nc]);
          }
        }
      },
      [&](int64_t n, int64_t r0, int64_t r1) {
        const int64_t o = n * C;
        k.fwd_rows(xp + n * L * C, yp + n * L * C, r0, r1, C, mu.data() + o, lo.data() + o, a.data() + o,
                   b.data() + o, al);
      });
}

template <typename T, int ACT>
void bwd_cl(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
            const at::Tensor& scale, const at::Tensor& shift, const Shape& s, double alpha, at::Tensor& gx,
            at::Tensor& gscale, at::Tensor& gshift) {
  using A = acc_of<T>;
  const ClLoops<T, ACT> k;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  double *gsp = gscale.data_ptr<double>(), *gbp = gshift.data_ptr<double>();
  const int64_t C = s.C, L = s.L, NC = s.N * C;
  const A al = static_cast<A>(alpha);
  // Per (n, c): what gz needs (stored mean, rstd * scale, shift), and per sample the output pass's constants
  // {mean_exact, rstd, scale, m_h, m_hx} x C.
  std::vector<A> mu(NC), ra(NC), b(NC);
  for (int64_t nc = 0; nc < NC; ++nc) {
    const int64_t p = (nc / C) * s.G + (nc % C) / s.Cg;
    mu[nc] = mp[p];
    ra[nc] = rp[p] * static_cast<A>(sp[nc]);
    b[nc] = static_cast<A>(bp[nc]);
  }
  std::vector<double> coef(static_cast<size_t>(5 * NC));
  std::vector<A> kept(kKeepGz<ACT> ? static_cast<size_t>(NC * L) : 0);
  A* kg = kept.data();
  for_each_sample_cl(
      PlaneShape{s.N, C, L, true}, 2 * sizeof(T), 3,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        std::fill(out, out + 3 * C, 0.0);
        const int64_t o = n * C;
        k.bwd_sums(xp + n * L * C, gp + n * L * C, r0, r1, C, mu.data() + o, ra.data() + o, b.data() + o, al, out,
                   kKeepGz<ACT> ? kg + n * L * C : nullptr);
      },
      [&](int64_t n, const double* parts, int64_t chunks) {
        std::vector<double> sums(static_cast<size_t>(3 * s.Cg));
        double* kn = coef.data() + 5 * n * C;
        for (int64_t g = 0; g < s.G; ++g) {
          std::fill(sums.begin(), sums.end(), 0.0);
          for (int64_t ch = 0; ch < s.Cg; ++ch)
            for (int64_t j = 0; j < chunks; ++j)
              for (int v = 0; v < 3; ++v) sums[3 * ch + v] += parts[(j * 3 + v) * C + g * s.Cg + ch];
          const int64_t p = n * s.G + g;
          const GroupCoef gc = group_coef(p, sums.data(), s, static_cast<double>(mp[p]), rp[p], sp, gsp, gbp);
          for (int64_t c = g * s.Cg; c < (g + 1) * s.Cg; ++c) {
            kn[c] = gc.mu;
            kn[C + c] = rp[p];
            kn[2 * C + c] = sp[n * C + c];
            kn[3 * C + c] = gc.m_h;
            kn[4 * C + c] = gc.m_hx;
          }
        }
      },
      [&](int64_t n, int64_t r0, int64_t r1) {
        const int64_t o = n * C, base = n * L * C;
        k.bwd_out(xp + base, gp + base, r0, r1, C, mu.data() + o, ra.data() + o, b.data() + o, al,
                  coef.data() + 5 * o, kKeepGz<ACT> ? kg + base : nullptr, gxp + base);
      });
}

}  // namespace

void group_norm_fwd_cl(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, int64_t groups,
                       double eps, int64_t act, double alpha, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  const Shape s = shape_of(x, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_fwd_cl", [&] {
    dispatch_act(act, "fastgan::group_norm_fwd", [&](auto k) {
      fwd_cl<scalar_t, decltype(k)::value>(x, scale, shift, s, eps, alpha, y, mean, rstd);
    });
  });
}

void group_norm_bwd_cl(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                       const at::Tensor& scale, const at::Tensor& shift, int64_t groups, int64_t act, double alpha,
                       at::Tensor& gx, at::Tensor& gscale, at::Tensor& gshift) {
  const Shape s = shape_of(x, groups);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_bwd_cl", [&] {
    dispatch_act(act, "fastgan::group_norm_bwd", [&](auto k) {
      bwd_cl<scalar_t, decltype(k)::value>(gy, x, mean, rstd, scale, shift, s, alpha, gx, gscale, gshift);
    });
  });
}

}  // namespace fastgan
