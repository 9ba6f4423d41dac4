// Manifest fields with rules of their own: semantic versions, dependency ranges, package names.
#pragma once
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace torshpkg {

// Semantic Versioning 2.0.0: MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD], no leading zeros.
[[nodiscard]] bool valid_semver(std::string_view v);
// npm-style ranges: "1.2.3", "^1.2", "~1.2.3", ">=1.0 <2.0", "1.x", "*", alternatives joined by "||".
[[nodiscard]] bool valid_semver_range(std::string_view r);

// A parsed version. Ordering is SemVer 2.0.0 precedence (section 11): numeric fields, then a
// release above any of its pre-releases, pre-release identifiers compared field by field (numeric
// ones numerically and below alphanumeric ones); build metadata is ignored, so 1.0.0+a == 1.0.0+b.
struct SemVer {
  std::uint64_t major = 0, minor = 0, patch = 0;
  std::vector<std::string> prerelease;    // the dot-separated identifiers after '-'
  std::string build;                      // after '+', kept for printing only
  [[nodiscard]] std::string str() const;  // canonical text, build metadata included
  friend std::weak_ordering operator<=>(const SemVer &a, const SemVer &b);
  friend bool operator==(const SemVer &a, const SemVer &b) { return (a <=> b) == 0; }
};
// nullopt unless valid_semver(v). Stricter than node-semver only: numbers (pre-release ones too)
// above 2^53 - 1 and texts over 256 characters are refused.
[[nodiscard]] std::optional<SemVer> parse_semver(std::string_view v);

// Whether `v` satisfies the npm-style range `range` (node-semver's semantics without loose mode:
// ^ ~ x-ranges, hyphen ranges, comparators joined by spaces, alternatives by ||). A pre-release
// version satisfies a comparator set only if some comparator in the set names the same
// MAJOR.MINOR.PATCH with a pre-release (so ^1.2.0 does not match 1.3.0-beta). Throws UsageError for
// a range that is not valid_semver_range().
[[nodiscard]] bool satisfies(const SemVer &v, std::string_view range);

// Names of packages and of dependencies: 1-214 characters of letters, digits and -_./@
[[nodiscard]] bool valid_package_name(std::string_view name);

struct Dependency {
  std::string name;
  std::string range;
};
// Parses "NAME@RANGE" (or "NAME" for any version); throws UsageError with the reason.
[[nodiscard]] Dependency parse_dependency(std::string_view spec);

}  // namespace torshpkg
