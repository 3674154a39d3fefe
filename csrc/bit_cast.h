// fastgan::bit_cast<To>(from): std::bit_cast for C++17 builds.
//
// torch.utils.cpp_extension picks the C++ standard from the torch it builds against: -std=c++17 up to torch 2.11
// (the lent H200's), -std=c++20 from 2.13 on. std::bit_cast is C++20 only; the compiler builtin behind it exists
// in both modes (GCC >= 11, Clang >= 9) and compiles to the same register move.
#pragma once

#include <type_traits>

namespace fastgan {

template <class To, class From>
inline constexpr To bit_cast(const From& from) noexcept {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  static_assert(std::is_trivially_copyable_v<To> && std::is_trivially_copyable_v<From>,
                "bit_cast: types must be trivially copyable");
  return __builtin_bit_cast(To, from);
}

}  // namespace fastgan
