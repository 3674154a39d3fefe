// Device code of the CUDA instance-norm kernels: the three op policies, the kernels, and their launch geometry.
// Design notes and the host side (checks, launches, registration): instance_norm_cuda.cu. Math:
// fastgan/ops/instance_norm_ref.py; CPU twin: instance_norm_cpu.cpp. Nothing here needs ATen: the tests build these
// kernels on the CPU against a host emulation of CUDA threads, barriers and shuffles (tests/cuda_emu/).
//
// An op policy is both the kernel's params struct (pointers, L, eps) and the description of its math:
//   kIn / kOut   streams read / written per element (fwd: x -> y; bwd: x, gy -> gx; dbwd: x, gy, v -> gx2, ggy)
//   Pre          per-plane values the statistics pass needs (a pivot, or mean and rstd)
//   Acc          one thread's running sums (K values: A for the forward, double for the gradients' sums)
//   Vals         merged statistics of one or more threads; merge(a, b) combines two of them into a
//   ClAcc, Part  channels-last: one thread's sums, and the field type of the chunk records cl_record() makes from
//                them (double for every op: a chunk's records are merged in double by cl_finalize)
//   Coef         per-plane coefficients of the elementwise pass; coef() also writes the per-plane outputs
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fastgan {
namespace in_cuda {

template <typename T>
using acc_t = std::conditional_t<std::is_same<T, double>::value, double, float>;

// V consecutive elements moved as one access (16 bytes for V = 16 / sizeof(T); one element for V = 1).
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T e[V];
};

// K values reduced together. Sums<A, K> s{} is all zeros: the identity of every merge here.
template <typename A, int K>
struct Sums {
  A v[K];
  __device__ __forceinline__ void add(const Sums& o) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] += o.v[k];
  }
};

// Butterfly all-reduce over the 32 lanes of a warp (all active). Lanes i and i ^ o both compute
// merge(lower lane, upper lane), so even order-sensitive merges round identically: every lane ends bit-identical.
template <class Op, typename S>
__device__ __forceinline__ void warp_allreduce(S& s) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    S other;
#pragma unroll
    for (int k = 0; k < Op::K; ++k) other.v[k] = __shfl_xor_sync(0xffffffffu, s.v[k], o);
    if (threadIdx.x & o) {
      Op::merge(other, s);
      s = other;
    } else {
      Op::merge(s, other);
    }
  }
}

// Sum over `parts` records spaced js apart (fields fs apart), in double as the CPU kernels' cross-chunk merge.
template <typename A, int K>
__device__ Sums<A, K> sum_parts(const A* p, int64_t js, int64_t fs, int64_t parts) {
  double acc[K] = {};
  for (int64_t j = 0; j < parts; ++j) {
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] += static_cast<double>(p[j * js + k * fs]);
  }
  Sums<A, K> out;
#pragma unroll
  for (int k = 0; k < K; ++k) out.v[k] = static_cast<A>(acc[k]);
  return out;
}

// All shared memory is dynamic (sized at launch) and 16-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char fastgan_in_smem[];
  return fastgan_in_smem;
}

// ------------------------------------------------------------------------------------------------- forward
// Statistics: a thread sums d = x - pivot and d^2 (pivot: an element of its own share, so a common offset like
// x + 1e4 cancels before squaring), then holds (count, mean, M2); threads combine with Chan's formula.
// Output: y = (x - mean) * (scale * rstd) + shift, as the CPU kernel (the mean is not folded into the shift).
template <typename T_>
struct FwdOp {
  using T = T_;
  using A = acc_t<T>;
  static constexpr int kIn = 1, kOut = 1, K = 3;
  using Acc = Sums<A, 3>;         // (count, sum d, sum d^2)
  using Vals = Sums<A, 3>;        // (count, mean, M2)
  using ClAcc = Sums<double, 3>;  // channels-last: the chunk's sums (see cl_record)
  using Part = double;            // field type of the channels-last chunk records
  struct Pre { A pivot; };
  struct Coef { A mu, a, b; };

  const T* in[kIn];  // x
  T* out[kOut];      // y
  const A *scale, *shift;
  A *mean, *rstd;
  int64_t L;
  double eps;

