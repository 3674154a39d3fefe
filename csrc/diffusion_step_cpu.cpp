// CPU kernel of the fused DDPM/DDIM step (schema in fastgan.cpp; math and coefficients in
// fastgan/diffusion/steps.py). Per element, with the sample's coefficients k = (a_x, g, r, c_0, b_x, b_m, c_z):
// m = u + w (c - u);  x0 = clamp(a_x (x - g m) + r m);  out = c_0 x0 + b_x x + b_m m + c_z z.
// Tensors are read as flat memory in x's layout (contiguous or channels-last: the batch dimension is outermost),
// so a run of elements of one sample shares its coefficients and the inner loop is a plain vectorisable sweep.
// diffusion_step_philox draws z in the kernel: the element of logical flat index i gets word i % 4 of the
// Box-Muller pairs of Philox4x32-10(key = seed, counter = (i / 4, 0, 0)) (fastgan/diffusion/philox.py).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "convert16.h"
#include "cpu_isa.h"
#include "norm_common.h"

namespace fastgan {
namespace {

// Coefficients per sample, (a_x, g, r, c_0, b_x, b_m, c_z): NUM_COEF in fastgan/diffusion/step_kernels.py.
constexpr int64_t kNumCoef = 7;

// `t` in x's memory layout and dtype (a no-op in the usual case).
at::Tensor like(const at::Tensor& t, const at::Tensor& x, bool channels_last) {
  at::Tensor r = t.scalar_type() == x.scalar_type() ? t : t.to(x.scalar_type());
  return r.strides() == x.strides() ? r : match_layout(r, channels_last);
}

void check_stream(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), "fastgan::diffusion_step: ", name, " must have x's shape ", x.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), "fastgan::diffusion_step: ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fastgan::diffusion_step: ", name, " must be floating, got ",
              t.scalar_type());
}

// Philox4x32-10 (the Random123 round; the reference and its known-answer vectors: fastgan/diffusion/philox.py).
inline void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = uint64_t{0xD2511F53u} * c[0];
    const uint64_t p1 = uint64_t{0xCD9E8D57u} * c[2];
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c[3] ^ k1;
    c[1] = uint32_t(p1);
    c[3] = uint32_t(p0);
    c[0] = n0;
    c[2] = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// (r >> 9 + 1/2) 2^-23: exact in float, in (0, 1), the same bits as the Triton kernel and the reference.
template <typename A>
inline A uniform(uint32_t r) {
  return (A(r >> 9) + A(0.5)) * A(1.1920928955078125e-07);
}

// The normals of Philox groups j0 .. j0 + G - 1 (elements 4 j0 .. 4 (j0 + G) - 1) into dst[0 .. 4G): Philox over
// all groups first (a branch-free loop the compiler can vectorise), then Box-Muller on the word pairs (r0, r1) and
// (r2, r3) with one sincos per pair. Element 4j + h of the group is dst[4 (j - j0) + h]. This generic form (libm
// log/sin/cos) serves float64; float32 takes normal_groups_f32 below.
constexpr int64_t kGroups = 160;

template <typename A>
inline void normal_groups(uint64_t seed, int64_t j0, int64_t G, A* dst) {
  uint32_t w[4][kGroups];
  const uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
#pragma omp simd
  for (int64_t g = 0; g < G; ++g) {
    const uint64_t j = uint64_t(j0 + g);
    uint32_t c[4] = {uint32_t(j), uint32_t(j >> 32), 0u, 0u};
    philox4x32_10(c, k0, k1);
    w[0][g] = c[0];
    w[1][g] = c[1];
    w[2][g] = c[2];
    w[3][g] = c[3];
  }
  for (int64_t g = 0; g < G; ++g) {
    for (int h = 0; h < 2; ++h) {
      const A rho = std::sqrt(A(-2) * std::log(uniform<A>(w[2 * h][g])));
      const A theta = A(6.283185307179586) * uniform<A>(w[2 * h + 1][g]);
      dst[4 * g + 2 * h] = rho * std::cos(theta);
      dst[4 * g + 2 * h + 1] = rho * std::sin(theta);
    }
  }
}

