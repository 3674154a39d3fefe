// CPU kernels of group norm with a per-(n, c) affine and a fused activation (math: fastgan/ops/group_norm_kernels.py).
//
// Work unit: a (n, g) group, which for contiguous input is one run of M = (C/G)*L elements (channel after
// channel), i.e. an instance-norm "plane" whose affine changes every L elements. Groups run in parallel with
// at::parallel_for, each task doing its statistics pass and its output pass back to back so the group (up to a few
// hundred KiB) stays in L2. When there are fewer groups than threads (N*G small, groups large) a group is split
// into channel runs instead: partial sums per run in one parallel region, a merge per group, the output pass in a
// second region (the instance-norm kernel's channels-last scheme). Inputs under kSerial elements run on the
// calling thread: an OpenMP region costs more than the work there, and far more on a busy machine.
// Channels-last input without modulation maps runs the channels-last kernels (group_norm_cl_cpu.cpp); other
// strided inputs, and channels-last with maps, are copied to contiguous first and the outputs copied back.
// Optional per-element modulation maps gamma, beta (SPADE; both or neither, x's shape and dtype): the output is
// f(u), u = z + z * gamma + beta with z the affine-normalised value (MOD template flag), and the backward also
// writes d/dgamma = gu * z and, for a non-linear f, d/dbeta = gu (gu = gy * f'(u); for linear f d/dbeta is gy
// itself, which the caller uses without a copy).
//
// Speed: the inner loops are small functions compiled for the baseline ISA (the build has no -march), AVX2 and
// AVX-512, the best the CPU has picked once (cpu_isa.h: no FMA, fixed summation order, so every clone gives the
// same bits). The AVX-512 clone took the SiLU forward of 2x512x64x64 from 6.5 to 4.4 ms on one core, below eager's
// group_norm + silu (5.5-5.7 ms), whose kernels are AVX-512 too. 16-bit elements go through convert16.h's
// select-only conversions (through c10's operators those loops stayed scalar). SiLU's exp is exp_f below, a
// Cephes-style float exp written so that GCC vectorises it (libm's expf is a call per element: that alone made
// the forward 3-5x slower than eager, whose exp is vectorised).
//
// Precision: statistics per 4096-element chunk as a mean and then centred squares, in double, merged with Chan's
// formula (no precision lost to a large mean offset); backward sums in double, as eager does on CPU. The
// backward's output combination cancels (gx is the projection of h off 1 and xhat), so it runs in double too:
// in float its roundings were up to 3x eager's error on small groups. Elementwise activation math is in float.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "convert16.h"
#include "group_norm_api.h"
#include "group_norm_math.h"
#include "norm_common.h"

