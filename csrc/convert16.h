// 16-bit <-> float conversions that vectorise, shared by the CPU kernels (bias_act, group_norm).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "bit_cast.h"
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace fastgan {

#ifndef FASTGAN_ALWAYS_INLINE
#define FASTGAN_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

// 16-bit <-> float conversions restating c10's portable ones bit for bit (fp16_ieee_to_fp32_value,
// fp16_ieee_from_fp32_value, BFloat16's f32_from_bits and round_to_nearest_even: what c10::Half / c10::BFloat16
// compile to without F16C, as in this build), with every branch written as a select so GCC vectorises them: through
// c10's operators the half and bfloat16 loops stayed scalar in every ISA clone.
FASTGAN_ALWAYS_INLINE float half_to_float(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = fastgan::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * fastgan::bit_cast<float>(15u << 23);
  const float denormalized = fastgan::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t bits = two_w < (1u << 27) ? fastgan::bit_cast<uint32_t>(denormalized) : fastgan::bit_cast<uint32_t>(normalized);
  return fastgan::bit_cast<float>(sign | bits);
}

FASTGAN_ALWAYS_INLINE uint16_t float_to_half(float f) {
  float base = (std::fabs(f) * fastgan::bit_cast<float>(239u << 23)) * fastgan::bit_cast<float>(17u << 23);
  const uint32_t w = fastgan::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  bias = bias < 0x71000000u ? 0x71000000u : bias;
  base = fastgan::bit_cast<float>((bias >> 1) + 0x07800000u) + base;  // must not become an FMA (see the clones)
  const uint32_t bits = fastgan::bit_cast<uint32_t>(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

FASTGAN_ALWAYS_INLINE float bf16_to_float(uint16_t b) {
  return fastgan::bit_cast<float>(uint32_t(b) << 16);
}

FASTGAN_ALWAYS_INLINE uint16_t float_to_bf16(float f) {
  const uint32_t u = fastgan::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16;
  return uint16_t(f != f ? 0x7FC0u : rounded);  // NaN: c10's canonical quiet NaN
}

// x's element in the compute type A, and back: the conversions above for the 16-bit types (a double A gets the
// float value, and a double result is rounded to float first, as c10::Half(double) and c10::BFloat16(double) do).
template <typename A, typename T>
FASTGAN_ALWAYS_INLINE A load_as(const T& v) {
  if constexpr (std::is_same_v<T, c10::Half>) return A(half_to_float(v.x));
  else if constexpr (std::is_same_v<T, c10::BFloat16>) return A(bf16_to_float(v.x));
  else return A(v);
}

template <typename T, typename A>
FASTGAN_ALWAYS_INLINE T store_as(A v) {
  if constexpr (std::is_same_v<T, c10::Half>) return T(float_to_half(float(v)), T::from_bits());
  else if constexpr (std::is_same_v<T, c10::BFloat16>) return T(float_to_bf16(float(v)), T::from_bits());
  else return T(v);
}

}  // namespace fastgan