  __device__ Pre pre(int64_t, A first_x) const { return {first_x}; }
  template <typename S>
  __device__ static void add(Sums<S, 3>& s, const Pre& p, const A* in) {
    const S d = static_cast<S>(in[0]) - static_cast<S>(p.pivot);
    s.v[0] += S(1);
    s.v[1] += d;
    s.v[2] += d * d;
  }
  __device__ static Vals to_vals(const Acc& s, const Pre& p) {
    if (s.v[0] == A(0)) return Vals{};
    const A m2 = s.v[2] - s.v[1] * s.v[1] / s.v[0];
    return Vals{{s.v[0], p.pivot + s.v[1] / s.v[0], m2 < A(0) ? A(0) : m2}};  // keeps a NaN (unlike fmax)
  }
  // A channels-last chunk's record. Every thread of a chunk shares one pivot (the chunk's first row), which may lie
  // far from the mean, so sum d^2 - (sum d)^2 / n cancels: in float that missed the tolerance rule for short planes
  // (and the weight gradient, through rstd, on the H200), so these sums and records are double.
  __device__ static Sums<Part, 3> cl_record(const ClAcc& s, const Pre& p) {
    if (s.v[0] == 0.0) return Sums<Part, 3>{};
    const double m2 = s.v[2] - s.v[1] * s.v[1] / s.v[0];
    return Sums<Part, 3>{{s.v[0], static_cast<double>(p.pivot) + s.v[1] / s.v[0], m2 < 0.0 ? 0.0 : m2}};
  }
  // Chan et al.: a <- a (+) b. An empty side is skipped, so identities never touch a NaN.
  __device__ static void merge(Vals& a, const Vals& b) {
    if (b.v[0] == A(0)) return;
    if (a.v[0] == A(0)) return void(a = b);
    const A n = a.v[0] + b.v[0], delta = b.v[1] - a.v[1], fb = b.v[0] / n;
    a.v[1] += delta * fb;
    a.v[2] += b.v[2] + delta * delta * a.v[0] * fb;
    a.v[0] = n;
  }
  // Chunk records (count, mean, M2) merged exactly in double: the mean first, then sum(M2_j + n_j (mean_j - mean)^2).
  __device__ static Vals merge_parts(const Part* p, int64_t js, int64_t fs, int64_t parts) {
    double n = 0, s = 0, m2 = 0;
    for (int64_t j = 0; j < parts; ++j) {
      n += static_cast<double>(p[j * js]);
      s += static_cast<double>(p[j * js]) * static_cast<double>(p[j * js + fs]);
    }
    const double mu = s / n;
    for (int64_t j = 0; j < parts; ++j) {
      const double d = static_cast<double>(p[j * js + fs]) - mu;
      m2 += static_cast<double>(p[j * js + 2 * fs]) + static_cast<double>(p[j * js]) * d * d;
    }
    return Vals{{static_cast<A>(n), static_cast<A>(mu), static_cast<A>(m2)}};
  }
  __device__ Coef coef(int64_t plane, const Vals& v, bool write) const {
    const A r = static_cast<A>(1.0 / sqrt(static_cast<double>(v.v[2]) / static_cast<double>(L) + eps));
    if (write) mean[plane] = v.v[1], rstd[plane] = r;
    return Coef{v.v[1], static_cast<A>(scale[plane] * r), shift[plane]};
  }
  __device__ static void apply(const Coef& k, const A* in, A* o) { o[0] = (in[0] - k.mu) * k.a + k.b; }
};

// ------------------------------------------------------------------------------------------------ backward
// sums (gy, gy * (x - mean)) in double, as the CPU kernels: gshift = sum gy, gscale = rstd * sum gy (x - mean);
// gx = scale * r * (gy - mean(gy) - xhat * mean(gy * xhat)). Float sums missed the tolerance rule on the H200 for
// the weight gradient of short planes (3.75e-6 against 3.58e-6); the elementwise pass stays in A.
template <typename T_>
struct BwdOp {
  using T = T_;
  using A = acc_t<T>;
  static constexpr int kIn = 2, kOut = 1, K = 2;
  using Acc = Sums<double, 2>;
  using Vals = Sums<double, 2>;
  using ClAcc = Acc;
  using Part = double;
  struct Pre { A mu, r; };
  struct Coef { A mu, r, k, m_g, m_gx; };

