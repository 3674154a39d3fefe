// CPU kernels of the fused gradient-penalty reduction (schemas in fastgan.cpp; math in fastgan/ops/grad_penalty.py).
// With g_n the n-th sample of grad (M = numel / N elements), s_n = ||g_n||^2, r_n = ||g_n|| and t = target:
//   fwd:   p_n = (r_n - t)^2            (kind 0, two-sided: WGAN-GP, DRAGAN)
//          p_n = s_n / 2                (kind 1, R1/R2)                         norm_n = r_n (float64, saved)
//   bwd:   gx  = gp_n c_n g             c_n = 2 (r_n - t) / r_n (0 where r_n = 0), or 1 for kind 1
//   dbwd:  with d_n = <g_n, v_n>:  g_grad = gp_n (c_n v + 2 t d_n / r_n^3 g)  (kind 1: gp_n v)
//                                  g_gp_n = c_n d_n                           (kind 1: d_n)
//          (both 0 for a zero-norm sample of kind 0: the 0 subgradient of torch's vector_norm, extended).
//
// Memory: a sample must be one run of memory, which holds for any dense layout whose dim 0 is outermost
// (contiguous, channels_last, any permutation of the other dims); other strides are copied to contiguous first.
// The flat offset i then belongs to sample i / M whatever the order inside the sample, so the reductions and the
// elementwise passes walk memory linearly. Outputs take that (dense) layout. Offsets are 64-bit.
//
// Reductions (s_n, d_n): each sample is cut into chunks of kChunk elements; every (sample, chunk) is one task of
// one parallel_for (so a few large samples still use every core, and many tiny ones are batched by the grain),
// summed in double in 16 fixed lanes (lane_sum), and the partial sums of a sample are added in chunk order: the
// result does not depend on the thread count. Elementwise passes compute in double (float for 16-bit types) and
// round once on the store.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu_isa.h"
#include "cpu_reduce.h"