namespace fastgan {
namespace {

constexpr int64_t kGzCap = 1 << 18;     // backward keeps a group's gz (<= 1 MiB float) instead of recomputing it

// ------------------------------------------------------------------------------------------- inner loops
// Moments of x[0, n) merged into m, chunk by chunk. Float and 16-bit input: one pass over the chunk summing
// d = x - K and d^2 in double with K the chunk's first value, then M2 = S2 - S1^2 / k. The subtraction cancels by
// the factor (mean - K)^2 / var + 1, which is at most k for any data (|x_i - mean| <= sqrt(k) std), so at worst
// 12 of double's 53 bits go: far below float's 24. A second pass (mean, then centred squares) made the statistics
// two thirds of a bfloat16 forward. Double input keeps the two passes (its result has to be exact to double).
template <typename T>
FASTGAN_GN_INLINE void moments_impl(const T* x, int64_t n, Moments* m) {
  using A = acc_of<T>;
  A buf[sizeof(T) == 2 ? kChunk : 1];
  for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
    const int64_t k = std::min(kChunk, n - r0);
    const A* v = widened(x + r0, k, buf);
    if constexpr (std::is_same_v<A, float>) {
      const double shift = v[0];  // lanes as lane_sum's: fixed order, two AVX-512 accumulators per sum
      double s1[kLanes] = {}, s2[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= k; i += kLanes)
        for (int l = 0; l < kLanes; ++l) {
          const double d = static_cast<double>(v[i + l]) - shift;
          s1[l] += d;
          s2[l] += d * d;
        }
      for (; i < k; ++i) {
        const double d = static_cast<double>(v[i]) - shift;
        s1[i % kLanes] += d;
        s2[i % kLanes] += d * d;
      }
      const double sum1 = lane_tree(s1), sum2 = lane_tree(s2), dm = sum1 / k;
      m->merge(static_cast<double>(k), shift + dm, std::max(0.0, sum2 - sum1 * dm));
    } else {
      const double cm = lane_sum(k, [&](int64_t i) { return static_cast<double>(v[i]); }) / k;
      const double cm2 = lane_sum(k, [&](int64_t i) {
        const double d = static_cast<double>(v[i]) - cm;
        return d * d;
      });
      m->merge(static_cast<double>(k), cm, cm2);
    }
  }
}

// y = f(((x - mu_hi) - mu_lo) * a + b): the mean as hi + lo keeps x - mean exact-ish when |mean| >> std.
// With MOD: u = z + z * gm + bm (z * (1 + gm) without rounding 1 + gm), y = f(u).
template <bool FMA, typename T, int ACT, bool MOD>
FASTGAN_GN_INLINE void fwd_out_impl(const T* x, int64_t n, acc_of<T> mu_hi, acc_of<T> mu_lo, acc_of<T> a,
                                    acc_of<T> b, acc_of<T> al, const T* gm, const T* bm, T* y) {
  using A = acc_of<T>;
  const ExpRangeT<FMA> er = exp_range<FMA>();
  for (int64_t i = 0; i < n; ++i) {
    A z = ((load_as<A>(x[i]) - mu_hi) - mu_lo) * a + b;
    if constexpr (MOD) z = (z + z * load_as<A>(gm[i])) + load_as<A>(bm[i]);
    y[i] = store_as<T>(act_f<ACT>(z, al, er));
  }
}

// gz = gy * f'(z) into gz[0, n) (n <= kChunk); s += {sum gz, sum gz * (x - mu), sum (x - mu)} in double.
// With MOD, gz is the gradient of z: gu = gy * f'(u), gz = gu + gu * gm; and when ggm is given (the pass that
// writes outputs) also ggm = gu * z and, for non-linear f, gbm = gu.
template <bool FMA, typename T, int ACT, bool MOD>
FASTGAN_GN_INLINE void bwd_sums_impl(const T* x, const T* gy, int64_t n, acc_of<T> mu, acc_of<T> r, acc_of<T> a,
                                     acc_of<T> b, acc_of<T> al, const T* gm, const T* bm, T* ggm, T* gbm,
                                     acc_of<T>* gz, double* s) {
  using A = acc_of<T>;
  const A ra = r * a;
  const ExpRangeT<FMA> er = exp_range<FMA>();
  if constexpr (!MOD) {
    for (int64_t i = 0; i < n; ++i) {
      const A g = load_as<A>(gy[i]);
      gz[i] = ACT == kLinear ? g : g * act_d1<ACT>((load_as<A>(x[i]) - mu) * ra + b, al, er);
    }
  } else if (ggm == nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const A z = (load_as<A>(x[i]) - mu) * ra + b, gmi = load_as<A>(gm[i]);
      A gu = load_as<A>(gy[i]);
      if constexpr (ACT != kLinear) gu = gu * act_d1<ACT>((z + z * gmi) + load_as<A>(bm[i]), al, er);
      gz[i] = gu + gu * gmi;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const A z = (load_as<A>(x[i]) - mu) * ra + b, gmi = load_as<A>(gm[i]);
      A gu = load_as<A>(gy[i]);
      if constexpr (ACT != kLinear) {
        gu = gu * act_d1<ACT>((z + z * gmi) + load_as<A>(bm[i]), al, er);
        gbm[i] = store_as<T>(gu);
      }
      ggm[i] = store_as<T>(gu * z);
      gz[i] = gu + gu * gmi;
    }
  }
  A buf[sizeof(T) == 2 ? kChunk : 1];
  const A* xa = widened(x, n, buf);
  lane_sums<3>(n, [&](int64_t i, double* v) {
    const double g = static_cast<double>(gz[i]), d = static_cast<double>(xa[i]) - mu;
    v[0] = g;
    v[1] = g * d;
    v[2] = d;
  }, s);
}

