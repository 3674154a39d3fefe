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
#include "vec_math.h"

namespace fastgan {
namespace {

#define FASTGAN_GN_INLINE inline __attribute__((always_inline))

// Activation codes shared with bias_act (fastgan/ops/bias_act_kernels.py ACT_CODES).
constexpr int kLinear = 0, kRelu = 1, kLrelu = 2, kSilu = 5;

// ------------------------------------------------------------------------------------------- elementwise math
// exp in the activation math: vec_math.h's exp_f for float, libm's exp for float64 input (to full precision).
FASTGAN_GN_INLINE float exp_a(float x, const ExpRange& er) { return exp_f(x, er); }
FASTGAN_GN_INLINE double exp_a(double x, const ExpRange&) { return std::exp(x); }

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