  const T* in[kIn];  // x, gy
  T* out[kOut];      // gx
  const A *mean, *rstd, *scale;
  A *gscale, *gshift;
  int64_t L;
  double eps;

  __device__ Pre pre(int64_t plane, A) const { return {mean[plane], rstd[plane]}; }
  __device__ static void add(Acc& s, const Pre& p, const A* in) {
    const double g = static_cast<double>(in[1]);
    s.v[0] += g;
    s.v[1] += g * (static_cast<double>(in[0]) - static_cast<double>(p.mu));
  }
  __device__ static Vals to_vals(const Acc& s, const Pre&) { return s; }
  __device__ static Vals cl_record(const ClAcc& s, const Pre&) { return s; }
  __device__ static void merge(Vals& a, const Vals& b) { a.add(b); }
  __device__ static Vals merge_parts(const Part* p, int64_t js, int64_t fs, int64_t parts) {
    return sum_parts<Part, K>(p, js, fs, parts);
  }
  __device__ Coef coef(int64_t plane, const Vals& v, bool write) const {
    const A r = rstd[plane];
    const double s_g = v.v[0], s_gx = v.v[1] * static_cast<double>(r);
    if (write) gscale[plane] = static_cast<A>(s_gx), gshift[plane] = static_cast<A>(s_g);
    const double len = static_cast<double>(L);
    return Coef{mean[plane], r, scale[plane] * r, static_cast<A>(s_g / len), static_cast<A>(s_gx / len)};
  }
  __device__ static void apply(const Coef& k, const A* in, A* o) {
    o[0] = k.k * (in[1] - k.m_g - (in[0] - k.mu) * k.r * k.m_gx);
  }
};

// ------------------------------------------------------------------------------------------ double backward
// With v = ggx, u_w = ggscale, u_b = ggshift, P(z) = z - mean(z) - xhat * mean(z * xhat):
//   sums: gy, gy * xhat, v, v * xhat, v * gy;  c = mean(v * gy) - m_g * m_v - m_gx * m_vx
//   ggy = w r P(v) + u_w xhat + u_b;  gx2 = u_w r P(gy) - w r^2 (c xhat + m_gx P(v) + m_vx P(gy));  gscale2 = L r c
// The sums are in double (with x - mean for xhat, times rstd at the end), as the CPU kernels': c cancels.
template <typename T_>
struct DbwdOp {
  using T = T_;
  using A = acc_t<T>;
  static constexpr int kIn = 3, kOut = 2, K = 5;
  using Acc = Sums<double, 5>;
  using ClAcc = Acc;
  using Part = double;
  using Vals = Sums<double, 5>;
  struct Pre { A mu, r; };
  struct Coef { A mu, r, w, uw, ub, m_g, m_gx, m_v, m_vx, c; };

  const T* in[kIn];  // x, gy, v (= ggx)
  T* out[kOut];      // gx2, ggy
  const A *mean, *rstd, *scale, *ggscale, *ggshift;
  A* gscale2;
  int64_t L;
  double eps;

  __device__ Pre pre(int64_t plane, A) const { return {mean[plane], rstd[plane]}; }
  __device__ static void add(Acc& s, const Pre& p, const A* in) {
    const double xd = static_cast<double>(in[0]) - static_cast<double>(p.mu);
    const double g = static_cast<double>(in[1]), v = static_cast<double>(in[2]);
    s.v[0] += g;
    s.v[1] += g * xd;
    s.v[2] += v;
    s.v[3] += v * xd;
    s.v[4] += v * g;
  }
  __device__ static Vals to_vals(const Acc& s, const Pre&) { return s; }
  __device__ static Vals cl_record(const ClAcc& s, const Pre&) { return s; }
  __device__ static void merge(Vals& a, const Vals& b) { a.add(b); }
  __device__ static Vals merge_parts(const Part* p, int64_t js, int64_t fs, int64_t parts) {
    return sum_parts<Part, K>(p, js, fs, parts);
  }
  __device__ Coef coef(int64_t plane, const Vals& s, bool write) const {
    const A r = rstd[plane];
    const double len = static_cast<double>(L), rd = static_cast<double>(r);
    const double m_g = s.v[0] / len, m_gx = s.v[1] * rd / len, m_v = s.v[2] / len, m_vx = s.v[3] * rd / len;
    const double c = s.v[4] / len - m_g * m_v - m_gx * m_vx;
    if (write) gscale2[plane] = static_cast<A>(len * static_cast<double>(r) * c);
    return Coef{mean[plane], r, scale[plane], ggscale[plane], ggshift[plane], static_cast<A>(m_g),
                static_cast<A>(m_gx), static_cast<A>(m_v), static_cast<A>(m_vx), static_cast<A>(c)};
  }
  __device__ static void apply(const Coef& k, const A* in, A* o) {
    const A xh = (in[0] - k.mu) * k.r;
    const A pv = in[2] - k.m_v - xh * k.m_vx;
    const A pg = in[1] - k.m_g - xh * k.m_gx;
    o[1] = k.w * k.r * pv + k.uw * xh + k.ub;                                           // ggy
    o[0] = k.uw * k.r * pg - k.w * k.r * k.r * (k.c * xh + k.m_gx * pv + k.m_vx * pg);  // gx2
  }
};