namespace fastgan {
namespace {

enum Kind : int64_t { kTwoSided = 0, kHalfSquare = 1 };

constexpr int64_t kChunk = 1 << 15;  // elements per reduction task (128 KiB of fp32)
constexpr int64_t kGrain = 1 << 15;  // elements per parallel range of the elementwise passes

// lane_sum (cpu_reduce.h): 16 double lanes in a fixed order (four AVX2 accumulators hide the add latency, which
// bound an 8-lane version at about eager's speed); no reassociation, same bits anywhere.

// Sums of squares and dot products of one chunk in double, the bulk of every call, and the elementwise sweep.
// Each is compiled for the baseline ISA, AVX2 and AVX-512 and picked once per process (cpu_isa.h, which also honours
// ATEN_CPU_CAPABILITY): the build has no -march flag, and in SSE2 code the float -> double conversions made the
// forward 2x slower than eager PyTorch (which dispatches to AVX2/AVX-512 kernels itself). 16-bit elements go through
// convert16.h's select-only conversions, which vectorise (c10's operators kept those loops scalar). No clone uses
// FMA and the lane order is fixed, so all three give the same bits.
//
// Sums of squares of float and 16-bit input square and add in float within blocks of 4 x 16 elements, and only
// the blocks' sums are widened into the 16 double lanes: a quarter of the conversions and double adds, which
// bound the loop on in-cache tensors (the double-only loop was 1.3-1.5x slower than eager's norm at 8x3x64x64).
// All terms are >= 0, so a block sum carries at most ~3 float roundings relative (no cancellation); the double
// accumulation across blocks keeps long samples exact to that. A chunk whose float sum is not in [2^-60, inf)
// is summed again in double: float squares overflow above ~1.8e19 (float32 and bfloat16 values reach it) and
// lose relative precision in the subnormal range below ~1e-19 (such terms are negligible only next to a sum of
// at least 2^-60); NaN takes that path too and stays NaN.
template <typename T>
FASTGAN_ALWAYS_INLINE double sumsq_double(const T* x, int64_t n) {
  return lane_sum(n, [x](int64_t i) {
    const double v = load_as<double>(x[i]);
    return v * v;
  });
}

template <typename T>
FASTGAN_ALWAYS_INLINE void chunk_sumsq_impl(const T* x, int64_t n, double* out) {
  if constexpr (std::is_same_v<T, double>) {
    *out = sumsq_double(x, n);
  } else {
    constexpr int64_t kBlock = 4 * kLanes;
    double lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kBlock <= n; i += kBlock) {
      for (int k = 0; k < kLanes; ++k) {
        const float a = load_as<float>(x[i + k]), b = load_as<float>(x[i + kLanes + k]);
        const float c = load_as<float>(x[i + 2 * kLanes + k]), d = load_as<float>(x[i + 3 * kLanes + k]);
        lanes[k] += static_cast<double>((a * a + b * b) + (c * c + d * d));
      }
    }
    for (; i < n; ++i) {
      const double v = load_as<double>(x[i]);
      lanes[i % kLanes] += v * v;
    }
    const double s = lane_tree(lanes);
    *out = (s >= 0x1p-60 && s < HUGE_VAL) ? s : sumsq_double(x, n);
  }
}

template <typename T>
FASTGAN_ALWAYS_INLINE void chunk_dot_impl(const T* x, const T* y, int64_t n, double* out) {
  *out = lane_sum(n, [x, y](int64_t i) { return load_as<double>(x[i]) * load_as<double>(y[i]); });
}

// o = a x + b y (Y false: o = a x) over one run, computed in A and rounded once on the store. float32/float64
// take A = double. 16-bit T takes A = float where the coefficients fit it (see axpby_kernel): a float result
// carries ~2^-24 relative error before the 16-bit rounding (2^-11 or 2^-8), so it rounds the same as the double
// one but where a product falls within that distance of a rounding boundary (then it is one 16-bit ulp off at
// most); in double, GCC's widening of 16-bit lanes to 64-bit ones made the half-precision sweep 4x slower than
// eager's float one.
template <typename T, bool Y, typename A>
FASTGAN_ALWAYS_INLINE void axpby_run_impl(const T* __restrict x, const T* __restrict y, T* __restrict o,
                                          int64_t len, double a, double b) {
  const A af = static_cast<A>(a), bf = static_cast<A>(b);
  for (int64_t j = 0; j < len; ++j) {
    A v = af * load_as<A>(x[j]);
    if constexpr (Y) v += bf * load_as<A>(y[j]);
    o[j] = store_as<T>(v);
  }
}

FASTGAN_ISA_CLONES(chunk_sumsq, typename T, (const T* x, int64_t n, double* out), <T>(x, n, out))
FASTGAN_ISA_CLONES(chunk_dot, typename T, (const T* x, const T* y, int64_t n, double* out), <T>(x, y, n, out))
FASTGAN_ISA_CLONES(axpby_run, typename T FASTGAN_COMMA bool Y FASTGAN_COMMA typename A,
                   (const T* x, const T* y, T* o, int64_t len, double a, double b),
                   <T FASTGAN_COMMA Y FASTGAN_COMMA A>(x, y, o, len, a, b))

// sums[n] = sum over the chunks of sample n of chunk_sum(i0, len) (flat offsets), as described in the header.
template <typename ChunkSum>
std::vector<double> per_sample_sums(int64_t N, int64_t M, ChunkSum chunk_sum) {
  const int64_t chunks = (M + kChunk - 1) / kChunk;
  const int64_t task_len = std::min(M, kChunk);
  std::vector<double> parts(static_cast<size_t>(N * chunks));
  at::parallel_for(0, N * chunks, std::max<int64_t>(1, kGrain / task_len), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / chunks, j = t % chunks;
      const int64_t i0 = n * M + j * kChunk, len = std::min(kChunk, M - j * kChunk);
      parts[t] = chunk_sum(i0, len);
    }
  });
  std::vector<double> sums(static_cast<size_t>(N), 0.0);
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t j = 0; j < chunks; ++j) s += parts[n * chunks + j];
    sums[n] = s;
  }
  return sums;
}

// run(i0, len, n) over [0, N * M) in parallel, split at sample boundaries (so coefficients are loop constants).
template <typename Run>
void for_each_run(int64_t N, int64_t M, Run run) {
  at::parallel_for(0, N * M, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t n = i / M, len = std::min(end, (n + 1) * M) - i;
      run(i, len, n);
      i += len;
    }
  });
}

template <typename T, bool Y, typename A>
auto axpby_run_for_isa() {
  return pick_isa(&axpby_run_base<T, Y, A>, &axpby_run_avx2<T, Y, A>, &axpby_run_avx512<T, Y, A>);
}

