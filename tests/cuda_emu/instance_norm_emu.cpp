// The CUDA instance-norm kernels (csrc/instance_norm_cuda.cuh) run on the host through emu.h, behind a C entry
// point the tests call with ctypes. The launch logic mirrors in_cuda::run and the launchers of
// csrc/instance_norm_cuda.cu (vector width, skeleton per layout, workspace); the device code is the real one.
#include "emu.h"

#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>

namespace fastgan {
namespace in_cuda {
alignas(16) unsigned char fastgan_in_smem[emu::kSmemBytes];  // what dynamic_smem() names
}  // namespace in_cuda
}  // namespace fastgan

#include "../../csrc/instance_norm_cuda.cuh"

namespace fastgan {
namespace in_cuda {
namespace {

struct Shape {
  int64_t N, C, L;
  bool channels_last;
  int64_t grid_cap;  // > 0: at most this many blocks for the contiguous kernels, whose loops grid-stride over planes
};

template <class Op, int V>
void launch_contiguous(const Op& op, const Shape& s, const DeviceLimits& d) {
  const int64_t planes = s.N * s.C;
  ContigConfig c = contig_config<Op, V>(planes, s.L, d);
  if (s.grid_cap > 0) c.blocks = std::min(c.blocks, s.grid_cap);
  if (c.warp) {
    emu::launch(plane_warp_kernel<Op, V>, c.blocks, c.threads, 0, fastgan_in_smem, op, planes, c.nvec);
  } else {
    emu::launch(plane_block_kernel<Op, V>, c.blocks, c.threads, c.smem, fastgan_in_smem, op, planes, c.nvec,
                c.ncache);
  }
}

template <class Op, int V>
void launch_channels_last(const Op& op, const Shape& s, const DeviceLimits& d) {
  using Part = typename Op::Part;
  using Coef = typename Op::Coef;
  const ClGrid g = cl_grid<Op, V>(s.N, s.L, s.C, d);
  const int64_t blocks = g.N * g.chunks * g.tiles, fin_blocks = ceil_div(g.N * g.C, 256);
  // Uninitialised on a GPU (at::empty): NaN here, so a record read before it is written shows.
  std::vector<Part> part(g.N * g.chunks * Op::K * g.C, std::numeric_limits<Part>::quiet_NaN());
  std::vector<Coef> coefs(g.N * g.C);
  std::memset(static_cast<void*>(coefs.data()), 0xff, coefs.size() * sizeof(Coef));
  emu::launch(cl_partial_kernel<Op, V>, blocks, kClThreads, cl_partial_smem<Op, V>(), fastgan_in_smem, op, g,
              part.data());
  emu::launch(cl_finalize_kernel<Op>, fin_blocks, 256, 0, fastgan_in_smem, op, g,
              static_cast<const Part*>(part.data()), coefs.data());
  emu::launch(cl_apply_kernel<Op, V>, blocks, kClThreads, 0, fastgan_in_smem, op, g,
              static_cast<const Coef*>(coefs.data()));
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <class Op>
void run(const Op& op, const Shape& s, const DeviceLimits& d, bool force_scalar) {
  using T = typename Op::T;
  constexpr int kV = (Op::kIn == 3 && sizeof(T) == 2) ? 4 : 16 / sizeof(T);
  constexpr int kVcontig = 16 / sizeof(T);
  const int width = s.channels_last ? kV : kVcontig;
  bool vec = !force_scalar && (s.channels_last ? s.C : s.L) % width == 0;
  for (int i = 0; i < Op::kIn; ++i) vec = vec && aligned(op.in[i], width * sizeof(T));
  for (int i = 0; i < Op::kOut; ++i) vec = vec && aligned(op.out[i], width * sizeof(T));
  if (s.channels_last) {
    vec ? launch_channels_last<Op, kV>(op, s, d) : launch_channels_last<Op, 1>(op, s, d);
  } else {
    vec ? launch_contiguous<Op, kVcontig>(op, s, d) : launch_contiguous<Op, 1>(op, s, d);
  }
}

// planes: fwd (scale, shift, mean*, rstd*); bwd (mean, rstd, scale, gscale*, gshift*);
// dbwd (mean, rstd, scale, ggscale, ggshift, gscale2*); * = written.
template <typename T>
void dispatch_op(int op, const Shape& s, void* const* in, void* const* out, void* const* pl, double eps,
                 const DeviceLimits& d, bool force_scalar) {
  using A = acc_t<T>;
  auto P = [&](int i) { return static_cast<A*>(pl[i]); };
  if (op == 0) {
    FwdOp<T> p;
    p.in[0] = static_cast<const T*>(in[0]);
    p.out[0] = static_cast<T*>(out[0]);
    p.scale = P(0), p.shift = P(1), p.mean = P(2), p.rstd = P(3);
    p.L = s.L, p.eps = eps;
    run(p, s, d, force_scalar);
  } else if (op == 1) {
    BwdOp<T> p;
    p.in[0] = static_cast<const T*>(in[0]), p.in[1] = static_cast<const T*>(in[1]);
    p.out[0] = static_cast<T*>(out[0]);
    p.mean = P(0), p.rstd = P(1), p.scale = P(2), p.gscale = P(3), p.gshift = P(4);
    p.L = s.L, p.eps = eps;
    run(p, s, d, force_scalar);
  } else {
    DbwdOp<T> p;
    for (int i = 0; i < 3; ++i) p.in[i] = static_cast<const T*>(in[i]);
    p.out[0] = static_cast<T*>(out[0]), p.out[1] = static_cast<T*>(out[1]);
    p.mean = P(0), p.rstd = P(1), p.scale = P(2), p.ggscale = P(3), p.ggshift = P(4), p.gscale2 = P(5);
    p.L = s.L, p.eps = eps;
    run(p, s, d, force_scalar);
  }
}

}  // namespace
}  // namespace in_cuda
}  // namespace fastgan

// op: 0 forward, 1 backward, 2 double backward. dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16.
// grid_cap > 0 caps the contiguous kernels' grids (their grid-stride loops). Returns 0, or 1 with a message in err.
extern "C" int fastgan_emu_instance_norm(int op, int dtype, int channels_last, int64_t N, int64_t C, int64_t L,
                                         void* const* in, void* const* out, void* const* planes, double eps,
                                         int sms, int smem_optin, int force_scalar, int64_t grid_cap, char* err,
                                         int err_len) {
  using namespace fastgan::in_cuda;
  try {
    const Shape s{N, C, L, channels_last != 0, grid_cap};
    DeviceLimits d;
    d.sms = sms;
    d.smem_optin = smem_optin;
    switch (dtype) {
      case 0: dispatch_op<float>(op, s, in, out, planes, eps, d, force_scalar); break;
      case 1: dispatch_op<double>(op, s, in, out, planes, eps, d, force_scalar); break;
      case 2: dispatch_op<c10::Half>(op, s, in, out, planes, eps, d, force_scalar); break;
      case 3: dispatch_op<c10::BFloat16>(op, s, in, out, planes, eps, d, force_scalar); break;
      default: throw std::runtime_error("unknown dtype code");
    }
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
  return 0;
}