// gx = r * (a * gz - m_h - xhat * m_hx), xhat = (x - mean) * r, combined in double (see the header).
template <typename T>
FASTGAN_GN_INLINE void bwd_out_impl(const T* x, const acc_of<T>* gz, int64_t n, double mu, double r, double a,
                                    double m_h, double m_hx, T* gx) {
  using A = acc_of<T>;
  for (int64_t i = 0; i < n; ++i) {
    const double xh = (static_cast<double>(load_as<A>(x[i])) - mu) * r;
    gx[i] = store_as<T>(static_cast<A>(r * (a * static_cast<double>(gz[i]) - m_h - xh * m_hx)));
  }
}

// Each inner loop three times, for the baseline ISA, AVX2 and AVX-512 (same bits, but for SiLU's exp: cpu_isa.h).
FASTGAN_ISA_CLONES(moments, typename T, (const T* x, int64_t n, Moments* m), <T>(x, n, m))
FASTGAN_ISA_CLONES_FMA(fwd_out, typename T FASTGAN_COMMA int ACT FASTGAN_COMMA bool MOD,
                       (const T* x, int64_t n, acc_of<T> mh, acc_of<T> ml, acc_of<T> a, acc_of<T> b, acc_of<T> al,
                        const T* gm, const T* bm, T* y),
                       T FASTGAN_COMMA ACT FASTGAN_COMMA MOD, (x, n, mh, ml, a, b, al, gm, bm, y))
FASTGAN_ISA_CLONES_FMA(bwd_sums, typename T FASTGAN_COMMA int ACT FASTGAN_COMMA bool MOD,
                       (const T* x, const T* gy, int64_t n, acc_of<T> mu, acc_of<T> r, acc_of<T> a, acc_of<T> b,
                        acc_of<T> al, const T* gm, const T* bm, T* ggm, T* gbm, acc_of<T>* gz, double* s),
                       T FASTGAN_COMMA ACT FASTGAN_COMMA MOD, (x, gy, n, mu, r, a, b, al, gm, bm, ggm, gbm, gz, s))
FASTGAN_ISA_CLONES(bwd_out, typename T,
                   (const T* x, const acc_of<T>* gz, int64_t n, double mu, double r, double a, double m_h,
                    double m_hx, T* gx),
                   <T>(x, gz, n, mu, r, a, m_h, m_hx, gx))

template <typename T, int ACT, bool MOD>
struct Loops {
  decltype(&moments_base<T>) moments = pick_isa(&moments_base<T>, &moments_avx2<T>, &moments_avx512<T>);
  decltype(&fwd_out_base<T, ACT, MOD>) fwd_out =
      pick_isa(&fwd_out_base<T, ACT, MOD>, &fwd_out_avx2<T, ACT, MOD>, &fwd_out_avx512<T, ACT, MOD>);
  decltype(&bwd_sums_base<T, ACT, MOD>) bwd_sums =
      pick_isa(&bwd_sums_base<T, ACT, MOD>, &bwd_sums_avx2<T, ACT, MOD>, &bwd_sums_avx512<T, ACT, MOD>);
  decltype(&bwd_out_base<T>) bwd_out = pick_isa(&bwd_out_base<T>, &bwd_out_avx2<T>, &bwd_out_avx512<T>);
};

// ------------------------------------------------------------------------------------------- work split
// Groups (fused statistics + output per task) unless there are fewer groups than threads and enough work to
// share: then pieces of at most kChunk elements within a channel run, in two parallel regions.
bool split_groups(const Shape& s) {
  const int64_t threads = at::get_num_threads();
  return threads > 1 && s.N * s.G < threads && s.N * s.C * s.L > kSerial && !at::in_parallel_region();
}

