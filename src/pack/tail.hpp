// The unrooted tail of a package (key block, signature block, footer): what sign and rekey rewrite.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "torshpkg/package.hpp"

namespace torshpkg {

// Replaces everything after `pkg`'s manifest with `blocks` (key block, then signature block) and a
// footer locating them: in place at `path`, or as a copy at `output` (the unchanged prefix copied).
void replace_tail(const Package &pkg, const std::string &path, const std::vector<std::uint8_t> &blocks,
                  const std::string &output);

}  // namespace torshpkg
