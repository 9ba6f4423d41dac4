// Zip archives (torch.save, torch.package, any zip of stored or deflated entries) presented as
// packages without unpacking them (src/zip/zip_package.cpp).
#pragma once
#include <memory>
#include <string_view>

#include "torshpkg/chunk_source.hpp"
#include "torshpkg/package.hpp"

namespace torshpkg {

// For the trust policy: why a zip cannot be trusted, and what to do about it.
inline constexpr std::string_view kZipUnsignedBecause = "a zip archive, which cannot carry a signature";
inline constexpr std::string_view kZipRemedy = "torshpkg import it into a signed package";

// True when the source starts like a zip archive ("PK\3\4", or "PK\5\6" for an empty one).
[[nodiscard]] bool looks_like_zip(const ChunkSource &source);

// The tree and chunk table are built in memory from the central directory; stored entries are read
// in place, deflated ones inflated on demand. Such a package has no signature, no root digest and no
// chunk digests: only the zip's CRC-32s (Package::synthesized() says so). Throws FormatError for a
// malformed archive, a refused name or an unsupported method.
[[nodiscard]] std::shared_ptr<const Package> open_zip(std::shared_ptr<const ChunkSource> archive);

}  // namespace torshpkg