// ============================================================================================== kernels
constexpr int64_t kWarpPlaneMax = 1024;  // planes up to this many elements: one warp each
constexpr int kBlockMax = 512;           // threads of the block-per-plane kernel (at most)
constexpr int kScratch = 2048;           // bytes of block-reduction scratch ahead of the shared-memory cache
constexpr int kClThreads = 256;          // channels-last kernels: tx * ty
constexpr int64_t kClMaxChunks = 256;    // row chunks per sample (cl_finalize merges them serially)

template <class Op>
constexpr int unroll() { return Op::kIn == 1 ? 4 : 2; }  // loads in flight per thread: 4 (fwd), 4, 6 (dbwd)

// i = begin, begin + stride, ... < end, loaded UNR at a time so that several loads are in flight per thread.
template <int UNR, typename Load, typename Body>
__device__ __forceinline__ void batched(int64_t begin, int64_t end, int64_t stride, Load load, Body body) {
  using P = decltype(load(begin));
  for (int64_t i0 = begin; i0 < end; i0 += UNR * stride) {
    P p[UNR];
#pragma unroll
    for (int u = 0; u < UNR; ++u)
      if (i0 + u * stride < end) p[u] = load(i0 + u * stride);
#pragma unroll
    for (int u = 0; u < UNR; ++u)
      if (i0 + u * stride < end) body(i0 + u * stride, p[u]);
  }
}

template <class Op, int V>
struct Pack {  // one vector of each input stream
  Vec<typename Op::T, V> v[Op::kIn];
};

template <class Op, int V>
__device__ __forceinline__ Pack<Op, V> load_pack(const Op& op, int64_t vi) {
  Pack<Op, V> p;
#pragma unroll
  for (int s = 0; s < Op::kIn; ++s) p.v[s] = reinterpret_cast<const Vec<typename Op::T, V>*>(op.in[s])[vi];
  return p;
}

// Element e of every stream, in the accumulation type.
template <class Op, int V>
__device__ __forceinline__ void unpack(const Pack<Op, V>& p, int e, typename Op::A* in) {
#pragma unroll
  for (int s = 0; s < Op::kIn; ++s) in[s] = static_cast<typename Op::A>(p.v[s].e[e]);
}

// Statistics of one pack: element e goes to acc[e * kStep] with pre[e * kStep] (kStep 0: one plane; 1: channels).
template <class Op, int V, int kStep, class S>
__device__ __forceinline__ void accumulate(S* acc, const typename Op::Pre* pre, const Pack<Op, V>& p) {
#pragma unroll
  for (int e = 0; e < V; ++e) {
    typename Op::A in[Op::kIn];
    unpack<Op, V>(p, e, in);
    Op::add(acc[e * kStep], pre[e * kStep], in);
  }
}

