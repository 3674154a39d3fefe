// Channels-last group-norm CPU kernels (group_norm_cl_cpu.cpp), called by the ops in group_norm_cpu.cpp after
// their argument checks. x, grad_y and the outputs are channels-last ((N, *spatial, C) memory); scale/shift and
// their gradients (N, C) float64; mean/rstd (N, G) in the acc dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastgan {

void group_norm_fwd_cl(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& shift, int64_t groups,
                       double eps, int64_t act, double alpha, at::Tensor& y, at::Tensor& mean, at::Tensor& rstd);

void group_norm_bwd_cl(const at::Tensor& gy, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
                       const at::Tensor& scale, const at::Tensor& shift, int64_t groups, int64_t act, double alpha,
                       at::Tensor& gx, at::Tensor& gscale, at::Tensor& gshift);

}  // namespace fastgan
