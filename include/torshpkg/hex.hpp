// Hexadecimal digits: one rule for every parser of hex text (digests in from_hex(), the \x and \u
// escapes of pickle strings). Header-only, so that any library can use it without linking another.
#pragma once

namespace torshpkg {

// 0..15 for '0'..'9', 'a'..'f' and 'A'..'F'; -1 for any other byte.
[[nodiscard]] constexpr int hex_digit_value(unsigned char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace torshpkg
