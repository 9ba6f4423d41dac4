// The 16-byte header that the signature block and the key block share (FORMAT.md): magic (8),
// u16 version, u16 count, u32 entry size; entries follow. Private to src/trust.
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace torshpkg::block {

inline constexpr std::size_t kHeaderSize = 16;

struct Shape {
  std::string_view what;  // "signature block", "key block": names it in messages
  const std::array<std::uint8_t, 8> &magic;
  std::uint16_t version;
  std::uint32_t entry_size;
  std::size_t max_entries;
};

// Checks the header of `bytes` against `shape`; returns the entry count (1..max_entries) and the
// block's size. Does not require `bytes` to end there: the caller decides. Throws FormatError.
[[nodiscard]] std::pair<std::size_t, std::size_t> parse_header(std::span<const std::uint8_t> bytes, const Shape &shape);
// A zeroed block of `count` entries with its header written.
[[nodiscard]] std::vector<std::uint8_t> with_header(const Shape &shape, std::size_t count);

}  // namespace torshpkg::block
