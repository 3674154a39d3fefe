// Group-level constants of group norm's double backward, shared by the kernel without modulation maps
// (group_norm_dbwd_cpu.cpp) and the one with SPADE maps (group_norm_dbwd_maps_cpu.cpp). The math is in the
// "Double backward" section of fastgan/ops/group_norm_kernels.py.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "group_norm_math.h"

namespace fastgan {
namespace {

// Pass-1 sums per channel, with d = x - (stored mean), gz the cotangent reaching z, v = ggx:
//   0: sum d   1: sum gz   2: sum gz * d   3: sum v   4: sum v * d   5: sum v * gz   6: sum d^2
constexpr int kSums = 7;
// Lanes per sum in the fused sum loops: 8 doubles, so the running sums fit the vector registers (AVX2 has 16);
// the order is fixed in source, so every ISA clone sums alike.
constexpr int kDl = 8;
constexpr int64_t kDerivCap = 1 << 18;  // f', f'' of a group up to this size are kept between passes

// add(i, l) for the n elements, element i into lane l of kDl: the lane order, and so every sum, is fixed in source.
template <typename F>
FASTGAN_GN_INLINE void over_lanes(int64_t n, const F& add) {
  int64_t i = 0;
  for (; i + kDl <= n; i += kDl)
    for (int l = 0; l < kDl; ++l) add(i + l, l);
  for (int l = 0; i < n; ++i, ++l) add(i, l);
}

FASTGAN_GN_INLINE double tree8(const double* l) {
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// A channel's constants for the passes after the first: mu, r the exact mean and rstd, a = scale,
// uw = ggscale, ub = ggshift, the group means m_v, B2, A2, and g_x = r T + c0 + cx xhat.
struct DbwdCoef {
  double mu, r, a, uw, ub, m_v, B2, A2, c0, cx;
};

// What the group's last pass still needs besides the per-channel DbwdCoef: mean(T) and mean(T xhat) so far
// (before the terms through Rz) and C = mean(v * gx).
struct DbwdGroup {
  double r, mt, mtx, cc;
};

// Per group (M = Cg * L elements; a = scale, uw = ggscale, ub = ggshift per channel; xhat with the exact mean):
//   G = sum gz, Gx = sum gz xhat, V = sum v, Vx = sum v xhat, VG = sum v gz           (per channel)
//   m_h = sum_c a G / M, A2 = sum_c a Gx / M, m_v = sum_c V / M, B2 = sum_c Vx / M     (group means of h = a gz,
//   h xhat, v, v xhat), C = r (sum_c a VG / M - m_v m_h - B2 A2)                      (the mean of v * gx)
//   g_scale = r (VG - m_v G - B2 Gx) + sum Rz xhat,   g_shift = sum Rz                  (per channel)
//   mT = mean(T) = -r (m_v A2 + m_h B2) + sum_c (uw G + a sum Rz) / M
//   mTx = mean(T xhat) = -2 r A2 B2 + sum_c (uw Gx + a sum Rz xhat) / M
//   g_x = r (T - mT - xhat mTx) - r xhat C:   c0 = -r mT,  cx = -r (mTx + C)
// From the pass-1 sums of the group's channels (sums[kSums * ch + q]) and its stored mean: writes each channel's
// coef and g_scale without the Rz term (g_shift = 0), and returns the group's constants. a, uw, ub, gs, gb point
// at the group's first channel. rstd is recomputed in double from the pass's own sums: the stored float rstd's
// rounding, amplified by r^2 in the combination, was most of the error on small ill-conditioned groups.
inline DbwdGroup dbwd_group(const double* sums, int64_t Cg, double M, double eps, double stored_mu, const double* a,
                            const double* uw, const double* ub, DbwdCoef* coef, double* gs, double* gb) {
  double delta = 0, m2 = 0;
  for (int64_t ch = 0; ch < Cg; ++ch) delta += sums[kSums * ch], m2 += sums[kSums * ch + 6];
  delta /= M;
  const double r = 1.0 / std::sqrt(std::max(0.0, m2 / M - delta * delta) + eps);
  double m_h = 0, a2 = 0, m_v = 0, b2 = 0, m_vh = 0, su = 0, sux = 0;
  for (int64_t ch = 0; ch < Cg; ++ch) {
    const double* c = &sums[kSums * ch];
    const double gx = r * (c[2] - delta * c[1]);
    m_h += a[ch] * c[1], a2 += a[ch] * gx, m_v += c[3], b2 += r * (c[4] - delta * c[3]), m_vh += a[ch] * c[5];
    su += uw[ch] * c[1], sux += uw[ch] * gx;
  }
  m_h /= M, a2 /= M, m_v /= M, b2 /= M, m_vh /= M;
  for (int64_t ch = 0; ch < Cg; ++ch) {
    const double* c = &sums[kSums * ch];
    gs[ch] = r * (c[5] - m_v * c[1] - b2 * r * (c[2] - delta * c[1]));
    gb[ch] = 0.0;
    coef[ch] = DbwdCoef{stored_mu + delta, r, a[ch], uw[ch], ub[ch], m_v, b2, a2, 0.0, 0.0};
  }
  return DbwdGroup{r, -r * (m_v * a2 + m_h * b2) + su / M, -2.0 * r * a2 * b2 + sux / M,
                   r * (m_vh - m_v * m_h - b2 * a2)};
}

// Adds channel ch's Rz sums {sum Rz, sum Rz xhat} to g_scale, g_shift and the group's mean(T), mean(T xhat).
FASTGAN_GN_INLINE void dbwd_add_rz(DbwdGroup& g, const DbwdCoef& k, const double* rs, double M, double& gs,
                                   double& gb) {
  gs += rs[1];
  gb = rs[0];
  g.mt += k.a * rs[0] / M;
  g.mtx += k.a * rs[1] / M;
}

// The last pass's affine of g_x, once every Rz term is in.
FASTGAN_GN_INLINE void dbwd_finish(const DbwdGroup& g, DbwdCoef& k) {
  k.c0 = -g.r * g.mt;
  k.cx = -g.r * (g.mtx + g.cc);
}

}  // namespace
}  // namespace fastgan
