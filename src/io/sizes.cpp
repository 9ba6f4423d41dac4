#include "torshpkg/sizes.hpp"

#include <fmt/format.h>

#include "torshpkg/errors.hpp"

namespace torshpkg {

std::uint64_t parse_size(std::string_view what, std::string_view text) {
  auto bad = [&] { return UsageError(fmt::format("bad value for {}: '{}' (a size like 512M or 16G)", what, text)); };
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) throw bad();
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < digits; ++i) {
    const auto d = static_cast<std::uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10) throw UsageError(fmt::format("{} too large: '{}'", what, text));
    v = v * 10 + d;
  }
  const std::string_view unit = text.substr(digits);
  unsigned shift = 0;
  if (unit.empty() || unit == "B")
    shift = 0;
  else if (unit == "K" || unit == "k" || unit == "KiB")
    shift = 10;
  else if (unit == "M" || unit == "m" || unit == "MiB")
    shift = 20;
  else if (unit == "G" || unit == "g" || unit == "GiB")
    shift = 30;
  else if (unit == "T" || unit == "t" || unit == "TiB")
    shift = 40;
  else
    throw bad();
  if (v > (UINT64_MAX >> shift)) throw UsageError(fmt::format("{} too large: '{}'", what, text));
  return v << shift;
}

}  // namespace torshpkg
