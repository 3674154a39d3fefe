// CUDA kernels of the instance-norm family (math: fastgan/ops/instance_norm_ref.py; device pieces and the three op
// policies: instance_norm_cuda.cuh). Argument checks, layouts and outputs mirror instance_norm_cpu.cpp exactly.
//
// Every op is "per-plane sums, then an elementwise pass"; one kernel skeleton per layout runs all three ops.
//
// Contiguous layout (each (n, c) plane is L consecutive elements):
//  * L <= kWarpPlaneMax: one warp per plane, 8 warps per 256-thread block, grid-stride over planes. The warp reads
//    its plane, all-reduces with shuffles, then re-reads the plane (just loaded: an L1/L2 hit) for the output pass.
//  * larger planes: one block (128..512 threads) per plane. Pass 1 reads the inputs once from DRAM and copies the
//    first ncache vectors into dynamic shared memory (as much as the device's opt-in limit allows, e.g. ~225 KiB on
//    H100: a whole 256x256 fp32 plane but 29 KiB); block reduction; pass 2 first re-reads the uncached tail, which
//    was read last and is still in L2, then works from shared memory. So x is read from DRAM about once.
//  Statistics: each thread sums d = x - pivot and d^2 with its own pivot, becomes (count, mean, M2), and threads
//  combine with Chan's formula (per-thread shifted sums + Chan merge: stable for inputs like x + 1e4).
//
// Channels-last layout ((N, L, C) in memory): three kernels, so any N, L, C keeps every SM busy.
//  1. cl_partial: block = (sample n, chunk of rows, tile of channels); 256 threads as tx (channel vectors,
//     coalesced along C) x ty (rows, strided). Sums per channel, with the chunk's first row as the pivot of every
//     thread (as the CPU kernel does), so threads combine by plain sums (smem tree over ty); one (count, mean, M2)
//     or sums record per (n, chunk, c) goes to a workspace.
//  2. cl_finalize: one thread per (n, c) merges its chunks in double (exact two-pass merge for the moments), writes
//     the per-plane outputs and the per-plane coefficients of the elementwise pass.
//  3. cl_apply: same block decomposition as 1, elementwise output pass. x is re-read here (from L2 when the tensor
//     fits, else from DRAM: about 1.5x the ideal traffic for large channels-last tensors).
//
// Vector access: 16-byte vectors when every base pointer is 16-byte aligned and the plane length (contiguous) or C
// (channels-last) is a multiple of the vector width, so every plane/row offset is aligned too; else scalar access.
// All offsets are int64. dtypes: float16/bfloat16/float32 compute in float, float64 in double; the backward's and
// double backward's per-plane sums are double for every dtype, as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <cstdint>
#include <mutex>

#include "instance_norm_cuda.cuh"
#include "norm_common.h"

