// Inner loops of the instance-norm CPU kernels (instance_norm_cpu.cpp): the second-order coefficients and the
// per-chunk loops of the backward, double backward and channels-last forward, each compiled per ISA. Internal to
// that translation unit (an anonymous namespace).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "convert16.h"
#include "cl_moments.h"
#include "cpu_isa.h"
#include "cpu_reduce.h"

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

// ------------------------------------------------------------------------------------------------ inner loops
// Compiled for the baseline ISA, AVX2 and AVX-512, the best the CPU has picked once (cpu_isa.h: no FMA and sums in
// a fixed lane order, so every clone gives the same bits). 16-bit elements convert through convert16.h's
// vectorisable conversions (c10's operators kept these loops scalar), with the same values as c10's.
#define FASTGAN_IN_INLINE inline __attribute__((always_inline))

// Contiguous backward over n <= kChunk elements of a plane: s += {sum gy, sum gy * (x - mu)}; then the output
// gx = coef * (gy - m_g - xhat * m_gx).
template <typename T>
FASTGAN_IN_INLINE void bwd_sums_impl(const T* x, const T* gy, int64_t n, acc_of<T> mu, acc_of<T>* buf, double* s) {
  using A = acc_of<T>;
  const A *xs = widened(x, n, buf), *gs = widened(gy, n, buf + kChunk);
  s[0] += lane_sum(n, [&](int64_t i) { return static_cast<double>(gs[i]); });
  s[1] += lane_sum(n, [&](int64_t i) { return static_cast<double>(gs[i]) * (static_cast<double>(xs[i]) - mu); });
}
template <typename T>
FASTGAN_IN_INLINE void bwd_out_impl(const T* x, const T* gy, int64_t n, acc_of<T> mu, acc_of<T> r, acc_of<T> coef,
                                    acc_of<T> m_g, acc_of<T> m_gx, T* gx) {
  using A = acc_of<T>;
  for (int64_t i = 0; i < n; ++i)
    gx[i] = store_as<T>(coef * (load_as<A>(gy[i]) - m_g - (load_as<A>(x[i]) - mu) * r * m_gx));
}

// Contiguous double backward over n <= kChunk elements: sums += the five sums of dbwd_coef (with x - mu for xhat);
// then both outputs from the coefficients.
template <typename T>
FASTGAN_IN_INLINE void dbwd_sums_impl(const T* x, const T* gy, const T* v, int64_t n, acc_of<T> mu,
                                      acc_of<T>* buf, double* sums) {
  using A = acc_of<T>;
  const A* xs = widened(x, n, buf);
  const A* gs = widened(gy, n, buf + kChunk);
  const A* vs = widened(v, n, buf + 2 * kChunk);
  auto d = [](A t) { return static_cast<double>(t); };
  // Two sweeps of 3 and 2 sums: five at once would need 20 AVX2 accumulators, more than its 16 registers.
  lane_sums<3>(n, [&](int64_t i, double* t) {
    const double g = d(gs[i]);
    t[0] = g;
    t[1] = g * (d(xs[i]) - mu);
    t[2] = d(vs[i]);
  }, sums);
  lane_sums<2>(n, [&](int64_t i, double* t) {
    const double vv = d(vs[i]);
    t[0] = vv * (d(xs[i]) - mu);
    t[1] = vv * d(gs[i]);
  }, sums + 3);
}
template <typename T>
FASTGAN_IN_INLINE void dbwd_out_impl(const T* x, const T* gy, const T* v, int64_t n, const DbwdCoef<acc_of<T>>& k,
                                     T* gx2, T* ggy) {
  using A = acc_of<T>;
  for (int64_t i = 0; i < n; ++i) {
    A o1, o2;
    k.apply(load_as<A>(x[i]), load_as<A>(gy[i]), load_as<A>(v[i]), o1, o2);
    gx2[i] = store_as<T>(o1);
    ggy[i] = store_as<T>(o2);
  }
}

// Channels-last, rows [r0, r1) of one sample's (L, C) slab (pointers at the sample), inner loops along C.
// Forward statistics: cl_moments_impl and cl_channel_moments (cl_moments.h).