// Pieces of the split path: piece q is elements [j0, j1) of channel run nc (= n*C + c).
struct Pieces {
  int64_t L, per_run, len;
  explicit Pieces(int64_t L_) : L(L_), per_run((L_ + kChunk - 1) / kChunk), len(std::min(L_, kChunk)) {}
  void at(int64_t q, int64_t& nc, int64_t& j0, int64_t& j1) const {
    nc = q / per_run;
    j0 = (q % per_run) * kChunk;
    j1 = std::min(L, j0 + kChunk);
  }
};

// ------------------------------------------------------------------------------------------------- forward
// mean, var over the group; y = f((x - mean) * (rstd * scale[n, c]) + shift[n, c]).
template <typename T, int ACT, bool MOD>
void fwd_kernel(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& gamma,
                const at::Tensor& beta, double eps, double alpha, const Shape& s, at::Tensor& y, at::Tensor& mean,
                at::Tensor& rstd) {
  using A = acc_of<T>;
  const Loops<T, ACT, MOD> k;
  const T* xp = x.data_ptr<T>();
  const T* gmp = MOD ? gamma.data_ptr<T>() : nullptr;
  const T* bmp = MOD ? beta.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const A al = static_cast<A>(alpha);
  std::vector<A> mean_lo(static_cast<size_t>(s.N * s.G));
  auto finish = [&](int64_t p, const Moments& m) {
    mp[p] = static_cast<A>(m.mean);
    mean_lo[p] = static_cast<A>(m.mean - static_cast<double>(mp[p]));
    rp[p] = static_cast<A>(1.0 / std::sqrt(m.m2 / s.M + eps));
  };
  // Elements [j0, j1) of channel run nc; the group's rstd times scale[nc] is the channel's multiplier.
  auto emit = [&](int64_t nc, int64_t j0, int64_t j1) {
    const int64_t p = nc / s.Cg;
    const A a = static_cast<A>(sp[nc] * static_cast<double>(rp[p])), b = static_cast<A>(bp[nc]);
    const int64_t o = nc * s.L + j0;
    k.fwd_out(xp + o, j1 - j0, mp[p], mean_lo[p], a, b, al, MOD ? gmp + o : nullptr, MOD ? bmp + o : nullptr,
              yp + o);
  };
  if (!split_groups(s)) {
    run_tasks(s.N * s.G, s.M, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        Moments m;
        k.moments(xp + p * s.M, s.M, &m);  // a group is one contiguous run
        finish(p, m);
        for (int64_t ch = 0; ch < s.Cg; ++ch) emit(p * s.Cg + ch, 0, s.L);
      }
    });
    return;
  }
  const Pieces pc(s.L);
  const int64_t count = s.N * s.C * pc.per_run;
  std::vector<Moments> parts(static_cast<size_t>(count));
  at::parallel_for(0, count, std::max<int64_t>(1, kTaskElems / pc.len), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      int64_t nc, j0, j1;
      pc.at(q, nc, j0, j1);
      k.moments(xp + nc * s.L + j0, j1 - j0, &parts[q]);
    }
  });
  for (int64_t p = 0; p < s.N * s.G; ++p) {
    Moments m;
    for (int64_t q = p * s.Cg * pc.per_run; q < (p + 1) * s.Cg * pc.per_run; ++q)
      m.merge(parts[q].count, parts[q].mean, parts[q].m2);
    finish(p, m);
  }
  at::parallel_for(0, count, std::max<int64_t>(1, kTaskElems / pc.len), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      int64_t nc, j0, j1;
      pc.at(q, nc, j0, j1);
      emit(nc, j0, j1);
    }
  });
}

