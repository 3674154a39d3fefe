// Elementwise math that GCC vectorises (no libm call per element), shared by the CPU kernels: exp, tanh and the
// normal tail (erfc) in float, and the same in double to ~1e-12 relative (for results rounded to float or 16-bit).
// libm's exp/tanh/erf are a call per element, so a loop over them stays scalar; with these the ISA clones
// (cpu_isa.h) run them 8 or 16 lanes wide. Only +, -, *, / and selects, none contracted to FMA, so every clone gives
// the same bits; exp_f, tanh_f and normal_tail_f with an ExpRangeT<true> (FMA written out, for the clones that have
// it) are the exception.
#pragma once

#include <algorithm>
#include "bit_cast.h"
#include <cmath>
#include <cstdint>

namespace fastgan {
namespace {

#define FASTGAN_VEC_INLINE inline __attribute__((always_inline))

// Clamp bounds of the exps, read from volatile storage once per loop rather than written as literals: with
// literal bounds GCC threads the clamped case into a constant e^88 and computes z / (1 + e^88) for every element
// before blending; that quotient is a denormal for |z| < ~40, and the microcode assists made a SiLU loop 20x
// slower (1.9 ms instead of ~0.1 ms for 2x128x32x32 on one core), whichever of ?: or std::min/max was written.
// FMA: whether the loop that reads them runs in an ISA clone with FMA; exp_f then rounds its multiply-adds once.
template <bool FMA = false>
struct ExpRangeT {
  float lo, hi;
};
using ExpRange = ExpRangeT<false>;
struct ExpRangeD {
  double lo, hi;
};
inline volatile float g_exp_lo = -87.0f, g_exp_hi = 88.0f;
inline volatile double g_exp_lo_d = -708.0, g_exp_hi_d = 709.0;
template <bool FMA = false>
FASTGAN_VEC_INLINE ExpRangeT<FMA> exp_range() { return ExpRangeT<FMA>{g_exp_lo, g_exp_hi}; }
FASTGAN_VEC_INLINE ExpRangeD exp_range_d() { return ExpRangeD{g_exp_lo_d, g_exp_hi_d}; }

// a * b + c, rounded once (FMA) or twice. The build never contracts a * b + c by itself (cpu_isa.h), so FMA is
// chosen in source, per ISA clone: true only where the clone's target has the FMA extension (in a baseline clone
// __builtin_fmaf is a libm call per element, ~12x slower than the two roundings).
template <bool FMA>
FASTGAN_VEC_INLINE float mul_add(float a, float b, float c) {
  if constexpr (FMA) return __builtin_fmaf(a, b, c);
  else return a * b + c;
}

// exp(x) in float: x = k ln2 + r (Cody-Waite, k rounded by the 1.5 * 2^23 trick), Cephes' degree-6 polynomial for
// e^r (max error ~1 ulp, as Sleef's expf_u10 that eager uses), 2^k put into the exponent bits. x is clamped to
// [-87, 88] so that 2^k stays a normal float: e^-87 ~ 1.6e-38 and e^88 ~ 1.7e38 stand in for 0 and inf, which
// changes silu and its derivative by under 1e-36 absolute. NaN passes through (the clamps compare false, and the
// polynomial of NaN is NaN). FMA (mul_add) changes the last bit of some results, not the error bound; it ran a SiLU
// loop's math 1.6x faster with AVX-512.
template <bool FMA>
FASTGAN_VEC_INLINE float exp_f(float x, const ExpRangeT<FMA>& er) {
  x = std::min(std::max(x, er.lo), er.hi);
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold round(x / ln2)
  const float t = mul_add<FMA>(x, 1.44269504088896341f, kMagic);
  const float k = t - kMagic;
  float r = mul_add<FMA>(k, -0.693359375f, x);  // k * C1 is exact (C1 has 9 significant bits)
  r = mul_add<FMA>(k, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = mul_add<FMA>(p, r, 1.3981999507e-3f);
  p = mul_add<FMA>(p, r, 8.3334519073e-3f);
  p = mul_add<FMA>(p, r, 4.1665795894e-2f);
  p = mul_add<FMA>(p, r, 1.6666665459e-1f);
  p = mul_add<FMA>(p, r, 5.0000001201e-1f);
  const float e_r = mul_add<FMA>(p, r * r, r) + 1.0f;
  // k + 127 into the exponent field (unsigned: no UB on NaN input)
  const uint32_t bits = (fastgan::bit_cast<uint32_t>(t) - 0x4B400000u + 127u) << 23;
  return e_r * fastgan::bit_cast<float>(bits);
}

// exp(x) in double, for results that end up rounded to float (the kernels keep libm for float64 input):
// x = k ln2 + r with |r| <= ln2 / 2 (ln2 split into 21 + 53 bits, so k * hi is exact for any k in range), e^r by
// its Taylor series to r^10 (the first term left out is below 3e-13 relative: a 2e5th of a float ulp; measured
// max error 3e-13), 2^k into the exponent bits through 64-bit integer ops (vectorised by AVX2, unlike a double ->
// int64 conversion). x is clamped to [-708, 709]: 2^k stays normal; e^-708 ~ 3e-308 stands in for 0. NaN passes
// through.
FASTGAN_VEC_INLINE double exp_d(double x, const ExpRangeD& er) {
  x = std::min(std::max(x, er.lo), er.hi);
  constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.4426950408889634 + kMagic;
  const double k = t - kMagic;
  const double r = (x - k * 0.6931467056274414) - k * 4.7493250390316726e-07;
  double p = 1.0 / 3628800.0;  // 1 / 10!
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  const double e_r = p * (r * r) + r + 1.0;
  const uint64_t bits = (fastgan::bit_cast<uint64_t>(t) - fastgan::bit_cast<uint64_t>(kMagic) + 1023u) << 52;
  return e_r * fastgan::bit_cast<double>(bits);
}

// tanh(x) in float, within 1.02 ulp (measured; eager's Sleef tanhf_u10: 0.57 on the same inputs): below |x| = 1
// the odd polynomial x + x^3 P(x^2), P of degree 7 fitted to tanh's relative error there (0.77 ulp; 0.94 in the
// baseline clone, which rounds its multiply-adds twice), above it 1 - 2e / (1 + e) with e = e^(-2|x|) <= 0.14 (no
// cancellation). e^-87 stands in for 0 past |x| = 43.5 (exp_f's clamp), where tanh rounds to +-1 anyway. NaN in,
// NaN out.
template <bool FMA>
FASTGAN_VEC_INLINE float tanh_f(float x, const ExpRangeT<FMA>& er) {
  const float ax = std::abs(x);
  const float e = exp_f(-2.0f * ax, er);
  const float big = 1.0f - 2.0f * e / (1.0f + e);
  const float w = x * x;
  float p = 1.2039187276968732e-4f;
  p = mul_add<FMA>(p, w, -8.367857662960887e-4f);
  p = mul_add<FMA>(p, w, 3.071458777412772e-3f);
  p = mul_add<FMA>(p, w, -8.589019067585468e-3f);
  p = mul_add<FMA>(p, w, 2.178184688091278e-2f);
  p = mul_add<FMA>(p, w, -5.395236238837242e-2f);
  p = mul_add<FMA>(p, w, 1.3333190977573395e-1f);
  p = mul_add<FMA>(p, w, -3.33333283662796e-1f);
  const float small = mul_add<FMA>(ax * w, p, ax);
  return std::copysign(ax < 1.0f ? small : big, x);
}

// tanh(x) in double: sign(x) (1 - e) / (1 + e) with e = e^(-2|x|), whose 1 - e loses at most (exp_d's error) /
// (2|x|) relative, so below |x| = 2^-6 the odd Taylor series to x^9 instead (next term < 1e-19 relative there).
FASTGAN_VEC_INLINE double tanh_d(double x, const ExpRangeD& er) {
  const double ax = std::abs(x);
  const double e = exp_d(-2.0 * ax, er);
  const double big = (1.0 - e) / (1.0 + e);
  const double x2 = x * x;
  const double small = x + x * x2 * (-1.0 / 3 + x2 * (2.0 / 15 + x2 * (-17.0 / 315 + x2 * (62.0 / 2835))));
  return std::copysign(ax < 0.015625 ? std::abs(small) : big, x);  // NaN in, NaN out
}

// The standard normal's lower tail h = Phi(-a) at a >= 0 (for gelu, a = |z| and Phi(z) = h or 1 - h), to full
// relative precision: no 1 + erf cancellation, which leaves eager's float gelu 100% off below z ~ -5.5. Also sets
// g = e^(-a^2 / 2), the normal density's factor, which the gradients need. With u = a / sqrt2, 2h = erfc(u) =
// t g Q(t), t = 1 / (1 + 5u/16) and Q a polynomial in x = (142 t - 87) / 55, interpolated at Chebyshev nodes for u in
// [0, 11] by tools/fit_gelu_cdf.py: in double of degree 14 (6.6e-13, for results rounded to float); in float of
// degree 10 (1.2e-9 with exact coefficients, 2.4-3.3 ulps with float ones and arithmetic for a > 1.5, and up to ~6
// near a = 0, where Q amplifies t's rounding: normal_cdf_small_f covers |z| < 1.5). Far out the exponent a^2 / 2,
// rounded to half an ulp of itself, dominates: the float gelu measured 12.3 ulps to z = -5 and 68 at z = -12.5
// (Phi ~ 1e-36); splitting a^2 into hi + lo with an FMA fixed that but cost 10% of the loop. One division and one
// exp, so the loops vectorise, where libm's erf is a call per element (the kernel ran gelu at 0.13x eager). g is 0
// where -a^2 / 2 is below the exp's clamp (float: a > 13.2, where gelu is a denormal under 6e-39 or zero; eager
// gives 0 too), not the clamp's e^-87 stand-in, which would leave a spurious tail. NaN in, NaN out.
template <bool FMA>
FASTGAN_VEC_INLINE float normal_tail_f(float a, float& g, const ExpRangeT<FMA>& er) {
  const float t = 1.0f / mul_add<FMA>(a, 0.2209708691207961f, 1.0f);  // 5 / (16 sqrt2)
  const float x = mul_add<FMA>(t, 2.581818181818182f, -1.5818181818181818f);
  float q = 3.031734593343629e-06f;
  q = mul_add<FMA>(q, x, 8.990962530380912e-06f);
  q = mul_add<FMA>(q, x, -4.250262553186475e-05f);
  q = mul_add<FMA>(q, x, -0.00024044231500728637f);
  q = mul_add<FMA>(q, x, 8.901753618661177e-05f);
  q = mul_add<FMA>(q, x, 0.004892573128120175f);
  q = mul_add<FMA>(q, x, 0.024975719967477383f);
  q = mul_add<FMA>(q, x, 0.07769091126085811f);
  q = mul_add<FMA>(q, x, 0.17542849693315085f);
  q = mul_add<FMA>(q, x, 0.3043128977725185f);
  q = mul_add<FMA>(q, x, 0.4128813062885946f);
  const float e = -0.5f * (a * a);
  g = e < er.lo ? 0.0f : exp_f(e, er);
  return 0.5f * t * g * q;
}

FASTGAN_VEC_INLINE double normal_tail_d(double a, double& g, const ExpRangeD& er) {
  const double t = 1.0 / (a * 0.22097086912079608 + 1.0);
  const double x = t * 2.581818181818182 - 1.5818181818181818;
  double q = 1.7023611932673516e-08;
  q = q * x + 3.482892786273796e-08;
  q = q * x + -2.8381648982612397e-07;
  q = q * x + -5.689899175245446e-07;
  q = q * x + 3.7303042605680663e-06;
  q = q * x + 1.0388072318476272e-05;
  q = q * x + -4.31748670736679e-05;
  q = q * x + -0.00024178556529025295;
  q = q * x + 8.930634513703771e-05;
  q = q * x + 0.004893149970222723;
  q = q * x + 0.024975668861928757;
  q = q * x + 0.07769080920694506;
  q = q * x + 0.17542849947960945;
  q = q * x + 0.3043129028574958;
  q = q * x + 0.41288130628859426;
  const double e = -0.5 * (a * a);
  g = e < er.lo ? 0.0 : exp_d(e, er);
  return 0.5 * t * g * q;
}

// Phi(z) for |z| < 1.5 in float: 1/2 + z P(z^2), P(s) = erf(sqrt(s/2)) / (2 sqrt s) of degree 7, interpolated at
// Chebyshev nodes of s in [0, 2.25] (tools/fit_gelu_cdf.py; 9e-11 relative, ~1.7 ulps in float arithmetic). Exact
// 1/2 at z = 0 and within a few ulps where the tail form's Q amplifies t's rounding (7.8 ulps near 0; eager 1.6).
template <bool FMA>
FASTGAN_VEC_INLINE float normal_cdf_small_f(float z) {
  const float s = z * z;
  float p = -2.5314708773483076e-08f;
  p = mul_add<FMA>(p, s, 6.127693397109196e-07f);
  p = mul_add<FMA>(p, s, -9.34772334231218e-06f);
  p = mul_add<FMA>(p, s, 0.00011533497175857129f);
  p = mul_add<FMA>(p, s, -0.0011872719588870298f);
  p = mul_add<FMA>(p, s, 0.009973541329341168f);
  p = mul_add<FMA>(p, s, -0.06649037839457818f);
  p = mul_add<FMA>(p, s, 0.3989422803720631f);
  return mul_add<FMA>(z, p, 0.5f);
}

}  // namespace
}  // namespace fastgan