// ---- float32 Box-Muller without libm calls.
// Scalar std::log/sin/cos made the noisy step 3x slower than torch.randn (which runs vectorised Sleef) + the step.
// Below, log and sincos are our own float32 polynomials written as straight-line code (integer bit tricks, selects,
// no branches and no calls), so the loops over a block of groups auto-vectorise; normal_groups_f32 is compiled for
// the baseline ISA, AVX2 and AVX-512 (cpu_isa.h). No clone enables FMA, so GCC cannot contract a*b+c and all of
// them give the same bits; so do all thread counts and layouts (the values depend only on the Philox words).
// Accuracy, measured over every uniform of the 2^23 grid against float64 log/sin/cos: see the functions; for
// z = rho cos, rho sin the max error against float64 is 6.2e-7 (1.3 ulp at |z| ~ 5), the same as with libm
// logf/cosf/sinf (tests/test_diffusion_noise.py checks a dense sample through the op).
FASTGAN_ALWAYS_INLINE float f32_from_bits(uint32_t b) {
  float f;
  __builtin_memcpy(&f, &b, 4);
  return f;
}
FASTGAN_ALWAYS_INLINE uint32_t f32_bits(float f) {
  uint32_t b;
  __builtin_memcpy(&b, &f, 4);
  return b;
}

