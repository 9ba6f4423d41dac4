#include "torshpkg/names.hpp"

#include <cstdint>

#include "torshpkg/format.hpp"

namespace torshpkg {

bool valid_utf8(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<std::uint8_t>(s[i]);
    std::size_t extra = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;  // truncated sequence
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<std::uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    // Reject overlong forms, surrogates and code points past U+10FFFF.
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

std::optional<std::string> name_problem(std::string_view name) {
  if (name.empty()) return "empty name";
  if (name == "." || name == "..") return "name is '.' or '..'";
  if (name.size() > format::kMaxNameLength) return "name longer than 255 bytes";
  if (name.find('/') != std::string_view::npos) return "name contains '/'";
  if (name.find('\0') != std::string_view::npos) return "name contains a NUL byte";
  if (!valid_utf8(name)) return "name is not valid UTF-8";
  return std::nullopt;
}

std::optional<std::string> symlink_problem(std::string_view target) {
  if (target.empty()) return "empty symlink target";
  if (target.size() > format::kMaxSymlinkLength) return "symlink target longer than 4095 bytes";
  if (target.find('\0') != std::string_view::npos) return "symlink target contains a NUL byte";
  return std::nullopt;
}

}  // namespace torshpkg
