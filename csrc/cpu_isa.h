// Run-time choice of instruction set for the CPU kernels' inner loops (bias_act, the group-norm family,
// grad_penalty, the diffusion step).
//
// The build has no -march (the wheel runs on any x86-64), so plain code is SSE2: 4 floats a vector, 2 doubles.
// Eager PyTorch picks AVX2 or AVX-512 kernels at run time; to keep up, an inner loop is compiled up to three times,
// for the baseline ISA, AVX2 and AVX-512 (F/BW/VL/DQ, 512-bit vectors preferred), and the best the CPU supports is
// picked once per process. ATEN_CPU_CAPABILITY=default|avx2 caps the choice as it does for ATen's own kernels (and
// lets a test compare the clones).
//
// Same bits from every clone: the compiler never contracts a * b + c into an FMA (-std=c++20 implies
// fp-contract=off for the whole build; both clones, whose targets include FMA, say so again), and the loops fix
// their summation order in source (lane arrays, see cpu_reduce.h), so a wider vector never reassociates a sum.
// The one exception is chosen in source: the float exp and tanh of bias_act's tanh, sigmoid and SiLU and of the
// group-norm family's SiLU have FMA in the AVX2 and AVX-512 clones (vec_math.h's ExpRangeT<true>), so there the
// baseline clone's last bit may differ.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <string>

namespace fastgan {
namespace {

enum Isa { kIsaBase = 0, kIsaAvx2, kIsaAvx512 };

#define FASTGAN_TARGET_AVX2 __attribute__((target("avx2,fma"), optimize("fp-contract=off")))
#define FASTGAN_TARGET_AVX512                                                               \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,prefer-vector-width=512"), \
                 optimize("fp-contract=off")))

inline Isa detect_isa() {
  __builtin_cpu_init();
  Isa isa = kIsaBase;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = kIsaAvx2;
  if (isa == kIsaAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    isa = kIsaAvx512;
  if (const char* cap = std::getenv("ATEN_CPU_CAPABILITY")) {
    const std::string c(cap);
    if (c == "default") isa = kIsaBase;
    if (c == "avx2") isa = std::min(isa, kIsaAvx2);
  }
  return isa;
}

inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

// One of three function pointers by cpu_isa(): `pick_isa(&f_base<T>, &f_avx2<T>, &f_avx512<T>)`.
template <typename Fn>
inline Fn pick_isa(Fn base, Fn avx2, Fn avx512) {
  const Isa isa = cpu_isa();
  return isa == kIsaAvx512 ? avx512 : isa == kIsaAvx2 ? avx2 : base;
}

// NAME_base, NAME_avx2 and NAME_avx512: the body NAME_impl ARGS compiled for each ISA. TPL is the template
// parameter list (commas as FASTGAN_COMMA), PARAMS the parenthesised parameters.
#define FASTGAN_COMMA ,
#define FASTGAN_ISA_CLONES(NAME, TPL, PARAMS, ARGS)                               \
  template <TPL> void NAME##_base PARAMS { NAME##_impl ARGS; }                   \
  template <TPL> FASTGAN_TARGET_AVX2 void NAME##_avx2 PARAMS { NAME##_impl ARGS; } \
  template <TPL> FASTGAN_TARGET_AVX512 void NAME##_avx512 PARAMS { NAME##_impl ARGS; }

// The same for a body whose math has an exp (the SiLU of the group-norm family): NAME_impl's first template
// parameter is bool FMA, true in the clones with FMA (the exps take ExpRangeT<FMA>, vec_math.h); TARGS are its other
// template arguments, CARGS the parenthesised call arguments.
#define FASTGAN_ISA_CLONES_FMA(NAME, TPL, PARAMS, TARGS, CARGS)                                        \
  template <TPL> void NAME##_base PARAMS { NAME##_impl<false, TARGS> CARGS; }                         \
  template <TPL> FASTGAN_TARGET_AVX2 void NAME##_avx2 PARAMS { NAME##_impl<true, TARGS> CARGS; }     \
  template <TPL> FASTGAN_TARGET_AVX512 void NAME##_avx512 PARAMS { NAME##_impl<true, TARGS> CARGS; }

}  // namespace
}  // namespace fastgan
