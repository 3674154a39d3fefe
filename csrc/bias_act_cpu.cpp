// CPU kernels of fused bias + activation (schemas in fastgan.cpp; math in fastgan/ops/bias_act.py). With
// z = x + bias[c] (c = the index along `dim`), v = gain * f(z) and the clamp mask m = !(|v| > clamp):
//   fwd:   y   = clamp(v, -clamp, clamp)
//   bwd:   gx  = gy * gain * f'(z) * m
//   dbwd:  gx2 = ggx * gy * gain * f''(z) * m
// f is computed as eager PyTorch's CPU kernels do (exact erf gelu, 1 / (1 + exp(-z)) sigmoid, x / (1 + exp(-x))
// silu, std::tanh), except where eager cancels: gelu's Phi(z) is erfc(-z / sqrt2) / 2 for z < 0 rather than
// (1 + erf) / 2, tanh' = 4e / (1 + e)^2 (e = exp(-2|z|)) instead of 1 - tanh^2, and sigmoid(-z) is computed directly
// instead of 1 - sigmoid(z). The forward computes in float (double
// for double input), the two gradient kernels in double.
//
// Memory is read as it is when x is dense in any dimension order (contiguous, channels_last, transposed): then
// flat offset i = (outer * C + c) * inner + lo with inner = x.stride(dim), so the sweep is split into runs that
// share one bias value (inner > 1) or walk the bias vector (inner == 1, e.g. channels_last or (N, F) with
// dim = -1), both plain vectorisable loops. Other strides are copied to contiguous first; outputs take x's
// (dense) layout. Offsets are 64-bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "convert16.h"
#include "cpu_isa.h"
#include "vec_math.h"

