#include "block.hpp"

#include <fmt/format.h>
#include <algorithm>

#include "torshpkg/endian.hpp"
#include "torshpkg/errors.hpp"

namespace torshpkg::block {

std::pair<std::size_t, std::size_t> parse_header(std::span<const std::uint8_t> bytes, const Shape &shape) {
  if (bytes.size() < kHeaderSize)
    throw FormatError(fmt::format("{} of {} bytes is too short", shape.what, bytes.size()));
  if (!std::equal(shape.magic.begin(), shape.magic.end(), bytes.begin()))
    throw FormatError(fmt::format("{} has a bad magic", shape.what));
  const auto version = load_le<std::uint16_t>(&bytes[8]);
  const auto count = load_le<std::uint16_t>(&bytes[10]);
  const auto entry_size = load_le<std::uint32_t>(&bytes[12]);
  if (version != shape.version) throw FormatError(fmt::format("unsupported {} version {}", shape.what, version));
  if (entry_size != shape.entry_size)
    throw FormatError(fmt::format("{} entries of {} bytes, expected {}", shape.what, entry_size, shape.entry_size));
  if (count == 0 || count > shape.max_entries) throw FormatError(fmt::format("{} with {} entries", shape.what, count));
  return {count, kHeaderSize + std::size_t{count} * shape.entry_size};
}

std::vector<std::uint8_t> with_header(const Shape &shape, std::size_t count) {
  std::vector<std::uint8_t> b(kHeaderSize + count * shape.entry_size, 0);
  std::copy(shape.magic.begin(), shape.magic.end(), b.begin());
  store_le<std::uint16_t>(&b[8], shape.version);
  store_le<std::uint16_t>(&b[10], static_cast<std::uint16_t>(count));
  store_le<std::uint32_t>(&b[12], shape.entry_size);
  return b;
}

}  // namespace torshpkg::block
