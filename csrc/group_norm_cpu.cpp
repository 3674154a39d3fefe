// CPU kernels of group norm with a per-(n, c) affine and a fused activation (math: fastgan/ops/group_norm_kernels.py).
//
// One task per (n, g) group, run in parallel with at::parallel_for. For contiguous input a group is one run of
// M = (C/G)*L elements (channel after channel), i.e. an instance-norm "plane" whose affine changes every L
// elements. A task walks its run in chunks converted to the accumulation type (float; double for double input);
// runs of up to a few hundred KiB stay in L2 between the statistics pass and the output pass.
// Channels-last and other strided inputs are copied to contiguous first and the outputs copied back to the
// input's layout (a native channels-last path is future work).
// Statistics: per chunk a mean, then the centred sum of squares about it, in double, merged across chunks with
// Chan's formula, so a large mean offset costs no precision. Backward sums are double too, as in eager on CPU.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "norm_common.h"

namespace fastgan {
namespace {

constexpr int64_t kChunk = 4096;  // elements per chunk buffer

template <typename T>
using acc_of = std::conditional_t<std::is_same<T, double>::value, double, float>;

// Activation codes shared with bias_act (fastgan/ops/bias_act_kernels.py ACT_CODES).
constexpr int kLinear = 0, kRelu = 1, kLrelu = 2, kSilu = 5;

// f(z). NaN propagates through relu/lrelu (`z < 0` is false for NaN), as in torch.
template <int ACT, typename A>
inline A act_f(A z, A alpha) {
  if constexpr (ACT == kRelu) return z < A(0) ? A(0) : z;
  else if constexpr (ACT == kLrelu) return z < A(0) ? z * alpha : z;
  else if constexpr (ACT == kSilu) return z / (A(1) + std::exp(-z));
  else return z;
}

// f'(z); at z = 0 relu's is 0 and lrelu's alpha, as torch's backward has them.
template <int ACT, typename A>
inline A act_d1(A z, A alpha) {
  if constexpr (ACT == kRelu) return z > A(0) ? A(1) : A(0);
  else if constexpr (ACT == kLrelu) return z > A(0) ? A(1) : alpha;
  else if constexpr (ACT == kSilu) {
    const A s = A(1) / (A(1) + std::exp(-z));
    return s * (A(1) + z * (A(1) - s));
  } else return A(1);
}

template <typename F>
void dispatch_act(int64_t act, const char* op, F f) {
  switch (act) {
    case kLinear: f(std::integral_constant<int, kLinear>{}); break;
    case kRelu: f(std::integral_constant<int, kRelu>{}); break;
    case kLrelu: f(std::integral_constant<int, kLrelu>{}); break;
    case kSilu: f(std::integral_constant<int, kSilu>{}); break;
    default: TORCH_CHECK(false, op, ": act must be 0 (linear), 1 (relu), 2 (lrelu) or 5 (silu), got ", act);
  }
}

// sum_i f(i) over 8 independent double lanes (vectorisable without reassociation).
template <typename F>
inline double lane_sum(int64_t n, F f) {
  double lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) lanes[k] += f(i + k);
  }
  for (; i < n; ++i) lanes[0] += f(i);
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// Elements [off, off + n) as acc_t: the tensor's own memory for float/double, else converted into buf.
template <typename T, typename A>
inline const A* load(const T* src, int64_t off, int64_t n, A* buf) {
  if (std::is_same<T, A>::value) return reinterpret_cast<const A*>(src + off);
  for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(src[off + i]);
  return buf;
}

template <typename T, typename A>
inline void store(T* dst, int64_t off, int64_t n, const A* vals) {
  for (int64_t i = 0; i < n; ++i) dst[off + i] = static_cast<T>(vals[i]);
}

struct Shape {
  int64_t N, C, G, Cg, L, M;  // M = Cg * L elements per group
};

template <typename A, typename Body>
void for_each_group(const Shape& s, int nbuf, Body body) {
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / s.M);
  at::parallel_for(0, s.N * s.G, grain, [&](int64_t begin, int64_t end) {
    std::vector<A> storage(static_cast<size_t>(nbuf) * kChunk);
    for (int64_t p = begin; p < end; ++p) body(p, storage.data());
  });
}