// Elementwise pass on one pack, stored at vector index vi of every output; coefficients k[e * kStep].
template <class Op, int V, int kStep>
__device__ __forceinline__ void apply_store(const Op& op, const typename Op::Coef* k, int64_t vi,
                                            const Pack<Op, V>& p) {
  Vec<typename Op::T, V> o[Op::kOut];
#pragma unroll
  for (int e = 0; e < V; ++e) {
    typename Op::A in[Op::kIn], out[Op::kOut];
    unpack<Op, V>(p, e, in);
    Op::apply(k[e * kStep], in, out);
#pragma unroll
    for (int s = 0; s < Op::kOut; ++s) o[s].e[e] = static_cast<typename Op::T>(out[s]);
  }
#pragma unroll
  for (int s = 0; s < Op::kOut; ++s) reinterpret_cast<Vec<typename Op::T, V>*>(op.out[s])[vi] = o[s];
}

// ----------------------------------------------------------------------------------- contiguous: one plane
// Both passes over one plane by nt threads, this one number t. cache: kIn x ncache vectors of shared memory
// (ncache may be 0) holding the plane's first vectors. reduce(Vals&) combines all threads' statistics and returns
// the plane's coefficients (the same on every thread).
template <class Op, int V, typename Reduce>
__device__ __forceinline__ void plane_passes(const Op& op, int64_t plane, int64_t nvec, int64_t t, int64_t nt,
                                             Vec<typename Op::T, V>* cache, int64_t ncache, Reduce reduce) {
  using P = Pack<Op, V>;
  const int64_t base = plane * nvec;  // in vectors (nvec * V == L)
  const typename Op::Pre pre =
      op.pre(plane, static_cast<typename Op::A>(op.in[0][plane * op.L + std::min<int64_t>(t * V, op.L - 1)]));
  typename Op::Acc acc{};
  auto load = [&](int64_t i) { return load_pack<Op, V>(op, base + i); };
  batched<unroll<Op>()>(t, nvec, nt, load, [&](int64_t i, const P& p) {
    if (i < ncache) {
#pragma unroll
      for (int s = 0; s < Op::kIn; ++s) cache[s * ncache + i] = p.v[s];  // read back by this same thread
    }
    accumulate<Op, V, 0>(&acc, &pre, p);
  });
  typename Op::Vals vals = Op::to_vals(acc, pre);
  const typename Op::Coef k = reduce(vals);
  auto store = [&](int64_t i, const P& p) { apply_store<Op, V, 0>(op, &k, base + i, p); };
  batched<unroll<Op>()>(ncache + t, nvec, nt, load, store);  // the uncached tail first: freshest in L2
  auto cached = [&](int64_t i) {
    P p;
#pragma unroll
    for (int s = 0; s < Op::kIn; ++s) p.v[s] = cache[s * ncache + i];
    return p;
  };
  batched<unroll<Op>()>(t, ncache, nt, cached, store);
}

// One warp per plane: 8 warps per 256-thread block, grid-stride over planes (the loop is warp-uniform).
template <class Op, int V>
__global__ void __launch_bounds__(256) plane_warp_kernel(Op op, int64_t planes, int64_t nvec) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x / 32, nwarps = static_cast<int64_t>(gridDim.x) * wpb;
  for (int64_t plane = blockIdx.x * wpb + threadIdx.x / 32; plane < planes; plane += nwarps) {
    plane_passes<Op, V>(op, plane, nvec, lane, 32, nullptr, 0, [&](typename Op::Vals& v) {
      warp_allreduce<Op>(v);
      return op.coef(plane, v, lane == 0);  // identical on every lane; lane 0 writes the per-plane outputs
    });
  }
}

// One block per plane (grid-stride), blockDim.x a multiple of 32, <= kBlockMax.
// Dynamic shared memory: [kScratch bytes: 32 Vals, one Coef][cache: kIn x ncache vectors].
template <class Op, int V>
__global__ void __launch_bounds__(kBlockMax) plane_block_kernel(Op op, int64_t planes, int64_t nvec, int64_t ncache) {
  using Vals = typename Op::Vals;
  using Coef = typename Op::Coef;
  unsigned char* smem = dynamic_smem();
  Vals* red = reinterpret_cast<Vals*>(smem);
  Coef* coef_sh = reinterpret_cast<Coef*>(smem + 32 * sizeof(Vals));
  auto* cache = reinterpret_cast<Vec<typename Op::T, V>*>(smem + kScratch);
  const int t = threadIdx.x, warp = t / 32, nwarps = blockDim.x / 32;
  for (int64_t plane = blockIdx.x; plane < planes; plane += gridDim.x) {
    plane_passes<Op, V>(op, plane, nvec, t, blockDim.x, cache, ncache, [&](Vals& v) {
      warp_allreduce<Op>(v);
      if ((t & 31) == 0) red[warp] = v;
      __syncthreads();
      if (warp == 0) {
        Vals w = t < nwarps ? red[t] : Vals{};
        warp_allreduce<Op>(w);
        if (t == 0) *coef_sh = op.coef(plane, w, true);
      }
      __syncthreads();
      return *coef_sh;
    });
    __syncthreads();  // red and coef_sh are rewritten for the next plane
  }
}

