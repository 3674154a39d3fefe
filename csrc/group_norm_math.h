// Shared pieces of the group-norm CPU kernels (group_norm_cpu.cpp: contiguous; group_norm_cl_cpu.cpp:
// channels-last; group_norm_dbwd_cpu.cpp: double backward): elementwise activation math, the shape, the
// backward's group constants, the argument checks. Internal to those translation units (an anonymous namespace:
// each gets its own copy).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_isa.h"
#include "cpu_reduce.h"
#include "norm_common.h"
#include "vec_math.h"

namespace fastgan {
namespace {

#define FASTGAN_GN_INLINE inline __attribute__((always_inline))

// Activation codes shared with bias_act (fastgan/ops/bias_act_kernels.py ACT_CODES).
constexpr int kLinear = 0, kRelu = 1, kLrelu = 2, kSilu = 5;

constexpr int64_t kChunk = 4096;        // elements per statistics chunk / scratch chunk
constexpr int64_t kSerial = 1 << 15;    // inputs up to this many elements run on the calling thread
constexpr int64_t kTaskElems = 1 << 15; // elements per parallel task (grain) at least

// ------------------------------------------------------------------------------------------- elementwise math
// exp in the activation math: vec_math.h's exp_f for float, libm's exp for float64 input (to full precision).
// FMA (the range's type, see vec_math.h): the loop runs in an ISA clone with FMA, so exp_f rounds its
// multiply-adds once.
template <bool FMA>
FASTGAN_GN_INLINE float exp_a(float x, const ExpRangeT<FMA>& er) { return exp_f(x, er); }
template <bool FMA>
FASTGAN_GN_INLINE double exp_a(double x, const ExpRangeT<FMA>&) { return std::exp(x); }

// f(z). NaN propagates through relu/lrelu (`z < 0` is false for NaN), as in torch. SiLU as eager's CPU kernel
// writes it: z / (1 + exp(-z)).
template <int ACT, typename A, bool FMA>
FASTGAN_GN_INLINE A act_f(A z, A alpha, const ExpRangeT<FMA>& er) {
  if constexpr (ACT == kRelu) return z < A(0) ? A(0) : z;
  else if constexpr (ACT == kLrelu) return z < A(0) ? z * alpha : z;
  else if constexpr (ACT == kSilu) return z / (A(1) + exp_a(-z, er));
  else return z;
}

// sigmoid(z) and 1 - sigmoid(z) = sigmoid(-z), each to full relative precision (no cancellation where s is near 1;
// eager's 1 - s loses bits there) and finite for every finite z: from e = exp(-|z|), which cannot overflow (a
// double exp(-z) is inf below z = -709, and inf * 0 made f' NaN there). NaN stays NaN.
template <typename A, bool FMA>
FASTGAN_GN_INLINE void sigmoid_pair(A z, const ExpRangeT<FMA>& er, A& s, A& sm) {
  const bool neg = z < A(0);
  const A e = exp_a(neg ? z : -z, er);
  const A r = A(1) / (A(1) + e);
  s = neg ? e * r : r;
  sm = neg ? r : e * r;
}

// f'(z); at z = 0 relu's is 0 and lrelu's alpha, as torch's backward has them. SiLU: s (1 + z (1 - s)).
template <int ACT, typename A, bool FMA>
FASTGAN_GN_INLINE A act_d1(A z, A alpha, const ExpRangeT<FMA>& er) {
  if constexpr (ACT == kRelu) return z > A(0) ? A(1) : A(0);
  else if constexpr (ACT == kLrelu) return z > A(0) ? A(1) : alpha;
  else if constexpr (ACT == kSilu) {
    A s, sm;
    sigmoid_pair(z, er, s, sm);
    return s * (A(1) + z * sm);
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

// ------------------------------------------------------------------------------------------- work split
// Per-thread scratch, kept between calls: a fresh 1 MiB vector per task was an mmap + page faults every call.
template <typename A>
A* scratch(int64_t n) {
  thread_local std::vector<A> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

// f(begin, end) over [0, count) tasks of about `elems` elements each: on this thread for small inputs.
template <typename F>
void run_tasks(int64_t count, int64_t elems, const F& f) {
  if (count * elems <= kSerial) {
    f(0, count);
    return;
  }
  at::parallel_for(0, count, std::max<int64_t>(1, kTaskElems / std::max<int64_t>(1, elems)), f);
}

// ------------------------------------------------------------------------------------------- argument checks
inline Shape check_group_shape(const at::Tensor& x, int64_t groups, const char* op) {
  const PlaneShape ps = check_norm_input(x, op, "x");
  TORCH_CHECK(groups >= 1 && ps.C % groups == 0, op, ": num_groups must divide the ", ps.C,
              " channels of x, got num_groups=", groups);
  return Shape{ps.N, ps.C, groups, ps.C / groups, ps.L, (ps.C / groups) * ps.L};
}

// The folded affine: (N, C) float64 whatever x's dtype (the fold of weight, bias, scale, shift and the gradients
// back through it cancel; float64 keeps them exact to the kernels' precision), contiguous, on x's device.
inline void check_affine(const at::Tensor& t, const Shape& s, const at::Tensor& x, const char* op,
                         const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.N && t.size(1) == s.C, op, ": ", name, " must have shape (", s.N,
              ", ", s.C, "), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == at::kDouble, op, ": ", name, " must be float64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_group_stat(const at::Tensor& t, const Shape& s, const at::Tensor& x, const char* op,
                             const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.N && t.size(1) == s.G, op, ": ", name, " must have shape (", s.N,
              ", ", s.G, "), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == acc_type_of(x.scalar_type()), op, ": ", name, " must be ",
              acc_type_of(x.scalar_type()), " for ", x.scalar_type(), " input, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace
}  // namespace fastgan
