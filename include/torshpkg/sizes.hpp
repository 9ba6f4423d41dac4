// Sizes as users write them on command lines: one parser for both tools (scripts/torshpkg_sizes.py
// is the scripts' twin).
#pragma once
#include <cstdint>
#include <string_view>

namespace torshpkg {

// "4096", "512K", "256M", "16G", "1T" (also "KiB"... and lower-case k, m, g, t; "B" for bytes):
// powers of 1024. Throws UsageError naming `what` for anything else or a value past 2^64.
[[nodiscard]] std::uint64_t parse_size(std::string_view what, std::string_view text);

}  // namespace torshpkg