#include <algorithm>
#include "bit_cast.h"
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace fastgan {
namespace {

#define FASTGAN_ALWAYS_INLINE inline __attribute__((always_inline))

enum Act : int64_t { kLinear = 0, kRelu, kLrelu, kTanh, kSigmoid, kSilu, kGelu, kNumActs };

template <typename T>
using acc_t = std::conditional_t<std::is_same<T, double>::value, double, float>;

// Whether input dtype T gets the vectorised exp/tanh (below).
template <typename T>
constexpr bool kFast = !std::is_same_v<T, double>;

// f(z), f'(z), f''(z) of each activation. NaN propagates (relu: z < 0 is false for NaN).
// FAST (every input dtype but float64): exp and tanh from vec_math.h, so the loops vectorise (libm is a call per
// element: the C++ kernel ran tanh/sigmoid/silu 5-7x slower than eager, whose math is vectorised). Float math
// uses exp_f and tanh_f (~1 ulp, as eager's Sleef exp and tanh; the gradients' tanh is tanh_d). float64 input keeps
// libm (exact to its last bit, which gradcheck and the float64 tolerance rule see), erf included.
// FMA: whether the ISA clone running the loop has FMA; then the float exp rounds its multiply-adds once
// (ExpRangeT<true>, vec_math.h).
template <bool FMA>
struct Vk {  // the vectorised exps' clamp bounds, read once per loop (vec_math.h)
  ExpRangeT<FMA> f;
  ExpRangeD d;
};
template <bool FMA>
FASTGAN_ALWAYS_INLINE Vk<FMA> vec_consts() { return Vk<FMA>{exp_range<FMA>(), exp_range_d()}; }

template <bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A exp_of(A x, const Vk<FMA>& k) {
  if constexpr (!FAST) return std::exp(x);
  else if constexpr (std::is_same_v<A, float>) return exp_f(x, k.f);
  else return exp_d(x, k.d);
}

template <bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A tanh_of(A x, const Vk<FMA>& k) {
  if constexpr (!FAST) return std::tanh(x);
  else if constexpr (std::is_same_v<A, float>) return tanh_f(x, k.f);
  else return tanh_d(x, k.d);
}

// gelu's Phi(z) and the Gaussian factor g = e^(-z^2 / 2). FAST: from the normal tail h = Phi(-|z|) (vec_math.h),
// Phi = h or 1 - h, computed in A (in float, 1/2 + z P(z^2) below |z| = 1.5); else libm's erf, as eager's float64
// kernel.
template <bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A normal_cdf(A z, A& g, const Vk<FMA>& k) {
  if constexpr (!FAST) {
    g = std::exp(A(-0.5) * z * z);
    return A(0.5) * (A(1) + std::erf(z * A(M_SQRT1_2)));
  } else {
    if constexpr (std::is_same_v<A, float>) {
      const float h = normal_tail_f(std::abs(z), g, k.f);
      const float small = normal_cdf_small_f<FMA>(z);  // the tail form's float error grows toward z = 0
      return std::abs(z) < 1.5f ? small : (z < 0.0f ? h : 1.0f - h);
    } else {
      const A h = normal_tail_d(std::abs(z), g, k.d);
      return z < A(0) ? h : A(1) - h;
    }
  }
}

template <int64_t ACT, bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A act_f(A z, A alpha, const Vk<FMA>& k) {
  if constexpr (ACT == kRelu) return z < A(0) ? A(0) : z;  // -0.0 stays -0.0, as torch.relu
  // max/min instead of a select: GCC vectorises these (the select compiled to a mispredicted branch); NaN stays NaN.
  if constexpr (ACT == kLrelu) return std::max(z, A(0)) + alpha * std::min(z, A(0));
  if constexpr (ACT == kTanh) return tanh_of<FAST>(z, k);
  if constexpr (ACT == kSigmoid) return A(1) / (A(1) + exp_of<FAST>(-z, k));
  if constexpr (ACT == kSilu) {
    const A v = z / (A(1) + exp_of<FAST>(-z, k));
    // exp_f/exp_d clamp their argument, so -inf / (1 + e^88) gave -inf; eager's -inf / (1 + inf) is NaN.
    return z == -std::numeric_limits<A>::infinity() ? std::numeric_limits<A>::quiet_NaN() : v;
  }
  if constexpr (ACT == kGelu) {
    A g;
    return z * normal_cdf<FAST>(z, g, k);
  }
  return z;
}

// sigmoid(z) and sigmoid(-z) = 1 - sigmoid(z), each to full relative precision (no 1 - s cancellation). FAST:
// e in float even where A is double (the gradients): exp_f runs twice as many lanes as exp_d, and e's relative
// error (~1 ulp of float, plus |z| ulps from rounding z) moves s and sc by far less than the output's rounding in
// absolute terms (s * sc and z * sc are where e is small); the rest of the formula stays in A.
template <bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE void sigmoid_pair(A z, A& s, A& sc, const Vk<FMA>& k) {
  const A e = FAST ? A(exp_f(float(-std::abs(z)), k.f)) : std::exp(-std::abs(z));
  const A r = A(1) / (A(1) + e);
  s = z >= A(0) ? r : e * r;
  sc = z >= A(0) ? e * r : r;
}

// 1 - tanh(z)^2 = 4 e / (1 + e)^2 with e = exp(-2|z|): no cancellation where tanh(z) is near +-1.
template <bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A sech2(A z, const Vk<FMA>& k) {
  const A e = exp_of<FAST>(A(-2) * std::abs(z), k);
  const A d = A(1) + e;
  return A(4) * e / (d * d);
}

template <int64_t ACT, bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A act_d1(A z, A alpha, const Vk<FMA>& k) {
  if constexpr (ACT == kRelu) return A(z > A(0));
  if constexpr (ACT == kLrelu) {
    const A pos = A(z > A(0));
    return pos + alpha * (A(1) - pos);  // exactly 1 or alpha
  }
  if constexpr (ACT == kTanh) return sech2<FAST>(z, k);
  if constexpr (ACT == kSigmoid || ACT == kSilu) {
    A s, sc;
    sigmoid_pair<FAST>(z, s, sc, k);
    if constexpr (ACT == kSigmoid) return s * sc;
    // z * sc is inf * e^-87 at z = +inf (exp's clamp) where eager's silu backward has inf * 0: NaN, as at -inf.
    return std::abs(z) == std::numeric_limits<A>::infinity() ? std::numeric_limits<A>::quiet_NaN()
                                                               : s * (A(1) + z * sc);
  }
  if constexpr (ACT == kGelu) {
    A g;
    const A cdf = normal_cdf<FAST>(z, g, k);
    return cdf + z * (g * A(0.5 * M_2_SQRTPI * M_SQRT1_2));
  }
  return A(1);
}

template <int64_t ACT, bool FAST, typename A, bool FMA>
FASTGAN_ALWAYS_INLINE A act_d2(A z, A alpha, const Vk<FMA>& k) {
  if constexpr (ACT == kTanh) return A(-2) * tanh_of<FAST>(z, k) * sech2<FAST>(z, k);
  if constexpr (ACT == kSigmoid || ACT == kSilu) {
    A s, sc;
    sigmoid_pair<FAST>(z, s, sc, k);
    if constexpr (ACT == kSigmoid) return s * sc * (sc - s);
    return std::abs(z) == std::numeric_limits<A>::infinity() ? std::numeric_limits<A>::quiet_NaN()
                                                               : s * sc * (A(2) + z * (sc - s));
  }
  if constexpr (ACT == kGelu) {
    // g from normal_cdf (its CDF is dead code here) rather than exp_of: exp_d's clamp made g = e^-708 at z = +-inf,
    // so f'' came out -inf where eager's 0 * inf is NaN.
    A g;
    normal_cdf<FAST>(z, g, k);
    return g * A(0.5 * M_2_SQRTPI * M_SQRT1_2) * (A(2) - z * z);
  }
  return A(0) * z;  // piecewise linear: 0 (NaN for NaN z)
}

struct Params {
  int64_t numel, C, inner;
  double alpha, gain, clamp;
};

// Calls run(i0, len, b, bstep, fma) over [begin, end): elements i0 .. i0 + len - 1 have bias b[j * bstep]; bstep
// (0 or 1) is a compile-time constant, so the loops vectorise; fma tells whether the clone has FMA (for Vk<FMA>).
// Always inlined, with run's loop, into the ISA clones below: the whole chunk is compiled for the clone's ISA, and a
// short run (channels_last with a small C) costs no call.
template <bool FMA, typename A, typename Run>
FASTGAN_ALWAYS_INLINE void chunk_runs(const Params& p, const A* bias, int64_t begin, int64_t end, const Run& run) {
  const int64_t C = p.C, inner = p.inner;
  int64_t i = begin;
  while (i < end) {
    if (inner == 1) {  // bias index walks with the offset, wrapping every C elements
      const int64_t c = i % C;
      const int64_t len = std::min(end - i, C - c);
      run(i, len, bias + c, std::integral_constant<int64_t, 1>{}, std::bool_constant<FMA>{});
      i += len;
    } else {  // a run of `inner` elements shares one channel
      const int64_t c = (i / inner) % C;
      const int64_t len = std::min(end - i, inner - i % inner);
      run(i, len, bias + c, std::integral_constant<int64_t, 0>{}, std::bool_constant<FMA>{});
      i += len;
    }
  }
}

// ISA clones of a chunk (cpu_isa.h): the baseline, AVX2 and AVX-512; every element is computed on its own (no
// reductions), so AVX2 and AVX-512 give the same bits, and so does the baseline except in the float tanh, sigmoid
// and SiLU, whose exp and tanh have FMA only in the other two (tests/test_bias_act.py::test_isa_clones_bitwise_equal).
// Eager PyTorch picks AVX2/AVX-512 kernels itself and was 2x faster than the baseline clone on in-cache tensors.
// Written out rather than FASTGAN_ISA_CLONES: the chunk takes the run functor as a template parameter.
template <typename A, typename Run>
void chunk_base(const Params& p, const A* bias, int64_t begin, int64_t end, const Run& run) {
  chunk_runs<false>(p, bias, begin, end, run);
}
template <typename A, typename Run>
FASTGAN_TARGET_AVX2 void chunk_avx2(const Params& p, const A* bias, int64_t begin, int64_t end, const Run& run) {
  chunk_runs<true>(p, bias, begin, end, run);
}
template <typename A, typename Run>
FASTGAN_TARGET_AVX512 void chunk_avx512(const Params& p, const A* bias, int64_t begin, int64_t end, const Run& run) {
  chunk_runs<true>(p, bias, begin, end, run);
}

// run over [0, numel) in parallel. VEC: whether the loop vectorises at all (all but float64 gelu, whose erf is a libm
// call per element: it gains nothing from a wider ISA and gets only the baseline clone).
template <bool VEC, typename A, typename Run>
void for_each_run(const Params& p, const A* bias, const Run& run) {
  const Isa isa = VEC ? cpu_isa() : kIsaBase;
  at::parallel_for(0, p.numel, 32768, [&](int64_t begin, int64_t end) {
    if constexpr (VEC) {
      if (isa == kIsaAvx512) return chunk_avx512(p, bias, begin, end, run);
      if (isa == kIsaAvx2) return chunk_avx2(p, bias, begin, end, run);
    }
    chunk_base(p, bias, begin, end, run);
  });
}

template <typename T, int64_t ACT, bool CLAMP>
struct FwdRun {
  using A = acc_t<T>;
  const T* x;
  T* y;
  A al, ga, cl;  // copies of the constants (registers), see GradRun
  template <int64_t BSTEP, bool FMA>
  FASTGAN_ALWAYS_INLINE void operator()(int64_t i0, int64_t len, const A* b, std::integral_constant<int64_t, BSTEP>,
                                        std::bool_constant<FMA>) const {
    const A al_ = al, ga_ = ga, cl_ = cl;
    const Vk<FMA> k = vec_consts<FMA>();
    const T* __restrict xp = x + i0;
    T* __restrict yp = y + i0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      A v = act_f<ACT, kFast<T>>(load_as<A>(xp[j]) + b[j * BSTEP], al_, k) * ga_;
      if constexpr (CLAMP) v = v < -cl_ ? -cl_ : (v > cl_ ? cl_ : v);  // NaN compares false: stays NaN
      yp[j] = store_as<T>(v);
    }
  }
};

template <typename T, int64_t ACT, bool CLAMP>
void fwd_kernel(const T* x, const acc_t<T>* bias, T* y, const Params& p) {
  using A = acc_t<T>;
  const FwdRun<T, ACT, CLAMP> run{x, y, A(p.alpha), A(p.gain), A(p.clamp)};
  for_each_run<(ACT != kGelu || kFast<T>)>(p, bias, run);
}

// MODE 1: out = g * gain * f'(z) * m; MODE 2: out = g * h * gain * f''(z) * m. Computed in double for every
// dtype: the derivative formulas chain several roundings (fp32 sech^2 and f'' were ~5 ulp off, more than eager's
// error on some inputs), and in double the one rounding left is the store.
// Piecewise-linear activations (f' constant, f'' = 0) lose nothing in float and stay vectorised, so they use
// the forward's float.
template <int64_t ACT, typename T>
using grad_acc_t = std::conditional_t<(ACT <= kLrelu), acc_t<T>, double>;

template <typename T, int64_t ACT, bool CLAMP, int MODE>
struct GradRun {
  using A = grad_acc_t<ACT, T>;
  const T* g;
  const T* h;
  const T* x;
  T* out;
  A al, ga, cl;
  template <int64_t BSTEP, bool FMA>
  FASTGAN_ALWAYS_INLINE void operator()(int64_t i0, int64_t len, const A* b, std::integral_constant<int64_t, BSTEP>,
                                        std::bool_constant<FMA>) const {
    // Constants as locals and restrict pointers, so they stay in registers. The selects below become vector
    // blends only with -fno-trapping-math (setup.py): without it the relu/lrelu backward and every clamped path
    // ran as a compare-and-branch per element (1.5-3.8 ms for 1M random floats; 0.1-0.4 ms with it).
    const A al_ = al, ga_ = ga, cl_ = cl;
    const A slope_pos = ga_, slope_neg = ACT == kRelu ? A(0) : ga_ * al_;
    const Vk<FMA> k = vec_consts<FMA>();
    const T* __restrict gp = g + i0;
    const T* __restrict hp = MODE == 2 ? h + i0 : g + i0;
    const T* __restrict xp = x + i0;
    T* __restrict op = out + i0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const A z = load_as<A>(xp[j]) + b[j * BSTEP];
      A o;
      if constexpr (MODE == 1 && (ACT == kRelu || ACT == kLrelu)) {
        o = load_as<A>(gp[j]) * (z > A(0) ? slope_pos : slope_neg);  // a select of two slopes, not gain * f'(z)
      } else if constexpr (MODE == 1) {
        o = load_as<A>(gp[j]) * (ga_ * act_d1<ACT, kFast<T>>(z, al_, k));
      } else {
        o = load_as<A>(gp[j]) * load_as<A>(hp[j]) * (ga_ * act_d2<ACT, kFast<T>>(z, al_, k));
      }
      if constexpr (CLAMP) {
        const A v = act_f<ACT, kFast<T>>(z, al_, k) * ga_;
        const A lim = v < A(0) ? -v : v;  // |v| as a select (NaN stays NaN and keeps o below)
        o = lim > cl_ ? A(0) : o;          // clamped outputs pass no gradient
      }
      op[j] = store_as<T>(o);
    }
  }
};