// log(u) for a positive normal float (the kernel only sees u in [2^-24, 1 - 2^-24]). u = 2^k m with
// m in [sqrt(1/2), sqrt(2)): adding 0x3f800000 - bits(sqrt(1/2)) to u's bits carries into the exponent exactly when
// the mantissa is >= sqrt(2), which picks k; the mantissa is then rebased onto sqrt(1/2)'s exponent. With f = m - 1
// (exact), s = f / (2 + f) and log(1 + f) = 2 atanh(s) = f - (f^2/2 - s (f^2/2 + R(s^2))) the large part f is
// exact and the rounding of s only touches the corrections (< 1/4 of the result). R(z) = z (a1 + a2 z + a3 z^2 +
// a4 z^3) ~ (2 atanh(s) - 2 s) / s on |s| <= 0.1716, fitted by us (least squares on Chebyshev nodes, reweighted
// towards minimax, in float64, then rounded to float): relative error of R 2e-8, i.e. < 1e-9 of the log.
// k ln2 is added as k ln2_hi (17 significant bits: exact for |k| < 128) plus k ln2_lo. Max error 0.8 ulp of log(u)
// over the whole grid (0.5 would be correctly rounded).
FASTGAN_ALWAYS_INLINE float log_f32(float u) {
  const uint32_t ix = f32_bits(u) + (0x3f800000u - 0x3f3504f3u);
  const float k = float(int32_t(ix >> 23) - 127);
  const float f = f32_from_bits((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float R = z * (0.6666666865348816f + z * (0.3999955654144287f + z * (0.28609758615493774f +
                                                                             z * 0.21929195523262024f)));
  const float hfsq = 0.5f * f * f;
  return k * 0.693145751953125f + (f - (hfsq - (s * (hfsq + R) + k * 1.428606765330187e-06f)));
}

// sin and cos of theta in [0, 2 pi] (the kernel's theta = fl(2 pi) u <= 6.2831855). q = round(theta / (pi/2))
// in 0 .. 4 and r = theta - q pi/2 in about [-pi/4, pi/4]: r1 = theta - q P1 is exact (P1 = pi/2 to 21 bits, so
// q P1 has <= 24 bits and theta - q P1 is a multiple of theta's ulp below 1), dr = -q P2 (P2 = the float nearest
// pi/2 - P1) is ~1e-6, and the rounded r = r1 + dr only feeds the polynomials' small terms (sin's leading term
// is summed as r1 + (dr + ...), so r's rounding does not reach it). sin r = r1 + (dr + r z S(z)), cos r = 1 - (z/2 - z^2 C(z)), z = r^2,
// with S, C of degree 2 fitted by us as R above on r in [0, pi/4 + 0.01] (absolute errors 2e-9 and 1e-10).
// The quadrant is applied with selects and exact sign multiplies. Max absolute error 6e-8 (over the grid).
FASTGAN_ALWAYS_INLINE void sincos_f32(float theta, float& sin_out, float& cos_out) {
  const int32_t q = int32_t(theta * 0.636619772f + 0.5f);  // theta >= 0: truncation rounds to nearest
  const float fq = float(q);
  const float r1 = theta - fq * 1.570796012878418f;
  const float dr = -(fq * 3.1391647326017846e-07f);
  const float r = r1 + dr;
  const float z = r * r;
  const float sn = r1 + (dr + r * z * (-0.16666649281978607f + z * (0.008331908844411373f +
                                                                      z * -0.00019486852397676557f)));
  const float cs = 1.0f - (0.5f * z - z * z * (0.04166664555668831f + z * (-0.0013887288514524698f +
                                                                            z * 2.442921140755061e-05f)));
  // theta = q pi/2 + r: q = 1 gives (sin, cos) = (cos r, -sin r), q = 2 (-sin r, -cos r), q = 3 (-cos r, sin r).
  const bool swap = (q & 1) != 0;
  const float s_sign = (q & 2) != 0 ? -1.0f : 1.0f;
  const float c_sign = ((q + 1) & 2) != 0 ? -1.0f : 1.0f;
  sin_out = s_sign * (swap ? cs : sn);
  cos_out = c_sign * (swap ? sn : cs);
}

// The same numbers as normal_groups<float> (Philox words, uniforms, then Box-Muller with the polynomial log and
// sincos). Every loop runs over the G <= kGroups groups with no branches, so each vectorises on its own.
FASTGAN_ALWAYS_INLINE void normal_groups_f32_impl(uint64_t seed, int64_t j0, int64_t G, float* dst) {
  // Philox with its state in four word arrays, one lane per group: GCC vectorises the 32x32->64 products as
  // even/odd lane multiplies (vpmuludq) plus shuffles. (64-bit lanes were slower: GCC emulates a full 64-bit
  // multiply there even with masked factors.) This loop is ~2/3 of the function's time.
  const int64_t G4 = (G + 3) & ~int64_t{3};  // G rounded up to whole SSE vectors (see the sqrt below)
  alignas(64) uint32_t c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  const uint32_t key0 = uint32_t(seed), key1 = uint32_t(seed >> 32);
  for (int64_t g = 0; g < G4; ++g) {
    const uint64_t j = uint64_t(j0 + g);
    uint32_t a0 = uint32_t(j), a1 = uint32_t(j >> 32), a2 = 0u, a3 = 0u, k0 = key0, k1 = key1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const uint64_t p0 = uint64_t{0xD2511F53u} * a0;
      const uint64_t p1 = uint64_t{0xCD9E8D57u} * a2;
      const uint32_t n0 = uint32_t(p1 >> 32) ^ a1 ^ k0;
      const uint32_t n2 = uint32_t(p0 >> 32) ^ a3 ^ k1;
      a1 = uint32_t(p1);
      a3 = uint32_t(p0);
      a0 = n0;
      a2 = n2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    c0[g] = a0;
    c1[g] = a1;
    c2[g] = a2;
    c3[g] = a3;
  }
  // Box-Muller per pair (c0, c1) -> elements 0, 1 and (c2, c3) -> elements 2, 3 of each group, in the reference's
  // order of roundings: rho = sqrt(-2 log u_a), theta = fl(2 pi) * u_b (rounded to float), then rho cos, rho sin.
  alignas(64) float rr[2][kGroups], sn[2][kGroups], cs[2][kGroups];
  for (int h = 0; h < 2; ++h) {
    const uint32_t* __restrict wa = h == 0 ? c0 : c2;
    const uint32_t* __restrict wb = h == 0 ? c1 : c3;
    float* __restrict r2 = rr[h];
    float* __restrict s = sn[h];
    float* __restrict c = cs[h];
    for (int64_t g = 0; g < G4; ++g) {
      // Words >> 9 are < 2^23: the signed conversion is exact and vectorises (there is no unsigned one in AVX2).
      const float ua = (float(int32_t(wa[g] >> 9)) + 0.5f) * 1.1920928955078125e-07f;
      const float ub = (float(int32_t(wb[g] >> 9)) + 0.5f) * 1.1920928955078125e-07f;
      r2[g] = -2.0f * log_f32(ua);
      sincos_f32(6.283185307179586f * ub, s[g], c[g]);
    }
    // sqrt apart: under the default -fmath-errno GCC keeps a libm call (for errno) in std::sqrt and will not
    // vectorise a loop holding it. SSE's sqrtps is the same correctly rounded IEEE sqrt, and SSE is in every x86-64
    // baseline.
#if defined(__SSE__)
    for (int64_t g = 0; g < G4; g += 4) _mm_store_ps(r2 + g, _mm_sqrt_ps(_mm_load_ps(r2 + g)));
#else
    for (int64_t g = 0; g < G4; ++g) r2[g] = std::sqrt(r2[g]);
#endif
  }
  for (int64_t g = 0; g < G; ++g) {
    dst[4 * g] = rr[0][g] * cs[0][g];
    dst[4 * g + 1] = rr[0][g] * sn[0][g];
    dst[4 * g + 2] = rr[1][g] * cs[1][g];
    dst[4 * g + 3] = rr[1][g] * sn[1][g];
  }
}

FASTGAN_ISA_CLONES(normal_groups_f32, typename = void, (uint64_t seed, int64_t j0, int64_t G, float* dst),
                   (seed, j0, G, dst))

// The normals of logical indices [i0, i0 + len) into out (len <= 4 kGroups - 6 so the groups fit one call).
template <typename A>
inline void normal_run(uint64_t seed, int64_t i0, int64_t len, A* out) {
  A tmp[4 * kGroups];
  const int64_t j0 = i0 >> 2, j1 = (i0 + len + 3) >> 2;
  if constexpr (std::is_same<A, float>::value) {
    static const auto groups_f32 = pick_isa(&normal_groups_f32_base<>, &normal_groups_f32_avx2<>,
                                            &normal_groups_f32_avx512<>);
    groups_f32(seed, j0, j1 - j0, tmp);
  } else {
    normal_groups<A>(seed, j0, j1 - j0, tmp);
  }
  std::copy(tmp + (i0 - 4 * j0), tmp + (i0 - 4 * j0) + len, out);
}

// Where the in-kernel noise of memory offsets [p, p + len) comes from: logical index i = p (contiguous) or, for
// channels-last memory p = n CS + s C + c, i = n CS + c S + s. Depends on the offsets only, not on the threads.
struct NoiseSource {
  uint64_t seed = 0;
  bool channels_last = false;
  int64_t sample_size = 1, chans = 1, spatial = 1;

  // Memory offsets [p, p + len) lie in one sample (the step's runs never cross a sample).
  template <typename A>
  void fill(int64_t p, int64_t len, A* buf) const {
    if (!channels_last) {
      normal_run<A>(seed, p, len, buf);
      return;
    }
    // Channels-last: channel c's elements in the run are every C-th offset, at consecutive logical indices, so
    // each channel is one contiguous logical run (one Philox group per 4 elements, as contiguous memory).
    const int64_t C = chans, base = (p / sample_size) * sample_size;
    const int64_t rest = p - base, s0 = rest / C, c0 = rest - s0 * C;
    A tmp[4 * kGroups];
    for (int64_t c = 0; c < std::min(C, len); ++c) {
      const int64_t first = (c0 + c) % C;                       // channel of offset p + c
      const int64_t s = s0 + (c0 + c) / C;                      // its spatial index
      const int64_t count = (len - c + C - 1) / C;              // offsets p + c, p + c + C, ...
      normal_run<A>(seed, base + first * spatial + s, count, tmp);
      for (int64_t e = 0; e < count; ++e) buf[c + e * C] = tmp[e];
    }
  }
};

// One run of elements of one sample: its coefficients in the compute type A.
template <typename A>
struct RunCoef {
  A a_x, g, r, c_0, b_x, b_m, c_z, w, lo, hi;
};

// HAS_U / NOISE / CLIP are template parameters and the coefficients locals of the run, over restrict pointers:
// with runtime flags and by-reference constants the loop kept a branch per element and did not vectorise
// (97 us for 16x3x64x64, about twice its bytes at the measured copy rate). NOISE: 0 none, 1 read from z, 2 drawn
// (Philox, into a small per-thread buffer bp that the sweep then reads like z). 16-bit elements go through
// convert16.h so they vectorise too.
template <typename T, bool HAS_U, int NOISE, bool CLIP, typename A>
FASTGAN_ALWAYS_INLINE void step_run_impl(const T* __restrict xp, const T* __restrict mp,
                                         const T* __restrict up, const T* __restrict zp, const A* __restrict bp,
                                         T* __restrict op, int64_t len, const RunCoef<A>& k) {
  const A a_x = k.a_x, g = k.g, r = k.r, c_0 = k.c_0, c_z = k.c_z, b_x = k.b_x, b_m = k.b_m, wa = k.w, lo = k.lo,
          hi = k.hi;
  for (int64_t i = 0; i < len; ++i) {
    const A xv = load_as<A>(xp[i]);
    A mv = load_as<A>(mp[i]);
    if constexpr (HAS_U) {
      const A uv = load_as<A>(up[i]);
      mv = uv + wa * (mv - uv);
    }
    A x0 = a_x * (xv - g * mv) + r * mv;  // x - g m cancels before a_x (~2e4 near t = T) scales it
    if constexpr (CLIP) x0 = x0 < lo ? lo : (x0 > hi ? hi : x0);  // NaN compares false: stays NaN
    A o = c_0 * x0 + b_x * xv + b_m * mv;
    if constexpr (NOISE == 1) o += c_z * load_as<A>(zp[i]);
    if constexpr (NOISE == 2) o += c_z * bp[i];
    op[i] = store_as<T>(o);
  }
}

// The sweep compiled for the baseline ISA, AVX2 and AVX-512 (cpu_isa.h: no FMA, so the same bits from each).
FASTGAN_ISA_CLONES(step_run,
                   typename T FASTGAN_COMMA bool HAS_U FASTGAN_COMMA int NOISE FASTGAN_COMMA bool CLIP
                       FASTGAN_COMMA typename A,
                   (const T* xp, const T* mp, const T* up, const T* zp, const A* bp, T* op, int64_t len,
                    const RunCoef<A>& k),
                   <T FASTGAN_COMMA HAS_U FASTGAN_COMMA NOISE FASTGAN_COMMA CLIP FASTGAN_COMMA A>(xp, mp, up, zp, bp,
                                                                                        op, len, k))

template <typename T, bool HAS_U, int NOISE, bool CLIP>
void step_kernel(const T* x, const T* m, const T* u, const T* z, const NoiseSource& noise, const double* coef,
                 bool per_sample_coef, int64_t numel, int64_t per_sample, double w, double clip, T* out) {
  using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
  constexpr int64_t kChunk = 4 * kGroups - 8;
  const auto run = pick_isa(&step_run_base<T, HAS_U, NOISE, CLIP, A>, &step_run_avx2<T, HAS_U, NOISE, CLIP, A>,
                            &step_run_avx512<T, HAS_U, NOISE, CLIP, A>);
  at::parallel_for(0, numel, 32768, [&](int64_t begin, int64_t end) {
    A buf[NOISE == 2 ? kChunk : 1];
    int64_t p = begin;
    while (p < end) {
      const int64_t n = p / per_sample;
      const int64_t stop = std::min({end, (n + 1) * per_sample, NOISE == 2 ? p + kChunk : end});
      const double* k = coef + (per_sample_coef ? n * kNumCoef : 0);
      const RunCoef<A> rc{A(k[0]), A(k[1]), A(k[2]), A(k[3]), A(k[4]), A(k[5]), A(k[6]), A(w), A(-clip), A(clip)};
      const int64_t len = stop - p;
      if constexpr (NOISE == 2) noise.fill<A>(p, len, buf);
      run(x + p, m + p, HAS_U ? u + p : x + p, NOISE == 1 ? z + p : x + p, buf, out + p, len, rc);
      p = stop;
    }
  });
}

template <typename T>
void step_dispatch(const T* x, const T* m, const T* u, const T* z, const NoiseSource* noise, const double* coef,
                   bool per_sample_coef, int64_t numel, int64_t per_sample, double w, double clip, T* out) {
  const NoiseSource none;
  auto go = [&](auto has_u, auto mode, auto do_clip) {
    step_kernel<T, decltype(has_u)::value, decltype(mode)::value, decltype(do_clip)::value>(
        x, m, u, z, noise ? *noise : none, coef, per_sample_coef, numel, per_sample, w, clip, out);
  };
  auto with_clip = [&](auto has_u, auto mode) {
    if (clip > 0) {
      go(has_u, mode, std::true_type{});
    } else {
      go(has_u, mode, std::false_type{});
    }
  };
  auto with_noise = [&](auto has_u) {
    if (z != nullptr) {
      with_clip(has_u, std::integral_constant<int, 1>{});
    } else if (noise != nullptr) {
      with_clip(has_u, std::integral_constant<int, 2>{});
    } else {
      with_clip(has_u, std::integral_constant<int, 0>{});
    }
  };
  if (u != nullptr) {
    with_noise(std::true_type{});
  } else {
    with_noise(std::false_type{});
  }
}

// Shared by both ops: `noise` is the z tensor (diffusion_step) and `seed` the one-element int64 seed tensor
// (diffusion_step_philox); at most one is given.
at::Tensor run_step(const at::Tensor& x_in, const at::Tensor& m_in, const std::optional<at::Tensor>& u_in,
                    const std::optional<at::Tensor>& z_in, const at::Tensor* seed_in, const at::Tensor& coef_in,
                    double guidance, double clip) {
  TORCH_CHECK(x_in.dim() >= 1 && x_in.numel() > 0, "fastgan::diffusion_step: x must be a non-empty (N, ...) tensor, "
              "got shape ", x_in.sizes());
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), "fastgan::diffusion_step: x must be floating, got ",
              x_in.scalar_type());
  check_stream(m_in, x_in, "model_out");
  if (u_in) check_stream(*u_in, x_in, "model_out_uncond");
  if (z_in) check_stream(*z_in, x_in, "noise");
  const int64_t N = x_in.size(0);
  TORCH_CHECK(coef_in.dim() == 2 && coef_in.size(1) == kNumCoef && (coef_in.size(0) == N || coef_in.size(0) == 1),
              "fastgan::diffusion_step: coef must be (N, 7) = (", N, ", 7) or (1, 7), got ", coef_in.sizes());
  TORCH_CHECK(coef_in.device() == x_in.device(), "fastgan::diffusion_step: coef is on ", coef_in.device(),
              " but x is on ", x_in.device());
  const auto is16 = [](at::ScalarType st) { return st == at::kHalf || st == at::kBFloat16; };
  const auto other = [&](const std::optional<at::Tensor>& t) { return t && t->scalar_type() != x_in.scalar_type(); };
  if (is16(x_in.scalar_type()) && (other(m_in) || other(u_in) || other(z_in))) {
    // A stream of another dtype than 16-bit x (an fp32 model output, fp32 noise) is read in float32, as the
    // reference and the Triton kernel read it: converting it to x's dtype first would round it to 8 or 11 bits,
    // and the step's large coefficients (x0 = (x - sqrt(1 - abar) eps) / sqrt(abar)) multiply that error.
    const auto up = [](const std::optional<at::Tensor>& t) {
      return t ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
    };
    // canonical() first: the output must have the strides the fake kernel declares (x.to() of a non-dense x
    // would pick a layout of its own, e.g. channels_last).
    return run_step(canonical(x_in).to(at::kFloat), m_in.to(at::kFloat), up(u_in), up(z_in), seed_in, coef_in,
                    guidance, clip)
        .to(x_in.scalar_type());
  }
  const at::Tensor x = canonical(x_in);
  const bool cl = is_channels_last(x);
  const at::Tensor m = like(m_in, x, cl);
  const at::Tensor u = u_in ? like(*u_in, x, cl) : at::Tensor();
  const at::Tensor z = z_in ? like(*z_in, x, cl) : at::Tensor();
  const at::Tensor coef = coef_in.to(at::kDouble).contiguous();
  NoiseSource source;
  if (seed_in != nullptr) {
    TORCH_CHECK(seed_in->numel() == 1 && seed_in->scalar_type() == at::kLong && seed_in->device() == x_in.device(),
                "fastgan::diffusion_step_philox: seed must be a one-element int64 tensor on x's device, got ",
                seed_in->scalar_type(), " of shape ", seed_in->sizes(), " on ", seed_in->device());
    source.seed = uint64_t(seed_in->contiguous().data_ptr<int64_t>()[0]);  // a CPU tensor: no sync involved
    source.channels_last = cl;
    source.sample_size = x.numel() / N;
    source.chans = x.dim() > 1 ? x.size(1) : 1;
    source.spatial = source.sample_size / std::max<int64_t>(source.chans, 1);
  }
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diffusion_step_cpu", [&] {
    step_dispatch<scalar_t>(x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                          u.defined() ? u.data_ptr<scalar_t>() : nullptr, z.defined() ? z.data_ptr<scalar_t>() : nullptr,
                          seed_in != nullptr ? &source : nullptr, coef.data_ptr<double>(), coef.size(0) == N && N > 1,
                          x.numel(), x.numel() / N, guidance, clip, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor diffusion_step_cpu(const at::Tensor& x, const at::Tensor& m, const std::optional<at::Tensor>& u,
                              const std::optional<at::Tensor>& z, const at::Tensor& coef, double guidance,
                              double clip) {
  return run_step(x, m, u, z, nullptr, coef, guidance, clip);
}

at::Tensor diffusion_step_philox_cpu(const at::Tensor& x, const at::Tensor& m, const std::optional<at::Tensor>& u,
                                     const at::Tensor& seed, const at::Tensor& coef, double guidance, double clip) {
  return run_step(x, m, u, std::nullopt, &seed, coef, guidance, clip);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) {
  m.impl("diffusion_step", &diffusion_step_cpu);
  m.impl("diffusion_step_philox", &diffusion_step_philox_cpu);
}

}  // namespace fastgan
