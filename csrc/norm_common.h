// Argument checks and layout rules shared by the CPU and CUDA kernels of the instance-norm family.
// The layout rule mirrors fastgan/ops/_layout.py exactly, so fake (meta) and real outputs have equal strides.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <c10/util/Exception.h>

#include <vector>

namespace fastgan {

// Sizes of an (N, C, *spatial) input seen as N*C planes of L elements.
struct PlaneShape {
  int64_t N = 0;
  int64_t C = 0;
  int64_t L = 0;
  bool channels_last = false;  // memory is (N, L, C) instead of (N, C, L)
};

inline std::vector<int64_t> cl_perm(int64_t dim) {
  std::vector<int64_t> perm{0};
  for (int64_t d = 2; d < dim; ++d) perm.push_back(d);
  perm.push_back(1);
  return perm;
}

inline bool is_channels_last(const at::Tensor& x) {
  return x.dim() >= 3 && !x.is_contiguous() && x.permute(cl_perm(x.dim())).is_contiguous();
}

// x itself when a kernel reads it as it is, else a contiguous copy.
inline at::Tensor canonical(const at::Tensor& x) {
  return (x.is_contiguous() || is_channels_last(x)) ? x : x.contiguous();
}

inline std::vector<int64_t> layout_strides(at::IntArrayRef sizes, bool channels_last) {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  std::vector<int64_t> order(dim);
  if (channels_last) {
    order = cl_perm(dim);
  } else {
    for (int64_t d = 0; d < dim; ++d) order[d] = d;
  }
  std::vector<int64_t> strides(dim, 0);
  int64_t step = 1;
  for (int64_t i = dim - 1; i >= 0; --i) {
    strides[order[i]] = step;
    step *= std::max<int64_t>(sizes[order[i]], 1);
  }
  return strides;
}

inline at::Tensor empty_in_layout(const at::Tensor& like, bool channels_last, at::ScalarType dtype) {
  return at::empty_strided(like.sizes(), layout_strides(like.sizes(), channels_last),
                           like.options().dtype(dtype));
}

// t (shaped like the canonical input) brought into the same layout, copying only when needed.
inline at::Tensor match_layout(const at::Tensor& t, bool channels_last) {
  if (!channels_last) return t.contiguous();
  auto perm = cl_perm(t.dim());
  if (t.permute(perm).is_contiguous()) return t;
  std::vector<int64_t> inverse(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
  return t.permute(perm).contiguous().permute(inverse);
}

inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline PlaneShape check_norm_input(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() >= 3 && x.dim() <= 5, op, ": ", name,
              " must be 3-D, 4-D or 5-D (N, C, *spatial), got ", x.dim(), "-D of shape ", x.sizes());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t);
  TORCH_CHECK(x.numel() > 0, op, ": ", name, " is empty (shape ", x.sizes(), ")");
  PlaneShape s;
  s.N = x.size(0);
  s.C = x.size(1);
  s.L = x.numel() / (s.N * s.C);
  s.channels_last = is_channels_last(x);
  return s;
}

// A tensor that must have x's shape and device (e.g. a gradient), any float dtype.
inline void check_like_input(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.sizes() == x.sizes(), op, ": ", name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be floating, got ", t.scalar_type());
}

// A per-plane (N, C) tensor in the accumulation dtype, contiguous, on x's device.
inline void check_plane_param(const at::Tensor& t, const PlaneShape& s, const at::Tensor& x, const char* op,
                              const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == s.N && t.size(1) == s.C, op, ": ", name, " must have shape (",
              s.N, ", ", s.C, "), got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == acc_type_of(x.scalar_type()), op, ": ", name, " must be ",
              acc_type_of(x.scalar_type()), " for ", x.scalar_type(), " input, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

}  // namespace fastgan