template <typename T, int64_t ACT, bool CLAMP, int MODE>
void grad_kernel(const T* g, const T* h, const T* x, const grad_acc_t<ACT, T>* bias, T* out, const Params& p) {
  using A = grad_acc_t<ACT, T>;
  const GradRun<T, ACT, CLAMP, MODE> run{g, h, x, out, A(p.alpha), A(p.gain), A(p.clamp)};
  for_each_run<(ACT != kGelu || kFast<T>)>(p, bias, run);
}

// Compile-time activation and clamp flag from the runtime arguments.
template <typename F>
void dispatch_act(int64_t act, bool clamp, F f) {
  auto with_clamp = [&](auto act_c) {
    if (clamp) {
      f(act_c, std::true_type{});
    } else {
      f(act_c, std::false_type{});
    }
  };
  switch (act) {
    case kLinear: return with_clamp(std::integral_constant<int64_t, kLinear>{});
    case kRelu: return with_clamp(std::integral_constant<int64_t, kRelu>{});
    case kLrelu: return with_clamp(std::integral_constant<int64_t, kLrelu>{});
    case kTanh: return with_clamp(std::integral_constant<int64_t, kTanh>{});
    case kSigmoid: return with_clamp(std::integral_constant<int64_t, kSigmoid>{});
    case kSilu: return with_clamp(std::integral_constant<int64_t, kSilu>{});
    default: return with_clamp(std::integral_constant<int64_t, kGelu>{});
  }
}

