// Shared pieces of the group-norm CPU kernels (group_norm_cpu.cpp: contiguous; group_norm_cl_cpu.cpp:
// channels-last): elementwise activation math, lane sums, Chan moments, the shape, the backward's group constants.
// Internal to those translation units (an anonymous namespace: each gets its own copy).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu_isa.h"
#include "cpu_reduce.h"

namespace fastgan {
namespace {

#define FASTGAN_GN_INLINE inline __attribute__((always_inline))

// Activation codes shared with bias_act (fastgan/ops/bias_act_kernels.py ACT_CODES).
constexpr int kLinear = 0, kRelu = 1, kLrelu = 2, kSilu = 5;

// ------------------------------------------------------------------------------------------- elementwise math
// exp(x) in float without a libm call, so that loops over it vectorise: x = k ln2 + r (Cody-Waite, k rounded by
// the 1.5 * 2^23 trick), Cephes' degree-6 polynomial for e^r (max error ~1 ulp, as Sleef's expf_u10 eager uses),
// and 2^k put into the exponent bits. x is clamped to [-87, 88] so that 2^k stays a normal float: e^-87 ~ 1.6e-38
// and e^88 ~ 1.7e38 stand in for 0 and inf, which changes silu and its derivative by under 1e-36 absolute. NaN
// passes through (the clamps compare false, and the polynomial of NaN is NaN).
// The clamp bounds come in as run-time values (ExpRange, read from volatile storage once per loop): with literal
// bounds GCC threads the clamped case into a constant e^88 and computes z / (1 + e^88) for every element before
// blending; that quotient is a denormal for |z| < ~40, and the microcode assists made the SiLU forward 20x slower
// (1.9 ms instead of ~0.1 ms for 2x128x32x32 on one core), whichever of ?: or std::min/max was written.
struct ExpRange {
  float lo, hi;
};
inline volatile float g_exp_lo = -87.0f, g_exp_hi = 88.0f;
FASTGAN_GN_INLINE ExpRange exp_range() { return ExpRange{g_exp_lo, g_exp_hi}; }

FASTGAN_GN_INLINE float exp_f(float x, const ExpRange& er) {
  x = std::min(std::max(x, er.lo), er.hi);
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold round(x / ln2)
  const float t = x * 1.44269504088896341f + kMagic;
  const float k = t - kMagic;
  float r = x - k * 0.693359375f;  // k * C1 is exact (C1 has 9 significant bits)
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e_r = p * (r * r) + r + 1.0f;
  uint32_t bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits = (bits - 0x4B400000u + 127u) << 23;  // k + 127 into the exponent field (unsigned: no UB on NaN input)
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  return e_r * two_k;
}

FASTGAN_GN_INLINE float exp_a(float x, const ExpRange& er) { return exp_f(x, er); }
FASTGAN_GN_INLINE double exp_a(double x, const ExpRange&) { return std::exp(x); }  // float64 input: libm's exp, to full precision

// f(z). NaN propagates through relu/lrelu (`z < 0` is false for NaN), as in torch. SiLU as eager's CPU kernel
// writes it: z / (1 + exp(-z)).
template <int ACT, typename A>
FASTGAN_GN_INLINE A act_f(A z, A alpha, const ExpRange& er) {
  if constexpr (ACT == kRelu) return z < A(0) ? A(0) : z;
  else if constexpr (ACT == kLrelu) return z < A(0) ? z * alpha : z;
  else if constexpr (ACT == kSilu) return z / (A(1) + exp_a(-z, er));
  else return z;
}

// f'(z); at z = 0 relu's is 0 and lrelu's alpha, as torch's backward has them. SiLU: s (1 + z (1 - s)) with
// 1 - s = sigmoid(-z) = e * s computed directly (no cancellation where s is near 1; eager's 1 - s loses bits there).
template <int ACT, typename A>
FASTGAN_GN_INLINE A act_d1(A z, A alpha, const ExpRange& er) {
  if constexpr (ACT == kRelu) return z > A(0) ? A(1) : A(0);
  else if constexpr (ACT == kLrelu) return z > A(0) ? A(1) : alpha;
  else if constexpr (ACT == kSilu) {
    const A e = exp_a(-z, er);
    const A s = A(1) / (A(1) + e);
    return s * (A(1) + z * (e * s));
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

struct Shape {
  int64_t N, C, G, Cg, L, M;  // M = Cg * L elements per group
};

// The backward's constants of group p from its channels' sums[3 * ch + {0, 1, 2}] = sum gz, sum gz * (x - mean),
// sum (x - mean), with mean the stored (rounded) group mean: writes gscale = sum gz * xhat and gshift = sum gz per
// channel; returns the exact mean (stored + delta: delta corrects every x - mean; on small groups of close values
// rstd is large and the stored mean's rounding showed in gscale, up to 8x eager's error) and the group means
// m_h = mean(scale * gz), m_hx = mean(scale * gz * xhat).
struct GroupCoef {
  double mu, m_h, m_hx;
};
inline GroupCoef group_coef(int64_t p, const double* sums, const Shape& s, double stored_mean, double r,
                            const double* scale, double* gscale, double* gshift) {
  double sx = 0;
  for (int64_t ch = 0; ch < s.Cg; ++ch) sx += sums[3 * ch + 2];
  const double delta = sx / s.M;
  double h = 0, hx = 0;
  for (int64_t ch = 0; ch < s.Cg; ++ch) {
    const int64_t nc = p * s.Cg + ch;
    const double sg = sums[3 * ch], sgx = (sums[3 * ch + 1] - delta * sg) * r;  // sum(gz * xhat), exact mean
    gscale[nc] = sgx;
    gshift[nc] = sg;
    h += scale[nc] * sg;
    hx += scale[nc] * sgx;
  }
  return GroupCoef{stored_mean + delta, h / s.M, hx / s.M};
}

}  // namespace
}  // namespace fastgan