// ------------------------------------------------------------------------------------------- channels-last
// (N, L, C) seen as N * L rows of cv vectors of V channels. Block b = (n, chunk j, tile), tile fastest; thread
// (tx, ty) handles channel vector tile * tx_count + tx and rows r0 + ty, r0 + ty + ty_count, ... < r1.
struct ClGrid {
  int64_t N, L, C, cv;   // cv = C / V
  int tx, ty;            // threads along channel vectors (a power of 2, <= 32) and along rows; tx * ty = 256
  int64_t tiles;         // ceil(cv / tx)
  int64_t rows, chunks;  // rows per chunk, chunks per sample (each non-empty)
};

struct ClThread {
  int64_t n, j, cvi, r0, r1;
  int tx, ty;
  bool active;  // cvi < cv
  __device__ explicit ClThread(const ClGrid& g) {
    const int64_t b = blockIdx.x;
    j = (b / g.tiles) % g.chunks;
    n = b / (g.tiles * g.chunks);
    tx = threadIdx.x % g.tx;
    ty = threadIdx.x / g.tx;
    cvi = (b % g.tiles) * g.tx + tx;
    active = cvi < g.cv;
    r0 = j * g.rows;
    r1 = std::min(g.L, r0 + g.rows);
  }
  __device__ int64_t vec(const ClGrid& g, int64_t r) const { return (n * g.L + r) * g.cv + cvi; }
};

// Writes part[((n * chunks + j) * K + f) * C + c]: field f of chunk j's record for plane (n, c).
// Dynamic shared memory: cl_partial_smem() bytes.
template <class Op, int V>
__global__ void __launch_bounds__(kClThreads) cl_partial_kernel(Op op, ClGrid g, typename Op::Part* part) {
  using Acc = typename Op::ClAcc;
  Acc* red = reinterpret_cast<Acc*>(dynamic_smem());  // [(kClThreads / 2) * V]
  const ClThread th(g);
  Acc acc[V] = {};
  typename Op::Pre pre[V];
  if (th.active) {
    // Every thread of a channel takes the chunk's first row as its pivot, so they combine by plain sums.
    const auto first = reinterpret_cast<const Vec<typename Op::T, V>*>(op.in[0])[th.vec(g, th.r0)];
#pragma unroll
    for (int e = 0; e < V; ++e) pre[e] = op.pre(th.n * g.C + th.cvi * V + e, static_cast<typename Op::A>(first.e[e]));
    batched<unroll<Op>()>(
        th.r0 + th.ty, th.r1, g.ty, [&](int64_t r) { return load_pack<Op, V>(op, th.vec(g, r)); },
        [&](int64_t, const Pack<Op, V>& p) { accumulate<Op, V, 1>(acc, pre, p); });
  }
  // Tree over ty; inactive columns carry zeros. Every thread reaches every barrier.
  for (int s = g.ty / 2; s >= 1; s >>= 1) {
    if (th.ty >= s && th.ty < 2 * s) {
#pragma unroll
      for (int e = 0; e < V; ++e) red[((th.ty - s) * g.tx + th.tx) * V + e] = acc[e];
    }
    __syncthreads();
    if (th.ty < s) {
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e].add(red[(th.ty * g.tx + th.tx) * V + e]);
    }
    __syncthreads();
  }
  if (th.ty == 0 && th.active) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      const auto v = Op::cl_record(acc[e], pre[e]);
      typename Op::Part* dst = part + (th.n * g.chunks + th.j) * Op::K * g.C + th.cvi * V + e;
#pragma unroll
      for (int f = 0; f < Op::K; ++f) dst[f * g.C] = v.v[f];
    }
  }
}