// Validates the arguments shared by the three ops; returns x ready to read (dense) and the sweep parameters.
at::Tensor check_inputs(const char* op, const at::Tensor& x_in, const std::optional<at::Tensor>& bias,
                        int64_t act, double alpha, double gain, double clamp, int64_t& dim, Params& p) {
  const auto t = x_in.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": x must be float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK(x_in.dim() >= 1, op, ": x must have at least 1 dimension, got a 0-D tensor");
  TORCH_CHECK(x_in.numel() > 0, op, ": x is empty (shape ", x_in.sizes(), ")");
  TORCH_CHECK(dim >= -x_in.dim() && dim < x_in.dim(), op, ": dim must be in [", -x_in.dim(), ", ", x_in.dim(),
              ") for ", x_in.dim(), "-D x, got ", dim);
  if (dim < 0) dim += x_in.dim();
  TORCH_CHECK(act >= 0 && act < kNumActs, op, ": act must be an activation code 0-6 (linear, relu, lrelu, tanh, ",
              "sigmoid, silu, gelu), got ", act);
  TORCH_CHECK(std::isfinite(gain) && std::isfinite(alpha), op, ": gain and alpha must be finite, got gain=", gain,
              ", alpha=", alpha);
  TORCH_CHECK(!std::isnan(clamp), op, ": clamp must be >= 0, or negative for no clamp; got nan");
  if (bias) {
    const at::Tensor& b = *bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == x_in.size(dim), op, ": bias must have shape (", x_in.size(dim),
                ",) to match x.shape[", dim, "] of x with shape ", x_in.sizes(), ", got ", b.sizes());
    TORCH_CHECK(b.device() == x_in.device(), op, ": bias is on ", b.device(), " but x is on ", x_in.device());
    TORCH_CHECK(at::isFloatingType(b.scalar_type()), op, ": bias must be floating, got ", b.scalar_type());
  }
  const at::Tensor x = x_in.is_non_overlapping_and_dense() ? x_in : x_in.contiguous();
  p.numel = x.numel();
  p.C = x.size(dim);
  p.inner = p.C == 1 ? p.numel : x.stride(dim);
  p.alpha = alpha;
  p.gain = gain;
  p.clamp = clamp;
  return x;
}