template <typename T>
FASTGAN_IN_INLINE void cl_fwd_out_impl(const T* x, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu,
                                       const acc_of<T>* lo, const acc_of<T>* a, const acc_of<T>* b, T* y) {
  using A = acc_of<T>;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c)
      y[r * C + c] = store_as<T>(((load_as<A>(x[r * C + c]) - mu[c]) - lo[c]) * a[c] + b[c]);
}
// Backward: a0 += sum gy, a1 += sum gy * (x - mu) per channel; then gx.
template <typename T>
FASTGAN_IN_INLINE void cl_bwd_sums_impl(const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C,
                                        const acc_of<T>* mu, double* a0, double* a1) {
  using A = acc_of<T>;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double g = load_as<A>(gy[r * C + c]);
      a0[c] += g;
      a1[c] += g * (static_cast<double>(load_as<A>(x[r * C + c])) - mu[c]);
    }
}
template <typename T>
FASTGAN_IN_INLINE void cl_bwd_out_impl(const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C,
                                       const acc_of<T>* mu, const acc_of<T>* rs, const acc_of<T>* cf,
                                       const acc_of<T>* mg, const acc_of<T>* mgx, T* gx) {
  using A = acc_of<T>;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const A xh = (load_as<A>(x[r * C + c]) - mu[c]) * rs[c];
      gx[r * C + c] = store_as<T>(cf[c] * (load_as<A>(gy[r * C + c]) - mg[c] - xh * mgx[c]));
    }
}
// Double backward: acc[q * C + c] += the five sums of dbwd_coef per channel; then both outputs.
template <typename T>
FASTGAN_IN_INLINE void cl_dbwd_sums_impl(const T* x, const T* gy, const T* v, int64_t r0, int64_t r1, int64_t C,
                                         const acc_of<T>* mu, double* acc) {
  using A = acc_of<T>;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      const double g = load_as<A>(gy[i]), vv = load_as<A>(v[i]);
      const double xc = static_cast<double>(load_as<A>(x[i])) - mu[c];
      acc[c] += g, acc[C + c] += g * xc, acc[2 * C + c] += vv, acc[3 * C + c] += vv * xc;
      acc[4 * C + c] += vv * g;
    }
}
template <typename T>
FASTGAN_IN_INLINE void cl_dbwd_out_impl(const T* x, const T* gy, const T* v, int64_t r0, int64_t r1, int64_t C,
                                        const DbwdCoef<acc_of<T>>* k, T* gx2, T* ggy) {
  using A = acc_of<T>;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      A o1, o2;
      k[c].apply(load_as<A>(x[i]), load_as<A>(gy[i]), load_as<A>(v[i]), o1, o2);
      gx2[i] = store_as<T>(o1);
      ggy[i] = store_as<T>(o2);
    }
}

FASTGAN_ISA_CLONES(bwd_sums, typename T,
                   (const T* x, const T* gy, int64_t n, acc_of<T> mu, acc_of<T>* buf, double* s),
                   <T>(x, gy, n, mu, buf, s))
FASTGAN_ISA_CLONES(bwd_out, typename T,
                   (const T* x, const T* gy, int64_t n, acc_of<T> mu, acc_of<T> r, acc_of<T> coef, acc_of<T> m_g,
                    acc_of<T> m_gx, T* gx),
                   <T>(x, gy, n, mu, r, coef, m_g, m_gx, gx))
FASTGAN_ISA_CLONES(dbwd_sums, typename T,
                   (const T* x, const T* gy, const T* v, int64_t n, acc_of<T> mu, acc_of<T>* buf, double* sums),
                   <T>(x, gy, v, n, mu, buf, sums))
FASTGAN_ISA_CLONES(dbwd_out, typename T,
                   (const T* x, const T* gy, const T* v, int64_t n, const DbwdCoef<acc_of<T>>& k, T* gx2, T* ggy),
                   <T>(x, gy, v, n, k, gx2, ggy))
FASTGAN_ISA_CLONES(cl_moments, typename T,
                   (const T* x, int64_t r0, int64_t r1, int64_t C, double* out1, double* out2),
                   <T>(x, r0, r1, C, out1, out2))
FASTGAN_ISA_CLONES(cl_fwd_out, typename T,
                   (const T* x, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu, const acc_of<T>* lo,
                    const acc_of<T>* a, const acc_of<T>* b, T* y),
                   <T>(x, r0, r1, C, mu, lo, a, b, y))
FASTGAN_ISA_CLONES(cl_bwd_sums, typename T,
                   (const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu, double* a0,
                    double* a1),
                   <T>(x, gy, r0, r1, C, mu, a0, a1))
FASTGAN_ISA_CLONES(cl_bwd_out, typename T,
                   (const T* x, const T* gy, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu,
                    const acc_of<T>* rs, const acc_of<T>* cf, const acc_of<T>* mg, const acc_of<T>* mgx, T* gx),
                   <T>(x, gy, r0, r1, C, mu, rs, cf, mg, mgx, gx))
FASTGAN_ISA_CLONES(cl_dbwd_sums, typename T,
                   (const T* x, const T* gy, const T* v, int64_t r0, int64_t r1, int64_t C, const acc_of<T>* mu,
                    double* acc),
                   <T>(x, gy, v, r0, r1, C, mu, acc))
FASTGAN_ISA_CLONES(cl_dbwd_out, typename T,
                   (const T* x, const T* gy, const T* v, int64_t r0, int64_t r1, int64_t C,
                    const DbwdCoef<acc_of<T>>* k, T* gx2, T* ggy),
                   <T>(x, gy, v, r0, r1, C, k, gx2, ggy))

#define FASTGAN_PICK(NAME) decltype(&NAME##_base<T>) NAME = pick_isa(&NAME##_base<T>, &NAME##_avx2<T>, &NAME##_avx512<T>)
template <typename T>
struct Loops {
  FASTGAN_PICK(bwd_sums);
  FASTGAN_PICK(bwd_out);
  FASTGAN_PICK(dbwd_sums);
  FASTGAN_PICK(dbwd_out);
  FASTGAN_PICK(cl_moments);
  FASTGAN_PICK(cl_fwd_out);
  FASTGAN_PICK(cl_bwd_sums);
  FASTGAN_PICK(cl_bwd_out);
  FASTGAN_PICK(cl_dbwd_sums);
  FASTGAN_PICK(cl_dbwd_out);
};
#undef FASTGAN_PICK

}  // namespace
}  // namespace fastgan
