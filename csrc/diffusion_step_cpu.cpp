// CPU kernel of the fused DDPM/DDIM step (schema in fastgan.cpp; math and coefficients in
// fastgan/diffusion/steps.py). Per element, with the sample's coefficients k = (a_x, a_m, e_x, e_m, c_0, c_x, c_e,
// c_z):  m = u + w (c - u);  x0 = clamp(a_x x + a_m m);  out = c_0 x0 + c_x x + c_e (e_x x + e_m m) + c_z z.
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

#include "norm_common.h"

namespace fastgan {
namespace {

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
// (r2, r3) with one sincos per pair. Element 4j + h of the group is dst[4 (j - j0) + h].
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

// The normals of logical indices [i0, i0 + len) into out (len <= 4 kGroups - 6 so the groups fit one call).
template <typename A>
inline void normal_run(uint64_t seed, int64_t i0, int64_t len, A* out) {
  A tmp[4 * kGroups];
  const int64_t j0 = i0 >> 2, j1 = (i0 + len + 3) >> 2;
  normal_groups<A>(seed, j0, j1 - j0, tmp);
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

// HAS_U / NOISE / CLIP are template parameters and the coefficients locals of the run, over restrict pointers:
// with runtime flags and by-reference constants the loop kept a branch per element and did not vectorise
// (97 us for 16x3x64x64, about twice its bytes at the measured copy rate). NOISE: 0 none, 1 read from z, 2 drawn
// (Philox, into a small per-thread buffer that the vectorised sweep then reads like z).
template <typename T, bool HAS_U, int NOISE, bool CLIP>
void step_kernel(const T* x, const T* m, const T* u, const T* z, const NoiseSource& noise, const double* coef,
                 bool per_sample_coef, int64_t numel, int64_t per_sample, double w, double clip, T* out) {
  using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
  constexpr int64_t kChunk = 4 * kGroups - 8;
  at::parallel_for(0, numel, 32768, [&](int64_t begin, int64_t end) {
    A buf[NOISE == 2 ? kChunk : 1];
    int64_t p = begin;
    while (p < end) {
      const int64_t n = p / per_sample;
      const int64_t stop = std::min({end, (n + 1) * per_sample, NOISE == 2 ? p + kChunk : end});
      const double* k = coef + (per_sample_coef ? n * 8 : 0);
      const A a_x = A(k[0]), a_m = A(k[1]), c_0 = A(k[4]), c_z = A(k[7]);
      const A b_x = A(k[5] + k[6] * k[2]), b_m = A(k[6] * k[3]);  // c_x x + c_e eps, folded
      const A wa = A(w), lo = A(-clip), hi = A(clip);
      const int64_t len = stop - p;
      if constexpr (NOISE == 2) noise.fill<A>(p, len, buf);
      const T* __restrict xp = x + p;
      const T* __restrict mp = m + p;
      const T* __restrict up = HAS_U ? u + p : x + p;
      const T* __restrict zp = NOISE == 1 ? z + p : x + p;
      const A* __restrict bp = buf;
      T* __restrict op = out + p;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const A xv = A(xp[i]);
        A mv = A(mp[i]);
        if constexpr (HAS_U) mv = A(up[i]) + wa * (mv - A(up[i]));
        A x0 = a_x * xv + a_m * mv;
        if constexpr (CLIP) x0 = x0 < lo ? lo : (x0 > hi ? hi : x0);  // NaN compares false: stays NaN
        A o = c_0 * x0 + b_x * xv + b_m * mv;
        if constexpr (NOISE == 1) o += c_z * A(zp[i]);
        if constexpr (NOISE == 2) o += c_z * bp[i];
        op[i] = T(o);
      }
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
  TORCH_CHECK(coef_in.dim() == 2 && coef_in.size(1) == 8 && (coef_in.size(0) == N || coef_in.size(0) == 1),
              "fastgan::diffusion_step: coef must be (N, 8) = (", N, ", 8) or (1, 8), got ", coef_in.sizes());
  TORCH_CHECK(coef_in.device() == x_in.device(), "fastgan::diffusion_step: coef is on ", coef_in.device(),
              " but x is on ", x_in.device());
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