// One thread per plane n * C + c: merges its chunk records, writes the per-plane outputs and coefficients.
template <class Op>
__global__ void __launch_bounds__(256) cl_finalize_kernel(Op op, ClGrid g, const typename Op::Part* part,
                                                          typename Op::Coef* coefs) {
  const int64_t plane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (plane >= g.N * g.C) return;
  const int64_t n = plane / g.C, c = plane % g.C;
  const typename Op::Vals v = Op::merge_parts(part + n * g.chunks * Op::K * g.C + c, Op::K * g.C, g.C, g.chunks);
  coefs[plane] = op.coef(plane, v, true);
}

// The elementwise pass, with cl_partial_kernel's decomposition.
template <class Op, int V>
__global__ void __launch_bounds__(kClThreads) cl_apply_kernel(Op op, ClGrid g, const typename Op::Coef* coefs) {
  const ClThread th(g);
  if (!th.active) return;  // no barriers in this kernel
  typename Op::Coef k[V];
#pragma unroll
  for (int e = 0; e < V; ++e) k[e] = coefs[th.n * g.C + th.cvi * V + e];
  batched<unroll<Op>()>(
      th.r0 + th.ty, th.r1, g.ty, [&](int64_t r) { return load_pack<Op, V>(op, th.vec(g, r)); },
      [&](int64_t r, const Pack<Op, V>& p) { apply_store<Op, V, 1>(op, k, th.vec(g, r), p); });
}

// ====================================================================================== launch geometry
struct DeviceLimits {
  int sms = 0, smem_optin = 0;  // SM count; opt-in shared memory per block (bytes)
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct ContigConfig {
  bool warp;  // plane_warp_kernel, else plane_block_kernel
  int threads;
  int64_t blocks, nvec, ncache, smem;  // smem: dynamic shared-memory bytes
};

template <class Op, int V>
ContigConfig contig_config(int64_t planes, int64_t L, const DeviceLimits& d) {
  static_assert(32 * sizeof(typename Op::Vals) + sizeof(typename Op::Coef) <= kScratch, "scratch too small");
  ContigConfig c{};
  c.nvec = L / V;
  c.warp = L <= kWarpPlaneMax;
  if (c.warp) {
    c.threads = 256;
    c.blocks = std::min<int64_t>(ceil_div(planes, 8), static_cast<int64_t>(d.sms) * 32);
    return c;
  }
  c.threads = 128;  // 8+ vectors per thread up to kBlockMax threads
  while (c.threads < kBlockMax && c.threads * 8 < c.nvec) c.threads *= 2;
  const int64_t vec_bytes = static_cast<int64_t>(sizeof(Vec<typename Op::T, V>)) * Op::kIn;
  c.ncache = std::max<int64_t>(0, std::min<int64_t>(c.nvec, (d.smem_optin - kScratch) / vec_bytes));
  c.smem = kScratch + c.ncache * vec_bytes;
  c.blocks = std::min<int64_t>(planes, 0x7fffffff);  // the kernel grid-strides beyond
  return c;
}

// ~4 blocks per SM, but at least ~4 rows per thread and at most kClMaxChunks chunks per sample.
template <class Op, int V>
ClGrid cl_grid(int64_t N, int64_t L, int64_t C, const DeviceLimits& d) {
  ClGrid g{N, L, C, C / V, 1, 0, 0, 0, 0};
  while (g.tx < 32 && g.tx < g.cv) g.tx *= 2;
  g.ty = kClThreads / g.tx;
  g.tiles = ceil_div(g.cv, g.tx);
  int64_t chunks = ceil_div(4 * static_cast<int64_t>(d.sms), N * g.tiles);
  chunks = std::max<int64_t>(1, std::min({chunks, ceil_div(L, 4 * static_cast<int64_t>(g.ty)), kClMaxChunks}));
  g.rows = ceil_div(L, chunks);
  g.chunks = ceil_div(L, g.rows);  // so every chunk is non-empty
  return g;
}

template <class Op, int V>
constexpr int64_t cl_partial_smem() {
  return (kClThreads / 2) * V * static_cast<int64_t>(sizeof(typename Op::ClAcc));
}

}  // namespace in_cuda
}  // namespace fastgan
