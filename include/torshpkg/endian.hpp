// Explicit little-endian encoding of fixed-width on-disk fields.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace torshpkg {

template <typename T>
[[nodiscard]] inline T load_le(const std::uint8_t *p) noexcept {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

template <typename T>
inline void store_le(std::uint8_t *p, T v) noexcept {
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(v) >> (8 * i));
}

// Overflow-safe helpers for offsets and lengths read from untrusted input.
[[nodiscard]] inline bool add_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t &out) noexcept {
  return __builtin_add_overflow(a, b, &out);
}
[[nodiscard]] inline bool mul_overflows(std::uint64_t a, std::uint64_t b, std::uint64_t &out) noexcept {
  return __builtin_mul_overflow(a, b, &out);
}
// True when [offset, offset+length) lies inside [0, limit).
[[nodiscard]] inline bool range_within(std::uint64_t offset, std::uint64_t length, std::uint64_t limit) noexcept {
  std::uint64_t end = 0;
  return !add_overflows(offset, length, end) && end <= limit;
}

}  // namespace torshpkg
