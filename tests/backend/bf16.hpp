// bf16 <-> float on the host, for the GPU tests' inputs and host references.
#pragma once

#include <cstdint>
#include <cstring>

namespace twinstep::backend::test {

/// Rounds to nearest even.
inline std::uint16_t to_bf16(float f) {
  std::uint32_t b = 0;
  std::memcpy(&b, &f, 4);
  b += 0x7FFFu + ((b >> 16) & 1u);
  return static_cast<std::uint16_t>(b >> 16);
}

inline float from_bf16(std::uint16_t h) {
  const std::uint32_t b = static_cast<std::uint32_t>(h) << 16;
  float f = 0;
  std::memcpy(&f, &b, 4);
  return f;
}

}  // namespace twinstep::backend::test
