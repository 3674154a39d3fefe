// Group-norm CPU kernels callable from other translation units, after the caller's argument checks: the
// channels-last ones (group_norm_cl_cpu.cpp, used by the ops in group_norm_cpu.cpp) and the contiguous forward
// (group_norm_cpu.cpp, also instance norm's contiguous forward: group norm with one channel per group).
// scale/shift and their gradients are (N, C) float64; mean/rstd (N, G) in the acc dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastgan {

// Contiguous x and y (linear activation, no maps).
void group_norm_fwd_contiguous(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, int64_t groups,
                               double eps, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd);

// Channels-last x, grad_y and outputs ((N, *spatial, C) memory).
void group_norm_fwd_cl(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, int64_t groups,
                       double eps, int64_t act, double alpha, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd);

void group_norm_bwd_cl(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                       const at::Tensor& scale, const at::Tensor& shift, int64_t groups, int64_t act, double alpha,
                       at::Tensor& gx, at::Tensor& gscale, at::Tensor& gshift);

}  // namespace fastgan