// The bias in the accumulation type: C values, tiny next to x. Without one, -0.0: x + -0.0 is x for every x, -0.0
// included (x + 0.0 turned -0.0 into +0.0, where eager, which adds nothing, keeps the sign).
template <typename A>
std::vector<A> bias_values(const std::optional<at::Tensor>& bias, int64_t C) {
  std::vector<A> out(static_cast<size_t>(C), A(-0.0));
  if (bias) {
    const at::Tensor b = bias->to(at::kDouble).contiguous();
    const double* bp = b.data_ptr<double>();
    for (int64_t c = 0; c < C; ++c) out[c] = A(bp[c]);
  }
  return out;
}

// A gradient-like input brought to x's shape, dtype and (dense) strides.
at::Tensor like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating, got ", t.scalar_type());
  if (t.scalar_type() == x.scalar_type() && t.strides() == x.strides()) return t;
  return at::empty_like(x).copy_(t);
}

at::Tensor bias_act_fwd_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& bias, int64_t act,
                            double alpha, double gain, double clamp, int64_t dim) {
  Params p;
  const at::Tensor x = check_inputs("fastgan::bias_act_fwd", x_in, bias, act, alpha, gain, clamp, dim, p);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_fwd_cpu", [&] {
    const auto b = bias_values<acc_t<scalar_t>>(bias, p.C);
    dispatch_act(act, clamp >= 0, [&](auto a, auto c) {
      fwd_kernel<scalar_t, decltype(a)::value, decltype(c)::value>(x.data_ptr<scalar_t>(), b.data(),
                                                                    y.data_ptr<scalar_t>(), p);
    });
  });
  return y;
}