// A coefficient a float carries to full relative precision without overflow: 0, or 2^-100 < |c| < 2^100. Samples
// with a coefficient outside it take the double sweep: a bfloat16 gradient whose norm is below ~1e-30 makes
// c_n = 2 (r - t) / r overflow float, though c_n g stays below 2 |r - t| (|g_i| <= r). Within it, a float term
// overflows only where that term alone exceeds float's range (float16 values are < 2^16; a bfloat16 ggx above
// 2^28), and the double result would round to inf there too unless the other term cancelled it.
inline bool float_safe(double c) {
  const double m = std::fabs(c);
  return m == 0.0 || (m > 0x1p-100 && m < 0x1p100);
}

// out = a_n x + b_n y over every sample n (y, b may be null: out = a_n x), rounded once on the store.
template <typename T>
void axpby_kernel(int64_t N, int64_t M, const double* a, const double* b, const T* x, const T* y, T* out) {
  using Fast = std::conditional_t<sizeof(T) == 2, float, double>;
  const auto fast = y == nullptr ? axpby_run_for_isa<T, false, Fast>() : axpby_run_for_isa<T, true, Fast>();
  const auto exact = y == nullptr ? axpby_run_for_isa<T, false, double>() : axpby_run_for_isa<T, true, double>();
  for_each_run(N, M, [&](int64_t i0, int64_t len, int64_t n) {
    const double bn = b ? b[n] : 0.0;
    const auto run = float_safe(a[n]) && float_safe(bn) ? fast : exact;
    run(x + i0, y == nullptr ? nullptr : y + i0, out + i0, len, a[n], bn);
  });
}

// c_n of the header (NaN stays NaN: only an exact zero norm takes the subgradient 0).
inline double coef_c(int64_t kind, double r, double t) {
  if (kind == kHalfSquare) return 1.0;
  return r == 0.0 ? 0.0 : 2.0 * (r - t) / r;
}

// grad validated and made sample-major (see the header); N and M out.
at::Tensor check_grad(const char* op, const at::Tensor& g, int64_t kind, double target, int64_t& N, int64_t& M) {
  const auto t = g.scalar_type();
  TORCH_CHECK(g.dim() >= 1, op, ": grad must have a batch dimension (N, ...), got a 0-D tensor");
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
              ": grad must be float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK(g.numel() > 0, op, ": grad is empty (shape ", g.sizes(), ")");
  TORCH_CHECK(kind == kTwoSided || kind == kHalfSquare, op,
              ": kind must be 0 (two-sided, wgan-gp/dragan) or 1 (half squared norm, r1/r2), got ", kind);
  TORCH_CHECK(std::isfinite(target), op, ": target must be finite, got ", target);
  N = g.size(0);
  M = g.numel() / N;
  const bool sample_major = g.is_non_overlapping_and_dense() && (N == 1 || g.stride(0) == M);
  return sample_major ? g : g.contiguous();
}

// A per-sample (N,) input as N doubles.
std::vector<double> per_sample_values(const char* op, const char* name, const at::Tensor& t, const at::Tensor& g,
                                      int64_t N) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N, op, ": ", name, " must have shape (", N, ",), got ", t.sizes());
  TORCH_CHECK(t.device() == g.device(), op, ": ", name, " is on ", t.device(), " but grad is on ", g.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating, got ", t.scalar_type());
  const at::Tensor d = t.to(at::kDouble).contiguous();  // upstream (N,) gradients are often expanded views
  const double* p = d.data_ptr<double>();
  return std::vector<double>(p, p + N);
}

