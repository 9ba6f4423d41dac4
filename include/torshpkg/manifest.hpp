// Manifest pieces: semantic versions, dependency ranges, file kinds, safetensors summaries.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "torshpkg/format.hpp"

namespace torshpkg {

// Semantic Versioning 2.0.0: MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], no leading zeros.
[[nodiscard]] bool valid_semver(std::string_view v);
// npm-style ranges: "1.2.3", "^1.2", "~1.2.3", ">=1.0 <2.0", "1.x", "*", alternatives joined by "||".
[[nodiscard]] bool valid_semver_range(std::string_view r);

// Names of packages and of dependencies: 1-214 characters of letters, digits and -_./@
[[nodiscard]] bool valid_package_name(std::string_view name);

struct Dependency {
  std::string name;
  std::string range;
};
// Parses "NAME@RANGE" (or "NAME" for any version); throws UsageError with the reason.
[[nodiscard]] Dependency parse_dependency(std::string_view spec);

struct TensorRange {
  std::uint64_t begin = 0, end = 0;  // absolute offsets in the file
  std::string dtype;
};
struct SafetensorsSummary {
  std::uint64_t tensors = 0;
  std::uint64_t parameters = 0;
  std::map<std::string, std::uint64_t> dtypes;  // dtype -> tensor count
  std::vector<TensorRange> ranges;              // sorted by begin, non-overlapping
  std::vector<std::string> names;               // tensor names, sorted bytewise (no __metadata__)
};
// Parses a safetensors header (given its first bytes and the file size) with bounds checks:
// header length <= 100 MB, JSON object, data offsets inside the data section, no overlaps.
// Returns nullopt when the bytes are not a safetensors file; throws FormatError with the reason
// when they claim to be one but are malformed.
[[nodiscard]] std::optional<SafetensorsSummary> parse_safetensors(std::span<const std::uint8_t> header_bytes,
                                                                   std::uint64_t file_size);
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

// Kind of a file from its path and its first bytes.
[[nodiscard]] format::FileKind detect_kind(std::string_view path, std::span<const std::uint8_t> head);

}  // namespace torshpkg