at::Tensor bias_act_bwd_cpu(const at::Tensor& gy_in, const at::Tensor& x_in, const std::optional<at::Tensor>& bias,
                            int64_t act, double alpha, double gain, double clamp, int64_t dim) {
  const char* op = "fastgan::bias_act_bwd";
  Params p;
  const at::Tensor x = check_inputs(op, x_in, bias, act, alpha, gain, clamp, dim, p);
  const at::Tensor gy = like_x(gy_in, x, op, "grad_y");
  at::Tensor gx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_bwd_cpu", [&] {
    dispatch_act(act, clamp >= 0, [&](auto a, auto c) {
      const auto b = bias_values<grad_acc_t<decltype(a)::value, scalar_t>>(bias, p.C);
      grad_kernel<scalar_t, decltype(a)::value, decltype(c)::value, 1>(
          gy.data_ptr<scalar_t>(), nullptr, x.data_ptr<scalar_t>(), b.data(), gx.data_ptr<scalar_t>(), p);
    });
  });
  return gx;
}

at::Tensor bias_act_dbwd_cpu(const at::Tensor& ggx_in, const at::Tensor& gy_in, const at::Tensor& x_in,
                             const std::optional<at::Tensor>& bias, int64_t act, double alpha, double gain,
                             double clamp, int64_t dim) {
  const char* op = "fastgan::bias_act_dbwd";
  Params p;
  const at::Tensor x = check_inputs(op, x_in, bias, act, alpha, gain, clamp, dim, p);
  const at::Tensor ggx = like_x(ggx_in, x, op, "ggx");
  const at::Tensor gy = like_x(gy_in, x, op, "grad_y");
  at::Tensor gx2 = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_dbwd_cpu", [&] {
    dispatch_act(act, clamp >= 0, [&](auto a, auto c) {
      const auto b = bias_values<grad_acc_t<decltype(a)::value, scalar_t>>(bias, p.C);
      grad_kernel<scalar_t, decltype(a)::value, decltype(c)::value, 2>(
          ggx.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), b.data(),
          gx2.data_ptr<scalar_t>(), p);
    });
  });
  return gx2;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("bias_act_fwd", &bias_act_fwd_cpu);
  m.impl("bias_act_bwd", &bias_act_bwd_cpu);
  m.impl("bias_act_dbwd", &bias_act_dbwd_cpu);
}

}  // namespace fastgan
