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
#include "norm_common.h"

namespace fastgan {
namespace {

constexpr int64_t kChunk = 4096;  // elements per chunk buffer (per input)

// ------------------------------------------------------------------------------------------ shared pieces
// The per-element second-order formulas (see instance_norm_ref.py), shared by both layouts.
template <typename A>
struct DbwdCoef {
  A mu, r, w, uw, ub, m_g, m_gx, m_v, m_vx, c;
  inline void apply(A x, A g, A v, A& gx2, A& ggy) const {
    const A xh = (x - mu) * r;
    const A pv = v - m_v - xh * m_vx;
    const A pg = g - m_g - xh * m_gx;
    ggy = w * r * pv + uw * xh + ub;
    gx2 = uw * r * pg - w * r * r * (c * xh + m_gx * pv + m_vx * pg);
  }
};

template <typename A>
DbwdCoef<A> dbwd_coef(const double* sums, double L, A mu, A r, A w, A uw, A ub, double* gscale2) {
  // sums: sum(gy), sum(gy*xhat), sum(v), sum(v*xhat), sum(v*gy)
  const double m_g = sums[0] / L, m_gx = sums[1] / L, m_v = sums[2] / L, m_vx = sums[3] / L;
  const double c = sums[4] / L - m_g * m_v - m_gx * m_vx;
  *gscale2 = L * static_cast<double>(r) * c;
  return DbwdCoef<A>{mu, r, w, uw, ub, A(m_g), A(m_gx), A(m_v), A(m_vx), A(c)};
}

// ------------------------------------------------------------------------------ contiguous planes (N*C tasks)
// Rows [r0, r0 + n) of plane p as acc_t: the tensor's own memory for float/double, else converted into buf.
template <typename T, typename A>
inline const A* plane_rows(const T* src, int64_t off, int64_t n, A* buf) {
  if (std::is_same<T, A>::value) return reinterpret_cast<const A*>(src + off);
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(src[off + i]);
  return buf;
}

template <typename T, typename A>
inline A* plane_out(T* dst, int64_t off, A* buf) {
  return std::is_same<T, A>::value ? reinterpret_cast<A*>(dst + off) : buf;
}

template <typename T, typename A>
inline void plane_store(T* dst, int64_t off, int64_t n, const A* buf) {
  if (std::is_same<T, A>::value) return;  // written in place
  for (int64_t i = 0; i < n; ++i) dst[off + i] = static_cast<T>(buf[i]);
}

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
        // Two passes over the cached chunk (mean, then centred squares), accumulated in double per channel.
        double* mean_c = out;
        double* m2_c = out + C;
        const T* base = xp + n * L * C;
        std::fill(out, out + 2 * C, 0.0);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < C; ++c) mean_c[c] += static_cast<A>(base[r * C + c]);
        for (int64_t c = 0; c < C; ++c) mean_c[c] /= static_cast<double>(r1 - r0);
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < C; ++c) {
            const double d = static_cast<A>(base[r * C + c]) - mean_c[c];
            m2_c[c] += d * d;
          }
      },
      [&](int64_t n, const double* parts, int64_t chunks) {
        const int64_t rows = cl_rows(C);
        for (int64_t c = 0; c < C; ++c) {
          Moments m;
          for (int64_t j = 0; j < chunks; ++j)
            m.merge(std::min(rows, L - j * rows), parts[j * 2 * C + c], parts[j * 2 * C + C + c]);
          const int64_t p = n * C + c;
          finish_plane(p, m);
          a[p] = static_cast<A>(sp[p] * rp[p]);
          b[p] = bp[p];
        }
      },
      [&](int64_t n, int64_t r0, int64_t r1) {
        const A *mu = mp + n * C, *lo = mean_lo.data() + n * C, *an = a.data() + n * C, *bn = b.data() + n * C;
        const T* src = xp + n * L * C;
        T* dst = yp + n * L * C;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = 0; c < C; ++c)
            dst[r * C + c] = static_cast<T>(((static_cast<A>(src[r * C + c]) - mu[c]) - lo[c]) * an[c] + bn[c]);
      });
}