// ------------------------------------------------------------------------------------------------- forward
// mean, var over the group; y = f((x - mean) * (rstd * scale[n, c]) + shift[n, c]).
template <typename T, int ACT>
void fwd_kernel(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, double eps, double alpha,
                const Shape& s, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  using A = acc_of<T>;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const A al = static_cast<A>(alpha);
  for_each_group<A>(s, 2, [&](int64_t p, A* buf) {
    const int64_t off = p * s.M;
    double count = 0, mu = 0, m2 = 0;  // Chan's running (count, mean, M2)
    for (int64_t r0 = 0; r0 < s.M; r0 += kChunk) {
      const int64_t n = std::min(kChunk, s.M - r0);
      const A* v = load(xp, off + r0, n, buf);
      const double cm = lane_sum(n, [&](int64_t i) { return static_cast<double>(v[i]); }) / n;
      const double cm2 = lane_sum(n, [&](int64_t i) {
        const double d = static_cast<double>(v[i]) - cm;
        return d * d;
      });
      const double delta = cm - mu, total = count + n;
      mu += delta * n / total;
      m2 += cm2 + delta * delta * count * n / total;
      count = total;
    }
    const double r = 1.0 / std::sqrt(m2 / s.M + eps);
    mp[p] = static_cast<A>(mu);
    rp[p] = static_cast<A>(r);
    // The mean as hi + lo in A: x - mean stays exact-ish when |mean| >> std (float input, large offset).
    const A mu_hi = static_cast<A>(mu), mu_lo = static_cast<A>(mu - static_cast<double>(mu_hi));
    for (int64_t ch = 0; ch < s.Cg; ++ch) {
      const int64_t nc = p * s.Cg + ch;  // (n*G + g)*Cg + ch = n*C + c
      const A a = static_cast<A>(sp[nc] * r), b = static_cast<A>(bp[nc]);
      for (int64_t r0 = 0; r0 < s.L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, s.L - r0), o = off + ch * s.L + r0;
        const A* v = load(xp, o, n, buf);
        A* out = buf + kChunk;
        for (int64_t i = 0; i < n; ++i) out[i] = act_f<ACT>(((v[i] - mu_hi) - mu_lo) * a + b, al);
        store(yp, o, n, out);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------ backward
// gz = gy * f'(z); gscale = sum_L gz*xhat, gshift = sum_L gz per channel; with h = scale * gz and group means
// m_h, m_hx of h and h*xhat: gx = rstd * (h - m_h - xhat * m_hx). The group sums follow from the per-channel
// ones (sum h = sum_c scale_c * gshift_c, sum h*xhat = sum_c scale_c * gscale_c), so one reduction pass.
template <typename T, int ACT>
void bwd_kernel(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                const at::Tensor& scale, const at::Tensor& shift, double alpha, const Shape& s, at::Tensor& gx,
                at::Tensor& gscale, at::Tensor& gshift) {
  using A = acc_of<T>;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  double *gsp = gscale.data_ptr<double>(), *gbp = gshift.data_ptr<double>();
  const A al = static_cast<A>(alpha);
  for_each_group<A>(s, 3, [&](int64_t p, A* buf) {
    const int64_t off = p * s.M;
    const A mu = mp[p], r = rp[p];
    // gz of one chunk into buf + 2*kChunk (or gy itself for linear).
    auto chunk_gz = [&](int64_t o, int64_t n, A a, A b, const A*& xs) -> const A* {
      xs = load(xp, o, n, buf);
      const A* gs = load(gp, o, n, buf + kChunk);
      if constexpr (ACT == kLinear) return gs;
      A* gz = buf + 2 * kChunk;
      for (int64_t i = 0; i < n; ++i) gz[i] = gs[i] * act_d1<ACT>((xs[i] - mu) * r * a + b, al);
      return gz;
    };
    // mean was stored rounded to A; delta = exact mean - stored mean comes free from pass 1 (x is loaded anyway)
    // and corrects every x - mean below: on small groups of close values rstd is large and the rounding of the
    // stored mean showed in gscale (up to 8x eager's error).
    std::vector<double> sg(s.Cg), sgx(s.Cg);
    double sx = 0;
    for (int64_t ch = 0; ch < s.Cg; ++ch) {
      const int64_t nc = p * s.Cg + ch;
      double s_g = 0, s_gx = 0;  // s_gx = sum(gz * (x - mean))
      for (int64_t r0 = 0; r0 < s.L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, s.L - r0);
        const A* xs;
        const A* gz = chunk_gz(off + ch * s.L + r0, n, static_cast<A>(sp[nc]), static_cast<A>(bp[nc]), xs);
        s_g += lane_sum(n, [&](int64_t i) { return static_cast<double>(gz[i]); });
        s_gx += lane_sum(n, [&](int64_t i) {
          return static_cast<double>(gz[i]) * (static_cast<double>(xs[i]) - mu);
        });
        sx += lane_sum(n, [&](int64_t i) { return static_cast<double>(xs[i]) - mu; });
      }
      sg[ch] = s_g;
      sgx[ch] = s_gx;
    }
    const double delta = sx / s.M, mu_d = static_cast<double>(mu) + delta;
    double h = 0, hx = 0;
    for (int64_t ch = 0; ch < s.Cg; ++ch) {
      const int64_t nc = p * s.Cg + ch;
      const double s_gx = (sgx[ch] - delta * sg[ch]) * r;  // sum(gz * xhat) about the exact mean
      gsp[nc] = s_gx;
      gbp[nc] = sg[ch];
      h += sp[nc] * sg[ch];
      hx += sp[nc] * s_gx;
    }
    // The output combination cancels (gx is the projection of h off 1 and xhat), so it runs in double: in float
    // its roundings were up to 3x eager's error on small groups.
    const double m_h = h / s.M, m_hx = hx / s.M, rd = r;
    for (int64_t ch = 0; ch < s.Cg; ++ch) {
      const int64_t nc = p * s.Cg + ch;
      const double a = sp[nc];
      for (int64_t r0 = 0; r0 < s.L; r0 += kChunk) {
        const int64_t n = std::min(kChunk, s.L - r0), o = off + ch * s.L + r0;
        const A* xs;
        const A* gz = chunk_gz(o, n, static_cast<A>(a), static_cast<A>(bp[nc]), xs);
        // Written in gy's slot: element i of gz (possibly that slot) is read before out[i] is written.
        A* out = buf + kChunk;
        for (int64_t i = 0; i < n; ++i) {
          const double xh = (static_cast<double>(xs[i]) - mu_d) * rd;
          out[i] = static_cast<A>(rd * (a * gz[i] - m_h - xh * m_hx));
        }
        store(gxp, o, n, out);
      }
    }
  });
}

Shape check_group_shape(const at::Tensor& x, int64_t groups, const char* op) {
  const PlaneShape ps = check_norm_input(x, op, "x");
  TORCH_CHECK(groups >= 1 && ps.C % groups == 0, op, ": num_groups must divide the ", ps.C,
              " channels of x, got num_groups=", groups);
  return Shape{ps.N, ps.C, groups, ps.C / groups, ps.L, (ps.C / groups) * ps.L};
}

// The folded affine: (N, C) float64 whatever x's dtype (the fold of weight, bias, scale, shift and the gradients
// back through it cancel; float64 keeps them exact to the kernels' precision), contiguous, on x's device.
void check_affine(const at::Tensor& t, const Shape& s, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.N && t.size(1) == s.C, op, ": ", name, " must have shape (", s.N,
              ", ", s.C, "), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == at::kDouble, op, ": ", name, " must be float64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_group_stat(const at::Tensor& t, const Shape& s, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.N && t.size(1) == s.G, op, ": ", name, " must have shape (", s.N,
              ", ", s.G, "), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == acc_type_of(x.scalar_type()), op, ": ", name, " must be ",
              acc_type_of(x.scalar_type()), " for ", x.scalar_type(), " input, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& scale,
                                                                 const at::Tensor& shift, int64_t groups,
                                                                 double eps, int64_t act, double alpha) {
  const char* op = "fastgan::group_norm_fwd";
  const Shape s = check_group_shape(x_in, groups, op);
  check_affine(scale, s, x_in, op, "scale");
  check_affine(shift, s, x_in, op, "shift");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = empty_in_layout(x, false, x.scalar_type());
  at::Tensor mean = at::empty({s.N, s.G}, x.options().dtype(acc_type_of(x.scalar_type())));
  at::Tensor rstd = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_fwd_cpu", [&] {
    dispatch_act(act, op, [&](auto k) {
      fwd_kernel<scalar_t, decltype(k)::value>(x, scale, shift, eps, alpha, s, y, mean, rstd);
    });
  });
  return {cl ? match_layout(y, true) : y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_bwd_cpu(const at::Tensor& gy_in, const at::Tensor& x_in,
                                                                 const at::Tensor& mean, const at::Tensor& rstd,
                                                                 const at::Tensor& scale, const at::Tensor& shift,
                                                                 int64_t groups, double eps, int64_t act,
                                                                 double alpha) {
  const char* op = "fastgan::group_norm_bwd";
  (void)eps;  // in the schema for the composite double backward, which recomputes rstd
  const Shape s = check_group_shape(x_in, groups, op);
  check_like_input(gy_in, x_in, op, "grad_y");
  check_group_stat(mean, s, x_in, op, "mean");
  check_group_stat(rstd, s, x_in, op, "rstd");
  check_affine(scale, s, x_in, op, "scale");
  check_affine(shift, s, x_in, op, "shift");
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gy = (gy_in.scalar_type() == x.scalar_type() ? gy_in : gy_in.to(x.scalar_type())).contiguous();
  at::Tensor gx = empty_in_layout(x, false, x.scalar_type());
  at::Tensor gscale = at::empty({s.N, s.C}, mean.options().dtype(at::kDouble)), gshift = at::empty_like(gscale);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_bwd_cpu", [&] {
    dispatch_act(act, op, [&](auto k) {
      bwd_kernel<scalar_t, decltype(k)::value>(gy, x, mean, rstd, scale, shift, alpha, s, gx, gscale, gshift);
    });
  });
  return {cl ? match_layout(gx, true) : gx, gscale, gshift};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("group_norm_fwd", &group_norm_fwd_cpu);
  m.impl("group_norm_bwd", &group_norm_bwd_cpu);
}

}  // namespace fastgan