// ------------------------------------------------------------------------------------------------ backward
// gz = gy * f'(z); gscale = sum_L gz*xhat, gshift = sum_L gz per channel; with h = scale * gz and group means
// m_h, m_hx of h and h*xhat: gx = rstd * (h - m_h - xhat * m_hx). The group sums follow from the per-channel
// ones (sum h = sum_c scale_c * gshift_c, sum h*xhat = sum_c scale_c * gscale_c), so one reduction pass. On the
// group path gz is kept for the output pass (per thread, groups up to kGzCap elements) rather than recomputed:
// SiLU's exp twice per element was a third of the backward.
template <typename T, int ACT, bool MOD>
void bwd_kernel(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                const at::Tensor& scale, const at::Tensor& shift, const at::Tensor& gamma, const at::Tensor& beta,
                double alpha, const Shape& s, at::Tensor& gx, at::Tensor& gscale, at::Tensor& gshift,
                at::Tensor& ggamma, at::Tensor& gbeta) {
  using A = acc_of<T>;
  const Loops<T, ACT, MOD> k;
  const T* gmp = MOD ? gamma.data_ptr<T>() : nullptr;
  const T* bmp = MOD ? beta.data_ptr<T>() : nullptr;
  T* ggmp = MOD ? ggamma.data_ptr<T>() : nullptr;
  T* gbmp = MOD && ACT != kLinear ? gbeta.data_ptr<T>() : nullptr;
  const T *xp = x.data_ptr<T>(), *gp = gy.data_ptr<T>();
  T* gxp = gx.data_ptr<T>();
  const A *mp = mean.data_ptr<A>(), *rp = rstd.data_ptr<A>();
  const double *sp = scale.data_ptr<double>(), *bp = shift.data_ptr<double>();
  double *gsp = gscale.data_ptr<double>(), *gbp = gshift.data_ptr<double>();
  const A al = static_cast<A>(alpha);
  // gz of elements [j0, j1) of channel run nc into gz; their three sums added to sums; with write, the map
  // gradients too (each element is written by exactly one call).
  auto sums_of = [&](int64_t nc, int64_t j0, int64_t j1, A* gz, double* sums, bool write) {
    const int64_t p = nc / s.Cg, o = nc * s.L + j0;
    k.bwd_sums(xp + o, gp + o, j1 - j0, mp[p], rp[p], static_cast<A>(sp[nc]), static_cast<A>(bp[nc]), al,
               MOD ? gmp + o : nullptr, MOD ? bmp + o : nullptr, MOD && write ? ggmp + o : nullptr,
               gbmp && write ? gbmp + o : nullptr, gz, sums);
  };
  auto finish = [&](int64_t p, const double* sums) {
    return group_coef(p, sums, s, static_cast<double>(mp[p]), rp[p], sp, gsp, gbp);
  };
  auto emit = [&](int64_t nc, int64_t j0, int64_t j1, const A* gz, const GroupCoef& c) {
    const int64_t o = nc * s.L + j0;
    k.bwd_out(xp + o, gz, j1 - j0, c.mu, rp[nc / s.Cg], sp[nc], c.m_h, c.m_hx, gxp + o);
  };
  if (!split_groups(s)) {
    const bool keep = s.M <= kGzCap;
    run_tasks(s.N * s.G, s.M, [&](int64_t begin, int64_t end) {
      A* gz = scratch<A>(keep ? s.M : kChunk);
      std::vector<double> sums(static_cast<size_t>(3 * s.Cg));
      for (int64_t p = begin; p < end; ++p) {
        std::fill(sums.begin(), sums.end(), 0.0);
        for (int64_t ch = 0; ch < s.Cg; ++ch)
          for (int64_t j0 = 0; j0 < s.L; j0 += kChunk)
            sums_of(p * s.Cg + ch, j0, std::min(s.L, j0 + kChunk), keep ? gz + ch * s.L + j0 : gz, &sums[3 * ch],
                    keep);
        const GroupCoef c = finish(p, sums.data());
        double unused[3] = {0, 0, 0};
        for (int64_t ch = 0; ch < s.Cg; ++ch)
          for (int64_t j0 = 0; j0 < s.L; j0 += kChunk) {
            const int64_t nc = p * s.Cg + ch, j1 = std::min(s.L, j0 + kChunk);
            if (!keep) sums_of(nc, j0, j1, gz, unused, true);
            emit(nc, j0, j1, keep ? gz + ch * s.L + j0 : gz, c);
          }
      }
    });
    return;
  }
  // Split path: sums per piece, merged per channel in piece order; the output pass recomputes gz.
  const Pieces pc(s.L);
  const int64_t count = s.N * s.C * pc.per_run, grain = std::max<int64_t>(1, kTaskElems / pc.len);
  std::vector<double> parts(static_cast<size_t>(3 * count), 0.0);
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    A* gz = scratch<A>(kChunk);
    for (int64_t q = begin; q < end; ++q) {
      int64_t nc, j0, j1;
      pc.at(q, nc, j0, j1);
      sums_of(nc, j0, j1, gz, &parts[3 * q], false);
    }
  });
  std::vector<GroupCoef> coefs(static_cast<size_t>(s.N * s.G));
  std::vector<double> sums(static_cast<size_t>(3 * s.Cg));
  for (int64_t p = 0; p < s.N * s.G; ++p) {
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t ch = 0; ch < s.Cg; ++ch)
      for (int64_t j = 0; j < pc.per_run; ++j)
        for (int v = 0; v < 3; ++v) sums[3 * ch + v] += parts[3 * ((p * s.Cg + ch) * pc.per_run + j) + v];
    coefs[p] = finish(p, sums.data());
  }
  at::parallel_for(0, count, grain, [&](int64_t begin, int64_t end) {
    A* gz = scratch<A>(kChunk);
    double unused[3] = {0, 0, 0};
    for (int64_t q = begin; q < end; ++q) {
      int64_t nc, j0, j1;
      pc.at(q, nc, j0, j1);
      sums_of(nc, j0, j1, gz, unused, true);
      emit(nc, j0, j1, gz, coefs[nc / s.Cg]);
    }
  });
}

