// CPU kernel of the fused DDPM/DDIM step (schema in fastgan.cpp; math and coefficients in
// fastgan/diffusion/steps.py). Per element, with the sample's coefficients k = (a_x, a_m, e_x, e_m, c_0, c_x, c_e,
// c_z):  m = u + w (c - u);  x0 = clamp(a_x x + a_m m);  out = c_0 x0 + c_x x + c_e (e_x x + e_m m) + c_z z.
// Tensors are read as flat memory in x's layout (contiguous or channels-last: the batch dimension is outermost),
// so a run of elements of one sample shares its coefficients and the inner loop is a plain vectorisable sweep.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
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

// HAS_U / HAS_Z / CLIP are template parameters and the coefficients locals of the run, over restrict pointers:
// with runtime flags and by-reference constants the loop kept a branch per element and did not vectorise
// (97 us for 16x3x64x64, about twice its bytes at the measured copy rate).
template <typename T, bool HAS_U, bool HAS_Z, bool CLIP>
void step_kernel(const T* x, const T* m, const T* u, const T* z, const double* coef, bool per_sample_coef,
                 int64_t numel, int64_t per_sample, double w, double clip, T* out) {
  using A = std::conditional_t<std::is_same<T, double>::value, double, float>;
  at::parallel_for(0, numel, 32768, [&](int64_t begin, int64_t end) {
    int64_t p = begin;
    while (p < end) {
      const int64_t n = p / per_sample;
      const int64_t stop = std::min(end, (n + 1) * per_sample);
      const double* k = coef + (per_sample_coef ? n * 8 : 0);
      const A a_x = A(k[0]), a_m = A(k[1]), c_0 = A(k[4]), c_z = A(k[7]);
      const A b_x = A(k[5] + k[6] * k[2]), b_m = A(k[6] * k[3]);  // c_x x + c_e eps, folded
      const A wa = A(w), lo = A(-clip), hi = A(clip);
      const int64_t len = stop - p;
      const T* __restrict xp = x + p;
      const T* __restrict mp = m + p;
      const T* __restrict up = HAS_U ? u + p : x + p;
      const T* __restrict zp = HAS_Z ? z + p : x + p;
      T* __restrict op = out + p;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const A xv = A(xp[i]);
        A mv = A(mp[i]);
        if constexpr (HAS_U) mv = A(up[i]) + wa * (mv - A(up[i]));
        A x0 = a_x * xv + a_m * mv;
        if constexpr (CLIP) x0 = x0 < lo ? lo : (x0 > hi ? hi : x0);  // NaN compares false: stays NaN
        A o = c_0 * x0 + b_x * xv + b_m * mv;
        if constexpr (HAS_Z) o += c_z * A(zp[i]);
        op[i] = T(o);
      }
      p = stop;
    }
  });
}

template <typename T>
void step_dispatch(const T* x, const T* m, const T* u, const T* z, const double* coef, bool per_sample_coef,
                   int64_t numel, int64_t per_sample, double w, double clip, T* out) {
  auto go = [&](auto has_u, auto has_z, auto do_clip) {
    step_kernel<T, decltype(has_u)::value, decltype(has_z)::value, decltype(do_clip)::value>(
        x, m, u, z, coef, per_sample_coef, numel, per_sample, w, clip, out);
  };
  auto with_clip = [&](auto has_u, auto has_z) {
    if (clip > 0) {
      go(has_u, has_z, std::true_type{});
    } else {
      go(has_u, has_z, std::false_type{});
    }
  };
  auto with_z = [&](auto has_u) {
    if (z != nullptr) {
      with_clip(has_u, std::true_type{});
    } else {
      with_clip(has_u, std::false_type{});
    }
  };
  if (u != nullptr) {
    with_z(std::true_type{});
  } else {
    with_z(std::false_type{});
  }
}

at::Tensor diffusion_step_cpu(const at::Tensor& x_in, const at::Tensor& m_in, const std::optional<at::Tensor>& u_in,
                              const std::optional<at::Tensor>& z_in, const at::Tensor& coef_in, double guidance,
                              double clip) {
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
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diffusion_step_cpu", [&] {
    step_dispatch<scalar_t>(x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                          u.defined() ? u.data_ptr<scalar_t>() : nullptr, z.defined() ? z.data_ptr<scalar_t>() : nullptr,
                          coef.data_ptr<double>(), coef.size(0) == N && N > 1, x.numel(), x.numel() / N, guidance,
                          clip, out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CPU, m) { m.impl("diffusion_step", &diffusion_step_cpu); }

}  // namespace fastgan