namespace fastgan {
namespace in_cuda {

// ---------------------------------------------------------------------------------------------- launchers
constexpr int kMaxDevices = 64;  // per-device caches below; a device beyond this is queried on every call

inline int current_device() {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

inline DeviceLimits query_limits(int dev) {
  DeviceLimits d;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return d;
}

// The SM count and opt-in shared memory of the current device, queried once per device: the op's host time is
// part of a small plane's cost.
inline DeviceLimits device_limits(int dev) {
  static DeviceLimits cache[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  if (dev < 0 || dev >= kMaxDevices) return query_limits(dev);
  std::call_once(once[dev], [dev] { cache[dev] = query_limits(dev); });
  return cache[dev];
}

// Lets plane_block_kernel<Op, V> take up to the device's opt-in shared memory, once per (kernel, device): the
// attribute only caps what a launch may ask for, so the largest cap serves every plan. The flags belong to the
// <Op, V> instance: kernels of different V share a function-pointer type, so a flag per type would serve one only.
template <class Op, int V>
void allow_optin_smem(int dev, const DeviceLimits& d) {
  static std::once_flag once[kMaxDevices];
  auto set = [&] {
    C10_CUDA_CHECK(cudaFuncSetAttribute(plane_block_kernel<Op, V>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        d.smem_optin));
  };
  if (dev < 0 || dev >= kMaxDevices) set();
  else std::call_once(once[dev], set);
}

template <class Op, int V>
void launch_contiguous(const Op& op, const PlaneShape& s, int dev, const DeviceLimits& d, cudaStream_t stream) {
  const int64_t planes = s.N * s.C;
  const ContigConfig c = contig_config<Op, V>(planes, s.L, d);
  if (c.warp) {
    plane_warp_kernel<Op, V><<<static_cast<unsigned>(c.blocks), c.threads, 0, stream>>>(op, planes, c.nvec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  auto kernel = plane_block_kernel<Op, V>;
  if (c.smem > 48 * 1024) allow_optin_smem<Op, V>(dev, d);
  kernel<<<static_cast<unsigned>(c.blocks), c.threads, static_cast<size_t>(c.smem), stream>>>(op, planes, c.nvec,
                                                                                             c.ncache);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <class Op, int V>
void launch_channels_last(const Op& op, const PlaneShape& s, const DeviceLimits& d, cudaStream_t stream,
                          const at::Tensor& x) {
  using A = typename Op::A;
  using Part = typename Op::Part;
  using Coef = typename Op::Coef;
  static_assert(sizeof(Coef) % sizeof(A) == 0, "Coef must be an array of A");
  const ClGrid g = cl_grid<Op, V>(s.N, s.L, s.C, d);
  const int64_t blocks = g.N * g.chunks * g.tiles, fin_blocks = ceil_div(g.N * g.C, 256);
  TORCH_CHECK(blocks <= INT_MAX && fin_blocks <= INT_MAX, "fastgan: channels-last input too large: ", x.sizes());
  // Workspace: per-chunk records (the op's Part type: double for the gradients' sums), then per-plane
  // coefficients in the accumulation dtype.
  const auto acc_opts = x.options().dtype(acc_type_of(x.scalar_type()));
  const auto part_opts = x.options().dtype(c10::CppTypeToScalarType<Part>::value);
  at::Tensor part = at::empty({g.N * g.chunks * Op::K * g.C}, part_opts);
  at::Tensor coefs = at::empty({g.N * g.C * static_cast<int64_t>(sizeof(Coef) / sizeof(A))}, acc_opts);
  Part* part_p = part.data_ptr<Part>();
  Coef* coef_p = reinterpret_cast<Coef*>(coefs.data_ptr<A>());
  constexpr int64_t smem = cl_partial_smem<Op, V>();
  static_assert(smem <= 48 * 1024, "cl_partial_kernel needs the opt-in for this much shared memory");
  cl_partial_kernel<Op, V><<<static_cast<unsigned>(blocks), kClThreads, smem, stream>>>(op, g, part_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cl_finalize_kernel<Op><<<static_cast<unsigned>(fin_blocks), 256, 0, stream>>>(op, g, part_p, coef_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  cl_apply_kernel<Op, V><<<static_cast<unsigned>(blocks), kClThreads, 0, stream>>>(op, g, coef_p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Picks the layout's skeleton and the vector width, then launches on the current stream of x's device.
// Vector width: 16 bytes; 8 bytes for the channels-last double backward of 2-byte types (its per-thread
// coefficients for 8 channels would otherwise need ~190 registers).
template <class Op>
void run(const Op& op, const PlaneShape& s, const at::Tensor& x) {
  using T = typename Op::T;
  constexpr int kV = (Op::kIn == 3 && sizeof(T) == 2) ? 4 : 16 / sizeof(T);
  constexpr int kVcontig = 16 / sizeof(T);
  const int width = s.channels_last ? kV : kVcontig;
  bool vec = (s.channels_last ? s.C : s.L) % width == 0;
  for (int i = 0; i < Op::kIn; ++i) vec = vec && aligned(op.in[i], width * sizeof(T));
  for (int i = 0; i < Op::kOut; ++i) vec = vec && aligned(op.out[i], width * sizeof(T));
  const int dev = current_device();
  const DeviceLimits d = device_limits(dev);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(dev);
  if (s.channels_last) {
    vec ? launch_channels_last<Op, kV>(op, s, d, stream, x) : launch_channels_last<Op, 1>(op, s, d, stream, x);
  } else {
    vec ? launch_contiguous<Op, kVcontig>(op, s, dev, d, stream) : launch_contiguous<Op, 1>(op, s, dev, d, stream);
  }
}

}  // namespace in_cuda

namespace {

using in_cuda::acc_t;

// Brings a gradient-like input to x's dtype and layout (autograd may hand over expanded or permuted tensors).
at::Tensor like_x(const at::Tensor& t, const at::Tensor& x, bool channels_last) {
  return match_layout(t.scalar_type() == x.scalar_type() ? t : t.to(x.scalar_type()), channels_last);
}

void check_cuda(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor here, got one on ", x.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_fwd_cuda(const at::Tensor& x_in, const at::Tensor& scale,
                                                                     const at::Tensor& shift, double eps) {
  const char* op = "fastgan::instance_norm_fwd";
  const PlaneShape s = check_norm_input(x_in, op, "x");
  check_plane_param(scale, s, x_in, op, "scale");
  check_plane_param(shift, s, x_in, op, "shift");
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
  check_cuda(x_in, op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = canonical(x_in);
  at::Tensor y = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor mean = at::empty({s.N, s.C}, x.options().dtype(acc_type_of(x.scalar_type())));
  at::Tensor rstd = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_fwd_cuda", [&] {
    using A = acc_t<scalar_t>;
    in_cuda::FwdOp<scalar_t> p;
    p.in[0] = x.data_ptr<scalar_t>();
    p.out[0] = y.data_ptr<scalar_t>();
    p.scale = scale.data_ptr<A>();
    p.shift = shift.data_ptr<A>();
    p.mean = mean.data_ptr<A>();
    p.rstd = rstd.data_ptr<A>();
    p.L = s.L;
    p.eps = eps;
    in_cuda::run(p, s, x);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_bwd_cuda(const at::Tensor& gy_in, const at::Tensor& x_in,
                                                                     const at::Tensor& mean, const at::Tensor& rstd,
                                                                     const at::Tensor& scale, double eps) {
  const char* op = "fastgan::instance_norm_bwd";
  const PlaneShape s = check_norm_input(x_in, op, "x");
  check_like_input(gy_in, x_in, op, "grad_y");
  check_plane_param(mean, s, x_in, op, "mean");
  check_plane_param(rstd, s, x_in, op, "rstd");
  check_plane_param(scale, s, x_in, op, "scale");
  check_cuda(x_in, op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = canonical(x_in);
  const at::Tensor gy = like_x(gy_in, x, s.channels_last);
  at::Tensor gx = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor gscale = at::empty_like(mean), gshift = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_bwd_cuda", [&] {
    using A = acc_t<scalar_t>;
    in_cuda::BwdOp<scalar_t> p;
    p.in[0] = x.data_ptr<scalar_t>();
    p.in[1] = gy.data_ptr<scalar_t>();
    p.out[0] = gx.data_ptr<scalar_t>();
    p.mean = mean.data_ptr<A>();
    p.rstd = rstd.data_ptr<A>();
    p.scale = scale.data_ptr<A>();
    p.gscale = gscale.data_ptr<A>();
    p.gshift = gshift.data_ptr<A>();
    p.L = s.L;
    p.eps = eps;
    in_cuda::run(p, s, x);
  });
  return {gx, gscale, gshift};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_dbwd_cuda(
    const at::Tensor& ggx_in, const at::Tensor& ggscale, const at::Tensor& ggshift, const at::Tensor& gy_in,
    const at::Tensor& x_in, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& scale, double eps) {
  const char* op = "fastgan::instance_norm_dbwd";
  const PlaneShape s = check_norm_input(x_in, op, "x");
  check_like_input(ggx_in, x_in, op, "ggx");
  check_like_input(gy_in, x_in, op, "grad_y");
  check_plane_param(ggscale, s, x_in, op, "ggscale");
  check_plane_param(ggshift, s, x_in, op, "ggshift");
  check_plane_param(mean, s, x_in, op, "mean");
  check_plane_param(rstd, s, x_in, op, "rstd");
  check_plane_param(scale, s, x_in, op, "scale");
  check_cuda(x_in, op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = canonical(x_in);
  const at::Tensor gy = like_x(gy_in, x, s.channels_last);
  const at::Tensor ggx = like_x(ggx_in, x, s.channels_last);
  at::Tensor gx2 = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor ggy = empty_in_layout(x, s.channels_last, x.scalar_type());
  at::Tensor gscale2 = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "instance_norm_dbwd_cuda", [&] {
    using A = acc_t<scalar_t>;
    in_cuda::DbwdOp<scalar_t> p;
    p.in[0] = x.data_ptr<scalar_t>();
    p.in[1] = gy.data_ptr<scalar_t>();
    p.in[2] = ggx.data_ptr<scalar_t>();
    p.out[0] = gx2.data_ptr<scalar_t>();
    p.out[1] = ggy.data_ptr<scalar_t>();
    p.mean = mean.data_ptr<A>();
    p.rstd = rstd.data_ptr<A>();
    p.scale = scale.data_ptr<A>();
    p.ggscale = ggscale.data_ptr<A>();
    p.ggshift = ggshift.data_ptr<A>();
    p.gscale2 = gscale2.data_ptr<A>();
    p.L = s.L;
    p.eps = eps;
    in_cuda::run(p, s, x);
  });
  if (gy_in.scalar_type() != x.scalar_type()) ggy = ggy.to(gy_in.scalar_type());
  return {gx2, ggy, gscale2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgan, CUDA, m) {
  m.impl("instance_norm_fwd", &instance_norm_fwd_cuda);
  m.impl("instance_norm_bwd", &instance_norm_bwd_cuda);
  m.impl("instance_norm_dbwd", &instance_norm_dbwd_cuda);
}

}  // namespace fastgan