// gamma and beta: both or neither; x's shape, dtype and device. Returned contiguous (copied when x is not:
// the kernels index them like x's contiguous copy). Returns whether they are present.
bool check_maps(const std::optional<at::Tensor>& gamma, const std::optional<at::Tensor>& beta, const at::Tensor& x,
                const char* op, at::Tensor& g_out, at::Tensor& b_out) {
  TORCH_CHECK(gamma.has_value() == beta.has_value(), op, ": gamma and beta must be given together (pass zeros for "
              "the missing one), got only ", gamma.has_value() ? "gamma" : "beta");
  if (!gamma.has_value()) return false;
  for (const auto* t : {&*gamma, &*beta}) {
    const char* name = t == &*gamma ? "gamma" : "beta";
    check_like_input(*t, x, op, name);
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have x's dtype ", x.scalar_type(),
                ", got ", t->scalar_type());
  }
  g_out = gamma->contiguous();
  b_out = beta->contiguous();
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& scale,
                                                                 const at::Tensor& shift,
                                                                 const std::optional<at::Tensor>& gamma_in,
                                                                 const std::optional<at::Tensor>& beta_in,
                                                                 int64_t groups, double eps, int64_t act,
                                                                 double alpha) {
  const char* op = "fastgan::group_norm_fwd";
  const Shape s = check_group_shape(x_in, groups, op);
  check_affine(scale, s, x_in, op, "scale");
  check_affine(shift, s, x_in, op, "shift");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  at::Tensor gamma, beta;
  const bool mod = check_maps(gamma_in, beta_in, x_in, op, gamma, beta);
  const bool cl = is_channels_last(x_in);
  at::Tensor mean = at::empty({s.N, s.G}, x_in.options().dtype(acc_type_of(x_in.scalar_type())));
  at::Tensor rstd = at::empty_like(mean);
  if (cl && !mod) {
    at::Tensor y = empty_in_layout(x_in, true, x_in.scalar_type());
    group_norm_fwd_cl(x_in, scale, shift, groups, eps, act, alpha, y, mean, rstd);
    return {y, mean, rstd};
  }
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = empty_in_layout(x, false, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_fwd_cpu", [&] {
    dispatch_act(act, op, [&](auto k) {
      constexpr int kAct = decltype(k)::value;
      if (mod) fwd_kernel<scalar_t, kAct, true>(x, scale, shift, gamma, beta, eps, alpha, s, y, mean, rstd);
      else fwd_kernel<scalar_t, kAct, false>(x, scale, shift, gamma, beta, eps, alpha, s, y, mean, rstd);
    });
  });
  return {cl ? match_layout(y, true) : y, mean, rstd};
}