// A grad-shaped input in g's dtype and strides.
at::Tensor like_grad(const char* op, const char* name, const at::Tensor& t, const at::Tensor& g) {
  TORCH_CHECK(t.sizes() == g.sizes(), op, ": ", name, " must have grad's shape ", g.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == g.device(), op, ": ", name, " is on ", t.device(), " but grad is on ", g.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating, got ", t.scalar_type());
  if (t.scalar_type() == g.scalar_type() && t.strides() == g.strides()) return t;
  return at::empty_like(g).copy_(t);
}

std::tuple<at::Tensor, at::Tensor> grad_penalty_fwd_cpu(const at::Tensor& grad_in, int64_t kind, double target) {
  int64_t N, M;
  const at::Tensor g = check_grad("fastgan::grad_penalty_fwd", grad_in, kind, target, N, M);
  at::Tensor p = at::empty({N}, g.options());
  at::Tensor norm = at::empty({N}, g.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_penalty_fwd_cpu", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const auto sumsq = pick_isa(&chunk_sumsq_base<scalar_t>, &chunk_sumsq_avx2<scalar_t>,
                                &chunk_sumsq_avx512<scalar_t>);
    const auto sums = per_sample_sums(N, M, [gp, sumsq](int64_t i0, int64_t len) {
      double s;
      sumsq(gp + i0, len, &s);
      return s;
    });
    scalar_t* pp = p.data_ptr<scalar_t>();
    double* np = norm.data_ptr<double>();
    for (int64_t n = 0; n < N; ++n) {
      const double r = std::sqrt(sums[n]);
      np[n] = r;
      pp[n] = static_cast<scalar_t>(kind == kHalfSquare ? 0.5 * sums[n] : (r - target) * (r - target));
    }
  });
  return {p, norm};
}

at::Tensor grad_penalty_bwd_cpu(const at::Tensor& gp_in, const at::Tensor& grad_in, const at::Tensor& norm_in,
                                int64_t kind, double target) {
  const char* op = "fastgan::grad_penalty_bwd";
  int64_t N, M;
  const at::Tensor g = check_grad(op, grad_in, kind, target, N, M);
  const auto gp = per_sample_values(op, "gp", gp_in, g, N);
  const auto norm = per_sample_values(op, "norm", norm_in, g, N);
  std::vector<double> a(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) a[n] = gp[n] * coef_c(kind, norm[n], target);
  at::Tensor gx = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_penalty_bwd_cpu", [&] {
    axpby_kernel<scalar_t>(N, M, a.data(), nullptr, g.data_ptr<scalar_t>(), nullptr, gx.data_ptr<scalar_t>());
  });
  return gx;
}

std::tuple<at::Tensor, at::Tensor> grad_penalty_dbwd_cpu(const at::Tensor& v_in, const at::Tensor& gp_in,
                                                         const at::Tensor& grad_in, const at::Tensor& norm_in,
                                                         int64_t kind, double target) {
  const char* op = "fastgan::grad_penalty_dbwd";
  int64_t N, M;
  const at::Tensor g = check_grad(op, grad_in, kind, target, N, M);
  const at::Tensor v = like_grad(op, "ggx", v_in, g);
  const auto gp = per_sample_values(op, "gp", gp_in, g, N);
  const auto norm = per_sample_values(op, "norm", norm_in, g, N);
  at::Tensor g_grad = at::empty_like(g);
  at::Tensor g_gp = at::empty({N}, gp_in.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "grad_penalty_dbwd_cpu", [&] {
    const scalar_t* gsrc = g.data_ptr<scalar_t>();
    const scalar_t* vsrc = v.data_ptr<scalar_t>();
    const auto dot = pick_isa(&chunk_dot_base<scalar_t>, &chunk_dot_avx2<scalar_t>, &chunk_dot_avx512<scalar_t>);
    const auto dots = per_sample_sums(N, M, [gsrc, vsrc, dot](int64_t i0, int64_t len) {
      double d;
      dot(gsrc + i0, vsrc + i0, len, &d);
      return d;
    });
    std::vector<double> a(static_cast<size_t>(N)), b(static_cast<size_t>(N)), ggp(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) {
      const double r = norm[n], c = coef_c(kind, r, target);
      a[n] = gp[n] * c;
      b[n] = (kind == kHalfSquare || r == 0.0) ? 0.0 : gp[n] * 2.0 * target * dots[n] / (r * r * r);
      ggp[n] = c * dots[n];
    }
    axpby_kernel<scalar_t>(N, M, a.data(), b.data(), vsrc, gsrc, g_grad.data_ptr<scalar_t>());
    double* o = g_gp.data_ptr<double>();
    for (int64_t n = 0; n < N; ++n) o[n] = ggp[n];
  });
  return {g_grad, g_gp.to(gp_in.scalar_type())};  // N values: one rounding to gp's dtype
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("grad_penalty_fwd", &grad_penalty_fwd_cpu);
  m.impl("grad_penalty_bwd", &grad_penalty_bwd_cpu);
  m.impl("grad_penalty_dbwd", &grad_penalty_dbwd_cpu);
}

}  // namespace fastgan