// ------------------------------------------------------------------------------------------------ backward
template <typename T>
void bwd_kernel(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                const at::Tensor& scale, const PlaneShape& s, at::Tensor& gx, at::Tensor& gscale,
                at::Tensor& gshift) {
  using A = acc_of<T>;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>(), *sp = scale.data_ptr<A>();
  A *gsp = gscale.data_ptr<A>(), *gbp = gshift.data_ptr<A>();
  const int64_t L = s.L, C = s.C;
  if (!s.channels_last) {
    for_each_plane<A>(s, 3, [&](int64_t p, int64_t off, A* buf) {
      const A mu = mp[p], r = rp[p];
      double s_g = 0, s_gx = 0;  // s_gx = sum(gy * (x - mean)); times rstd once at the end
      for (int64_t r0 = 0; r0 < L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, L - r0);
        const A *xs = plane_rows(xp, off + r0, n, buf), *gs = plane_rows(gp, off + r0, n, buf + kChunk);
        s_g += lane_sum(n, [&](int64_t i) { return static_cast<double>(gs[i]); });
        s_gx += lane_sum(n, [&](int64_t i) { return static_cast<double>(gs[i]) * (static_cast<double>(xs[i]) - mu); });
      }
      s_gx *= r;
      gsp[p] = static_cast<A>(s_gx);
      gbp[p] = static_cast<A>(s_g);
      const A coef = sp[p] * r, m_g = static_cast<A>(s_g / L), m_gx = static_cast<A>(s_gx / L);
      for (int64_t r0 = 0; r0 < L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, L - r0);
        const A *xs = plane_rows(xp, off + r0, n, buf), *gs = plane_rows(gp, off + r0, n, buf + kChunk);
        A* o = plane_out(gxp, off + r0, buf + 2 * kChunk);
        for (int64_t i = 0; i < n; ++i) o[i] = coef * (gs[i] - m_g - (xs[i] - mu) * r * m_gx);
        plane_store(gxp, off + r0, n, o);
      }
    });
    return;
  }
  std::vector<A> coef(s.N * C), m_g(s.N * C), m_gx(s.N * C);
  for_each_sample_cl(
      s, sizeof(T), 2,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        double *a0 = out, *a1 = out + C;
        std::fill(out, out + 2 * C, 0.0);
        const A *mu = mp + n * C;
        for (int64_t r = r0; r < r1; ++r) {
          const T *xr = xp + (n * L + r) * C, *gr = gp + (n * L + r) * C;
          for (int64_t c = 0; c < C; ++c) {
            const double g = static_cast<A>(gr[c]);
            a0[c] += g;
            a1[c] += g * (static_cast<double>(static_cast<A>(xr[c])) - mu[c]);  // times rstd in the merge
          }
        }
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
        const A *mu = mp + n * C, *rs = rp + n * C;
        const A *cf = coef.data() + n * C, *mg = m_g.data() + n * C, *mgx = m_gx.data() + n * C;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t row = (n * L + r) * C;
          for (int64_t c = 0; c < C; ++c) {
            const A xh = (static_cast<A>(xp[row + c]) - mu[c]) * rs[c];
            gxp[row + c] = static_cast<T>(cf[c] * (static_cast<A>(gp[row + c]) - mg[c] - xh * mgx[c]));
          }
        }
      });
}