using Tensor5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// (gx, gscale, gshift, ggamma, gbeta); ggamma, gbeta are empty (0 elements) without maps, and gbeta is empty for
// linear act too (it equals grad_y).
Tensor5 group_norm_bwd_cpu(const at::Tensor& gy_in, const at::Tensor& x_in, const at::Tensor& mean,
                           const at::Tensor& rstd, const at::Tensor& scale, const at::Tensor& shift,
                           const std::optional<at::Tensor>& gamma_in, const std::optional<at::Tensor>& beta_in,
                           int64_t groups, double eps, int64_t act, double alpha) {
  const char* op = "fastgan::group_norm_bwd";
  (void)eps;  // in the schema for the composite double backward, which recomputes rstd
  const Shape s = check_group_shape(x_in, groups, op);
  check_like_input(gy_in, x_in, op, "grad_y");
  check_group_stat(mean, s, x_in, op, "mean");
  check_group_stat(rstd, s, x_in, op, "rstd");
  check_affine(scale, s, x_in, op, "scale");
  check_affine(shift, s, x_in, op, "shift");
  at::Tensor gamma, beta;
  const bool mod = check_maps(gamma_in, beta_in, x_in, op, gamma, beta);
  const bool cl = is_channels_last(x_in);
  const at::Tensor gy_t = gy_in.scalar_type() == x_in.scalar_type() ? gy_in : gy_in.to(x_in.scalar_type());
  at::Tensor gscale = at::empty({s.N, s.C}, mean.options().dtype(at::kDouble)), gshift = at::empty_like(gscale);
  if (cl && !mod) {
    at::Tensor gx = empty_in_layout(x_in, true, x_in.scalar_type());
    group_norm_bwd_cl(match_layout(gy_t, true), x_in, mean, rstd, scale, shift, groups, act, alpha, gx, gscale,
                      gshift);
    return {gx, gscale, gshift, x_in.new_empty({0}), x_in.new_empty({0})};
  }
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gy = gy_t.contiguous();
  at::Tensor gx = empty_in_layout(x, false, x.scalar_type());
  at::Tensor ggamma = mod ? empty_in_layout(x, false, x.scalar_type()) : x.new_empty({0});
  at::Tensor gbeta = mod && act != kLinear ? empty_in_layout(x, false, x.scalar_type()) : x.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_bwd_cpu", [&] {
    dispatch_act(act, op, [&](auto k) {
      if (mod)
        bwd_kernel<scalar_t, decltype(k)::value, true>(gy, x, mean, rstd, scale, shift, gamma, beta, alpha, s, gx,
                                                       gscale, gshift, ggamma, gbeta);
      else
        bwd_kernel<scalar_t, decltype(k)::value, false>(gy, x, mean, rstd, scale, shift, gamma, beta, alpha, s, gx,
                                                        gscale, gshift, ggamma, gbeta);
    });
  });
  auto back = [&](const at::Tensor& t) { return cl && t.numel() ? match_layout(t, true) : t; };
  return {back(gx), gscale, gshift, back(ggamma), back(gbeta)};
}

}  // namespace

void group_norm_fwd_contiguous(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, int64_t groups,
                               double eps, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd) {
  const Shape s = check_group_shape(x, groups, "fastgan::group_norm_fwd");
  const at::Tensor none;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "group_norm_fwd_contiguous", [&] {
    fwd_kernel<scalar_t, kLinear, false>(x, scale, shift, none, none, eps, 0.0, s, y, mean, rstd);
  });
}

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("group_norm_fwd", &group_norm_fwd_cpu);
  m.impl("group_norm_bwd", &group_norm_bwd_cpu);
}

}  // namespace fastgan