// ----------------------------------------------------------------------------------------- double backward
template <typename T>
void dbwd_kernel(const at::Tensor& ggx, const at::Tensor& ggscale, const at::Tensor& ggshift,
                 const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                 const at::Tensor& scale, const PlaneShape& s, at::Tensor& gx2, at::Tensor& ggy,
                 at::Tensor& gscale2) {
  using A = acc_of<T>;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>(), *vp = ggx.data_ptr<T>();
  T *gx2p = gx2.data_ptr<T>(), *ggyp = ggy.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>(), *sp = scale.data_ptr<A>();
  const A *uwp = ggscale.data_ptr<A>(), *ubp = ggshift.data_ptr<A>();
  A* gs2p = gscale2.data_ptr<A>();
  const int64_t L = s.L, C = s.C;
  auto coef_of = [&](int64_t p, const double* sums) {
    double g2;
    auto k = dbwd_coef<A>(sums, static_cast<double>(L), mp[p], rp[p], sp[p], uwp[p], ubp[p], &g2);
    gs2p[p] = static_cast<A>(g2);
    return k;
  };
  if (!s.channels_last) {
    for_each_plane<A>(s, 5, [&](int64_t p, int64_t off, A* buf) {
      const A mu = mp[p], r = rp[p];
      double sums[5] = {0, 0, 0, 0, 0};
      for (int64_t r0 = 0; r0 < L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, L - r0);
        const A* xs = plane_rows(xp, off + r0, n, buf);
        const A* gs = plane_rows(gp, off + r0, n, buf + kChunk);
        const A* vs = plane_rows(vp, off + r0, n, buf + 2 * kChunk);
        auto d = [](A t) { return static_cast<double>(t); };
        sums[0] += lane_sum(n, [&](int64_t i) { return d(gs[i]); });
        sums[1] += lane_sum(n, [&](int64_t i) { return d(gs[i]) * (d(xs[i]) - mu); });
        sums[2] += lane_sum(n, [&](int64_t i) { return d(vs[i]); });
        sums[3] += lane_sum(n, [&](int64_t i) { return d(vs[i]) * (d(xs[i]) - mu); });
        sums[4] += lane_sum(n, [&](int64_t i) { return d(vs[i]) * d(gs[i]); });
      }
      sums[1] *= r, sums[3] *= r;  // sum(. * xhat) = rstd * sum(. * (x - mean))
      const DbwdCoef<A> k = coef_of(p, sums);
      for (int64_t r0 = 0; r0 < L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, L - r0);
        const A* xs = plane_rows(xp, off + r0, n, buf);
        const A* gs = plane_rows(gp, off + r0, n, buf + kChunk);
        const A* vs = plane_rows(vp, off + r0, n, buf + 2 * kChunk);
        A* o1 = plane_out(gx2p, off + r0, buf + 3 * kChunk);
        A* o2 = plane_out(ggyp, off + r0, buf + 4 * kChunk);
        for (int64_t i = 0; i < n; ++i) k.apply(xs[i], gs[i], vs[i], o1[i], o2[i]);
        plane_store(gx2p, off + r0, n, o1);
        plane_store(ggyp, off + r0, n, o2);
      }
    });
    return;
  }
  std::vector<DbwdCoef<A>> coefs(s.N * C);
  for_each_sample_cl(
      s, sizeof(T), 5,
      [&](int64_t n, int64_t r0, int64_t r1, double* out) {
        double* acc = out;
        std::fill(out, out + 5 * C, 0.0);
        const A *mu = mp + n * C;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t row = (n * L + r) * C;
          for (int64_t c = 0; c < C; ++c) {
            const double g = static_cast<A>(gp[row + c]), v = static_cast<A>(vp[row + c]);
            const double xc = static_cast<double>(static_cast<A>(xp[row + c])) - mu[c];  // times rstd in the merge
            acc[c] += g, acc[C + c] += g * xc, acc[2 * C + c] += v, acc[3 * C + c] += v * xc;
            acc[4 * C + c] += v * g;
          }
        }
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
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t row = (n * L + r) * C;
          for (int64_t c = 0; c < C; ++c) {
            A o1, o2;
            coefs[n * C + c].apply(static_cast<A>(xp[row + c]), static_cast<A>(gp[row + c]), static_cast<A>(vp[row + c]),
                           o1, o2);
            gx2p[row + c] = static_cast<T>(o1);
            ggyp[row + c] = static_cast<T>(o2);
          }
        }
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
    // Contiguous planes: the group-norm kernel with one channel per group (AVX2 clones, vectorised 16-bit loads;
    // this file's plane loops are baseline-ISA only and ran bfloat16 1.8x slower).
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

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
const c10::TypedOperatorHandle<FwdSig>& fwd_op() {
  static const auto h = op_handle<FwdSig>("fastgan::instance_norm_fwd");
  return h;
}
const c10::TypedOperatorHandle<BwdSig>& bwd_op() {
  static const auto h = op_handle<BwdSig>("fastgan::instance_norm_bwd");
  return h;
}
const c10::TypedOperatorHandle<DbwdSig>& dbwd_op() {
  static const auto h = op_handle<DbwdSig>("fastgan::instance_norm_dbwd");
  return h;
}

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
